"""Merging training checkpoints into the pixel init: a subset checkpoint (overwrite) and a LoRA checkpoint (fuse)."""

import os
import runpy
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffsynth_l2p.merge import merge_checkpoints
from diffsynth_l2p.pipelines.loading import load_pipeline
from diffsynth_l2p.registry import L2P_DIT_MODEL_NAME
from tests.training_helpers import run, write_shapes


def run_merge_weights(monkeypatch, *args: str) -> int:
    """Run the top-level ``merge_weights.py`` (the release's entry point) as ``python merge_weights.py ARGS``."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "merge_weights.py")
    monkeypatch.setattr(sys, "argv", [path, *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(path, run_name="__main__")
    return exit_info.value.code


def generate(files: dict) -> Image.Image:
    pipe = load_pipeline(files)
    return pipe("a red circle", height=64, width=64, num_inference_steps=2, cfg_scale=2.0, progress_bar_cmd=iter)


def dit_output(pipe) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 64, 64, generator=generator)
    caption = torch.randn(7, pipe.dit.cap_embedder[1].in_features, generator=generator)
    with torch.no_grad():
        return pipe.dit(x, torch.tensor([600.0]), [caption])


def test_merge_subset_checkpoint_loads_and_runs(tmp_path, tiny_model_set):
    write_shapes(tmp_path / "data", 4, seed=3)
    summary = run(tmp_path / "run", str(tmp_path / "data"), tiny_model_set, preset="shallow:1")
    merged = str(tmp_path / "merged.safetensors")
    report = merge_checkpoints(summary["checkpoint"], tiny_model_set["dit"], merged)

    assert [entry["model_name"] for entry in report.detected] == [L2P_DIT_MODEL_NAME]
    trained, weights = load_file(summary["checkpoint"]), load_file(merged)
    assert len(report.plan.overwritten) == len(trained)
    assert all(torch.equal(weights[key], value) for key, value in trained.items())
    image = generate(dict(tiny_model_set, dit=merged))
    assert isinstance(image, Image.Image) and image.size == (64, 64)


def test_fuse_lora_checkpoint_matches_diffsynth_load_lora(tmp_path, tiny_model_set, monkeypatch):
    write_shapes(tmp_path / "data", 4, seed=4)
    summary = run(tmp_path / "run", str(tmp_path / "data"), tiny_model_set, preset="lora:4", learning_rate=1e-2)
    lora_file, fused = summary["checkpoint"], str(tmp_path / "fused.safetensors")
    args = ("--file_a", lora_file, "--file_b", tiny_model_set["dit"], "--file_out", fused)
    assert run_merge_weights(monkeypatch, *args) == 0

    # Reference: DiffSynth reads the LoRA file itself (pipe.load_lora fuses it) plus the full-rank new parts.
    reference = load_pipeline(tiny_model_set)
    reference.load_lora(reference.dit, lora_file)
    full_rank = {k: v for k, v in load_file(lora_file).items() if ".lora_" not in k}
    assert full_rank and all(k.startswith(("all_x_embedder.", "local_decoder.")) for k in full_rank)
    reference.dit.load_state_dict(full_rank, strict=False)
    pipe = load_pipeline(dict(tiny_model_set, dit=fused))
    assert torch.allclose(dit_output(pipe), dit_output(reference), atol=1e-5)
    assert not torch.allclose(dit_output(pipe), dit_output(load_pipeline(tiny_model_set)), atol=1e-3)
    image = pipe("a red circle", height=64, width=64, num_inference_steps=2, progress_bar_cmd=iter)
    assert image.size == (64, 64)
