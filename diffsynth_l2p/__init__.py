"""diffsynth-l2p: L2P pixel-space Z-Image for DiffSynth-Studio."""

from . import _import_alias
from .registry import register_all

register_all()
_import_alias.install()

__version__ = "0.1.0"
