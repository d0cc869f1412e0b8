"""The L2P training module: DiffSynth's ``DiffusionTrainingModule`` around an L2P pipeline of any family.

Loss: DiffSynth's flow-matching SFT loss (``FlowMatchSFTLoss``: x_t = (1-σ)·x0 + σ·ε, target ε - x0, MSE) without the
scheduler's training weight, as in the release (its loss leaves the weight out), and with the noise and timestep
drawn per image instead of from the global RNG, so that noise can be seeded by each image's ``seed`` and a run is
exactly reproducible. Seeded noise is what this pipeline
draws for that seed at the image's pixel shape; the source model drew latent-shaped noise from the same seed, a
different tensor, so it is tied to the image by seed only. Timesteps are uniform over the training schedule (500
steps, shift 3 in the 1K release; 1000 steps, shift 3 with fresh noise in the UHR release), whatever the family's
sampling schedule (docs/transfer.md). With ``caption_dropout``
(not in the releases) that fraction of images trains on the empty caption, the branch classifier-free guidance
subtracts, so that a model sampled with guidance learns that branch in pixels too (docs/tiny-world.md).
"""

import hashlib
import os
from typing import Dict, List, Optional, Sequence

import torch
from diffsynth.diffusion import FlowMatchScheduler
from diffsynth.diffusion.training_module import DiffusionTrainingModule
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from ..pipelines.pixel_pipeline import L2PPixelPipeline
from ..safetensors_io import atomic_output
from .arguments import check_noise_mode
from .presets import TrainableSet


def prompt_key(prompt: str) -> str:
    """Key of a caption in the text-embedding cache."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()


@torch.no_grad()
def encode_prompts(pipe: L2PPixelPipeline, prompts: Sequence[str]) -> List[torch.Tensor]:
    """Caption features ``[L_i, text_dim]`` per prompt, through the family's stock prompt encoding."""
    return pipe.encode_prompts(prompts)


def cache_text_embeddings(
    pipe: L2PPixelPipeline, prompts: Sequence[str], path: str, encoder_id: str, batch_size: int = 16
) -> None:
    """Encode every distinct caption once into ``path`` (safetensors, one tensor per caption); reuse a valid file."""
    unique = sorted(set(prompts))
    if os.path.isfile(path):
        with safe_open(path, framework="pt") as cache:
            if (cache.metadata() or {}).get("text_encoder") == encoder_id and {prompt_key(p) for p in unique} <= set(
                cache.keys()
            ):
                return
    embeddings: Dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(unique), batch_size), desc="Encoding captions", unit="batch"):
        chunk = unique[start : start + batch_size]
        for prompt, embedding in zip(chunk, encode_prompts(pipe, chunk), strict=True):
            embeddings[prompt_key(prompt)] = embedding.detach().cpu().contiguous()
    with atomic_output(path) as temp_path:
        save_file(embeddings, temp_path, metadata={"text_encoder": encoder_id})


class L2PTrainingModule(DiffusionTrainingModule):
    """Freezes ``pipe.dit`` to a trainable set (LoRA-injected if asked) and returns the loss of a batch."""

    def __init__(
        self,
        pipe: L2PPixelPipeline,
        trainable: TrainableSet,
        noise: str = "seed",
        shift: float = 3.0,
        num_timesteps: int = 500,
        use_gradient_checkpointing: bool = True,
        text_embedding_cache: Optional[str] = None,
        caption_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pipe = pipe
        self.noise = check_noise_mode(noise)
        self.use_gradient_checkpointing = use_gradient_checkpointing
        self.text_embedding_cache = text_embedding_cache
        self.caption_dropout = caption_dropout
        self.trainable = trainable
        # The L2P training schedule (Z-Image's shift rule) for every family, in place of the pipeline's sampler.
        pipe.scheduler = FlowMatchScheduler("Z-Image")
        pipe.scheduler.set_timesteps(num_timesteps, training=True, shift=shift)
        self.apply_trainable(trainable)

    def apply_trainable(self, trainable: TrainableSet) -> None:
        """Freeze everything, inject LoRA if the set has it, then enable exactly the set's parameters."""
        self.pipe.eval()
        self.pipe.requires_grad_(False)
        if trainable.is_lora:
            self.pipe.dit = self.add_lora_to_model(
                self.pipe.dit,
                target_modules=list(trainable.lora_modules),
                lora_rank=trainable.lora_rank,
                upcast_dtype=self.pipe.torch_dtype,
            )
        # peft freezes every non-LoRA weight of the model it patches: the full-rank parts are re-enabled here.
        expected = trainable.parameter_names()
        for name, param in self.pipe.dit.named_parameters():
            param.requires_grad_(name in expected)
        enabled = {name for name, param in self.pipe.dit.named_parameters() if param.requires_grad}
        if enabled != expected:
            raise RuntimeError(f"Trainable parameters differ from preset {trainable.spec!r}: {enabled ^ expected}")
        self.pipe.dit.train()

    def prompt_embeddings(self, prompts: Sequence[str]) -> List[torch.Tensor]:
        if self.text_embedding_cache is None:
            return encode_prompts(self.pipe, prompts)
        with safe_open(self.text_embedding_cache, framework="pt", device=str(self.pipe.device)) as cache:
            return [cache.get_tensor(prompt_key(prompt)) for prompt in prompts]

    def _seeded_noise(self, shape: Sequence[int], seed: int) -> torch.Tensor:
        dtype = self.pipe.torch_dtype
        return self.pipe.generate_noise(shape, seed=int(seed), rand_device="cpu", rand_torch_dtype=dtype)

    def draw_noise(
        self, images: torch.Tensor, seeds: Sequence[Optional[int]], generator: torch.Generator
    ) -> torch.Tensor:
        """Per-image noise: from the image's seed (as the pipeline draws it for that seed) or from ``generator``."""
        shape = (1, *images.shape[1:])
        if self.noise == "seed":
            noise = [self._seeded_noise(shape, seed) for seed in seeds]
        else:
            noise = [torch.randn(shape, generator=generator).to(self.pipe.device, self.pipe.torch_dtype) for _ in seeds]
        return torch.cat(noise)

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Flow-matching loss of ``batch`` (``image`` [B,3,H,W] in [-1,1], ``prompt``, ``seed``)."""
        scheduler = self.pipe.scheduler
        x0 = batch["image"].to(self.pipe.device, self.pipe.torch_dtype)
        # Draw order as in FlowMatchSFTLoss (timestep, then noise): at batch 1 with fresh noise the two agree.
        timestep_ids = torch.randint(len(scheduler.timesteps), (len(x0),), generator=generator)
        noise = self.draw_noise(x0, batch["seed"], generator)
        timesteps = scheduler.timesteps[timestep_ids]
        prompts = list(batch["prompt"])
        if self.caption_dropout:  # drawn after the noise, so runs without dropout keep their draws
            dropped = torch.rand(len(prompts), generator=generator) < self.caption_dropout
            prompts = ["" if drop else prompt for prompt, drop in zip(prompts, dropped.tolist(), strict=True)]
        latents = torch.cat([scheduler.add_noise(x0[i : i + 1], noise[i : i + 1], t) for i, t in enumerate(timesteps)])
        prediction = self.pipe.model_fn(
            dit=self.pipe.dit,
            latents=latents,
            timestep=timesteps.to(self.pipe.device, self.pipe.torch_dtype),
            prompt_embeds=self.prompt_embeddings(prompts),
            use_gradient_checkpointing=self.use_gradient_checkpointing,
        )
        target = scheduler.training_target(x0, noise, timesteps)
        return torch.nn.functional.mse_loss(prediction.float(), target.float())
