"""``l2p train --dry-run``: parameter counts and training memory of a preset, computed on the meta device."""

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from .presets import TrainableSet, resolve_trainable

DTYPE_BYTES: Dict[str, int] = {"bf16": 2, "fp32": 4}
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, kept in the parameter's dtype by torch.optim.AdamW
GIB = 1024**3


@dataclass(frozen=True)
class MemoryRow:
    """Bytes for one parameter dtype (weights, gradients and AdamW states all in that dtype)."""

    dtype: str
    weights: int
    gradients: int
    optimizer: int

    @property
    def gpu_total(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def gpu_total_optimizer_offload(self) -> int:
        """GPU bytes when the AdamW states live on the CPU (they then take ``optimizer`` bytes of host RAM)."""
        return self.weights + self.gradients


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


def memory_report(
    model: torch.nn.Module, trainable: TrainableSet, text_encoder: Optional[torch.nn.Module] = None
) -> MemoryReport:
    """Counts and per-dtype bytes of weights, gradients and AdamW states for ``trainable`` on ``model``."""
    sizes = {name: param.numel() for name, param in model.named_parameters()}
    lora = lora_parameter_count(model, trainable)
    num_trainable = sum(sizes[name] for name in trainable.full_rank) + lora
    num_frozen = sum(sizes.values()) + lora - num_trainable
    rows = [
        MemoryRow(dtype, (num_trainable + num_frozen) * size, num_trainable * size, ADAMW_STATES * num_trainable * size)
        for dtype, size in DTYPE_BYTES.items()
    ]
    encoder = sum(p.numel() for p in text_encoder.parameters()) if text_encoder is not None else None
    return MemoryReport(trainable.spec, num_trainable, num_frozen, rows, encoder)


def format_report(report: MemoryReport, config_name: str) -> str:
    """The dry-run table as printed by ``l2p train --dry-run``."""

    def gib(num_bytes: int) -> str:
        return f"{num_bytes / GIB:.2f}"

    share = report.trainable / report.total
    lines = [
        f"L2P DiT config {config_name!r}, preset {report.spec!r} (meta device, no weights loaded)",
        f"  trainable {report.trainable:,} ({report.trainable / 1e9:.2f}B, {share:.1%})  frozen {report.frozen:,}  "
        f"total {report.total:,} ({report.total / 1e9:.2f}B)",
        "  memory in GiB, excluding activations (gradient checkpointing keeps those small):",
        f"  {'dtype':<6}{'weights':>10}{'grads':>10}{'AdamW':>10}{'GPU total':>12}{'GPU w/ optim offload':>22}"
        f"{'CPU optim':>11}",
    ]
    for row in report.rows:
        lines.append(
            f"  {row.dtype:<6}{gib(row.weights):>10}{gib(row.gradients):>10}{gib(row.optimizer):>10}"
            f"{gib(row.gpu_total):>12}{gib(row.gpu_total_optimizer_offload):>22}{gib(row.optimizer):>11}"
        )
    if report.text_encoder is not None:
        lines.append(
            f"  text encoder: {report.text_encoder:,} params, {gib(report.text_encoder * DTYPE_BYTES['bf16'])} GiB in "
            "bf16 on the GPU while encoding; 0 during training with --cache_text_embeddings"
        )
    return "\n".join(lines)


def dry_run(config_name: str = "1k", preset: Optional[str] = None, patterns: Optional[Sequence[str]] = None) -> str:
    """Build the named L2P config (and the Qwen3-4B text encoder) on the meta device and format the memory table."""
    from diffsynth.models.z_image_text_encoder import ZImageTextEncoder

    from ..models.configs import L2P_CONFIGS
    from ..models.z_image_l2p_dit import ZImageL2PDiT

    if config_name not in L2P_CONFIGS:
        raise ValueError(f"Unknown config {config_name!r}; choose one of {', '.join(L2P_CONFIGS)}.")
    with torch.device("meta"):
        model = ZImageL2PDiT(**L2P_CONFIGS[config_name].kwargs)
        text_encoder = ZImageTextEncoder() if config_name != "tiny" else None
    trainable = resolve_trainable((name for name, _ in model.named_parameters()), preset, patterns)
    return format_report(memory_report(model, trainable, text_encoder), config_name)
