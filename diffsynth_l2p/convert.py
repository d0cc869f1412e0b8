"""Latent DiT checkpoint -> L2P pixel-space initialisation (see ``docs/architecture.md`` and ``docs/transfer.md``).

Z-Image is the default family; Qwen-Image and FLUX.2 checkpoints convert the same way with ``family=`` (the source is
recognised by comparing its keys and shapes with the family's named sizes, built on the meta device).

Every source tensor whose key and shape the pixel model shares is copied bit for bit (source dtype
kept); the latent patch embedder and ``all_final_layer`` are dropped; the pixel patch embedder and
the ``local_decoder`` head get a fresh, seeded default initialisation, stored in float32 as the release
stores them (a bf16 source would otherwise round the fresh weights before training starts).  Only those new modules are
ever materialised, so converting the 6B model needs memory for one tensor at a time, not the model.

The same path builds the higher-resolution UHR inits from a lower-resolution pixel checkpoint ("inheritance", as the
UHR release did: 4K -> 8K or 10K, 8K -> 10K): tensors with the same key and shape are copied, tensors whose key
stays but whose shape changes are re-initialised, and the head stages and patch embedder the target lacks are dropped.
"""

import functools
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch

from .families import DEFAULT_FAMILY, Family, all_families, get_family, import_class
from .inspection import checkpoint_kind, infer_dit_dims, l2p_layout_name
from .models.configs import L2P_CONFIGS
from .registry import family_layout, find_registered, meta_model, meta_state_shapes
from .safetensors_io import (
    DTYPE_NAMES,
    TORCH_DTYPES,
    Layout,
    PathOrPaths,
    SafetensorsCheckpoint,
    TensorInfo,
    as_path_list,
    atomic_output,
    check_output_path,
    hash_checkpoint,
    layout_hash,
    read_headers,
    same_bits,
    write_safetensors,
)

# Higher-resolution layouts a pixel checkpoint of each layout can be converted into (``--from-pixel``).
INHERITANCE = {"4k": ("8k", "10k"), "8k": ("10k",)}
_INHERITANCE_PAIRS = ", ".join(f"{source} -> {target}" for source, targets in INHERITANCE.items() for target in targets)
# Repeated transformer blocks of a Z-Image DiT: every block of one module has the same tensors.
_BLOCK_KEY = re.compile(r"^(?P<module>layers|noise_refiner|context_refiner)\.(?P<index>\d+)\.(?P<tensor>.+)$")
# Hugging Face shard names: <stem>-00001-of-00003.safetensors.
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<total>\d+)\.safetensors$")

ConfigArg = Union[str, Mapping[str, Any], None]


@dataclass(frozen=True)
class ConversionPlan:
    """What a conversion will do, computed from headers only."""

    config_name: Optional[str]
    kwargs: Dict[str, Any]  # ZImageL2PDiT constructor kwargs of the output
    copied: Tuple[str, ...]
    new: Tuple[str, ...]  # absent from the source, initialised fresh
    dropped: Tuple[str, ...]  # source tensors not in the output
    shape_mismatches: Tuple[Tuple[str, Tuple[int, ...], Tuple[int, ...]], ...]  # (key, source, output); re-initialised
    output_layout: Layout
    output_hash: str
    source_layout: Optional[str] = None  # named layout of a pixel source (``--from-pixel``); None for a latent one
    family: str = DEFAULT_FAMILY  # whose pixel DiT class ``kwargs`` are for

    @property
    def reinitialised(self) -> Tuple[str, ...]:
        """Keys the source has in another shape: initialised fresh like ``new``."""
        return tuple(key for key, _, _ in self.shape_mismatches)


def _describe(dims: Mapping[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in dims.items())


def _target_dims(kwargs: Mapping[str, Any]) -> Dict[str, int]:
    return infer_dit_dims(meta_state_shapes(**kwargs))


def _resolve_config(config: ConfigArg, source_dims: Dict[str, int]) -> Tuple[Optional[str], Dict[str, Any]]:
    """Named config, explicit kwargs, or (None) the named config whose sizes match the source; sizes must agree."""
    matching = [name for name, named in L2P_CONFIGS.items() if _target_dims(named.kwargs) == source_dims]
    if config is None:
        if not matching:
            raise ValueError(
                f"No named L2P config matches the source DiT ({_describe(source_dims)}); "
                "pass ZImageL2PDiT kwargs with these sizes."
            )
        config = matching[0]
    if isinstance(config, str):
        if config not in L2P_CONFIGS:
            raise ValueError(f"Unknown L2P config {config!r}; choose one of {sorted(L2P_CONFIGS)} or pass kwargs.")
        name, kwargs = config, dict(L2P_CONFIGS[config].kwargs)
    else:
        name, kwargs = None, dict(config)
    target_dims = _target_dims(kwargs)
    if target_dims != source_dims:
        suggestion = f"use config {matching[0]!r}" if matching else "pass ZImageL2PDiT kwargs with the source's sizes"
        raise ValueError(
            f"The source DiT has {_describe(source_dims)}, but config {name or dict(kwargs)} has "
            f"{_describe(target_dims)}; {suggestion}."
        )
    return name, kwargs


def incomplete_blocks(keys: Sequence[str], containers: Sequence[str] = ()) -> List[str]:
    """Transformer blocks (``layers.7``) that are absent or lack tensors other blocks of their module have.

    A complete DiT has none; a checkpoint read without one of its shards usually has some.  ``containers`` names the
    block lists to check (default: Z-Image's).
    """
    pattern = _BLOCK_KEY
    if containers:
        names = "|".join(re.escape(container) for container in containers)
        pattern = re.compile(rf"^(?P<module>{names})\.(?P<index>\d+)\.(?P<tensor>.+)$")
    tensors: Dict[Tuple[str, int], Set[str]] = defaultdict(set)
    for key in keys:
        if match := pattern.match(key):
            tensors[match["module"], int(match["index"])].add(match["tensor"])
    expected: Dict[str, Set[str]] = defaultdict(set)
    count: Dict[str, int] = defaultdict(int)
    for (module, index), names in tensors.items():
        expected[module] |= names
        count[module] = max(count[module], index + 1)
    problems = []
    for module, blocks in count.items():
        for index in range(blocks):
            missing = len(expected[module] - tensors.get((module, index), set()))
            if missing == len(expected[module]):
                problems.append(f"{module}.{index} is absent")
            elif missing:
                problems.append(f"{module}.{index} lacks {missing} of {len(expected[module])} tensors")
    return problems


def left_out_shards(paths: Sequence[str]) -> List[str]:
    """Files ``<stem>-0000K-of-0000N.safetensors`` that the shard names among ``paths`` imply but ``paths`` lacks."""
    given: Dict[Tuple[str, str, str, int], Set[int]] = defaultdict(set)
    for path in paths:
        if match := _SHARD_NAME.match(os.path.basename(path)):
            group = (os.path.dirname(path), match["stem"], match["total"], len(match["index"]))
            given[group].add(int(match["index"]))
    return [
        os.path.join(directory, f"{stem}-{index:0{width}d}-of-{total}.safetensors")
        for (directory, stem, total, width), indices in given.items()
        for index in range(1, int(total) + 1)
        if index not in indices
    ]


def _check_source(source: Layout, from_pixel: bool = False) -> Dict[str, int]:
    """The sizes of a complete latent DiT (or, ``from_pixel``, a complete pixel L2P DiT) with header ``source``."""
    kind = checkpoint_kind(source)
    if kind == "pixel" and not from_pixel:
        raise ValueError(
            "The input is already a pixel L2P checkpoint (it has local_decoder.* tensors); nothing to convert. "
            "Load it directly, run `l2p inspect` on it, or pass it with --from-pixel to build an 8K/10K init from it."
        )
    if kind == "latent" and from_pixel:
        raise ValueError(
            "The input is a latent Z-Image DiT, not a pixel L2P checkpoint; convert it with --latent_ckpt_files "
            "instead of --from-pixel."
        )
    incomplete = incomplete_blocks(list(source))
    if incomplete:
        raise ValueError(
            f"The source DiT has incomplete blocks ({', '.join(incomplete[:3])}"
            f"{', ...' if len(incomplete) > 3 else ''}): a shard was probably left out; pass all of the "
            "checkpoint's *.safetensors files."
        )
    dims = infer_dit_dims({key: info.shape for key, info in source.items()})
    if from_pixel and (kind != "pixel" or dims is None):
        raise ValueError(
            "The input is not a pixel L2P checkpoint (expected x_pad_token, layers.*, local_decoder.* tensors); "
            "pass all file(s) of a 4K or 8K L2P checkpoint."
        )
    if not from_pixel and (kind != "latent" or dims is None):
        raise ValueError(
            "The input is not a latent Z-Image DiT checkpoint (expected x_pad_token, layers.*, all_final_layer.* "
            "tensors); pass the transformer file(s) of Z-Image, e.g. Z-Image-Turbo's transformer/*.safetensors."
        )
    return dims


def plan_conversion(source: Layout, config: ConfigArg = None, dtype: torch.dtype = torch.float32) -> ConversionPlan:
    """Plan the conversion of a latent DiT with header ``source`` into ``ZImageL2PDiT(**config)``.

    ``config`` is a name in ``L2P_CONFIGS``, a kwargs dict, or None for the named config matching the
    source's sizes.  New tensors are stored in ``dtype`` (default: float32, like the release).
    """
    config_name, kwargs = _resolve_config(config, _check_source(source))
    return _plan(source, config_name, kwargs, dtype)


def plan_inheritance(source: Layout, config: ConfigArg, dtype: torch.dtype = torch.float32) -> ConversionPlan:
    """Plan building the higher-resolution ``ZImageL2PDiT(**config)`` from the pixel L2P checkpoint ``source``.

    ``config`` is ``"8k"``, ``"10k"`` or kwargs of one of their layouts with the source's backbone sizes; the source
    must have the 4K layout (or 8K, for a 10K target).  New and re-initialised tensors are stored in ``dtype``.
    """
    dims = _check_source(source, from_pixel=True)
    if config is None:
        raise ValueError("Converting a pixel checkpoint needs the target layout: pass --config 8k or --config 10k.")
    config_name, kwargs = _resolve_config(config, dims)
    source_layout, target_layout = l2p_layout_name(source), l2p_layout_name(meta_state_shapes(**kwargs))
    if target_layout not in INHERITANCE.get(source_layout or "", ()):
        raise ValueError(
            f"Cannot build an init of the {target_layout or 'custom'} layout from a pixel checkpoint of the "
            f"{source_layout or 'custom'} layout; --from-pixel converts {_INHERITANCE_PAIRS}: pass a 4K or 8K "
            "checkpoint and --config 8k or 10k."
        )
    return _plan(source, config_name, kwargs, dtype, source_layout)



def plan_family_conversion(
    source: Layout, family: Family, config: Optional[str] = None, dtype: torch.dtype = torch.float32
) -> ConversionPlan:
    """Plan converting a latent DiT of ``family`` with header ``source`` into its pixel DiT of named ``config``.

    The source must have exactly the keys and shapes of one of the family's named latent sizes (``config`` None picks
    that one); new tensors are stored in ``dtype``.
    """
    if any(key.startswith("local_decoder.") for key in source):
        raise ValueError(
            f"The input is already a pixel L2P checkpoint (it has local_decoder.* tensors); nothing to convert. "
            f"Load it with the {family.title} L2P pipeline or run `l2p inspect` on it."
        )
    shapes = {key: info.shape for key, info in source.items()}
    matching = [name for name in family.latent_kwargs if family_layout(family.name, name, latent=True) == shapes]
    sizes = ", ".join(family.latent_kwargs)
    if config is not None:
        family.config(config)
        if config not in matching:
            found = f"it has the layout of {matching[0]!r}" if matching else f"it matches none of {sizes}"
            raise ValueError(
                f"The input is not a latent {family.title} DiT of size {config!r}: {found}. Pass all of the "
                "transformer's *.safetensors files, and the matching --config (or none)."
            )
    elif not matching:
        incomplete = incomplete_blocks(list(source), family.block_containers)
        hint = f" ({', '.join(incomplete[:3])}: a shard was probably left out)" if incomplete else ""
        raise ValueError(
            f"The input is not a latent {family.title} DiT of a known size ({sizes}){hint}; pass all of the "
            f"transformer's *.safetensors files of a checkpoint DiffSynth registers as {family.latent_model_names[0]}."
        )
    config = config or matching[0]
    return _plan(source, config, dict(family.configs[config].kwargs), dtype, family=family)


def _plan_z_image(source: Layout, config: ConfigArg, dtype: torch.dtype) -> ConversionPlan:
    """``plan_conversion``, whose error names ``--family`` when the source is another family's latent DiT."""
    try:
        return plan_conversion(source, config, dtype)
    except ValueError:
        shapes = {key: info.shape for key, info in source.items()}
        for family in all_families()[1:]:
            if any(family_layout(family.name, name, latent=True) == shapes for name in family.latent_kwargs):
                raise ValueError(
                    f"The input is a latent {family.title} DiT, not a Z-Image one; pass --family {family.name} "
                    f"(convert_latent_to_pixel(..., family={family.name!r}))."
                ) from None
        raise


def _plan(
    source: Layout,
    config_name: Optional[str],
    kwargs: Dict[str, Any],
    dtype: torch.dtype,
    source_layout: Optional[str] = None,
    family: Optional[Family] = None,
) -> ConversionPlan:
    """Copy every tensor of the family's pixel DiT (default ``ZImageL2PDiT``) the source has in the same shape,
    initialise the others."""
    family = family or get_family(DEFAULT_FAMILY)
    new_prefixes = tuple(f"{part}." for part in family.new_parts)
    target = meta_state_shapes(import_class(family.dit_class), **kwargs)
    mismatches = tuple(
        (key, source[key].shape, shape) for key, shape in target.items() if key in source and source[key].shape != shape
    )
    missing_core = [
        key
        for key, shape in target.items()
        if not key.startswith(new_prefixes) and (key not in source or source[key].shape != shape)
    ]
    if missing_core:
        raise ValueError(
            f"The source lacks {len(missing_core)} backbone tensors of the L2P model, or has them in other shapes "
            f"(e.g. {missing_core[0]!r}); it cannot be converted with config {config_name or kwargs}."
        )
    new_dtype = DTYPE_NAMES[dtype]
    copied = tuple(key for key, shape in target.items() if key in source and source[key].shape == shape)
    new = tuple(key for key in target if key not in source)
    layout = {key: source[key] if key in copied else TensorInfo(new_dtype, shape) for key, shape in target.items()}
    return ConversionPlan(
        config_name=config_name,
        kwargs=kwargs,
        copied=copied,
        new=new,
        dropped=tuple(key for key in source if key not in target),
        shape_mismatches=mismatches,
        output_layout=layout,
        output_hash=layout_hash(layout),
        source_layout=source_layout,
        family=family.name,
    )


def init_new_tensors(plan: ConversionPlan, seed: int = 42) -> Dict[str, torch.Tensor]:
    """Default (``reset_parameters``) init of ``plan.new`` and ``plan.reinitialised`` on CPU, reproducible by seed.

    Each module owning such a tensor is initialised whole; only those tensors are kept (a re-initialised conv weight's
    bias, when its shape stays, is copied from the source).
    """
    model = meta_model(import_class(get_family(plan.family).dit_class), **plan.kwargs)
    new = set(plan.new) | set(plan.reinitialised)
    tensors: Dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module_name, module in model.named_modules():
            keys = {name: f"{module_name}.{name}".lstrip(".") for name, _ in module.named_parameters(recurse=False)}
            if not new.intersection(keys.values()):
                continue
            if not hasattr(module, "reset_parameters"):
                raise ValueError(f"Cannot initialise {module_name or 'the root'} tensors {sorted(keys.values())}.")
            module.to_empty(device="cpu", recurse=False)
            module.reset_parameters()
            for name, param in module.named_parameters(recurse=False):
                if keys[name] in new:
                    tensors[keys[name]] = param.detach().to(TORCH_DTYPES[plan.output_layout[keys[name]].dtype])
    return tensors


def _parameters(layout: Mapping[str, Any], keys: Sequence[str]) -> int:
    return sum(math.prod(layout[key].shape) for key in keys)


def _group(keys: Tuple[str, ...]) -> str:
    counts = Counter(key.split(".", 1)[0] for key in keys)
    return ", ".join(f"{module} ({count})" for module, count in counts.items()) or "none"


@dataclass(frozen=True)
class ConversionReport:
    """Result of the ``convert_*`` functions; ``summary()`` is what ``l2p convert`` prints."""

    sources: Tuple[str, ...]
    output_path: str
    plan: ConversionPlan
    seed: int
    dry_run: bool
    output_hash: str
    registered_names: Tuple[str, ...]
    dropped_parameters: int = 0  # elements of the source tensors the output leaves out

    @property
    def parameter_counts(self) -> Dict[str, int]:
        """Parameters (tensor elements) of the output, copied from the source, initialised fresh, and dropped."""
        plan, output = self.plan, self.plan.output_layout
        return {
            "output": _parameters(output, list(output)),
            "copied": _parameters(output, plan.copied),
            "initialised": _parameters(output, [*plan.new, *plan.reinitialised]),
            "dropped": self.dropped_parameters,
        }

    def summary(self) -> str:
        plan = self.plan
        config = plan.config_name or f"custom {plan.kwargs}"
        origin = f", from a {plan.source_layout} pixel checkpoint" if plan.source_layout else ""
        registered = ", ".join(self.registered_names) or "not registered (use registry.register_l2p_dit(**kwargs))"
        lines = [
            f"{'Dry run: would convert' if self.dry_run else 'Converted'} {', '.join(self.sources)}",
            f"  -> {self.output_path} (L2P config {config}{origin})",
            f"  copied   {len(plan.copied)} tensors" + ("" if self.dry_run else " (verified bit-identical)"),
            f"  re-initialised {len(plan.shape_mismatches)} tensors (same key, shape changed), seed {self.seed}"
            + (":" if plan.shape_mismatches else ""),
            *(f"    {key} {list(old)} -> {list(new)}" for key, old, new in plan.shape_mismatches),
            f"  new      {len(plan.new)} tensors, seed {self.seed}: {_group(plan.new)}",
            f"  dropped  {len(plan.dropped)} tensors: {_group(plan.dropped)}",
            "  parameters: {output:,} in the output ({copied:,} copied, {initialised:,} initialised), "
            "{dropped:,} dropped".format(**self.parameter_counts),
            f"  {'predicted hash' if self.dry_run else 'output hash'}: {self.output_hash}",
            f"  DiffSynth model: {registered}",
        ]
        return "\n".join(lines)


def _verify(output_path: str, plan: ConversionPlan, source: Mapping[str, torch.Tensor], new: Dict[str, torch.Tensor]):
    with SafetensorsCheckpoint(output_path) as written:
        if written.header != plan.output_layout:
            raise RuntimeError(f"Verification failed: {output_path} does not have the planned layout.")
        for key in plan.output_layout:
            expected = new[key] if key in new else source[key]
            if not same_bits(written[key], expected):
                raise RuntimeError(f"Verification failed: {key} in {output_path} differs from what was written.")


def _convert(
    files: PathOrPaths,
    output_path: Union[str, os.PathLike],
    planner: Callable[[Layout], ConversionPlan],
    seed: int,
    dry_run: bool,
) -> ConversionReport:
    """Plan from the headers of ``files``, then write, verify and move the output into place (unless ``dry_run``)."""
    sources = as_path_list(files)
    output = check_output_path(output_path, sources)
    source_layout = read_headers(sources)
    try:
        plan = planner(source_layout)
    except ValueError as error:
        left_out = left_out_shards(sources)
        if not left_out:
            raise
        raise ValueError(
            f"The inputs lack {', '.join(left_out)}, which the shard names (-of-N) say belong to this checkpoint; "
            f"pass every shard. Details: {error}"
        ) from None
    output_hash = plan.output_hash
    if not dry_run:
        new = init_new_tensors(plan, seed)
        with SafetensorsCheckpoint(sources) as source, atomic_output(output, sources) as temp_path:
            write_safetensors(temp_path, plan.output_layout, lambda key: new[key] if key in new else source[key])
            _verify(temp_path, plan, source, new)
        output_hash = hash_checkpoint(output)
    return ConversionReport(
        sources=tuple(sources),
        output_path=output,
        plan=plan,
        seed=seed,
        dry_run=dry_run,
        output_hash=output_hash,
        registered_names=tuple(entry["model_name"] for entry in find_registered(output_hash)),
        dropped_parameters=_parameters(source_layout, plan.dropped),
    )


def convert_latent_to_pixel(
    latent_files: PathOrPaths,
    output_path: Union[str, os.PathLike],
    config: ConfigArg = None,
    seed: int = 42,
    dry_run: bool = False,
    dtype: torch.dtype = torch.float32,
    family: str = DEFAULT_FAMILY,
) -> ConversionReport:
    """Convert a latent DiT of ``family`` (default Z-Image; one file or shards) into an L2P pixel init.

    The output is written to a temporary file, re-read and checked tensor by tensor against the
    source and the fresh init, and only then moved into place.  ``dry_run`` reads headers only.
    For Qwen-Image and FLUX.2, ``config`` is one of the family's size names or None (the source's size).
    """
    if family == DEFAULT_FAMILY:
        planner = functools.partial(_plan_z_image, config=config, dtype=dtype)
    else:
        if config is not None and not isinstance(config, str):
            raise ValueError(f"For the {family} family, pass a size name as config, not kwargs.")
        planner = functools.partial(plan_family_conversion, family=get_family(family), config=config, dtype=dtype)
    return _convert(latent_files, output_path, planner, seed, dry_run)


def convert_pixel_to_pixel(
    pixel_files: PathOrPaths,
    output_path: Union[str, os.PathLike],
    config: ConfigArg,
    seed: int = 42,
    dry_run: bool = False,
    dtype: torch.dtype = torch.float32,
) -> ConversionReport:
    """Build a higher-resolution UHR init (4K -> 8K or 10K, 8K -> 10K) from a pixel L2P checkpoint (file or shards).

    See ``plan_inheritance``; written, verified and moved into place like ``convert_latent_to_pixel``.
    """
    planner = functools.partial(plan_inheritance, config=config, dtype=dtype)
    return _convert(pixel_files, output_path, planner, seed, dry_run)
