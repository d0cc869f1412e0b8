"""Fallback for ``from diffsynth.pipelines.z_image_L2P import ZImagePipeline, ModelConfig`` (and the other families').

The installed stubs ``diffsynth/pipelines/<name>_L2P.py`` normally answer those imports. If one is
missing (e.g. a strict editable install), this finder, appended to ``sys.meta_path`` when
``diffsynth_l2p`` is imported, provides the same module.  It comes last, so a real file always wins.
"""

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Optional, Sequence

ALIAS = "diffsynth.pipelines.z_image_L2P"
# DiffSynth-style module -> (our pipeline module under diffsynth_l2p.pipelines, our class, the name users import).
ALIASES = {
    ALIAS: ("z_image_l2p", "ZImageL2PPipeline", "ZImagePipeline"),
    "diffsynth.pipelines.qwen_image_L2P": ("qwen_image_l2p", "QwenImageL2PPipeline", "QwenImagePipeline"),
    "diffsynth.pipelines.flux2_image_L2P": ("flux2_l2p", "Flux2L2PPipeline", "Flux2ImagePipeline"),
}


class PipelineAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and builds ``diffsynth.pipelines.<name>_L2P`` as a re-export of the L2P pipeline."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None):
        if fullname not in ALIASES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        from diffsynth.core import ModelConfig

        source, class_name, public_name = ALIASES[module.__name__]
        pipelines = importlib.import_module(f"diffsynth_l2p.pipelines.{source}")
        setattr(module, public_name, getattr(pipelines, class_name))
        module.ModelConfig = ModelConfig
        module.__all__ = [public_name, "ModelConfig"]


def install() -> None:
    """Append the finder to ``sys.meta_path`` once."""
    if not any(isinstance(finder, PipelineAliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(PipelineAliasFinder())
