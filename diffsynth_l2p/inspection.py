"""What is in a checkpoint, from its header alone: hash, registered model, parameters, dtypes, layout diff."""

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from diffsynth.models.z_image_dit import ZImageDiT

from .families import all_families
from .models.configs import L2P_CONFIGS
from .registry import Shapes, family_layout, find_registered, meta_state_shapes
from .safetensors_io import PathOrPaths, as_path_list, hash_checkpoint, read_headers

LATENT_LAYOUT = "latent Z-Image DiT"
# The modules an L2P checkpoint has in place of the latent DiT's (and whose names tell its layout apart).
PIXEL_MODULE_PREFIXES = ("all_x_embedder.", "local_decoder.")
_SHOWN_KEYS = 8


@functools.cache
def z_image_layouts() -> Dict[str, Shapes]:
    """Every named Z-Image L2P config and the stock latent Z-Image DiT, built on the meta device."""
    layouts = {f"L2P {name}": meta_state_shapes(**config.kwargs) for name, config in L2P_CONFIGS.items()}
    layouts[LATENT_LAYOUT] = meta_state_shapes(ZImageDiT)
    return layouts


def expected_layouts() -> Dict[str, Shapes]:
    """Layouts we know: :func:`z_image_layouts` and each other family's pixel and latent sizes
    (``L2P Qwen-Image 20b``, ``latent Qwen-Image 20b``, ...)."""
    layouts = dict(z_image_layouts())
    for family in all_families()[1:]:
        for name in family.configs:
            layouts[f"L2P {family.title} {name}"] = family_layout(family.name, name)
            layouts[f"latent {family.title} {name}"] = family_layout(family.name, name, latent=True)
    return layouts



def checkpoint_kind(layout: Mapping[str, Any]) -> Optional[str]:
    """``"pixel"`` for L2P checkpoints (full or partial), ``"latent"`` for stock Z-Image DiTs, else None."""
    if any(key.startswith("local_decoder.") for key in layout):
        return "pixel"
    if "x_pad_token" in layout and any(key.startswith("all_final_layer.") for key in layout):
        return "latent"
    return None


def l2p_layout_name(keys: Iterable[str]) -> Optional[str]:
    """The named L2P config whose patch embedder and head tensor names ``keys`` has, whatever the widths."""
    pixel = {key for key in keys if key.startswith(PIXEL_MODULE_PREFIXES)}
    for name in L2P_CONFIGS:
        expected = z_image_layouts()[f"L2P {name}"]
        if pixel == {key for key in expected if key.startswith(PIXEL_MODULE_PREFIXES)}:
            return name
    return None


def infer_dit_dims(shapes: Mapping[str, Sequence[int]]) -> Optional[Dict[str, int]]:
    """Z-Image DiT sizes readable from tensor shapes (dim, layers, refiners, heads, caption width), if present."""
    needed = ("x_pad_token", "cap_embedder.1.weight", "layers.0.attention.norm_q.weight")
    if not all(key in shapes for key in needed):
        return None

    def count(prefix: str) -> int:
        pattern = re.compile(rf"{prefix}\.(\d+)\.")
        return len({match.group(1) for key in shapes if (match := pattern.match(key))})

    dim = shapes["x_pad_token"][-1]
    return {
        "dim": dim,
        "n_layers": count("layers"),
        "n_refiner_layers": count("noise_refiner"),
        "n_heads": dim // shapes["layers.0.attention.norm_q.weight"][0],
        "cap_feat_dim": shapes["cap_embedder.1.weight"][-1],
    }


@dataclass(frozen=True)
class LayoutComparison:
    """Key-by-key difference between a checkpoint and one expected layout."""

    name: str
    matched: int
    missing: Tuple[str, ...]
    unexpected: Tuple[str, ...]
    shape_mismatches: Tuple[Tuple[str, Tuple[int, ...], Tuple[int, ...]], ...]  # (key, in file, expected)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)


def compare_layout(name: str, shapes: Shapes, expected: Shapes) -> LayoutComparison:
    common = [key for key in expected if key in shapes]
    return LayoutComparison(
        name=name,
        matched=sum(shapes[key] == expected[key] for key in common),
        missing=tuple(key for key in expected if key not in shapes),
        unexpected=tuple(key for key in shapes if key not in expected),
        shape_mismatches=tuple((key, shapes[key], expected[key]) for key in common if shapes[key] != expected[key]),
    )


def closest_layout(shapes: Shapes) -> Optional[LayoutComparison]:
    """The expected layout sharing the most (key, shape) pairs, if at least half of the file's keys match it."""
    best = max(
        (compare_layout(name, shapes, expected) for name, expected in expected_layouts().items()),
        key=lambda c: c.matched / (c.matched + len(c.missing) + len(c.unexpected) + len(c.shape_mismatches)),
    )
    return best if shapes and best.matched >= len(shapes) / 2 else None


@dataclass(frozen=True)
class InspectionReport:
    """Everything ``l2p inspect`` prints about one checkpoint (a file or a list of shards)."""

    paths: Tuple[str, ...]
    model_hash: str
    registered: Tuple[Dict[str, Any], ...]
    num_tensors: int
    num_params: int
    params_by_module: Dict[str, int]
    params_by_dtype: Dict[str, int]
    kind: Optional[str]
    dims: Optional[Dict[str, int]]
    layout: Optional[LayoutComparison]
    hints: Tuple[str, ...] = field(default=())

    def summary(self) -> str:
        lines = [f"checkpoint: {', '.join(self.paths)}", f"hash: {self.model_hash}"]
        if self.registered:
            lines += [
                f"registered: {entry['model_name']} ({entry['model_class']}, kwargs {entry.get('extra_kwargs', {})})"
                for entry in self.registered
            ]
        else:
            lines.append("registered: unknown (no DiffSynth registry entry has this hash)")
        lines.append(f"tensors: {self.num_tensors:,}, parameters: {self.num_params:,}")
        lines.append("dtypes: " + ", ".join(f"{dtype} {count:,}" for dtype, count in self.params_by_dtype.items()))
        if self.dims:
            lines.append("Z-Image DiT sizes: " + ", ".join(f"{name}={value}" for name, value in self.dims.items()))
        lines.append("parameters by module:")
        width = max(map(len, self.params_by_module), default=0)
        lines += [f"  {module:<{width}}  {count:>15,}" for module, count in self.params_by_module.items()]
        if self.layout is None:
            lines.append("layout: not close to any known layout")
        elif self.layout.exact:
            lines.append(f"layout: matches {self.layout.name} exactly")
        else:
            comparison = self.layout
            lines.append(
                f"layout: closest is {comparison.name}: {len(comparison.missing)} missing, "
                f"{len(comparison.unexpected)} unexpected, {len(comparison.shape_mismatches)} shape-mismatched keys"
            )
            for label, keys in (("missing", comparison.missing), ("unexpected", comparison.unexpected)):
                if keys:
                    more = f" ... (+{len(keys) - _SHOWN_KEYS})" if len(keys) > _SHOWN_KEYS else ""
                    lines.append(f"  {label}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
            lines += [
                f"  shape mismatch: {key} is {list(got)}, expected {list(want)}"
                for key, got, want in comparison.shape_mismatches[:_SHOWN_KEYS]
            ]
        lines += [f"hint: {hint}" for hint in self.hints]
        return "\n".join(lines)


def _hints(kind: Optional[str], layout: Optional[LayoutComparison], registered: bool) -> Tuple[str, ...]:
    if kind == "latent":
        return ("this is a latent Z-Image DiT; convert it to an L2P pixel init with `l2p convert`.",)
    for family in all_families()[1:]:
        if layout is not None and layout.exact and layout.name.startswith(f"latent {family.title} "):
            return (f"this is a latent {family.title} DiT; convert it to an L2P pixel init with "
                    f"`{family.convert_command}`.",)
    if kind != "pixel":
        return ()
    if layout is not None and layout.missing and not (layout.unexpected or layout.shape_mismatches):
        return ("a partial L2P checkpoint (e.g. a training step); merge it onto a full one with `l2p merge`.",)
    if not registered:
        return (
            "not registered in DiffSynth: call `diffsynth_l2p.registry.register_l2p_dit(**kwargs)` "
            "with its ZImageL2PDiT config before loading it.",
        )
    return ()


def inspect_checkpoint(paths: PathOrPaths) -> InspectionReport:
    """Inspect one checkpoint (a file, or the shards of one checkpoint) without reading any weights."""
    path_list = as_path_list(paths)
    header = read_headers(path_list)
    model_hash = hash_checkpoint(path_list)
    registered = tuple(find_registered(model_hash))
    by_module: Counter = Counter()
    by_dtype: Counter = Counter()
    for key, info in header.items():
        by_module[key.split(".", 1)[0]] += info.numel
        by_dtype[info.dtype] += info.numel
    kind = checkpoint_kind(header)
    shapes = {key: info.shape for key, info in header.items()}
    layout = closest_layout(shapes)
    return InspectionReport(
        paths=tuple(path_list),
        model_hash=model_hash,
        registered=registered,
        num_tensors=len(header),
        num_params=sum(by_module.values()),
        params_by_module=dict(by_module.most_common()),
        params_by_dtype=dict(by_dtype.most_common()),
        kind=kind,
        dims=infer_dit_dims(shapes),
        layout=layout,
        hints=_hints(kind, layout, bool(registered)),
    )
