"""The tiny source latent model (teacher): train the autoencoder, then a stock ``ZImageDiT`` on its latents.

The teacher is a DiffSynth latent Z-Image model set that DiffSynth's **own** ``ZImagePipeline`` loads:

- ``dit.safetensors``: stock ``ZImageDiT`` (patch 2, 16 latent channels) with the tiny L2P backbone sizes, so
  ``l2p convert`` maps it onto the tiny L2P DiT;
- ``vae_encoder.safetensors`` / ``vae_decoder.safetensors``: :mod:`.autoencoder` (registered as
  ``flux_vae_encoder`` / ``flux_vae_decoder``);
- ``text_encoder/`` and ``tokenizer/``: the frozen random tiny text encoder of ``build_tiny_l2p(seed=0)``, the
  same one the L2P student uses.

Training goes through DiffSynth's ``model_fn_z_image_turbo`` (its time and sign conventions), vmapped over the
batch, in bf16 (the stock time embedder casts to bf16) with fp32 master weights.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from diffsynth.core import ModelConfig, hash_state_dict_keys
from diffsynth.diffusion.flow_match import FlowMatchScheduler
from diffsynth.models.z_image_dit import ZImageDiT
from safetensors.torch import save_file
from tqdm import tqdm

from ..atomic import atomic_directory
from ..models.configs import L2P_CONFIGS
from ..registry import register_model
from .autoencoder import TinyVAEDecoder, TinyVAEEncoder
from .shapes import sample_dataset

ASSETS_DIR = Path(__file__).parent / "assets" / "teacher"
DIT_FILE, VAE_ENCODER_FILE, VAE_DECODER_FILE = "dit.safetensors", "vae_encoder.safetensors", "vae_decoder.safetensors"
TEXT_ENCODER_DIR, TOKENIZER_DIR, SUMMARY_FILE = "text_encoder", "tokenizer", "teacher.json"
TEXT_ENCODER_SEED = 0  # build_tiny_l2p(seed=0): the student's text encoder

# The tiny L2P backbone (dim, layers, heads, caption width, RoPE) with the stock latent patchify.
TEACHER_DIT_CONFIG = {
    **{key: value for key, value in L2P_CONFIGS["tiny"].kwargs.items() if not key.startswith("head_")},
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
}
DIT_CLASS = "diffsynth.models.z_image_dit.ZImageDiT"
VAE_ENCODER_CLASS = f"{TinyVAEEncoder.__module__}.{TinyVAEEncoder.__qualname__}"
VAE_DECODER_CLASS = f"{TinyVAEDecoder.__module__}.{TinyVAEDecoder.__qualname__}"


def _meta_hash(model_class: type, **kwargs) -> str:
    with torch.device("meta"):
        return hash_state_dict_keys(model_class(**kwargs).state_dict())


def register_teacher_models() -> Dict[str, str]:
    """Register the teacher DiT and autoencoder halves under DiffSynth's Z-Image names; return their hashes."""
    hashes = {
        "dit": _meta_hash(ZImageDiT, **TEACHER_DIT_CONFIG),
        "vae_encoder": _meta_hash(TinyVAEEncoder),
        "vae_decoder": _meta_hash(TinyVAEDecoder),
    }
    register_model(hashes["dit"], "z_image_dit", DIT_CLASS, TEACHER_DIT_CONFIG)
    register_model(hashes["vae_encoder"], "flux_vae_encoder", VAE_ENCODER_CLASS)
    register_model(hashes["vae_decoder"], "flux_vae_decoder", VAE_DECODER_CLASS)
    return hashes


def teacher_model_configs(model_dir: Union[str, os.PathLike, None] = None) -> Tuple[List[ModelConfig], ModelConfig]:
    """``(model_configs, tokenizer_config)`` of a teacher directory (default: the shipped teacher)."""
    model_dir = Path(model_dir) if model_dir is not None else ASSETS_DIR
    if not (model_dir / DIT_FILE).is_file():
        raise FileNotFoundError(
            f"{model_dir} holds no tiny-world teacher ({DIT_FILE} missing); train one with `l2p tiny-world teacher`."
        )
    files = [DIT_FILE, f"{TEXT_ENCODER_DIR}/model.safetensors", VAE_ENCODER_FILE, VAE_DECODER_FILE]
    return [ModelConfig(path=str(model_dir / name)) for name in files], ModelConfig(path=str(model_dir / TOKENIZER_DIR))


def load_teacher(model_dir: Union[str, os.PathLike, None] = None, device: str = "cpu"):
    """The teacher as DiffSynth's stock ``ZImagePipeline`` (bf16: the stock time embedder requires it)."""
    from diffsynth.pipelines.z_image import ZImagePipeline

    from ..tiny import register_tiny_models

    register_tiny_models()
    register_teacher_models()
    model_configs, tokenizer_config = teacher_model_configs(model_dir)
    return ZImagePipeline.from_pretrained(
        torch_dtype=torch.bfloat16, device=device, model_configs=model_configs, tokenizer_config=tokenizer_config
    )


def _warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of the steps, then cosine decay to 10% of the peak rate."""
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _images_to_tensor(images: List) -> torch.Tensor:
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])  # (N, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_autoencoder(
    images: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, latent_noise: float = 0.1
) -> Tuple[TinyVAEEncoder, TinyVAEDecoder, List[float]]:
    """Train encoder + decoder on images in [-1, 1] (MSE, bf16 autocast; noise on the code makes the decoder forgiving).

    The per-channel code statistics are measured afterwards and stored in both halves' buffers.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder, decoder = TinyVAEEncoder(), TinyVAEDecoder()
    parameters = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = _warmup_cosine(optimizer, steps)
    losses = []
    for _ in tqdm(range(steps), desc="autoencoder", mininterval=5):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
        with torch.autocast("cpu", dtype=torch.bfloat16):  # ~3x faster convs on CPUs with bf16 units
            code = encoder.encode(batch).float()
            noisy = code + latent_noise * code.detach().std() * torch.randn(code.shape, generator=generator)
            reconstruction = decoder.decode(noisy)
        loss = torch.nn.functional.mse_loss(reconstruction.float(), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    with torch.no_grad():
        codes = torch.cat([encoder.encode(chunk) for chunk in images.split(512)])
        mean, std = codes.mean((0, 2, 3)), codes.std((0, 2, 3))
    for half in (encoder, decoder):
        half.latent_mean.copy_(mean)
        half.latent_std.copy_(std)
    return encoder.eval(), decoder.eval(), losses


def encode_captions(text_encoder_dir: Path, tokenizer_dir: Path, captions: List[str]) -> Dict[str, torch.Tensor]:
    """Caption embeddings exactly as the stock pipeline computes them (``ZImageUnit_PromptEmbedder``, bf16)."""
    from diffsynth.pipelines.z_image import ZImagePipeline, ZImageUnit_PromptEmbedder

    from ..tiny import register_tiny_models

    register_tiny_models()
    pipe = ZImagePipeline.from_pretrained(
        torch_dtype=torch.bfloat16,
        device="cpu",
        model_configs=[ModelConfig(path=str(text_encoder_dir / "model.safetensors"))],
        tokenizer_config=ModelConfig(path=str(tokenizer_dir)),
    )
    unit = ZImageUnit_PromptEmbedder()
    with torch.no_grad():
        return {caption: unit.encode_prompt(pipe, caption, device="cpu")[0] for caption in captions}


def _init_dit(seed: int) -> ZImageDiT:
    """Seeded ``ZImageDiT``: matrices ~ N(0, 1/fan_in), norms 1, biases 0; output layer zero (predicts 0 first)."""
    from ..tiny import init_weights

    dit = ZImageDiT(**TEACHER_DIT_CONFIG)
    init_weights(dit, seed)
    with torch.no_grad():
        for name, param in dit.named_parameters():
            if name.startswith("all_final_layer") and ".linear." in name:
                param.zero_()
    return dit


def train_dit(
    latents: torch.Tensor,
    captions: List[str],
    embeddings: Dict[str, torch.Tensor],
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    uncond_prob: float = 0.1,
    ema_decay: float = 0.99,
) -> Tuple[ZImageDiT, List[float]]:
    """Flow-matching training of the teacher DiT through DiffSynth's ``model_fn_z_image_turbo``.

    ``x_t = (1 - s) x0 + s eps`` at the Z-Image schedule's training timesteps (shift 3); target ``eps - x0``.
    Each batch shares one caption length (vmap needs equal shapes); a ``uncond_prob`` share of batches uses the
    empty prompt (for CFG).  Returns the EMA weights in bf16 and the loss curve.
    """
    from diffsynth.pipelines.z_image import model_fn_z_image_turbo
    from torch.func import vmap
    from torch.nn.attention import SDPBackend, sdpa_kernel

    generator = torch.Generator().manual_seed(seed)
    scheduler = FlowMatchScheduler("Z-Image")
    scheduler.set_timesteps(1000, training=True)

    dit = _init_dit(seed).to(torch.bfloat16).train()
    master = [param.detach().float().clone().requires_grad_(True) for param in dit.parameters()]
    ema = [param.detach().clone() for param in master]
    optimizer = torch.optim.AdamW(master, lr=lr, weight_decay=0.01)
    schedule = _warmup_cosine(optimizer, steps)

    buckets: Dict[int, List[int]] = {}
    for index, caption in enumerate(captions):
        buckets.setdefault(len(embeddings[caption]), []).append(index)
    lengths = sorted(buckets)
    weights = torch.tensor([len(buckets[length]) for length in lengths], dtype=torch.float)
    empty = embeddings[""]

    def velocity(x, timestep, prompt_embeds):  # one sample; vmapped over the batch
        return model_fn_z_image_turbo(dit, latents=x[None], timestep=timestep[None], prompt_embeds=[prompt_embeds])[0]

    losses = []
    with sdpa_kernel(SDPBackend.MATH):  # the CPU flash kernel has no vmap batching rule
        for _ in tqdm(range(steps), desc="teacher dit", mininterval=5):
            bucket = buckets[lengths[torch.multinomial(weights, 1, generator=generator).item()]]
            picks = torch.tensor(bucket)[torch.randint(len(bucket), (batch_size,), generator=generator)]
            if torch.rand((), generator=generator) < uncond_prob:
                prompt_embeds = empty.expand(batch_size, *empty.shape)
            else:
                prompt_embeds = torch.stack([embeddings[captions[i]] for i in picks.tolist()])
            x0 = latents[picks]
            noise = torch.randn(x0.shape, generator=generator)
            timestep_ids = torch.randint(len(scheduler.timesteps), (batch_size,), generator=generator)
            sigma = scheduler.sigmas[timestep_ids].view(-1, 1, 1, 1)
            noisy = ((1 - sigma) * x0 + sigma * noise).to(torch.bfloat16)
            timestep = scheduler.timesteps[timestep_ids].to(torch.bfloat16)
            prediction = vmap(velocity)(noisy, timestep, prompt_embeds.to(torch.bfloat16))
            loss = torch.nn.functional.mse_loss(prediction.float(), scheduler.training_target(x0, noise, None))
            dit.zero_grad(set_to_none=True)
            loss.backward()
            for master_param, param in zip(master, dit.parameters(), strict=True):
                master_param.grad = param.grad.float()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for master_param, ema_param, param in zip(master, ema, dit.parameters(), strict=True):
                    ema_param.lerp_(master_param, 1 - ema_decay)
                    param.copy_(master_param)
            losses.append(loss.item())
    with torch.no_grad():
        for ema_param, param in zip(ema, dit.parameters(), strict=True):
            param.copy_(ema_param)
    return dit.eval(), losses


def _save(module: torch.nn.Module, path: Path, dtype: Optional[torch.dtype] = None) -> None:
    state_dict = {
        key: value.detach().to(dtype or value.dtype).contiguous() for key, value in module.state_dict().items()
    }
    save_file(state_dict, str(path))
    path.chmod(0o644)  # safetensors writes 0600


def train_teacher(
    out_dir: Union[str, os.PathLike],
    ae_steps: int = 2000,
    dit_steps: int = 1000,
    dataset_size: int = 20000,
    ae_batch_size: int = 32,
    dit_batch_size: int = 128,
    dit_lr: float = 2e-3,
    seed: int = 0,
) -> Dict[str, object]:
    """Train the tiny-world teacher from scratch into ``out_dir`` (new or empty; written atomically).

    Data: ``dataset_size`` seeded shapes-world images (held-out pairs excluded).  Returns the training summary
    (also written to ``teacher.json``): steps, seconds per phase, final losses, file sizes.
    """
    from ..tiny import build_tiny_l2p

    with atomic_directory(out_dir, "the teacher") as staging:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tiny_dir:
            tiny_files = build_tiny_l2p(Path(tiny_dir) / "tiny", seed=TEXT_ENCODER_SEED)
            (staging / TEXT_ENCODER_DIR).mkdir()
            shutil.copyfile(tiny_files["text_encoder"][0], staging / TEXT_ENCODER_DIR / "model.safetensors")
            shutil.copytree(tiny_files["tokenizer"], staging / TOKENIZER_DIR)

        images, captions = zip(*sample_dataset(dataset_size, seed), strict=True)
        pixels = _images_to_tensor(list(images))
        encoder, decoder, ae_losses = train_autoencoder(pixels, ae_steps, ae_batch_size, seed=seed)
        _save(encoder, staging / VAE_ENCODER_FILE)
        _save(decoder, staging / VAE_DECODER_FILE)
        ae_seconds = time.perf_counter() - start

        with torch.no_grad():
            latents = torch.cat([encoder(chunk) for chunk in pixels.split(512)])
        embeddings = encode_captions(staging / TEXT_ENCODER_DIR, staging / TOKENIZER_DIR, sorted(set(captions)) + [""])
        dit, dit_losses = train_dit(latents, list(captions), embeddings, dit_steps, dit_batch_size, dit_lr, seed=seed)
        _save(dit, staging / DIT_FILE, torch.bfloat16)

        summary = {
            "seed": seed,
            "dataset_size": dataset_size,
            "ae_steps": ae_steps,
            "dit_steps": dit_steps,
            "dit_batch_size": dit_batch_size,
            "dit_lr": dit_lr,
            "ae_final_loss": float(np.mean(ae_losses[-50:])),
            "dit_final_loss": float(np.mean(dit_losses[-50:])),
            "ae_seconds": round(ae_seconds, 1),
            "total_seconds": round(time.perf_counter() - start, 1),
            "torch_threads": torch.get_num_threads(),
            "bytes": {path.name: path.stat().st_size for path in sorted(staging.glob("*.safetensors"))},
        }
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
