"""UHR inheritance (``l2p convert --from-pixel``): 8K and 10K inits built from a 4K or 8K pixel checkpoint."""

import os
from pathlib import Path

import pytest
import torch
from diffsynth.models.model_loader import ModelPool
from safetensors.torch import load_file, save_file
from tiny_checkpoints import SMALL_BACKBONE, narrow_uhr_kwargs, save_sharded, tiny_latent_state_dict, write_header_only

from diffsynth_l2p.cli import main
from diffsynth_l2p.convert import convert_latent_to_pixel, convert_pixel_to_pixel, init_new_tensors
from diffsynth_l2p.models import ZImageL2PDiT
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.registry import L2P_DIT_MODEL_NAME, meta_hash, meta_state_shapes, register_l2p_dit
from diffsynth_l2p.safetensors_io import same_bits
from diffsynth_l2p.tiny import init_weights

PAIRS = [("4k", "8k"), ("4k", "10k"), ("8k", "10k")]
REINITIALISED_10K = {"local_decoder.bottleneck.0.weight", "local_decoder.up3.1.weight"}
PATCH = {"4k": 64, "8k": 128, "10k": 160}
WRAPPER = {"8k": "_8k", "10k": "_10k_a"}


def module_keys(*modules: str) -> set:
    return {f"{module}.{tensor}" for module in modules for tensor in ("weight", "bias")}


def stage_keys(stage: str) -> set:
    return module_keys(f"local_decoder.enc{stage}.0", f"local_decoder.up{stage}.1", f"local_decoder.dec{stage}.0")


def embedder_keys(name: str) -> set:
    return module_keys(f"all_x_embedder.{PATCH[name]}-1")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """Trained-looking 4K (two shards, a BF16 backbone like the release) and 8K (one F32 file) pixel checkpoints."""
    result = {}
    for name in ("4k", "8k"):
        model = ZImageL2PDiT(**narrow_uhr_kwargs(name))
        init_weights(model, seed=1 if name == "4k" else 2)
        state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
        directory = tmp_path_factory.mktemp(name)
        if name == "4k":
            state = {k: v if k.startswith("local_decoder.") else v.to(torch.bfloat16) for k, v in state.items()}
            paths = save_sharded(state, directory)
        else:
            paths = [str(directory / "8k.safetensors")]
            save_file(state, paths[0])
        result[name] = state, paths
    return result


@pytest.fixture(scope="module")
def inherited(sources, tmp_path_factory) -> dict:
    """Each allowed pair converted with the default seed: (report, written tensors)."""
    result = {}
    for source, target in PAIRS:
        out = tmp_path_factory.mktemp(f"{source}-{target}") / f"{target}_init.safetensors"
        report = convert_pixel_to_pixel(sources[source][1], out, narrow_uhr_kwargs(target))
        result[source, target] = report, load_file(str(out))
    return result


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_copied_reinitialised_dropped_and_new_sets(sources, inherited, pair):
    source_name, target_name = pair
    state, _ = sources[source_name]
    report, output = inherited[pair]
    plan = report.plan
    target = meta_state_shapes(**narrow_uhr_kwargs(target_name))
    assert {key: tuple(value.shape) for key, value in output.items()} == target

    same_key_other_shape = {key for key in target if key in state and tuple(state[key].shape) != target[key]}
    assert set(plan.reinitialised) == same_key_other_shape
    assert same_key_other_shape == (REINITIALISED_10K if target_name == "10k" else set())
    assert set(plan.copied) == {key for key in target if key in state} - same_key_other_shape
    assert all(same_bits(output[key], state[key]) for key in plan.copied)  # dtype kept: BF16 and F32 alike
    if target_name == "10k":  # the biases of the re-initialised convs keep their shape, so they are copied
        assert {"local_decoder.bottleneck.0.bias", "local_decoder.up3.1.bias"} <= set(plan.copied)

    dropped = embedder_keys(source_name) | ({*stage_keys("4"), *stage_keys("_8k")} if target_name == "10k" else set())
    assert set(plan.dropped) == dropped & set(state)
    assert set(plan.new) == embedder_keys(target_name) | stage_keys(WRAPPER[target_name])

    fresh = init_new_tensors(plan, seed=42)
    assert fresh.keys() == set(plan.new) | same_key_other_shape
    for key in fresh:
        assert output[key].dtype == torch.float32 and same_bits(output[key], fresh[key]), key
    assert report.output_hash == meta_hash(**narrow_uhr_kwargs(target_name))
    assert report.plan.source_layout == source_name


def test_summary_counts_reinitialised_tensors_apart_from_new_ones(inherited):
    summary = inherited["4k", "10k"][0].summary()
    assert "from a 4k pixel checkpoint" in summary
    assert "re-initialised 2 tensors (same key, shape changed), seed 42:" in summary
    assert "    local_decoder.bottleneck.0.weight [16, 48, 1, 1] -> [16, 40, 1, 1]" in summary
    assert "    local_decoder.up3.1.weight [8, 8, 3, 3] -> [8, 16, 3, 3]" in summary
    assert "new      8 tensors" in summary and "dropped  8 tensors" in summary
    assert "re-initialised 0 tensors (same key, shape changed), seed 42\n" in inherited["4k", "8k"][0].summary()


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_output_loads_strictly_and_through_diffsynth(inherited, pair):
    report, output = inherited[pair]
    kwargs = narrow_uhr_kwargs(pair[1])
    model = ZImageL2PDiT(**kwargs)
    model.load_state_dict(output, strict=True)

    register_l2p_dit(**kwargs)
    pool = ModelPool()
    fp32 = {**pool.default_vram_config(), "onload_dtype": torch.float32, "preparing_dtype": torch.float32}
    pool.auto_load_model(report.output_path, vram_config={**fp32, "computation_dtype": torch.float32})
    loaded = pool.fetch_model(L2P_DIT_MODEL_NAME)
    assert isinstance(loaded, ZImageL2PDiT) and loaded.patch_size == PATCH[pair[1]]
    assert all(torch.equal(loaded.state_dict()[key], output[key].float()) for key in output)


def test_same_seed_gives_the_same_bytes_another_seed_other_fresh_tensors(sources, inherited, tmp_path):
    report, output = inherited["4k", "10k"]
    again = convert_pixel_to_pixel(sources["4k"][1], tmp_path / "again.safetensors", narrow_uhr_kwargs("10k"), seed=42)
    assert Path(again.output_path).read_bytes() == Path(report.output_path).read_bytes()

    convert_pixel_to_pixel(sources["4k"][1], tmp_path / "other.safetensors", narrow_uhr_kwargs("10k"), seed=7)
    other = load_file(str(tmp_path / "other.safetensors"))
    fresh = set(report.plan.new) | set(report.plan.reinitialised)
    for key in output:
        assert same_bits(other[key], output[key]) != (key in fresh), key


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict:
    """Real-size 4K and 8K checkpoints as headers over sparse holes (no tensor data)."""
    directory = tmp_path_factory.mktemp("standins")
    result = {}
    for name in ("4k", "8k"):
        path = directory / f"{name}.safetensors"
        _, allocated = write_header_only(path, meta_state_shapes(**L2P_CONFIGS[name].kwargs))
        if allocated > 100_000_000:
            pytest.skip("this filesystem has no sparse files")
        result[name] = str(path)
    return result


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_real_size_dry_run_predicts_the_published_hash(standins, tmp_path, capsys, pair):
    source, target = pair
    out = tmp_path / "init.safetensors"
    argv = ["convert", "--from-pixel", standins[source], "--config", target, "--output_path", str(out), "--dry-run"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"predicted hash: {L2P_CONFIGS[target].published_hash}" in printed
    assert f"DiffSynth model: {L2P_DIT_MODEL_NAME}" in printed and not out.exists()

    report = convert_pixel_to_pixel([standins[source]], out, target, dry_run=True)
    plan = report.plan
    assert set(plan.reinitialised) == (REINITIALISED_10K if target == "10k" else set())
    assert [(key, list(old), list(new)) for key, old, new in plan.shape_mismatches] == (
        [
            ("local_decoder.bottleneck.0.weight", [512, 4352, 1, 1], [512, 4096, 1, 1]),
            ("local_decoder.up3.1.weight", [256, 256, 3, 3], [256, 512, 3, 3]),
        ]
        if target == "10k"
        else []
    )
    assert set(plan.new) == embedder_keys(target) | stage_keys(WRAPPER[target])
    dropped = embedder_keys(source) | ({*stage_keys("4"), *(stage_keys("_8k") if source == "8k" else ())}
                                       if target == "10k" else set())  # fmt: skip
    assert set(plan.dropped) == dropped
    assert f"copied   {len(plan.copied)} tensors\n" in printed and f"new      {len(plan.new)} tensors" in printed


def listing(*directories) -> dict:
    return {str(d): sorted(os.listdir(d)) for d in directories}


@pytest.mark.parametrize(
    "case, message",
    [
        ("latent source", r"is a latent Z-Image DiT, not a pixel L2P checkpoint; convert it with --latent_ckpt_files"),
        ("not a DiT", "not a pixel L2P checkpoint .* pass all file"),
        ("no config", "pass --config 8k or --config 10k"),
        ("4k to 4k", r"of the 4k layout from a pixel checkpoint of the 4k layout; .* 4k -> 8k, .* 8k -> 10k: pass"),
        ("8k to 8k", r"Cannot build an init of the 8k layout from a pixel checkpoint of the 8k layout"),
        ("10k to 10k", r"Cannot build an init of the 10k layout from a pixel checkpoint of the 10k layout"),
        ("1k layout", r"from a pixel checkpoint of the 1k layout"),
        ("other backbone", r"The source DiT has dim=32.*config 8k has dim=3840"),
    ],
)
def test_bad_inheritance_inputs_raise_one_line_errors_and_write_nothing(sources, tmp_path, case, message):
    paths, config = sources["4k"][1], narrow_uhr_kwargs("8k")
    if case == "latent source":
        paths = save_sharded(tiny_latent_state_dict(), tmp_path)
    elif case == "not a DiT":
        paths = [str(tmp_path / "encoder.safetensors")]
        save_file({"encoder.weight": torch.zeros(2, 2)}, paths[0])
    elif case == "no config":
        config = None
    elif case == "4k to 4k":
        config = narrow_uhr_kwargs("4k")
    elif case in ("8k to 8k", "10k to 10k"):
        name = case[:3].strip()
        model = ZImageL2PDiT(**narrow_uhr_kwargs(name))
        paths = [str(tmp_path / "pixel.safetensors")]
        save_file({key: torch.zeros(value.shape) for key, value in model.state_dict().items()}, paths[0])
        config = narrow_uhr_kwargs(name)
    elif case == "1k layout":
        kwargs = {**SMALL_BACKBONE, "head_channels": (4, 4, 8, 8)}
        paths = [str(tmp_path / "pixel.safetensors")]
        save_file({key: torch.zeros(shape) for key, shape in meta_state_shapes(**kwargs).items()}, paths[0])
    else:
        config = "8k"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = listing(tmp_path, out_dir)
    with pytest.raises(ValueError, match=message) as error:
        convert_pixel_to_pixel(paths, out_dir / "init.safetensors", config)
    assert "\n" not in str(error.value)
    assert listing(tmp_path, out_dir) == before


def test_cli_names_the_right_flag_for_each_kind_of_source(sources, tmp_path, capsys):
    pixel = sources["4k"][1]
    out = str(tmp_path / "init.safetensors")
    assert main(["convert", "--latent_ckpt_files", *pixel, "--output_path", out]) == 2
    error = capsys.readouterr().err
    assert "l2p convert: error: The input is already a pixel L2P checkpoint" in error and "--from-pixel" in error

    latent = save_sharded(tiny_latent_state_dict(), tmp_path)
    assert main(["convert", "--from-pixel", *latent, "--config", "10k", "--output_path", out]) == 2
    assert "convert it with --latent_ckpt_files instead of --from-pixel" in capsys.readouterr().err

    assert main(["convert", "--from-pixel", *pixel, "--output_path", out]) == 2
    assert "pass --config 8k or --config 10k" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--from-pixel", *pixel, "--latent_ckpt_files", *latent, "--output_path", out])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_a_pixel_source_is_still_refused_by_the_latent_conversion(sources, tmp_path):
    with pytest.raises(ValueError, match="already a pixel L2P checkpoint.*pass it with --from-pixel"):
        convert_latent_to_pixel(sources["8k"][1], tmp_path / "x.safetensors")
