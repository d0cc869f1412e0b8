"""Latent Z-Image DiT -> L2P pixel init: the plan, the written file, reproducibility, loading, bad inputs, CLI."""

import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
from diffsynth.core import hash_model_file
from diffsynth.models.model_loader import ModelPool
from diffsynth.models.z_image_dit import ZImageDiT
from safetensors.torch import load_file, save_file
from tiny_checkpoints import (
    failing_writer,
    is_mapped,
    needs_proc_maps,
    save_sharded,
    tiny_latent_state_dict,
    write_header_only,
)

from diffsynth_l2p import convert
from diffsynth_l2p.cli import main
from diffsynth_l2p.convert import convert_latent_to_pixel, incomplete_blocks, init_new_tensors, plan_conversion
from diffsynth_l2p.models import ZImageL2PDiT
from diffsynth_l2p.models.configs import L2P_CONFIGS, Z_IMAGE_TURBO_DIT_HASH
from diffsynth_l2p.registry import (
    L2P_DIT_CLASS,
    L2P_DIT_MODEL_NAME,
    find_registered,
    meta_hash,
    meta_state_shapes,
)
from diffsynth_l2p.safetensors_io import read_headers, same_bits

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "z_image" / "L2P_convert_weight.py"
TINY = L2P_CONFIGS["tiny"].kwargs
NEW_PREFIXES = ("all_x_embedder.16-1.", "local_decoder.")


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    """A 2-shard tiny latent DiT with mixed dtypes, like the release (some blocks F32, the rest BF16)."""
    state = {
        key: value if key.startswith("layers.1.") else value.to(torch.bfloat16)
        for key, value in tiny_latent_state_dict(seed=0).items()
    }
    return state, save_sharded(state, tmp_path_factory.mktemp("latent"))


@pytest.fixture(scope="module")
def converted(latent, tmp_path_factory):
    _, shards = latent
    out = tmp_path_factory.mktemp("pixel") / "pixel_init.safetensors"
    return convert_latent_to_pixel(shards, out), load_file(str(out))


def listing(*directories) -> dict:
    return {str(d): sorted(os.listdir(d)) for d in directories}


def test_dry_run_on_a_real_size_stock_file_predicts_the_released_hash(tmp_path):
    shapes = meta_state_shapes(ZImageDiT)
    standin = tmp_path / "diffusion_pytorch_model.safetensors"
    size, allocated = write_header_only(standin, shapes)
    if allocated > 100_000_000:
        pytest.skip("this filesystem has no sparse files")
    assert size > 12_000_000_000 and hash_model_file(str(standin)) == Z_IMAGE_TURBO_DIT_HASH

    report = convert_latent_to_pixel([standin], tmp_path / "pixel.safetensors", dry_run=True)
    assert report.output_hash == L2P_CONFIGS["1k"].published_hash == "577b2d3e0acea1fb784ca600f966805e"
    assert report.plan.config_name == "1k" and report.registered_names == (L2P_DIT_MODEL_NAME,)
    assert (len(report.plan.copied), len(report.plan.new), len(report.plan.dropped)) == (515, 30, 6)
    assert all(key.startswith(("all_final_layer.2-1.", "all_x_embedder.2-1.")) for key in report.plan.dropped)
    assert all(key.startswith(NEW_PREFIXES) for key in report.plan.new)
    assert sorted(os.listdir(tmp_path)) == [standin.name]


def test_dry_run_of_a_tiny_file_predicts_the_written_hash_and_writes_nothing(latent, converted, tmp_path):
    _, shards = latent
    dry = convert_latent_to_pixel(shards, tmp_path / "pixel.safetensors", dry_run=True)
    assert os.listdir(tmp_path) == []
    report, _ = converted
    assert dry.output_hash == report.output_hash == hash_model_file(report.output_path) == meta_hash(**TINY)
    assert dry.plan == report.plan and "predicted hash" in dry.summary()


def test_copied_tensors_are_bit_identical_and_the_final_layer_is_gone(latent, converted):
    state, _ = latent
    report, output = converted
    assert {key: tuple(value.shape) for key, value in output.items()} == meta_state_shapes(**TINY)
    assert not any(key.startswith("all_final_layer") or key == "all_x_embedder.2-1.weight" for key in output)
    copied = [key for key in output if not key.startswith(NEW_PREFIXES)]
    assert sorted(copied) == sorted(report.plan.copied) and len(copied) == len(state) - 6
    assert all(same_bits(output[key], state[key]) for key in copied)  # dtype kept: F32 and BF16 alike
    assert output["layers.1.attention.to_q.weight"].dtype == torch.float32
    assert output["x_pad_token"].dtype == torch.bfloat16
    assert report.plan.new and all(output[key].dtype == torch.float32 for key in report.plan.new)  # the release's


def test_new_tensors_keep_their_float32_init_while_copied_tensors_keep_the_source_dtype(latent, converted):
    state, _ = latent
    report, output = converted
    init = init_new_tensors(report.plan, seed=42)
    for key in report.plan.new:
        assert output[key].dtype == torch.float32 and same_bits(output[key], init[key]), key
    embedder = output["all_x_embedder.16-1.weight"]
    assert (embedder != embedder.to(torch.bfloat16).float()).any()  # not rounded through the source's bf16
    assert {output[key].dtype for key in report.plan.copied} == {torch.float32, torch.bfloat16}
    assert all(output[key].dtype == state[key].dtype for key in report.plan.copied)


def test_new_tensors_are_reproducible_per_seed(latent, converted, tmp_path):
    _, shards = latent
    _, output = converted
    convert_latent_to_pixel(shards, tmp_path / "again.safetensors", seed=42)
    convert_latent_to_pixel(shards, tmp_path / "other.safetensors", seed=7)
    again, other = load_file(str(tmp_path / "again.safetensors")), load_file(str(tmp_path / "other.safetensors"))
    assert all(same_bits(again[key], output[key]) for key in output)
    for key in output:
        assert same_bits(other[key], output[key]) != key.startswith(NEW_PREFIXES), key
    # A fresh default init, not zeros: e.g. the embedder weight has PyTorch's Linear scale (bound 1/sqrt(768)).
    weight = output["all_x_embedder.16-1.weight"].float()
    assert weight.shape == (128, 768) and 0.9 < weight.abs().max() * 768**0.5 <= 1


def test_converted_file_is_found_in_the_registry_and_loads_through_diffsynth(converted):
    report, output = converted
    entries = find_registered(report.output_hash)
    assert [entry["model_name"] for entry in entries] == [L2P_DIT_MODEL_NAME]
    assert entries[0]["model_class"] == L2P_DIT_CLASS and entries[0]["extra_kwargs"] == TINY

    pool = ModelPool()
    fp32 = {**pool.default_vram_config(), "onload_dtype": torch.float32, "preparing_dtype": torch.float32}
    pool.auto_load_model(report.output_path, vram_config={**fp32, "computation_dtype": torch.float32})
    model = pool.fetch_model(L2P_DIT_MODEL_NAME)
    assert isinstance(model, ZImageL2PDiT)
    loaded = model.state_dict()
    assert loaded.keys() == output.keys()
    assert all(torch.equal(loaded[key], output[key].float()) for key in output)


def test_summary_names_counts_hash_and_model(converted):
    report, _ = converted
    summary = report.summary()
    for text in ("copied   97 tensors (verified bit-identical)", "new      30", "dropped  6", report.output_hash):
        assert text in summary
    assert f"DiffSynth model: {L2P_DIT_MODEL_NAME}" in summary


def test_plan_refuses_a_config_that_disagrees_with_the_source(latent):
    _, shards = latent
    header = read_headers(shards)
    with pytest.raises(ValueError, match=r"dim=128.*config 1k has dim=3840.*use config 'tiny'"):
        plan_conversion(header, "1k")
    with pytest.raises(ValueError, match="n_layers=3"):
        plan_conversion(header, {**TINY, "n_layers": 3})
    with pytest.raises(ValueError, match="Unknown L2P config"):
        plan_conversion(header, "2k")
    assert plan_conversion(header, dict(TINY)).output_hash == meta_hash(**TINY)


def _truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("already converted", ValueError, "already a pixel L2P checkpoint"),
        ("not a DiT", ValueError, "not a latent Z-Image DiT"),
        ("missing shard", FileNotFoundError, "dit-00002-of-00002.safetensors"),
        ("truncated shard", ValueError, r"dit-00002-of-00002.safetensors is corrupt or truncated"),
        ("output is an input", ValueError, "is also an input"),
    ],
)
def test_bad_inputs_raise_clear_errors_and_write_nothing(latent, converted, tmp_path, case, error, message):
    state, _ = latent
    shards = save_sharded(state, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = str(out_dir / "pixel.safetensors")
    if case == "already converted":
        shards = [converted[0].output_path]
    elif case == "not a DiT":
        shards = [str(tmp_path / "encoder.safetensors")]
        save_file({"encoder.weight": torch.zeros(2, 2)}, shards[0])
    elif case == "missing shard":
        os.remove(shards[1])
    elif case == "truncated shard":
        _truncate(shards[1])
    else:
        output = shards[0]
    before = listing(tmp_path, out_dir)
    with pytest.raises(error, match=message):
        convert_latent_to_pixel(shards, output)
    assert listing(tmp_path, out_dir) == before


def _save_split(state: dict, directory: Path, groups: list) -> list:
    """Save ``state`` as shards ``dit-0000K-of-0000N`` holding the given lists of keys."""
    paths = []
    for index, keys in enumerate(groups, start=1):
        paths.append(str(directory / f"dit-{index:05d}-of-{len(groups):05d}.safetensors"))
        save_file({key: state[key] for key in keys}, paths[-1])
    return paths


@pytest.mark.parametrize(
    "split, given, left_out",
    [
        ("interleaved", [0], "dit-00002-of-00002"),  # each shard holds part of every block
        ("contiguous", [0], "dit-00002-of-00002"),  # the first shard looks like a smaller, complete-ish DiT
        ("contiguous", [1], "dit-00001-of-00002"),
        ("three", [0, 2], "dit-00002-of-00003"),
    ],
)
def test_a_shard_left_out_of_the_list_is_named(latent, tmp_path, split, given, left_out):
    state, _ = latent
    keys = list(state)
    if split == "interleaved":
        groups = [keys[0::2], keys[1::2]]
    elif split == "contiguous":
        groups = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    else:
        groups = [keys[0::3], keys[1::3], keys[2::3]]
    shards = _save_split(state, tmp_path, groups)
    message = rf"The inputs lack \S*{left_out}\.safetensors, which the shard names .* pass every shard\. Details: "
    with pytest.raises(ValueError, match=message):
        convert_latent_to_pixel([shards[index] for index in given], tmp_path / "pixel.safetensors")
    assert not (tmp_path / "pixel.safetensors").exists()


def test_incomplete_blocks_suggest_a_left_out_shard_whatever_the_file_names(latent, tmp_path):
    state, _ = latent
    part = tmp_path / "part_a.safetensors"
    save_file({key: value for index, (key, value) in enumerate(state.items()) if index % 2 == 0}, str(part))
    with pytest.raises(ValueError, match=r"incomplete blocks \(layers\.0 lacks \d+ of 15 tensors.*left out"):
        convert_latent_to_pixel([part], tmp_path / "pixel.safetensors")


def test_incomplete_blocks_finds_partial_and_absent_blocks_only():
    complete = (ZImageDiT, {}), (ZImageL2PDiT, TINY), (ZImageL2PDiT, L2P_CONFIGS["10k"].kwargs)
    for model_class, kwargs in complete:
        shapes = meta_state_shapes(model_class, **kwargs)
        assert incomplete_blocks(list(shapes)) == [], model_class
    shapes = meta_state_shapes(ZImageDiT)
    per_refiner_block = sum(key.startswith("noise_refiner.0.") for key in shapes)
    keys = [key for key in shapes if not key.startswith("layers.2.") and key != "noise_refiner.1.attention.to_q.weight"]
    assert incomplete_blocks(keys) == [
        f"noise_refiner.1 lacks 1 of {per_refiner_block} tensors",
        "layers.2 is absent",
    ]
    assert incomplete_blocks([key for key in shapes if not key.startswith("layers.29.")]) == []  # 29 layers: complete


@needs_proc_maps
def test_a_failed_write_releases_the_source_while_the_error_is_alive(latent, tmp_path, monkeypatch):
    state, _ = latent
    shards = save_sharded(state, tmp_path)
    monkeypatch.setattr(convert, "write_safetensors", failing_writer())
    with pytest.raises(OSError, match="No space left") as error:
        convert_latent_to_pixel(shards, tmp_path / "pixel.safetensors")
    assert error.value.__traceback__ is not None  # its frames, and their locals, are still alive here
    assert not any(is_mapped(shard) for shard in shards)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(shard) for shard in shards)


def test_cli_convert_prints_the_summary_and_exits_2_on_bad_input(latent, tmp_path, capsys):
    _, shards = latent
    output = tmp_path / "cli.safetensors"
    assert main(["convert", "--latent_ckpt_files", *shards, "--output_path", str(output), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "seed 3" in printed and hash_model_file(str(output)) in printed

    vae = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(vae))
    assert main(["convert", "--latent_ckpt_files", str(vae), "--output_path", str(tmp_path / "x.safetensors")]) == 2
    assert "l2p convert: error: The input is not a latent Z-Image DiT" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_example_script_is_the_same_command(latent, tmp_path, monkeypatch, capsys):
    _, shards = latent
    argv = [str(EXAMPLE), "--latent_ckpt_files", *shards, "--output_path", str(tmp_path / "o.safetensors"), "--dry-run"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert exit_info.value.code == 0
    assert meta_hash(**TINY) in capsys.readouterr().out and not (tmp_path / "o.safetensors").exists()
