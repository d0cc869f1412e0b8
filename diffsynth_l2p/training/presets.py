"""Trainable-set presets: pure functions from a DiT's parameter names to what training updates.

Names are relative to the DiT (``layers.3.attention.to_q.weight``), as in the checkpoints.  "Main blocks" are the
family's repeated transformer blocks in forward order (Z-Image: ``layers.*``; Qwen-Image: ``transformer_blocks.*``;
FLUX.2: ``transformer_blocks.*`` then ``single_transformer_blocks.*``, counted as one sequence; see
``docs/transfer.md``).

- ``release``: everything except the middle main blocks (Z-Image: the first and last 5, ``layers.5 … layers.{N-6}``
  frozen, the released 1K checkpoint's recipe, ≈2.55B of 6.17B at the 1K config; Qwen-Image and FLUX.2: the first
  and last sixth of their main blocks, the same share of the depth).
- ``shallow:N``: the first N and last N main blocks and everything outside the main blocks (Z-Image: both refiners,
  the timestep and caption embedders, the pad tokens, the pixel embedder and the detailer head ``local_decoder``).
- ``lora:R``: LoRA of rank R on the attention and feed-forward linears of every main block (frozen), plus the new
  L2P parts (the pixel embedder and ``local_decoder``) at full rank.
- ``full``: every parameter.
- explicit patterns (``--trainable``): dotted names or prefixes, ``*`` wildcards allowed
  (``layers.0,layers.29,local_decoder``, ``layers.*.adaLN_modulation``).

Parameters the family's forward never uses (Qwen-Image's last text-stream outputs) are left out of every preset.
"""

import fnmatch
import re
from dataclasses import dataclass
from typing import FrozenSet, Iterable, Optional, Sequence, Tuple

from ..families import DEFAULT_FAMILY, Family, get_family

PRESET_HELP = {
    "release": "all but the middle main blocks (Z-Image: layers.5..layers.{N-6}, the released recipe = shallow:5)",
    "shallow:N": "first N + last N main blocks and everything outside them (embedders, refiners, pixel embedder, head)",
    "lora:R": "rank-R LoRA on every main block's linears + the full-rank pixel embedder and local_decoder",
    "full": "every parameter",
}


@dataclass(frozen=True)
class TrainableSet:
    """What a preset trains: full-rank parameter names and, for LoRA, the linear modules that get adapters."""

    spec: str
    full_rank: FrozenSet[str]
    lora_modules: Tuple[str, ...] = ()
    lora_rank: int = 0

    @property
    def is_lora(self) -> bool:
        return self.lora_rank > 0

    def parameter_names(self) -> FrozenSet[str]:
        """Every trainable parameter name after LoRA injection (peft's ``.default`` adapter names)."""
        lora = {f"{module}.lora_{ab}.default.weight" for module in self.lora_modules for ab in "AB"}
        return self.full_rank | lora


def _strip_prefix(pattern: str) -> str:
    for prefix in ("pipe.dit.", "dit."):
        if pattern.startswith(prefix):
            return pattern[len(prefix) :]
    return pattern


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def _parse_int(spec: str, prefix: str, minimum: int) -> int:
    try:
        value = int(spec[len(prefix) :])
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"Preset {spec!r} needs an integer >= {minimum} after {prefix!r}, e.g. {prefix}4.")
    return value


def match_patterns(names: Iterable[str], patterns: Sequence[str]) -> FrozenSet[str]:
    """Names matched by any dotted pattern (exact name, module prefix, or ``*`` wildcard); unmatched patterns raise."""
    names = list(names)
    selected = set()
    for raw in patterns:
        pattern = _strip_prefix(raw.strip())
        hits = {name for name in names if _matches(name, pattern)}
        if not pattern or not hits:
            tops = sorted({name.split(".")[0] for name in names})
            raise ValueError(
                f"Trainable pattern {raw!r} matches no parameter of the DiT. Use dotted names relative to the DiT, "
                f"e.g. 'layers.0', 'layers.*.adaLN_modulation', 'local_decoder'; top-level names: {', '.join(tops)}."
            )
        selected |= hits
    return frozenset(selected)


def shallow_names(names: Iterable[str], num_blocks: int, family: Optional[Family] = None) -> FrozenSet[str]:
    """Everything except the middle main blocks: all but the first and last ``num_blocks`` in forward order."""
    family = family or get_family(DEFAULT_FAMILY)
    names = list(names)
    blocks = sorted({block for name in names if (block := family.main_block(name)) is not None})
    frozen = set(blocks[num_blocks : len(blocks) - num_blocks])
    return frozenset(name for name in names if family.main_block(name) not in frozen)


def lora_target_modules(names: Iterable[str], family: Optional[Family] = None) -> Tuple[str, ...]:
    """Main-block attention and feed-forward linears (module names) that the ``lora`` preset adapts.

    Linears the family's forward never uses get no adapter (it would never receive a gradient).
    """
    family = family or get_family(DEFAULT_FAMILY)
    target = re.compile(family.lora_target)
    weights = [name for name in _used(names, family) if name.endswith(".weight")]
    return tuple(sorted({name[: -len(".weight")] for name in weights if target.fullmatch(name[: -len(".weight")])}))


def _used(names: Iterable[str], family: Family) -> FrozenSet[str]:
    """``names`` without the parameters the family's forward never uses (they would get no gradient).

    ``{last}`` in a ``no_gradient`` pattern is the index of the last main block.
    """
    names = list(names)
    last = max((block[1] for name in names if (block := family.main_block(name))), default=0)
    unused = [pattern.format(last=last) for pattern in family.no_gradient]
    return frozenset(name for name in names if not any(fnmatch.fnmatchcase(name, p) for p in unused))


def resolve_trainable(
    names: Iterable[str],
    preset: Optional[str] = None,
    patterns: Optional[Sequence[str]] = None,
    family: Optional[Family] = None,
) -> TrainableSet:
    """The trainable set for a preset name or explicit patterns (exactly one of the two; default ``release``).

    ``family`` (default Z-Image) says which blocks are the main blocks and which parts are new.
    """
    family = family or get_family(DEFAULT_FAMILY)
    names = list(names)
    if preset and patterns:
        raise ValueError("Give either a preset or explicit trainable patterns, not both.")
    if patterns:
        return TrainableSet(",".join(patterns), match_patterns(names, patterns))
    preset = preset or "release"
    if preset == "release":
        depth = len({block for name in names if (block := family.main_block(name)) is not None})
        return TrainableSet(preset, _used(shallow_names(names, family.release_block_count(depth), family), family))
    if preset == "full":
        return TrainableSet(preset, _used(names, family))
    if preset.startswith("shallow:"):
        return TrainableSet(preset, _used(shallow_names(names, _parse_int(preset, "shallow:", 0), family), family))
    if preset.startswith("lora:"):
        rank = _parse_int(preset, "lora:", 1)
        new_parts = frozenset(name for name in names if name.split(".")[0] in family.new_parts)
        return TrainableSet(preset, new_parts, lora_target_modules(names, family), rank)
    choices = ", ".join(PRESET_HELP)
    raise ValueError(f"Unknown preset {preset!r}. Choose one of: {choices} (or pass --trainable patterns).")
