"""Fallback for ``from diffsynth.pipelines.z_image_L2P import ZImagePipeline, ModelConfig``.

The installed stub ``diffsynth/pipelines/z_image_L2P.py`` normally answers that import. If it is
missing (e.g. a strict editable install), this finder, appended to ``sys.meta_path`` when
``diffsynth_l2p`` is imported, provides the same module.  It comes last, so a real file always wins.
"""

import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Optional, Sequence

ALIAS = "diffsynth.pipelines.z_image_L2P"


class PipelineAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and builds ``diffsynth.pipelines.z_image_L2P`` as a re-export of the L2P pipeline."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None):
        if fullname != ALIAS:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        from diffsynth.core import ModelConfig

        from .pipelines.z_image_l2p import ZImageL2PPipeline

        module.ZImagePipeline = ZImageL2PPipeline
        module.ModelConfig = ModelConfig
        module.__all__ = ["ZImagePipeline", "ModelConfig"]


def install() -> None:
    """Append the finder to ``sys.meta_path`` once."""
    if not any(isinstance(finder, PipelineAliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(PipelineAliasFinder())
