"""``torch.compile`` of the L2P pipeline: DiffSynth's regional compile of the blocks plus the detailer head."""

import numpy as np
import pytest
import torch
from diffsynth.models.z_image_dit import ZImageTransformerBlock

from diffsynth_l2p.cli import main
from diffsynth_l2p.models import DetailerHead
from diffsynth_l2p.pipelines.loading import load_pipeline

PROMPT = "a red circle left of a blue triangle"
FAST = dict(height=64, width=64, num_inference_steps=3, seed=0, progress_bar_cmd=lambda steps: steps)


def record_compiles(monkeypatch) -> list:
    """Replace ``nn.Module.compile`` by a recorder of (module class, kwargs): no compilation happens."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append((type(self), kwargs)))
    return calls


def test_compile_pipeline_compiles_every_block_and_the_head(monkeypatch):
    pipe = load_pipeline(torch_dtype=torch.float32)
    calls = record_compiles(monkeypatch)
    pipe.compile_pipeline(mode="max-autotune", dynamic=False)
    blocks = sum(isinstance(module, ZImageTransformerBlock) for module in pipe.dit.modules())
    assert [cls for cls, _ in calls].count(ZImageTransformerBlock) == blocks > 0
    assert [cls for cls, _ in calls].count(DetailerHead) == 1
    assert all(kwargs["mode"] == "max-autotune" and kwargs["dynamic"] is False for _, kwargs in calls)


def test_compile_pipeline_leaves_the_head_alone_when_the_dit_is_not_named(monkeypatch):
    pipe = load_pipeline(torch_dtype=torch.float32)
    calls = record_compiles(monkeypatch)
    pipe.compile_pipeline(compile_models=["text_encoder"])
    assert DetailerHead not in [cls for cls, _ in calls]


def test_generate_compile_flag_compiles_before_generating(monkeypatch, tmp_path):
    calls = record_compiles(monkeypatch)
    out = tmp_path / "image.png"
    assert main(["generate", "--prompt", PROMPT, "--steps", "2", "--compile", "--out", str(out)]) == 0
    assert out.is_file()
    assert DetailerHead in [cls for cls, _ in calls]


@pytest.mark.slow
def test_compiled_pipeline_draws_the_eager_image():
    eager = np.asarray(load_pipeline(torch_dtype=torch.float32)(PROMPT, **FAST), dtype=np.int16)
    pipe = load_pipeline(torch_dtype=torch.float32)
    pipe.compile_pipeline()
    compiled = np.asarray(pipe(PROMPT, **FAST), dtype=np.int16)
    # Compiled kernels reorder float sums (velocities differ by ~1e-6, bench/compile.py): a level at most.
    assert np.abs(eager - compiled).max() <= 1
