"""`from diffsynth.pipelines.z_image_L2P import ZImagePipeline, ModelConfig` — installed by diffsynth-l2p."""

from diffsynth.core import ModelConfig

from diffsynth_l2p.pipelines.z_image_l2p import ZImageL2PPipeline as ZImagePipeline

__all__ = ["ZImagePipeline", "ModelConfig"]
