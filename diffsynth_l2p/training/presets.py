"""Trainable-set presets: pure functions from a DiT's parameter names to what training updates.

Names are relative to the DiT (``layers.3.attention.to_q.weight``), as in the checkpoints.

- ``release``: everything except the middle main blocks ``layers.5 … layers.{N-6}`` (the released 1K
  checkpoint's recipe; ≈2.55B of 6.17B at the 1K config). Identical to ``shallow:5``.
- ``shallow:N``: the first N and last N main blocks, both refiners, the timestep and caption embedders, the pad
  tokens, the pixel embedder ``all_x_embedder`` and the detailer head ``local_decoder`` (the paper's description).
- ``lora:R``: LoRA of rank R on the attention and feed-forward linears of every main block (frozen), plus the new
  L2P parts (``all_x_embedder``, ``local_decoder``) at full rank.
- ``full``: every parameter.
- explicit patterns (``--trainable``): dotted names or prefixes, ``*`` wildcards allowed
  (``layers.0,layers.29,local_decoder``, ``layers.*.adaLN_modulation``).
"""

import fnmatch
import re
from dataclasses import dataclass
from typing import FrozenSet, Iterable, Optional, Sequence, Tuple

PRESET_HELP = {
    "release": "all but the middle main blocks layers.5..layers.{N-6} (the released recipe; = shallow:5)",
    "shallow:N": "first N + last N main blocks, refiners, embedders, pad tokens, all_x_embedder, local_decoder",
    "lora:R": "rank-R LoRA on every main block's linears + full-rank all_x_embedder and local_decoder",
    "full": "every parameter",
}
RELEASE_SHALLOW_BLOCKS = 5
# Parts of the L2P DiT that have no counterpart in the latent Z-Image checkpoint.
NEW_PARTS = ("all_x_embedder", "local_decoder")
# DiffSynth's Z-Image LoRA targets ("to_q,to_k,to_v,to_out.0,w1,w2,w3"), restricted to the main blocks.
LORA_TARGET = re.compile(r"layers\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])")
_MAIN_BLOCK = re.compile(r"layers\.(\d+)\.")


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


def _block_index(name: str) -> Optional[int]:
    match = _MAIN_BLOCK.match(name)
    return int(match.group(1)) if match else None


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


def shallow_names(names: Iterable[str], num_blocks: int) -> FrozenSet[str]:
    """Everything except main blocks ``layers.{num_blocks} … layers.{n_layers - num_blocks - 1}``."""
    names = list(names)
    n_layers = 1 + max((_block_index(name) for name in names if _block_index(name) is not None), default=-1)
    frozen = range(num_blocks, n_layers - num_blocks)
    return frozenset(name for name in names if _block_index(name) not in frozen)


def lora_target_modules(names: Iterable[str]) -> Tuple[str, ...]:
    """Main-block attention and feed-forward linears (module names) that the ``lora`` preset adapts."""
    return tuple(sorted({name[: -len(".weight")] for name in names if LORA_TARGET.fullmatch(name[: -len(".weight")])}))


def resolve_trainable(
    names: Iterable[str], preset: Optional[str] = None, patterns: Optional[Sequence[str]] = None
) -> TrainableSet:
    """The trainable set for a preset name or explicit patterns (exactly one of the two; default ``release``)."""
    names = list(names)
    if preset and patterns:
        raise ValueError("Give either a preset or explicit trainable patterns, not both.")
    if patterns:
        return TrainableSet(",".join(patterns), match_patterns(names, patterns))
    preset = preset or "release"
    if preset == "release":
        return TrainableSet(preset, shallow_names(names, RELEASE_SHALLOW_BLOCKS))
    if preset == "full":
        return TrainableSet(preset, frozenset(names))
    if preset.startswith("shallow:"):
        return TrainableSet(preset, shallow_names(names, _parse_int(preset, "shallow:", 0)))
    if preset.startswith("lora:"):
        rank = _parse_int(preset, "lora:", 1)
        new_parts = frozenset(name for name in names if name.split(".")[0] in NEW_PARTS)
        return TrainableSet(preset, new_parts, lora_target_modules(names), rank)
    choices = ", ".join(PRESET_HELP)
    raise ValueError(f"Unknown preset {preset!r}. Choose one of: {choices} (or pass --trainable patterns).")
