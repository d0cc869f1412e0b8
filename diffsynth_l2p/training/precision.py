"""Training precision: which dtype the pipeline loads in, which dtype the trainable weights live in, autocast or not.

- ``mixed_precision="no"`` (CPU runs and any run without an accelerate config): everything fp32.
- ``"bf16"`` without DeepSpeed: bf16 *mixed* precision. Frozen weights stay bf16 (half the memory); trainable
  weights, their gradients and torch AdamW's states are fp32, and the forward runs under bf16 autocast, so a
  5e-5 update is not rounded away as it would be on bf16 weights.
- ``"bf16"`` with DeepSpeed: the model is bf16 and DeepSpeed keeps the fp32 master weights and AdamW states itself.
"""

from dataclasses import dataclass

import torch

MIXED_PRECISIONS = ("no", "bf16")


@dataclass(frozen=True)
class PrecisionPlan:
    """Dtypes of one training run."""

    load_dtype: torch.dtype  # the pipeline, so every frozen parameter
    trainable_dtype: torch.dtype  # the parameters the optimizer updates
    autocast: bool  # run the forward under ``accelerator.autocast()``


def precision_plan(mixed_precision: str, deepspeed: bool) -> PrecisionPlan:
    """The dtypes for accelerate's ``mixed_precision`` setting, with or without DeepSpeed."""
    if mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(
            f"Mixed precision {mixed_precision!r} is not supported for L2P training; "
            "set `mixed_precision: bf16` (or `no`) in the accelerate config."
        )
    if mixed_precision == "no":
        return PrecisionPlan(torch.float32, torch.float32, autocast=False)
    if deepspeed:
        return PrecisionPlan(torch.bfloat16, torch.bfloat16, autocast=False)
    return PrecisionPlan(torch.bfloat16, torch.float32, autocast=True)


def cast_trainable(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters with ``requires_grad`` to ``dtype`` in place (before the optimizer is built)."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
