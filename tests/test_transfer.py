"""The L2P transfer for Qwen-Image and FLUX.2: real-size conversion dry-runs from header-only stand-ins, presets at
real size, and the tiny chain on the CPU (convert -> train 200 steps -> merge -> generate) for each family."""

import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffsynth.configs import MODEL_CONFIGS
from diffsynth.core import hash_model_file
from PIL import Image
from safetensors.torch import load_file
from tiny_checkpoints import write_header_only
from training_helpers import write_shapes

from diffsynth_l2p.cli import main
from diffsynth_l2p.convert import convert_latent_to_pixel
from diffsynth_l2p.families import get_family, import_class
from diffsynth_l2p.families.flux2 import build_tiny_flux2
from diffsynth_l2p.families.qwen_image import build_tiny_qwen_image
from diffsynth_l2p.merge import merge_checkpoints
from diffsynth_l2p.model_set import DIT_FILE
from diffsynth_l2p.pipelines.loading import load_pipeline
from diffsynth_l2p.registry import find_registered, meta_model, meta_state_shapes
from diffsynth_l2p.tiny import write_tiny_latent
from diffsynth_l2p.training.module import L2PTrainingModule
from diffsynth_l2p.training.presets import resolve_trainable
from diffsynth_l2p.training.trainer import TrainConfig, train

TINY = {"qwen-image": build_tiny_qwen_image, "flux2": build_tiny_flux2}
# (family, size): DiffSynth's registry hash of the stock latent transformer of that size.
REAL_SIZES = {
    ("qwen-image", "20b"): "0319a1cb19835fb510907dd3367c95ff",
    ("flux2", "klein-4b"): "3bde7b817fec8143028b6825a63180df",
    ("flux2", "klein-9b"): "39c6fc48f07bebecedbbaa971ff466c8",
    ("flux2", "dev"): "d38e1d5c5aec3b0a11e79327ac6e3b0f",
}


def numel(shapes) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def write_sharded_standin(directory, shapes, shard_bytes: int = 5 * 2**30) -> list:
    """Header-only bf16 shards of at most ``shard_bytes``, named like the releases' transformer shards.

    The releases shard these transformers; a single 40 GB file could not even be mapped on a 24 GiB machine.
    """
    groups, size = [{}], 0
    for key, shape in shapes.items():
        if size + 2 * math.prod(shape) > shard_bytes and groups[-1]:
            groups.append({})
            size = 0
        groups[-1][key] = shape
        size += 2 * math.prod(shape)
    paths = []
    for index, group in enumerate(groups, start=1):
        path = directory / f"diffusion_pytorch_model-{index:05d}-of-{len(groups):05d}.safetensors"
        _, allocated = write_header_only(path, group)
        if allocated > 100_000_000:
            pytest.skip("this filesystem has no sparse files")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("family_name,size", list(REAL_SIZES))
def test_real_size_dry_run_from_a_header_only_standin(family_name, size, tmp_path, capsys):
    family = get_family(family_name)
    latent = meta_state_shapes(import_class(family.latent_class), **family.latent_kwargs[size])
    standin = write_sharded_standin(tmp_path, latent)
    # The stand-in is what DiffSynth recognises as the stock transformer of that size.
    assert hash_model_file(standin) == REAL_SIZES[family_name, size]
    stock = [entry for entry in MODEL_CONFIGS if entry["model_hash"] == REAL_SIZES[family_name, size]]
    assert {entry["model_name"] for entry in stock} == set(family.latent_model_names)

    out = tmp_path / "pixel.safetensors"
    argv = ["convert", "--family", family_name, "--latent_ckpt_files", *standin, "--output_path", str(out)]
    assert main([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    pixel = meta_state_shapes(import_class(family.dit_class), **family.configs[size].kwargs)
    # Initialised: the head and the pixel embedder's weight (Qwen-Image and FLUX.2 keep the embedder's key with a new
    # shape; a same-shaped bias is copied). Dropped: the output layers.
    new = {key: shape for key, shape in pixel.items() if latent.get(key) != shape}
    assert {key.split(".")[0] for key in new} == set(family.new_parts)
    dropped = {key: shape for key, shape in latent.items() if key not in pixel}
    assert {key.split(".")[0] for key in dropped} == {"norm_out", "proj_out"}
    expected = (
        f"  parameters: {numel(pixel):,} in the output ({numel(pixel) - numel(new):,} copied, {numel(new):,} "
        f"initialised), {numel(dropped):,} dropped"
    )
    assert expected in printed.splitlines()
    # The predicted hash is the registered one of the pixel layout, so the converted file loads by name.
    predicted = re.search(r"predicted hash: (\w+)", printed).group(1)
    assert [entry["model_name"] for entry in find_registered(predicted)] == [family.dit_model_name]
    assert f"L2P config {size}" in printed and not out.exists()
    replaced = {key: shape for key, shape in latent.items() if key in pixel and pixel[key] != shape}
    assert {key.split(".")[0] for key in replaced} <= set(family.new_parts)
    assert numel(pixel) - numel(new) == numel(latent) - numel(dropped) - numel(replaced)


@pytest.mark.parametrize(
    "family_name,size,blocks,ends,share",
    # The release preset trains the first and last sixth of the main blocks and everything outside them, as Z-Image's
    # 5 + 5 of 30 (2.55B of 6.17B, 41%).
    [
        ("qwen-image", "20b", 60, 10, (0.32, 0.34)),
        ("flux2", "klein-4b", 25, 4, (0.42, 0.44)),
        ("flux2", "klein-9b", 32, 5, (0.39, 0.41)),
        ("flux2", "dev", 56, 9, (0.41, 0.43)),
    ],
)
def test_release_preset_freezes_the_middle_blocks_at_real_size(family_name, size, blocks, ends, share):
    family = get_family(family_name)
    model = meta_model(import_class(family.dit_class), **family.configs[size].kwargs)
    sizes = {name: param.numel() for name, param in model.named_parameters()}
    trained = resolve_trainable(sizes, "release", family=family).full_rank
    positions = sorted({family.main_block(name) for name in sizes if family.main_block(name)})
    assert len(positions) == blocks
    assert family.release_block_count(blocks) == ends
    frozen_blocks = set(positions[ends : blocks - ends])
    assert not any(family.main_block(name) in frozen_blocks for name in trained)
    left_out = {name for name in sizes if name not in trained and family.main_block(name) not in frozen_blocks}
    # Only parameters the forward never uses stay untrained outside the middle: the text stream of Qwen-Image's last
    # block (its outputs feed nothing; tests/test_qwen_image_l2p.py shows they get no gradient).
    if family_name == "qwen-image":
        last = "transformer_blocks.59"
        assert left_out >= {f"{last}.attn.to_add_out.weight", f"{last}.txt_mlp.net.2.weight"}
        assert all(re.match(r"transformer_blocks\.59\.(attn\.(add_q_proj|norm_added_q|to_add_out)|txt_mlp)\.", n)
                   for n in left_out)
    else:
        assert left_out == set()
    assert {name.split(".")[0] for name in trained} >= set(family.new_parts)
    assert share[0] < sum(sizes[name] for name in trained) / sum(sizes.values()) < share[1]


def test_a_qwen_image_latent_given_without_family_names_the_family(tmp_path):
    family = get_family("qwen-image")
    latent = tmp_path / "latent.safetensors"
    write_tiny_latent(get_family("qwen-image"), latent)
    with pytest.raises(ValueError, match="latent Qwen-Image DiT.*--family qwen-image"):
        convert_latent_to_pixel([latent], tmp_path / "out.safetensors", dry_run=True)
    with pytest.raises(ValueError, match="not a latent FLUX.2 DiT"):
        convert_latent_to_pixel([latent], tmp_path / "out.safetensors", dry_run=True, family="flux2")
    report = convert_latent_to_pixel([latent], tmp_path / "out.safetensors", family=family.name)
    with pytest.raises(ValueError, match="already a pixel L2P checkpoint"):
        convert_latent_to_pixel([report.output_path], tmp_path / "again.safetensors", family=family.name)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def held_out_loss(model_dir, held_out, dtype=torch.float32) -> float:
    """Mean flow-matching loss of the model on the held-out images, same timesteps and noise for every model."""
    from diffsynth_l2p.training.dataset import L2PImageDataset, collate

    pipe = load_pipeline(model_dir, torch_dtype=dtype)
    dit_names = list(load_file(os.path.join(model_dir, DIT_FILE)))
    module = L2PTrainingModule(pipe, resolve_trainable(dit_names, "full", family=pipe.family_spec()), noise="fresh")
    batch = collate(list(L2PImageDataset(str(held_out), 64 * 64, False)))
    with torch.no_grad():
        return module(batch, torch.Generator().manual_seed(0)).item()


@pytest.fixture(scope="module", params=[pytest.param(name, marks=pytest.mark.slow) for name in TINY])
def chain(request, tmp_path_factory) -> dict:
    """Convert a tiny latent DiT of the family, train it 200 steps with the release preset, merge the result."""
    family_name = request.param
    build = TINY[family_name]
    root = tmp_path_factory.mktemp(family_name)
    write_tiny_latent(get_family(family_name), root / "latent.safetensors", seed=0)
    # The text encoder and tokenizer of the family's tiny set; the DiT is the converted one.
    model = root / "init"
    build(model, seed=0)
    os.remove(model / DIT_FILE)
    report = convert_latent_to_pixel([root / "latent.safetensors"], model / DIT_FILE, family=family_name)
    write_shapes(root / "train", 24, seed=1)
    write_shapes(root / "held_out", 8, seed=2)
    summary = train(
        TrainConfig(
            dataset=str(root / "train"), output_path=str(root / "run"), model=str(model), max_steps=200,
            save_steps=200, batch_size=4, learning_rate=1e-3, use_gradient_checkpointing=False,
        )
    )
    merged = root / "merged"
    shutil.copytree(model, merged)
    merge_report = merge_checkpoints(summary["checkpoint"], model / DIT_FILE, merged / DIT_FILE)
    return dict(family=family_name, root=root, init=model, merged=merged, convert=report, merge=merge_report,
                summary=summary)


def test_the_converted_tiny_dit_is_the_registered_tiny_layout(chain):
    family = get_family(chain["family"])
    assert chain["convert"].plan.config_name == "tiny"
    assert [e["model_name"] for e in find_registered(chain["convert"].output_hash)] == [family.dit_model_name]
    # The merge overwrote the trained tensors and kept the init's layout (and so its registry entry).
    assert hash_model_file(str(chain["merged"] / DIT_FILE)) == chain["convert"].output_hash
    trained = load_file(chain["summary"]["checkpoint"])
    assert 0 < len(chain["merge"].plan.overwritten) == len(trained)


def test_training_the_release_preset_lowers_the_held_out_loss(chain):
    before = held_out_loss(chain["init"], chain["root"] / "held_out")
    after = held_out_loss(chain["merged"], chain["root"] / "held_out")
    assert after < 0.8 * before, (before, after)


def test_the_merged_model_generates_single_batched_odd_sized_and_bf16_images(chain):
    pipe = load_pipeline(chain["merged"])
    assert type(pipe).__name__ == get_family(chain["family"]).pipeline_class.rsplit(".", 1)[-1]
    quiet = dict(num_inference_steps=6, progress_bar_cmd=lambda steps: steps)
    single = [pipe("a red circle", seed=5 + i, **quiet) for i in range(2)]
    batch = pipe("a red circle", seed=5, num_images=2, **quiet)
    for alone, batched in zip(single, batch, strict=True):
        assert np.abs(pixels(alone) - pixels(batched)).max() <= 2
    odd = pipe("a blue square", height=48, width=80, **quiet)  # a 3 x 5 token grid
    assert isinstance(odd, Image.Image) and odd.size == (80, 48)
    bf16 = load_pipeline(chain["merged"], torch_dtype=torch.bfloat16)("a red circle", seed=5, **quiet)
    assert bf16.size == (64, 64) and np.abs(pixels(bf16) - pixels(single[0])).mean() < 12


@pytest.mark.parametrize(
    "module,name,ours",
    [("qwen_image_L2P", "QwenImagePipeline", "QwenImageL2PPipeline"), ("flux2_image_L2P", "Flux2ImagePipeline",
     "Flux2L2PPipeline")],
)
def test_pipeline_import_in_a_fresh_interpreter(module, name, ours):
    code = f"from diffsynth.pipelines.{module} import {name}, ModelConfig; print({name}.__name__, ModelConfig.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [ours, "ModelConfig"]


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory) -> dict:
    """A random tiny model set of each new family (seed 0)."""
    return {name: build(tmp_path_factory.mktemp(name), seed=0) for name, build in TINY.items()}


@pytest.mark.parametrize("family_name", list(TINY))
def test_l2p_generate_picks_the_familys_pipeline(family_name, tiny_sets, tmp_path, capsys):
    from diffsynth_l2p.generate import read_png_parameters

    model = os.path.dirname(tiny_sets[family_name]["dit"])
    out = tmp_path / "image.png"
    argv = ["generate", "--prompt", "a red circle", "--model", model, "--steps", "2", "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    with Image.open(out) as image:
        assert image.size == (64, 64)  # the tiny config's native size
    assert read_png_parameters(out)["num_inference_steps"] == 2


@pytest.mark.parametrize("family_name", list(TINY))
def test_the_demo_loads_the_familys_pipeline_and_names_it(family_name, tiny_sets):
    pytest.importorskip("gradio_client")
    from diffsynth_l2p.demo.request import validate_request
    from diffsynth_l2p.demo.server import DemoServer, build_parser
    from tests.demo_helpers import free_port, loopback_only, model_args

    family = get_family(family_name)
    args = [*model_args(tiny_sets[family_name]), "--devices", "cpu", "--port", str(free_port())]
    with loopback_only():
        server = DemoServer(build_parser().parse_args(args))
        try:
            assert server.settings.family_title == family.title
            with server.pool.take() as worker:
                assert type(worker.pipe).__name__ == family.pipeline_class.rsplit(".", 1)[-1]
                request = validate_request(server.settings.limits, "a red circle", "", 1, 2.0, 64, 64, 0, 1)
                (image,) = worker.generate(request)
            with Image.open(image.path) as png:
                assert png.size == (64, 64)
        finally:
            server.close()


def test_inspect_names_a_latent_qwen_image_file_and_the_convert_command(tmp_path, capsys):
    latent = tmp_path / "latent.safetensors"
    write_tiny_latent(get_family("qwen-image"), latent)
    assert main(["inspect", str(latent)]) == 0
    printed = capsys.readouterr().out
    assert "layout: matches latent Qwen-Image tiny exactly" in printed
    assert "`l2p convert --family qwen-image`" in printed


def test_train_dry_run_counts_a_familys_release_preset(capsys):
    assert main(["train", "--dry-run", "--family", "flux2", "--config", "klein-9b"]) == 0
    printed = capsys.readouterr().out
    assert "L2P DiT config 'FLUX.2 klein-9b', preset 'release'" in printed
    assert "trainable 3,604,738,563 (3.60B, 39.8%)" in printed and "total 9,057,340,163" in printed
    assert main(["train", "--dry-run", "--family", "qwen-image", "--config", "1k"]) == 2
    assert "Unknown Qwen-Image config '1k'; choose one of 20b, tiny." in capsys.readouterr().err


def test_train_refuses_a_family_the_model_file_is_not(tiny_sets, tmp_path, capsys):
    write_shapes(tmp_path / "data", 2, seed=1)
    model = os.path.dirname(tiny_sets["qwen-image"]["dit"])
    argv = ["train", "--dataset", str(tmp_path / "data"), "--model", model, "--family", "flux2", "--max_steps", "1",
            "--output_path", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "family 'flux2' was given, but" in capsys.readouterr().err


@pytest.mark.parametrize("family_name", ["z-image", "qwen-image", "flux2"])
def test_tiny_init_writes_a_set_and_a_latent_dit_that_converts_to_its_layout(family_name, tmp_path, capsys):
    model, latent = tmp_path / "set", tmp_path / "latent.safetensors"
    argv = ["tiny-init", str(model), "--family", family_name, "--latent", str(latent), "--seed", "3"]
    assert main(argv) == 0
    assert f"latent dit: {latent}" in capsys.readouterr().out
    family = get_family(family_name)
    out = tmp_path / "converted.safetensors"
    report = convert_latent_to_pixel([latent], out, family=family_name)
    assert report.output_hash == hash_model_file(str(model / DIT_FILE))
    assert [e["model_name"] for e in find_registered(report.output_hash)] == [family.dit_model_name]
