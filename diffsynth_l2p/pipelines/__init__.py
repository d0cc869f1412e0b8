"""Pipelines of diffsynth-l2p."""

from .z_image_l2p import ZImageL2PPipeline

__all__ = ["ZImageL2PPipeline"]
