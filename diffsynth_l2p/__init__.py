"""diffsynth-l2p: L2P pixel-space Z-Image for DiffSynth-Studio."""

from .registry import register_all

register_all()

__version__ = "0.1.0"
