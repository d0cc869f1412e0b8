"""``Flux2L2PPipeline``: text-to-image and image-to-image with the pixel-space L2P FLUX.2 DiT.

DiffSynth's FLUX.2 pipeline with the VAE removed (the shared pixel machinery is ``L2PPixelPipeline``). Prompts are
encoded by DiffSynth's FLUX.2 Qwen3 prompt unit (hidden layers 9, 18 and 27 of the klein text encoder, padded to
512 tokens); the schedule is DiffSynth's FLUX.2 one. FLUX.2-dev's Mistral text encoder is not supported.
"""

import math
from typing import List, Optional, Sequence

import torch
from diffsynth.core import ModelConfig
from diffsynth.pipelines.flux2_image import Flux2Unit_Qwen3PromptEmbedder, Flux2Unit_ShapeChecker

from ..models.text_encoder import TEXT_ENCODER_MODEL_NAME
from .pixel_pipeline import L2PPixelPipeline, model_fn_l2p, unwrap

KLEIN_HINT = "ModelConfig(model_id='black-forest-labs/FLUX.2-klein-4B', origin_file_pattern='{}')"
# ``set_timesteps_flux2``'s mu when it is given no token count: its schedule is then shifted by exp(0.8).
STOCK_FIXED_MU = 0.8
# DiffSynth names each pipeline's model function after it; every L2P family shares this one.
model_fn_flux2_l2p = model_fn_l2p
# DiffSynth's FLUX.2 Qwen3 prompt encoding (its ``get_qwen3_prompt_embeds`` and ``hidden_states_layers``).
PROMPT_UNIT = Flux2Unit_Qwen3PromptEmbedder()


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching time shift ``shift * s / (1 + (shift - 1) * s)`` (shifts compose by multiplying)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class Flux2L2PPipeline(L2PPixelPipeline):
    """Pixel-space FLUX.2 (L2P): tokenizer + Qwen3 text encoder (klein) + ``Flux2L2PDiT``, no VAE."""

    family = "flux2"
    text_encoder_model_name = TEXT_ENCODER_MODEL_NAME
    shape_checker = Flux2Unit_ShapeChecker
    scheduler_template = "FLUX.2"
    default_tokenizer_config = ModelConfig(
        model_id="black-forest-labs/FLUX.2-klein-4B", origin_file_pattern="tokenizer/"
    )
    dit_hint = (
        "No L2P FLUX.2 DiT loaded: add ModelConfig(path='.../l2p-dit.safetensors') to model_configs. A latent "
        "FLUX.2 DiT must be converted first with `l2p convert --family flux2`."
    )
    text_encoder_hint = (
        "No Qwen3 text encoder loaded: add ModelConfig(path=[the text_encoder/*.safetensors shards]) or "
        f"{KLEIN_HINT.format('text_encoder/*.safetensors')} (klein-9B: its own text encoder) to model_configs. "
        "FLUX.2-dev's Mistral text encoder is not supported by this pipeline."
    )
    tokenizer_hint = (
        "No tokenizer loaded: pass tokenizer_config=ModelConfig(path='.../tokenizer') or "
        f"{KLEIN_HINT.format('tokenizer/')}."
    )

    def encode_prompts(self, prompts: Sequence[str]) -> List[torch.Tensor]:
        """Prompt features ``[512, 3 * text width]`` per prompt, through DiffSynth's FLUX.2 Qwen3 prompt unit."""
        embeds = PROMPT_UNIT.get_qwen3_prompt_embeds(
            self.text_encoder, self.tokenizer, list(prompts), dtype=self.torch_dtype, device=self.device
        )
        return list(embeds)

    def check_text_encoder(self) -> None:
        """The text encoder needs the layers the prompt unit reads, and 3x its width must be the DiT's text width."""
        text_config = unwrap(self.text_encoder).model.config
        layers = PROMPT_UNIT.hidden_states_layers
        text_width = unwrap(self.dit.context_embedder).weight.shape[1]
        if text_config.num_hidden_layers <= max(layers):
            raise ValueError(
                f"The text encoder has {text_config.num_hidden_layers} layers; FLUX.2's prompt encoding reads the "
                f"hidden states after layers {layers}: load the Qwen3 text encoder that belongs to this DiT."
            )
        if len(layers) * text_config.hidden_size != text_width:
            raise ValueError(
                f"{len(layers)} hidden states of the text encoder's width {text_config.hidden_size} do not make the "
                f"DiT's text width {text_width}: load the text encoder that belongs to this DiT (klein-4B: Qwen3-4B, "
                "2560; klein-9B: Qwen3-8B, 4096). FLUX.2-dev's Mistral text encoder is not supported by this pipeline."
            )
        if len(self.tokenizer) > text_config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(self.tokenizer)} tokens but the text encoder only {text_config.vocab_size}: "
                "load the tokenizer that belongs to this text encoder."
            )

    def set_inference_timesteps(
        self, num_inference_steps: int, denoising_strength: float, sigma_shift: Optional[float], height: int, width: int
    ) -> None:
        """DiffSynth's FLUX.2 schedule: shift exp(mu), mu from the token count; a ``sigma_shift`` replaces exp(mu)."""
        if sigma_shift is None:
            tokens = (height // 16) * (width // 16)
            self.scheduler.set_timesteps(num_inference_steps, denoising_strength, dynamic_shift_len=tokens)
            return
        self.scheduler.set_timesteps(num_inference_steps, denoising_strength)  # shifted by exp(STOCK_FIXED_MU)
        self.scheduler.sigmas = shift_sigmas(self.scheduler.sigmas, sigma_shift / math.exp(STOCK_FIXED_MU))
        self.scheduler.timesteps = self.scheduler.sigmas * self.scheduler.num_train_timesteps
