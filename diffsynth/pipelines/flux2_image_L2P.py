"""`from diffsynth.pipelines.flux2_image_L2P import Flux2ImagePipeline, ModelConfig` — installed by diffsynth-l2p."""

from diffsynth.core import ModelConfig

from diffsynth_l2p.pipelines.flux2_l2p import Flux2L2PPipeline as Flux2ImagePipeline

__all__ = ["Flux2ImagePipeline", "ModelConfig"]
