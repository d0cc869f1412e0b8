"""Training precision: the dtype plan per accelerate setting; bf16 mixed precision run for real with CPU autocast."""

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from diffsynth_l2p.training.precision import PrecisionPlan, cast_trainable, precision_plan
from diffsynth_l2p.training.presets import resolve_trainable
from tests.test_training import final_weights
from tests.training_helpers import run, write_shapes

FP32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize(
    "mixed_precision, deepspeed, expected",
    [
        ("no", False, PrecisionPlan(FP32, FP32, autocast=False)),  # CPU runs, plain `l2p train`
        ("no", True, PrecisionPlan(FP32, FP32, autocast=False)),
        ("bf16", False, PrecisionPlan(BF16, FP32, autocast=True)),  # accelerate bf16 without DeepSpeed
        ("bf16", True, PrecisionPlan(BF16, BF16, autocast=False)),  # DeepSpeed keeps the fp32 master weights
    ],
)
def test_precision_plan(mixed_precision, deepspeed, expected):
    assert precision_plan(mixed_precision, deepspeed) == expected


@pytest.mark.parametrize("mixed_precision", ["fp16", "fp8"])
def test_unsupported_mixed_precision_names_the_fix(mixed_precision):
    with pytest.raises(ValueError, match="set `mixed_precision: bf16`"):
        precision_plan(mixed_precision, deepspeed=False)


@pytest.mark.parametrize("preset", ["shallow:1", "lora:4"])
def test_bf16_autocast_step_matches_fp32_and_keeps_fp32_gradients(tiny_model_set, preset):
    """The no-DeepSpeed GPU plan on the CPU: bf16 frozen weights, fp32 trainable weights, bf16 autocast forward."""
    from diffsynth_l2p.pipelines.loading import load_pipeline
    from diffsynth_l2p.training.module import L2PTrainingModule

    trainable = resolve_trainable(load_file(tiny_model_set["dit"]), preset)
    batch = {"image": torch.rand(2, 3, 64, 64) * 2 - 1, "prompt": ["a red circle", "two blue squares"], "seed": [3, 4]}
    reference = L2PTrainingModule(load_pipeline(tiny_model_set), trainable)(batch, torch.Generator().manual_seed(0))

    plan = precision_plan("bf16", deepspeed=False)
    module = L2PTrainingModule(load_pipeline(tiny_model_set, torch_dtype=plan.load_dtype), trainable)
    cast_trainable(module, plan.trainable_dtype)
    with torch.autocast("cpu", dtype=BF16):
        loss = module(batch, torch.Generator().manual_seed(0))
    loss.backward()

    assert loss.dtype == FP32 and loss.item() == pytest.approx(reference.item(), rel=0.05)
    params = dict(module.pipe.dit.named_parameters())
    assert {name for name, p in params.items() if p.requires_grad} == trainable.parameter_names()
    assert {p.dtype for p in params.values() if p.requires_grad} == {FP32}
    assert {p.grad.dtype for p in params.values() if p.requires_grad} == {FP32}
    assert {p.dtype for p in params.values() if not p.requires_grad} == {BF16}
    assert all(p.grad is None for p in params.values() if not p.requires_grad)


@pytest.fixture
def bf16_accelerate(monkeypatch):
    """`mixed_precision: bf16` as an accelerate config sets it; the process-wide accelerate state is reset around."""
    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_mixed_precision_run_updates_fp32_weights(tmp_path, tiny_model_set, bf16_accelerate):
    write_shapes(tmp_path / "data", 4, seed=6)
    summary = run(tmp_path / "out", str(tmp_path / "data"), tiny_model_set, preset="shallow:1", learning_rate=5e-5)

    recorded = json.loads((tmp_path / "out" / "training_args.json").read_text())["precision"]
    assert recorded == {"load_dtype": "torch.bfloat16", "trainable_dtype": "torch.float32", "autocast": True}
    base = load_file(tiny_model_set["dit"])
    checkpoint, after = load_file(summary["checkpoint"]), final_weights(tmp_path / "out", 2)
    trained = resolve_trainable(base, "shallow:1").parameter_names()
    assert set(checkpoint) == trained and {t.dtype for t in checkpoint.values()} == {FP32}
    frozen = set(base) - trained
    assert all(after[key].dtype == BF16 and torch.equal(after[key], base[key].to(BF16)) for key in frozen)
    # Training starts from the bf16-loaded weights cast to fp32. Two AdamW steps at lr 5e-5 move each weight by
    # ~1e-4: the fp32 weights keep that, while bf16 weights (8 mantissa bits) would round most of it away, as a
    # cast of the result back to bf16 shows.
    start = {k: base[k].to(BF16) for k in trained}
    moved = sum(int((checkpoint[k] != start[k].to(FP32)).sum()) for k in trained)
    kept_in_bf16 = sum(int((checkpoint[k].to(BF16) != start[k]).sum()) for k in trained)
    numel = sum(checkpoint[k].numel() for k in trained)
    assert moved > 0.9 * numel and kept_in_bf16 < 0.5 * moved, (moved, kept_in_bf16, numel)
