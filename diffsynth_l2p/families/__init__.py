"""Source-model families: what L2P needs to know about each latent DiT it turns into a pixel DiT.

A family names its pixel DiT class and pipeline, its named configurations, the stock latent model it converts from,
its new modules (the pixel patch embedder and the detailer head) and its main transformer blocks in forward order
(what the training presets freeze). Z-Image is the released family; Qwen-Image and FLUX.2 use the same transfer
(see ``docs/transfer.md``). Family modules import no torch at import time, so ``l2p --help`` stays fast.
"""

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..models.configs import L2PConfig

DEFAULT_FAMILY = "z-image"
FAMILY_MODULES = {"z-image": "z_image", "qwen-image": "qwen_image", "flux2": "flux2"}


@dataclass(frozen=True)
class Family:
    """One source-model family.  ``*_class`` fields are import paths (``package.module.Class``)."""

    name: str  # what ``--family`` takes
    title: str  # for messages and docs
    dit_model_name: str  # DiffSynth registry name of the pixel DiT
    dit_class: str
    pipeline_class: str
    configs: Mapping[str, L2PConfig]  # named pixel-DiT configurations (kwargs of ``dit_class`` + defaults)
    latent_model_names: Tuple[str, ...]  # DiffSynth registry names of the stock latent DiT
    latent_class: str  # the stock latent DiT class (or, for sizes DiffSynth cannot build, a layout-equal stand-in)
    latent_kwargs: Mapping[str, Dict[str, Any]]  # per named config: kwargs of ``latent_class`` it converts from
    new_parts: Tuple[str, ...]  # top-level modules a latent checkpoint has no (same-shaped) counterpart for
    block_containers: Tuple[str, ...]  # main-block ModuleLists in forward order; presets index them as one sequence
    lora_target: str  # regex (fullmatch) of the main-block linears the ``lora:R`` preset adapts
    # The ``release`` preset trains the first and last ``release_blocks`` main blocks (``shallow:N``), or, with
    # ``release_share``, that share of the main blocks at each end (rounded, at least 1).
    release_blocks: Optional[int] = None
    release_share: Optional[float] = None
    # fnmatch patterns of parameters the forward never uses (never trained); ``{last}``: the last main block's index
    no_gradient: Tuple[str, ...] = ()
    registry_entries: Tuple[Dict[str, Any], ...] = ()  # extra DiffSynth registry entries (tiny text encoders, ...)
    # DiffSynth VRAM-management maps of our classes: {our class: (DiffSynth class whose map it extends, extra entries)}
    vram_maps: Mapping[str, Tuple[str, Dict[str, str]]] = field(default_factory=dict)
    # Import path of ``build(out_dir, seed)``, which writes a random tiny model set of the family (``l2p tiny-init``);
    # its tiny latent DiT is ``latent_class(**latent_kwargs["tiny"])``.
    tiny_set: Optional[str] = None
    # kwargs -> named config when no config has exactly these kwargs (default: the first config)
    nearest_config: Optional[Callable[[Dict[str, Any]], L2PConfig]] = None

    def config(self, name: str) -> L2PConfig:
        """``configs[name]``, or a one-line error naming the choices."""
        if name not in self.configs:
            raise ValueError(f"Unknown {self.title} config {name!r}; choose one of {', '.join(self.configs)}.")
        return self.configs[name]

    def config_name(self, config: L2PConfig) -> str:
        """The name of ``config`` among the named configurations."""
        return next(name for name, named in self.configs.items() if named is config)

    def config_for_kwargs(self, kwargs: Dict[str, Any]) -> L2PConfig:
        """The named configuration built with ``kwargs``, else the nearest one (whose defaults apply)."""
        for config in self.configs.values():
            if config.kwargs == kwargs:
                return config
        return self.nearest_config(kwargs) if self.nearest_config else next(iter(self.configs.values()))

    def release_block_count(self, depth: int) -> int:
        """How many main blocks at each end the ``release`` preset trains, for a DiT with ``depth`` main blocks."""
        if self.release_share is None:
            return self.release_blocks
        return max(1, round(depth * self.release_share))

    @property
    def convert_command(self) -> str:
        """The ``l2p convert`` command line that converts this family's latent checkpoints."""
        return "l2p convert" if self.name == DEFAULT_FAMILY else f"l2p convert --family {self.name}"

    def main_block(self, name: str) -> Optional[Tuple[int, int]]:
        """``(container position, block index)`` of the main block a parameter belongs to, or None.

        Sorting these pairs gives the blocks in forward order (FLUX.2: every double block, then every single block).
        """
        for position, container in enumerate(self.block_containers):
            match = re.match(rf"{re.escape(container)}\.(\d+)\.", name)
            if match:
                return position, int(match.group(1))
        return None


def registry_entry(model_hash: str, model_name: str, model_class: str, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """One DiffSynth ``MODEL_CONFIGS`` entry: files hashing to ``model_hash`` load as ``model_class(**kwargs)``."""
    return dict(model_hash=model_hash, model_name=model_name, model_class=model_class, extra_kwargs=dict(kwargs))


def config_entries(
    hashes: Mapping[str, str], model_name: str, model_class: str, configs: Mapping[str, L2PConfig]
) -> List[Dict[str, Any]]:
    """The registry entries of a pixel DiT's named configurations (``hashes``: their files' hashes by name)."""
    return [registry_entry(hashes[name], model_name, model_class, config.kwargs) for name, config in configs.items()]


def import_class(path: str) -> Any:
    """The object a ``package.module.Name`` path names (a family's ``dit_class``, ``latent_class``, ...)."""
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _load(name: str) -> Family:
    return importlib.import_module(f".{FAMILY_MODULES[name]}", __name__).FAMILY


def get_family(name: str) -> Family:
    """The family called ``name`` (``--family``), or a one-line error naming the choices."""
    if name not in FAMILY_MODULES:
        raise ValueError(f"Unknown family {name!r}; choose one of {', '.join(FAMILY_MODULES)}.")
    return _load(name)


def all_families() -> List[Family]:
    """Every family, Z-Image first."""
    return [_load(name) for name in FAMILY_MODULES]
