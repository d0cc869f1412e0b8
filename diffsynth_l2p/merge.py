"""Merge a training checkpoint into a full L2P checkpoint, as the release's ``merge_weights.py`` does.

Semantics: start from B (the full pixel checkpoint) and **overwrite** every tensor that A (e.g.
``step-N.safetensors``, trainable tensors only) has with the same key and shape; A's tensor is kept
as is, dtype included, like the release.  Same-key tensors with another shape are skipped with a
warning; tensors of A that B lacks are counted, not added, so the output keeps B's layout and hash.
"""

import dataclasses
import os
import warnings
from typing import Dict, Tuple, Union

import torch
from diffsynth.utils.lora import GeneralLoRALoader

from .inspection import checkpoint_kind
from .registry import find_registered
from .safetensors_io import (
    Layout,
    PathOrPaths,
    SafetensorsCheckpoint,
    as_path_list,
    atomic_output,
    check_output_path,
    hash_checkpoint,
    read_headers,
    write_safetensors,
)


@dataclasses.dataclass(frozen=True)
class MergePlan:
    """Which tensors of the output come from A, computed from headers only."""

    overwritten: Tuple[str, ...]
    shape_mismatches: Tuple[Tuple[str, Tuple[int, ...], Tuple[int, ...]], ...]  # (key, shape in A, shape in B)
    absent_from_b: Tuple[str, ...]
    output_layout: Layout


def plan_merge(header_a: Layout, header_b: Layout) -> MergePlan:
    """Overwrite-merge plan of A onto B: B's keys and order, A's tensor wherever key and shape match."""
    overwritten = tuple(key for key in header_a if key in header_b and header_a[key].shape == header_b[key].shape)
    chosen = set(overwritten)
    return MergePlan(
        overwritten=overwritten,
        shape_mismatches=tuple(
            (key, header_a[key].shape, header_b[key].shape) for key in header_a if key in header_b and key not in chosen
        ),
        absent_from_b=tuple(key for key in header_a if key not in header_b),
        output_layout={key: header_a[key] if key in chosen else info for key, info in header_b.items()},
    )


@dataclasses.dataclass(frozen=True)
class MergeReport:
    """Result of ``merge_checkpoints``; ``summary()`` is what ``l2p merge`` prints."""

    output_path: str
    plan: MergePlan
    output_hash: str
    detected: Tuple[Dict, ...]  # DiffSynth registry entries matching the output's hash

    def summary(self) -> str:
        plan = self.plan
        kept = len(plan.output_layout) - len(plan.overwritten)
        detected = ", ".join(f"{e['model_name']} ({e['model_class']})" for e in self.detected) or "unknown"
        return "\n".join(
            [
                f"Merged -> {self.output_path}",
                f"  overwritten from A: {len(plan.overwritten)} tensors; kept from B: {kept}",
                f"  skipped (shape mismatch): {len(plan.shape_mismatches)}; in A but absent from B (not added): "
                f"{len(plan.absent_from_b)}",
                f"  output hash: {self.output_hash}",
                f"  DiffSynth model: {detected}",
            ]
        )


def _require_not_latent(paths: PathOrPaths, header: Layout, role: str) -> None:
    if checkpoint_kind(header) == "latent":
        raise ValueError(
            f"{role} ({', '.join(as_path_list(paths))}) is a latent Z-Image checkpoint, but merging needs L2P pixel "
            "checkpoints; convert it first with `l2p convert`."
        )


def merge_checkpoints(file_a: PathOrPaths, file_b: PathOrPaths, file_out: Union[str, os.PathLike]) -> MergeReport:
    """Write B with A's same-shape tensors overwritten to ``file_out`` (atomically; inputs are never replaced)."""
    inputs = as_path_list(file_a) + as_path_list(file_b)
    output = check_output_path(file_out, inputs)
    header_a, header_b = read_headers(file_a), read_headers(file_b)
    _require_not_latent(file_a, header_a, "file_a")
    _require_not_latent(file_b, header_b, "file_b")
    plan = plan_merge(header_a, header_b)
    if not plan.overwritten:
        raise ValueError("No tensor of file_a matches file_b in key and shape; check that the files belong together.")
    if plan.shape_mismatches:
        details = ", ".join(f"{key} {list(a)} vs {list(b)}" for key, a, b in plan.shape_mismatches)
        count = len(plan.shape_mismatches)
        warnings.warn(f"Skipped {count} tensors of file_a whose shape differs in file_b: {details}", stacklevel=2)
    chosen = set(plan.overwritten)
    with SafetensorsCheckpoint(file_a) as a, SafetensorsCheckpoint(file_b) as b, atomic_output(output, inputs) as temp:
        write_safetensors(temp, plan.output_layout, lambda key: (a if key in chosen else b)[key], desc="Merging")
    output_hash = hash_checkpoint(output)
    return MergeReport(output, plan, output_hash, tuple(find_registered(output_hash)))


def is_lora_checkpoint(header: Layout) -> bool:
    """True when a checkpoint holds LoRA pairs (``*.lora_A.*`` / ``*.lora_B.*`` keys, DiffSynth's training format)."""
    return any(".lora_B." in key or ".lora_up." in key for key in header)


def fuse_lora(lora_file: PathOrPaths, base_file: PathOrPaths, file_out: Union[str, os.PathLike]) -> MergeReport:
    """Fuse a LoRA checkpoint into a full L2P checkpoint: W += B @ A per adapted linear (DiffSynth's
    ``GeneralLoRALoader`` reads the pairs), and the full-rank tensors it carries (``lora:R`` trains the new parts
    at full rank) overwrite B's as in ``merge_checkpoints``. The output keeps B's layout, dtypes and hash."""
    inputs = as_path_list(lora_file) + as_path_list(base_file)
    output = check_output_path(file_out, inputs)
    header_lora, header_base = read_headers(lora_file), read_headers(base_file)
    _require_not_latent(base_file, header_base, "base_file")
    with SafetensorsCheckpoint(lora_file) as lora, SafetensorsCheckpoint(base_file) as base:
        pairs = GeneralLoRALoader().convert_state_dict({key: lora[key] for key in header_lora if ".lora_" in key})
        targets = {key[: -len(".lora_B.weight")] + ".weight" for key in pairs if key.endswith(".lora_B.weight")}
        missing = sorted(key for key in targets if key not in header_base)
        lora_name, base_name = ", ".join(as_path_list(lora_file)), ", ".join(as_path_list(base_file))
        if not targets or missing:
            raise ValueError(f"The LoRA in {lora_name} does not fit {base_name}: no base weight for {missing[:3]}.")
        for key in sorted(targets):
            prefix = key[: -len(".weight")]
            up, down = pairs[f"{prefix}.lora_B.weight"].shape, pairs[f"{prefix}.lora_A.weight"].shape
            if len(up) != 2 or len(down) != 2 or up[1] != down[0] or (up[0], down[1]) != header_base[key].shape:
                raise ValueError(
                    f"The LoRA in {lora_name} does not fit {base_name}: {prefix} has B {list(up)} @ A {list(down)} "
                    f"for a base weight of {list(header_base[key].shape)}; use the base the LoRA was trained on."
                )
        plan = plan_merge({k: v for k, v in header_lora.items() if ".lora_" not in k}, header_base)
        chosen = set(plan.overwritten)

        def fetch(key: str) -> torch.Tensor:
            if key in targets:
                prefix = key[: -len(".weight")]
                delta = pairs[f"{prefix}.lora_B.weight"].float() @ pairs[f"{prefix}.lora_A.weight"].float()
                return (base[key].float() + delta).to(base[key].dtype)
            return (lora if key in chosen else base)[key]

        with atomic_output(output, inputs) as temp_path:
            write_safetensors(temp_path, plan.output_layout, fetch, desc="Fusing LoRA")
    plan = dataclasses.replace(plan, overwritten=plan.overwritten + tuple(sorted(targets)))
    output_hash = hash_checkpoint(output)
    return MergeReport(output, plan, output_hash, tuple(find_registered(output_hash)))
