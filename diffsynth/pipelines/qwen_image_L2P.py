"""`from diffsynth.pipelines.qwen_image_L2P import QwenImagePipeline, ModelConfig` — installed by diffsynth-l2p."""

from diffsynth.core import ModelConfig

from diffsynth_l2p.pipelines.qwen_image_l2p import QwenImageL2PPipeline as QwenImagePipeline

__all__ = ["QwenImagePipeline", "ModelConfig"]
