"""``ZImageL2PPipeline``: text-to-image and image-to-image with the pixel-space L2P Z-Image DiT.

DiffSynth's Z-Image pipeline with the VAE removed (the shared pixel machinery is ``L2PPixelPipeline``).
Prompt encoding, shape checking, the scheduler, CFG and the Euler step are DiffSynth's own; CFG runs the
positive and negative prompt as one batched DiT forward.
"""

import math
from typing import List, Sequence

import torch
from diffsynth.core import ModelConfig
from diffsynth.pipelines.z_image import ZImageUnit_PromptEmbedder, ZImageUnit_ShapeChecker

from ..models.text_encoder import TEXT_ENCODER_MODEL_NAME
from .pixel_pipeline import L2PPixelPipeline, model_fn_l2p, unwrap

TOKENIZER_HINT = "ModelConfig(model_id='Tongyi-MAI/Z-Image-Turbo', origin_file_pattern='tokenizer/')"
TEXT_ENCODER_HINT = "ModelConfig(model_id='Tongyi-MAI/Z-Image-Turbo', origin_file_pattern='text_encoder/*.safetensors')"
# DiffSynth names each pipeline's model function after it; every L2P family shares this one.
model_fn_z_image_l2p = model_fn_l2p


def default_sigma_shift(height: int, width: int) -> float:
    """Scheduler shift: 3 up to 1024x1024 pixels, then +0.75 per doubling of the side (3.75 at 2K, 4.5 at 4K)."""
    area_ratio = height * width / (1024 * 1024)
    return 3.0 if area_ratio <= 1 else 3.0 + 0.375 * math.log2(area_ratio)


class ZImageL2PPipeline(L2PPixelPipeline):
    """Pixel-space Z-Image (L2P): tokenizer + Qwen3 text encoder + ``ZImageL2PDiT``, no VAE."""

    family = "z-image"
    text_encoder_model_name = TEXT_ENCODER_MODEL_NAME
    shape_checker = ZImageUnit_ShapeChecker
    prompt_unit = ZImageUnit_PromptEmbedder
    scheduler_template = "Z-Image"
    default_tokenizer_config = ModelConfig(model_id="Tongyi-MAI/Z-Image-Turbo", origin_file_pattern="tokenizer/")
    dit_hint = (
        "No L2P DiT loaded: add ModelConfig(path='.../model-1k-merge.safetensors') (or another L2P checkpoint) "
        "to model_configs. A latent Z-Image DiT must be converted first with `l2p convert`."
    )
    text_encoder_hint = (
        "No Z-Image text encoder loaded: add ModelConfig(path=[the text_encoder/*.safetensors shards]) "
        f"or {TEXT_ENCODER_HINT} to model_configs."
    )
    tokenizer_hint = (
        f"No tokenizer loaded: pass tokenizer_config=ModelConfig(path='.../tokenizer') or {TOKENIZER_HINT}."
    )

    def encode_prompts(self, prompts: Sequence[str]) -> List[torch.Tensor]:
        """Caption features ``[L_i, cap_feat_dim]`` per prompt, through DiffSynth's Z-Image prompt unit."""
        return ZImageUnit_PromptEmbedder().encode_prompt(self, list(prompts), device=self.device)

    def check_text_encoder(self) -> None:
        """The text encoder's width must be the DiT's caption width, and the tokenizer must fit its vocabulary."""
        text_config = unwrap(self.text_encoder).model.config
        caption_width = unwrap(self.dit.cap_embedder[0]).weight.shape[0]
        if text_config.hidden_size != caption_width:
            raise ValueError(
                f"The text encoder's width {text_config.hidden_size} is not the DiT's caption width {caption_width}: "
                "load the text encoder that belongs to this DiT (Qwen3-4B, 2560, for the released L2P models)."
            )
        if len(self.tokenizer) > text_config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(self.tokenizer)} tokens but the text encoder only {text_config.vocab_size}: "
                "load the tokenizer that belongs to this text encoder."
            )

    def check_token_grid(self, height: int, width: int) -> None:
        """The image's token grid must fit the DiT's position embedding (``axes_lens``)."""
        patch = self.dit.patch_size
        max_h, max_w = self.dit.axes_lens[1], self.dit.axes_lens[2]
        if height // patch > max_h or width // patch > max_w:
            raise ValueError(
                f"{height}x{width} is a {height // patch}x{width // patch} token grid; this DiT's position embedding "
                f"covers at most {max_h}x{max_w} tokens ({max_h * patch}x{max_w * patch} pixels)."
            )

    def sigma_shift_for(self, height: int, width: int) -> float:
        """The shift used when a call gives none: the config's, else ``default_sigma_shift(height, width)``."""
        shift = self.config.default_sigma_shift
        return default_sigma_shift(height, width) if shift is None else shift
