"""``l2p train --dry-run``: parameter counts and training memory of a preset, computed on the meta device.

Memory model, in bytes per parameter (activations and communication buckets excluded):

- fp32 (``mixed_precision: no``, CPU runs): every weight 4; per trainable parameter a 4-byte gradient and torch
  AdamW's fp32 ``exp_avg`` + ``exp_avg_sq`` (8).
- bf16 autocast without DeepSpeed (``training/precision.py``): frozen weights 2; trainable weights fp32 (4) with
  a 4-byte gradient and 8 bytes of AdamW states. DDP keeps all of it on every GPU.
- DeepSpeed ZeRO-2 bf16 (the shipped accelerate configs): every weight 2 (bf16); per trainable parameter a bf16
  gradient (2) and fp32 master weight + ``exp_avg`` + ``exp_avg_sq`` (12). ZeRO-2 partitions the gradients and
  the 12 optimizer bytes over the N GPUs (2 + 14/N per trainable parameter on each GPU).
- ZeRO-2 with ``offload_optimizer_device: cpu``: the GPU keeps the bf16 weights and gradients; host RAM holds
  the 12 optimizer bytes plus DeepSpeed's fp32 gradient copy (4) per trainable parameter.
"""

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch

from ..families import DEFAULT_FAMILY, get_family, import_class
from .presets import TrainableSet, resolve_trainable

GIB = 1024**3
BF16_BYTES = 2


@dataclass(frozen=True)
class TrainingSetup:
    """Bytes per parameter of one way to run the optimizer (see the module docstring)."""

    name: str
    frozen_weight: int
    trainable_weight: int
    gradient: int
    optimizer: int
    num_gpus: int = 1  # > 1: ZeRO-2, gradients and optimizer states split over the GPUs
    optimizer_on_cpu: bool = False


SETUPS = (
    TrainingSetup("fp32, torch AdamW", 4, 4, 4, 8),
    TrainingSetup("bf16 autocast, fp32 trainable + AdamW", 2, 4, 4, 8),
    TrainingSetup("DeepSpeed ZeRO-2 bf16, 1 GPU", 2, 2, 2, 12),
    TrainingSetup("DeepSpeed ZeRO-2 bf16, 8 GPUs (train_run.sh)", 2, 2, 2, 12, num_gpus=8),
    TrainingSetup("ZeRO-2 bf16 + CPU optimizer, 1 GPU (low VRAM)", 2, 2, 2, 12 + 4, optimizer_on_cpu=True),
)


@dataclass(frozen=True)
class MemoryRow:
    """Bytes of one setup: on each GPU (weights, gradients, optimizer states) and in host RAM."""

    setup: str
    weights: int
    gradients: int
    optimizer: int
    cpu: int

    @property
    def gpu_total(self) -> int:
        return self.weights + self.gradients + self.optimizer


@dataclass(frozen=True)
class MemoryReport:
    spec: str
    trainable: int
    frozen: int
    rows: Sequence[MemoryRow]
    text_encoder: Optional[int] = None

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def lora_parameter_count(model: torch.nn.Module, trainable: TrainableSet) -> int:
    """Parameters that rank-R adapters add: R * (in_features + out_features) per adapted linear."""
    return sum(
        trainable.lora_rank * (model.get_submodule(name).in_features + model.get_submodule(name).out_features)
        for name in trainable.lora_modules
    )


def memory_row(setup: TrainingSetup, num_trainable: int, num_frozen: int) -> MemoryRow:
    """Per-GPU and host-RAM bytes of ``setup`` for the given parameter counts."""
    weights = num_frozen * setup.frozen_weight + num_trainable * setup.trainable_weight
    partition = -(-num_trainable // setup.num_gpus)  # trainable elements whose grads and states one GPU keeps
    gradients, optimizer = partition * setup.gradient, partition * setup.optimizer
    if setup.optimizer_on_cpu:
        return MemoryRow(setup.name, weights, gradients, 0, optimizer)
    return MemoryRow(setup.name, weights, gradients, optimizer, 0)


def memory_report(
    model: torch.nn.Module, trainable: TrainableSet, text_encoder: Optional[torch.nn.Module] = None
) -> MemoryReport:
    """Counts and, for every setup in ``SETUPS``, the bytes of weights, gradients and optimizer states."""
    sizes = {name: param.numel() for name, param in model.named_parameters()}
    lora = lora_parameter_count(model, trainable)
    num_trainable = sum(sizes[name] for name in trainable.full_rank) + lora
    num_frozen = sum(sizes.values()) + lora - num_trainable
    rows = [memory_row(setup, num_trainable, num_frozen) for setup in SETUPS]
    encoder = sum(p.numel() for p in text_encoder.parameters()) if text_encoder is not None else None
    return MemoryReport(trainable.spec, num_trainable, num_frozen, rows, encoder)


def format_report(report: MemoryReport, config_name: str) -> str:
    """The dry-run table as printed by ``l2p train --dry-run``."""

    def gib(num_bytes: int) -> str:
        return f"{num_bytes / GIB:.2f}"

    share = report.trainable / report.total
    width = max(len(row.setup) for row in report.rows) + 2
    lines = [
        f"L2P DiT config {config_name!r}, preset {report.spec!r} (meta device, no weights loaded)",
        f"  trainable {report.trainable:,} ({report.trainable / 1e9:.2f}B, {share:.1%})  frozen {report.frozen:,}  "
        f"total {report.total:,} ({report.total / 1e9:.2f}B)",
        "  memory per GPU in GiB, excluding activations (gradient checkpointing keeps those small):",
        f"  {'setup':<{width}}{'weights':>9}{'grads':>9}{'optim':>9}{'GPU total':>11}{'CPU RAM':>9}",
    ]
    for row in report.rows:
        lines.append(
            f"  {row.setup:<{width}}{gib(row.weights):>9}{gib(row.gradients):>9}{gib(row.optimizer):>9}"
            f"{gib(row.gpu_total):>11}{gib(row.cpu):>9}"
        )
    lines += [
        "  bytes per trainable param: autocast 4 weight + 4 grad + 8 AdamW; ZeRO-2 2 weight + 2 grad + 12 fp32",
        "  master/m/v, grads and optim split over the GPUs; CPU optimizer: those 12 + a 4-byte fp32 grad in CPU RAM",
    ]
    if report.text_encoder is not None:
        lines.append(
            f"  text encoder: {report.text_encoder:,} params, {gib(report.text_encoder * BF16_BYTES)} GiB in "
            "bf16 on the GPU while encoding; 0 during training with --cache_text_embeddings"
        )
    return "\n".join(lines)


def format_settings(noise: str, num_timesteps: int, max_pixels: int, shift: float, size_multiple: int) -> str:
    """The dry run's line on the noise, timestep schedule and image sizes a run would use."""
    noise_text = "noise seeded per image" if noise == "seed" else "fresh noise"
    return (
        f"  training: timesteps uniform over a {num_timesteps}-step schedule (shift {shift:g}), {noise_text}, "
        f"image sides multiples of {size_multiple}, at most {max_pixels:,} pixels"
    )


def dry_run(
    config_name: Optional[str] = None,
    preset: Optional[str] = None,
    patterns: Optional[Sequence[str]] = None,
    settings: Optional[Mapping[str, Optional[object]]] = None,
    shift: float = 3.0,
    family: str = DEFAULT_FAMILY,
) -> str:
    """Build the family's named L2P config on the meta device and format the memory table.

    The config defaults to the family's first (Z-Image: ``1k``); Z-Image's real sizes also count the Qwen3-4B text
    encoder. ``settings`` (``noise``, ``num_timesteps``, ``max_pixels``; ``None`` = the config's default) fill the
    last line.
    """
    from diffsynth.models.z_image_text_encoder import ZImageTextEncoder

    from ..registry import meta_model

    spec = get_family(family)
    config_name = config_name or next(iter(spec.configs))
    config = spec.config(config_name)
    model = meta_model(import_class(spec.dit_class), **config.kwargs)
    counts_encoder = family == DEFAULT_FAMILY and config_name != "tiny"
    text_encoder = meta_model(ZImageTextEncoder) if counts_encoder else None
    trainable = resolve_trainable((name for name, _ in model.named_parameters()), preset, patterns, spec)
    resolved = config.training_settings(**(settings or {}))
    title = config_name if family == DEFAULT_FAMILY else f"{spec.title} {config_name}"
    return "\n".join(
        [
            format_report(memory_report(model, trainable, text_encoder), title),
            format_settings(**resolved, shift=shift, size_multiple=config.train_size_multiple),
        ]
    )
