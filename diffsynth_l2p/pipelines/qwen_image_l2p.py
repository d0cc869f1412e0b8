"""``QwenImageL2PPipeline``: text-to-image and image-to-image with the pixel-space L2P Qwen-Image DiT.

DiffSynth's Qwen-Image pipeline with the VAE removed (the shared pixel machinery is ``L2PPixelPipeline``).
Prompt encoding (Qwen2.5-VL, the stock template and its 34-token drop), shape checking and the schedule (shift by
token count) are DiffSynth's own; CFG runs the positive and negative prompt as one batched DiT forward.
"""

import math
from typing import List, Optional, Sequence

import torch
from diffsynth.core import ModelConfig
from diffsynth.pipelines.qwen_image import QwenImageUnit_PromptEmbedder, QwenImageUnit_ShapeChecker

from ..families.qwen_image import TEXT_ENCODER_MODEL_NAME
from .pixel_pipeline import L2PPixelPipeline, model_fn_l2p, unwrap

TOKENIZER_HINT = "ModelConfig(model_id='Qwen/Qwen-Image', origin_file_pattern='tokenizer/')"
TEXT_ENCODER_HINT = "ModelConfig(model_id='Qwen/Qwen-Image', origin_file_pattern='text_encoder/model*.safetensors')"
# DiffSynth names each pipeline's model function after it; every L2P family shares this one.
model_fn_qwen_image_l2p = model_fn_l2p


class QwenImageL2PPipeline(L2PPixelPipeline):
    """Pixel-space Qwen-Image (L2P): tokenizer + Qwen2.5-VL text encoder + ``QwenImageL2PDiT``, no VAE."""

    family = "qwen-image"
    text_encoder_model_name = TEXT_ENCODER_MODEL_NAME
    shape_checker = QwenImageUnit_ShapeChecker
    scheduler_template = "Qwen-Image"
    default_tokenizer_config = ModelConfig(model_id="Qwen/Qwen-Image", origin_file_pattern="tokenizer/")
    dit_hint = (
        "No L2P Qwen-Image DiT loaded: add ModelConfig(path='.../l2p-dit.safetensors') to model_configs. "
        "A latent Qwen-Image DiT must be converted first with `l2p convert --family qwen-image`."
    )
    text_encoder_hint = (
        "No Qwen-Image text encoder loaded: add ModelConfig(path=[the text_encoder/*.safetensors shards]) "
        f"or {TEXT_ENCODER_HINT} to model_configs."
    )
    tokenizer_hint = (
        f"No tokenizer loaded: pass tokenizer_config=ModelConfig(path='.../tokenizer') or {TOKENIZER_HINT}."
    )

    def encode_prompts(self, prompts: Sequence[str]) -> List[torch.Tensor]:
        """Text features ``[L_i, text width]`` per prompt (the template's 34 tokens dropped), by DiffSynth's unit."""
        return list(QwenImageUnit_PromptEmbedder().encode_prompt(self, list(prompts)))

    def set_inference_timesteps(
        self, num_inference_steps: int, denoising_strength: float, sigma_shift: Optional[float], height: int, width: int
    ) -> None:
        """The stock Qwen-Image schedule: its shift grows with the token count, unless ``sigma_shift`` is given.

        The template shifts sigmas by ``exp(mu)`` (then stretches them to end at 0.02), so a shift ``s`` is
        ``mu = log(s)``; the stock rule takes ``mu`` from ``(H/16) * (W/16)`` tokens.
        """
        self.scheduler.set_timesteps(
            num_inference_steps,
            denoising_strength=denoising_strength,
            dynamic_shift_len=(height // 16) * (width // 16),
            exponential_shift_mu=None if sigma_shift is None else math.log(sigma_shift),
        )

    def check_text_encoder(self) -> None:
        """The text encoder's width must be the DiT's text width, and the tokenizer must fit its vocabulary."""
        text_config = unwrap(self.text_encoder).model.config.get_text_config()
        text_width = unwrap(self.dit.txt_in).weight.shape[1]
        if text_config.hidden_size != text_width:
            raise ValueError(
                f"The text encoder's width {text_config.hidden_size} is not the DiT's text width {text_width}: "
                "load the text encoder that belongs to this DiT (Qwen2.5-VL-7B, 3584, for Qwen-Image)."
            )
        if len(self.tokenizer) > text_config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(self.tokenizer)} tokens but the text encoder only {text_config.vocab_size}: "
                "load the tokenizer that belongs to this text encoder."
            )
