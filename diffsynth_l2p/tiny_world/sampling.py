"""Batched text-to-image sampling of the tiny world's pipelines, for fast evaluation and image grids.

Both pipelines generate one image per call.  :func:`sample_images` runs many (prompt, seed) pairs at once with the
same pieces the pipelines use (their prompt unit, noise generator, scheduler and model function), so each image
matches the pipeline's own call with that prompt and seed up to bf16 batch rounding (``tests/test_tiny_world.py``).
"""

from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from diffsynth.pipelines.z_image import ZImagePipeline, ZImageUnit_PromptEmbedder

from ..models.backbone import latent_velocity
from ..pipelines.pixel_pipeline import guidance_at, model_fn_l2p
from .shapes import IMAGE_SIZE


def encode_prompts(pipe: Any, prompts: Sequence[str]) -> List[torch.Tensor]:
    """Caption embeddings with DiffSynth's Z-Image prompt unit (what both pipelines compute per call)."""
    unit = ZImageUnit_PromptEmbedder()
    cache = {prompt: unit.encode_prompt(pipe, prompt, device=pipe.device)[0] for prompt in set(prompts)}
    return [cache[prompt] for prompt in prompts]


def _initial_noise(pipe: Any, seeds: Sequence[int], latent: bool) -> torch.Tensor:
    if latent:  # ZImageUnit_NoiseInitializer: latent noise in the pipeline dtype
        shape = (1, 16, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
        noises = [pipe.generate_noise(shape, seed=seed, rand_torch_dtype=pipe.torch_dtype) for seed in seeds]
    else:  # L2PUnit_NoiseInitializer: pixel noise in fp32
        shape = (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        noises = [
            pipe.generate_noise(shape, seed=seed, rand_torch_dtype=torch.float32, torch_dtype=torch.float32)
            for seed in seeds
        ]
    return torch.cat(noises)


@torch.no_grad()
def _sample_batch(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    cfg_scale: float,
    cfg_max_sigma: Optional[float],
) -> List[np.ndarray]:
    latent = isinstance(pipe, ZImagePipeline)
    positive = encode_prompts(pipe, prompts)
    negative = encode_prompts(pipe, [""]) * len(prompts)
    shift = None if latent else pipe.sigma_shift_for(IMAGE_SIZE, IMAGE_SIZE)  # each pipeline's own default
    pipe.scheduler.set_timesteps(steps, denoising_strength=1.0, shift=shift)
    x = _initial_noise(pipe, seeds, latent)
    for timestep, sigma in zip(pipe.scheduler.timesteps, pipe.scheduler.sigmas, strict=True):
        scale = guidance_at(cfg_scale, cfg_max_sigma, sigma)
        embeds = positive + negative if scale != 1.0 else positive
        t = timestep.to(pipe.torch_dtype).expand(len(embeds))
        both = torch.cat([x, x]) if scale != 1.0 else x
        if latent:
            velocity = latent_velocity(pipe.dit, both, t, embeds)
        else:
            velocity = model_fn_l2p(pipe.dit, both, t, embeds, computation_dtype=pipe.torch_dtype)
        if scale != 1.0:
            posi, nega = velocity.chunk(2)
            velocity = nega + scale * (posi - nega)
        x = pipe.scheduler.step(velocity, timestep, x)
    # As each pipeline converts: the stock one from the decoder's dtype, the L2P one from fp32 pixels.
    images = pipe.vae_decoder(x) if latent else x.float()
    return [np.asarray(pipe.vae_output_to_image(image, pattern="C H W")) for image in images]


def sample_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = 20,
    cfg_scale: float = 2.0,
    batch_size: int = 64,
    cfg_max_sigma: Optional[float] = None,
) -> List[np.ndarray]:
    """One 64x64 RGB uint8 image per (prompt, seed) pair, ``batch_size`` pairs per batched forward.

    ``cfg_max_sigma`` guides only the steps whose sigma is at most it (``None``: every step, as DiffSynth's
    ``ZImagePipeline`` does); ``ZImageL2PPipeline`` takes the same argument.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"Got {len(prompts)} prompts and {len(seeds)} seeds; pass one seed per prompt.")
    images: List[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        images += _sample_batch(pipe, prompts[chunk], seeds[chunk], steps, cfg_scale, cfg_max_sigma)
    return images
