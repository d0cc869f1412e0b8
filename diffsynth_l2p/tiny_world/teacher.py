"""The tiny source latent model (teacher): train the autoencoder, then a stock ``ZImageDiT`` and its text encoder.

The teacher is a DiffSynth latent Z-Image model set that DiffSynth's **own** ``ZImagePipeline`` runs:

- ``dit.safetensors``: stock ``ZImageDiT`` (patch 2 on 8x8x16 latents = a 4x4 token grid) with the tiny L2P
  backbone sizes, so ``l2p convert`` maps it onto the tiny L2P DiT (patch 16 on 64x64 pixels = the same grid);
- ``vae_encoder.safetensors`` / ``vae_decoder.safetensors``: the 8x-down, 16-channel :mod:`.autoencoder`;
- ``text_encoder/`` and ``tokenizer/``: the tiny Qwen3 text encoder (it starts as ``build_tiny_l2p(seed=0)``'s and
  learns with the DiT, as a stand-in for a pretrained one, with its attention off so that each word's feature is its
  own; ``TeacherRecipe.text_attention=True`` keeps it) and the word-level tokenizer; the student keeps both.

Training is resumable: the autoencoder and periodic DiT states are kept in a work directory, and a rerun
continues from the last state with the same result as an uninterrupted run.
"""

import copy
import functools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from diffsynth.core import ModelConfig
from diffsynth.diffusion.flow_match import FlowMatchScheduler
from diffsynth.models.z_image_dit import ZImageDiT
from diffsynth.pipelines.z_image import ZImagePipeline, ZImageUnit_PromptEmbedder
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from ..atomic import atomic_directory, atomic_path
from ..families.z_image import TINY_LATENT_KWARGS
from ..model_set import DEFAULT_MODEL_DIR
from ..models.backbone import latent_velocity, run_time_embedder_in_weight_dtype
from ..models.configs import TINY_TEXT_ENCODER_CONFIG
from ..models.text_encoder import Qwen3TextEncoder
from ..registry import meta_hash, register_all, register_model
from ..safetensors_io import save_module
from ..tiny import build_tiny_l2p, init_weights
from ..validation import resolve_dtype
from .autoencoder import TinyVAEDecoder, TinyVAEEncoder
from .shapes import sample_codec_images, sample_dataset

ASSETS_DIR = DEFAULT_MODEL_DIR / "teacher"  # shares the student's text encoder and tokenizer (its parent)
DIT_FILE, VAE_ENCODER_FILE, VAE_DECODER_FILE = "dit.safetensors", "vae_encoder.safetensors", "vae_decoder.safetensors"
TEXT_ENCODER_DIR, TOKENIZER_DIR, SUMMARY_FILE = "text_encoder", "tokenizer", "teacher.json"
TEXT_ENCODER_SEED = 0  # the text encoder starts as build_tiny_l2p(seed=0)'s
CAPTION_TOKENS = 64  # every shapes-world caption with the chat template fits (the stock unit pads to 512)

# The tiny L2P backbone (dim, layers, heads, caption width, RoPE) with the stock latent patchify.
TEACHER_DIT_CONFIG = TINY_LATENT_KWARGS
DIT_CLASS = "diffsynth.models.z_image_dit.ZImageDiT"
VAE_ENCODER_CLASS = f"{TinyVAEEncoder.__module__}.{TinyVAEEncoder.__qualname__}"
VAE_DECODER_CLASS = f"{TinyVAEDecoder.__module__}.{TinyVAEDecoder.__qualname__}"
# Names of our own in DiffSynth's registry: the teacher's parts never pose as DiffSynth's real models.
DIT_MODEL_NAME = "l2p_tiny_world_teacher_dit"
VAE_ENCODER_MODEL_NAME = "l2p_tiny_world_vae_encoder"
VAE_DECODER_MODEL_NAME = "l2p_tiny_world_vae_decoder"


@dataclass(frozen=True)
class TeacherRecipe:
    """Data, autoencoder and DiT hyper-parameters of the teacher (the defaults are the shipped teacher's)."""

    dataset_size: int = 20000
    ae_steps: int = 2000
    ae_batch_size: int = 32
    ae_lr: float = 1e-3
    ae_max_final_loss: Optional[float] = 0.02  # a learned codec reaches ~0.003, a flat image ~0.17; None: no check
    # Then the decoder alone, on codes with more noise (0 steps: skipped), so guided samples decode cleaner.
    decoder_steps: int = 2000
    decoder_latent_noise: float = 0.3
    dit_steps: int = 10000
    dit_batch_size: int = 32
    dit_lr: float = 1e-3
    ema_decay: float = 0.998  # reached after the warm-up min(ema_decay, (1 + step) / (10 + step))
    uncond_prob: float = 0.1
    # False: the text encoder's attention is off, so each caption token's feature is that word's alone and the DiT
    # binds colors to shapes itself (docs/tiny-world.md, "Words that do not blend").
    text_attention: bool = False
    checkpoint_every: int = 500
    curve_every: int = 1000  # steps between probes of the EMA teacher (the score-vs-time curve)
    seed: int = 0


@functools.cache
def register_teacher_models() -> Dict[str, str]:
    """Register the teacher DiT and autoencoder halves under the tiny world's own names; return their hashes."""
    hashes = {
        "dit": meta_hash(ZImageDiT, **TEACHER_DIT_CONFIG),
        "vae_encoder": meta_hash(TinyVAEEncoder),
        "vae_decoder": meta_hash(TinyVAEDecoder),
    }
    register_model(hashes["dit"], DIT_MODEL_NAME, DIT_CLASS, TEACHER_DIT_CONFIG)
    register_model(hashes["vae_encoder"], VAE_ENCODER_MODEL_NAME, VAE_ENCODER_CLASS)
    register_model(hashes["vae_decoder"], VAE_DECODER_MODEL_NAME, VAE_DECODER_CLASS)
    return hashes


def text_encoder_home(model_dir: Path) -> Path:
    """The directory holding a teacher's ``text_encoder/`` and ``tokenizer/``: its own, or else its parent's."""
    return model_dir if (model_dir / TOKENIZER_DIR).is_dir() else model_dir.parent


def teacher_model_configs(model_dir: Union[str, os.PathLike, None] = None) -> Tuple[List[ModelConfig], ModelConfig]:
    """``(model_configs, tokenizer_config)`` of a teacher directory (default: the shipped teacher).

    The model configs are, in order: text encoder, DiT, autoencoder encoder, autoencoder decoder.  The text
    encoder and tokenizer are taken from the directory, or else from its parent (the shipped layout, where the
    teacher shares them with the student).
    """
    model_dir = Path(model_dir) if model_dir is not None else ASSETS_DIR
    if not (model_dir / DIT_FILE).is_file():
        raise FileNotFoundError(
            f"{model_dir} holds no tiny-world teacher ({DIT_FILE} missing); make one with `l2p tiny-world reproduce`."
        )
    text_dir = text_encoder_home(model_dir)
    files = [text_dir / TEXT_ENCODER_DIR / "model.safetensors"] + [
        model_dir / name for name in (DIT_FILE, VAE_ENCODER_FILE, VAE_DECODER_FILE)
    ]
    return [ModelConfig(path=str(path)) for path in files], ModelConfig(path=str(text_dir / TOKENIZER_DIR))


def load_teacher(
    model_dir: Union[str, os.PathLike, None] = None, device: str = "cpu", torch_dtype: Optional[torch.dtype] = None
) -> ZImagePipeline:
    """The teacher as DiffSynth's stock ``ZImagePipeline`` (``torch_dtype`` default: fp32 on CPU, bf16 on CUDA).

    DiffSynth's loader reads every file; the DiT and the autoencoder, registered under the tiny world's own
    names, are then put in the pipeline's ``dit`` / ``vae_encoder`` / ``vae_decoder`` slots.
    """
    register_all()
    register_teacher_models()
    torch_dtype = torch_dtype or resolve_dtype(None, device)
    (text_encoder, *parts), tokenizer_config = teacher_model_configs(model_dir)
    pipe = ZImagePipeline.from_pretrained(
        torch_dtype=torch_dtype, device=device, model_configs=[text_encoder], tokenizer_config=tokenizer_config
    )
    pool = pipe.download_and_load_models(parts)
    pipe.dit = run_time_embedder_in_weight_dtype(pool.fetch_model(DIT_MODEL_NAME))
    pipe.vae_encoder = pool.fetch_model(VAE_ENCODER_MODEL_NAME)
    pipe.vae_decoder = pool.fetch_model(VAE_DECODER_MODEL_NAME)
    return pipe


def images_to_tensor(images: List) -> torch.Tensor:
    """PIL images -> ``[N, 3, H, W]`` in [-1, 1]."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])  # (N, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def _fit_codec(
    encode: Callable[[torch.Tensor], torch.Tensor],
    decoder: TinyVAEDecoder,
    parameters: List[torch.nn.Parameter],
    images: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    latent_noise: float,
    generator: torch.Generator,
    desc: str,
) -> List[float]:
    """Minimise MSE(decode(encode(x) + noise), x) over ``parameters``; the noise is ``latent_noise`` code stds."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    losses = []
    for _ in tqdm(range(steps), desc=desc, mininterval=5):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
        code = encode(batch)
        noisy = code + latent_noise * code.detach().std() * torch.randn(code.shape, generator=generator)
        loss = torch.nn.functional.mse_loss(decoder.decode(noisy), batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)  # one early spike can otherwise freeze it on a flat image
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def train_autoencoder(
    images: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, latent_noise: float = 0.1
) -> Tuple[TinyVAEEncoder, TinyVAEDecoder, List[float]]:
    """Train encoder + decoder on images in [-1, 1] (MSE; noise on the code makes the decoder forgiving).

    The per-channel code statistics are measured afterwards and stored in both halves' buffers.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder, decoder = TinyVAEEncoder(), TinyVAEDecoder()
    parameters = list(encoder.parameters()) + list(decoder.parameters())
    losses = _fit_codec(
        encoder.encode, decoder, parameters, images, steps, batch_size, lr, latent_noise, generator, "autoencoder"
    )
    with torch.no_grad():
        codes = torch.cat([encoder.encode(chunk) for chunk in images.split(512)])
        mean, std = codes.mean((0, 2, 3)), codes.std((0, 2, 3))
    for half in (encoder, decoder):
        half.latent_mean.copy_(mean)
        half.latent_std.copy_(std)
    return encoder.eval(), decoder.eval(), losses


def fine_tune_decoder(
    encoder: TinyVAEEncoder,
    decoder: TinyVAEDecoder,
    images: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    latent_noise: float = 0.3,
) -> List[float]:
    """Train the decoder alone (in place) on noisier codes of the frozen encoder; returns the losses.

    The latent space, and so everything the DiT learns, stays the same; the decoder learns to draw clean shapes
    from the imprecise latents a guided sampler ends on (docs/tiny-world.md, "A decoder for guided latents").
    """
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def encode(batch: torch.Tensor) -> torch.Tensor:
        return encoder.encode(batch)

    decoder.train()
    parameters = list(decoder.parameters())
    losses = _fit_codec(encode, decoder, parameters, images, steps, batch_size, lr, latent_noise, generator, "decoder")
    decoder.eval()
    return losses


def load_text_parts(model_dir: Path) -> Tuple[torch.nn.Module, Any]:
    """The text encoder (fp32) and tokenizer of a model set laid out like ``build_tiny_l2p``'s."""
    encoder = Qwen3TextEncoder(**TINY_TEXT_ENCODER_CONFIG)
    encoder.load_state_dict(load_file(model_dir / TEXT_ENCODER_DIR / "model.safetensors"))
    return encoder, AutoTokenizer.from_pretrained(str(model_dir / TOKENIZER_DIR))


def switch_off_attention(text_encoder: torch.nn.Module) -> None:
    """Zero the attention output projections and freeze the attention: each token's state then depends on it alone."""
    for name, param in text_encoder.named_parameters():
        if ".self_attn." in name:
            param.requires_grad_(False)
            if name.endswith("o_proj.weight"):
                with torch.no_grad():
                    param.zero_()


def init_dit(seed: int, config: Optional[Dict[str, Any]] = None) -> ZImageDiT:
    """Seeded ``ZImageDiT``: matrices ~ N(0, 1/fan_in), norms 1, biases 0.

    The output layer and every block's modulation start at zero (adaLN-Zero: each block starts as the identity
    and the model predicts 0), which makes a small DiT learn several times faster than a plain init.
    """
    dit = ZImageDiT(**(config or TEACHER_DIT_CONFIG))
    init_weights(dit, seed)
    with torch.no_grad():
        for name, param in dit.named_parameters():
            if (name.startswith("all_final_layer") and ".linear." in name) or ".adaLN_modulation." in name:
                param.zero_()
    return dit


class DiTTrainer:
    """Flow-matching training of the teacher DiT and its text encoder, batched through :func:`latent_velocity`.

    ``latent_velocity`` equals DiffSynth's ``model_fn_z_image_turbo`` (the stock pipeline's model function) per
    sample, and captions are encoded by DiffSynth's own prompt unit, so training sees exactly what the stock
    pipeline computes.  ``x_t = (1 - s) x0 + s eps`` at the Z-Image schedule's training timesteps (shift 3);
    target ``eps - x0``.  Each caption is replaced by the empty prompt with probability ``uncond_prob`` (for
    CFG).  The text encoder learns with the DiT (a stand-in for a pretrained one, whose features already name
    colors and shapes), with its attention off unless ``recipe.text_attention``; the student later keeps it
    frozen.  Both train in fp32 with an fp32 EMA and ship in bf16.
    """

    def __init__(
        self,
        latents: torch.Tensor,
        captions: List[str],
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        recipe: TeacherRecipe,
        config: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.latents, self.captions, self.recipe = latents, captions, recipe
        self.scheduler = FlowMatchScheduler("Z-Image")
        self.scheduler.set_timesteps(1000, training=True)
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.dit = run_time_embedder_in_weight_dtype(init_dit(recipe.seed, config).train())
        if not recipe.text_attention:
            switch_off_attention(text_encoder)
        self.text = SimpleNamespace(text_encoder=text_encoder.float().train(), tokenizer=tokenizer)
        self.params = list(self.dit.parameters()) + list(text_encoder.parameters())
        self.ema = [param.detach().clone() for param in self.params]
        self.optimizer = torch.optim.AdamW(self.params, lr=recipe.dit_lr, betas=(0.9, 0.99), weight_decay=0.01)
        self.schedule = get_cosine_schedule_with_warmup(
            self.optimizer, max(1, recipe.dit_steps // 20), recipe.dit_steps
        )
        self.step, self.losses, self.seconds = 0, [], 0.0
        self.curve: List[Dict[str, float]] = []

    def encode(self, prompts: List[str]) -> List[torch.Tensor]:
        """Caption embeddings through DiffSynth's prompt unit (each distinct prompt once), with gradients."""
        distinct = sorted(set(prompts))
        # encode_prompt rewrites its list in place (chat template), so it gets a copy.
        unit = ZImageUnit_PromptEmbedder()
        embeds = unit.encode_prompt(self.text, list(distinct), max_sequence_length=CAPTION_TOKENS)
        by_prompt = dict(zip(distinct, embeds, strict=True))
        return [by_prompt[prompt] for prompt in prompts]

    def train_step(self) -> float:
        start = time.perf_counter()
        batch_size = self.recipe.dit_batch_size
        picks = torch.randint(len(self.latents), (batch_size,), generator=self.generator)
        dropped = torch.rand(batch_size, generator=self.generator) < self.recipe.uncond_prob
        prompts = ["" if drop else self.captions[i] for i, drop in zip(picks.tolist(), dropped.tolist(), strict=True)]
        x0 = self.latents[picks]
        noise = torch.randn(x0.shape, generator=self.generator)
        timestep_ids = torch.randint(len(self.scheduler.timesteps), (batch_size,), generator=self.generator)
        sigma = self.scheduler.sigmas[timestep_ids].view(-1, 1, 1, 1)
        noisy = (1 - sigma) * x0 + sigma * noise
        prediction = latent_velocity(self.dit, noisy, self.scheduler.timesteps[timestep_ids], self.encode(prompts))
        loss = torch.nn.functional.mse_loss(prediction, self.scheduler.training_target(x0, noise, None))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        decay = min(self.recipe.ema_decay, (1 + self.step) / (10 + self.step))  # no lag behind the random init
        with torch.no_grad():
            for ema_param, param in zip(self.ema, self.params, strict=True):
                ema_param.lerp_(param, 1 - decay)
        self.step += 1
        self.losses.append(loss.item())
        self.seconds += time.perf_counter() - start
        return self.losses[-1]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "step": self.step,
            "losses": self.losses,
            "seconds": self.seconds,
            "curve": self.curve,
            "weights": self.params,
            "ema": self.ema,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step, self.losses, self.seconds = state["step"], list(state["losses"]), state["seconds"]
        self.curve = list(state["curve"])
        with torch.no_grad():
            for target, source in zip(self.params + self.ema, state["weights"] + state["ema"], strict=True):
                target.copy_(source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])

    def ema_models(self) -> Tuple[ZImageDiT, torch.nn.Module]:
        """Copies of the DiT and text encoder with the EMA weights (the teacher that ships)."""
        dit, text_encoder = copy.deepcopy(self.dit).eval(), copy.deepcopy(self.text.text_encoder).eval()
        with torch.no_grad():
            copies = list(dit.parameters()) + list(text_encoder.parameters())
            for ema_param, param in zip(self.ema, copies, strict=True):
                param.copy_(ema_param)
        return dit, text_encoder


Probe = Callable[[ZImageDiT, torch.nn.Module], Dict[str, float]]


def train_dit(
    latents: torch.Tensor,
    captions: List[str],
    text_encoder: torch.nn.Module,
    tokenizer: Any,
    recipe: TeacherRecipe,
    state_path: Optional[Path] = None,
    probe: Optional[Probe] = None,
) -> Tuple[ZImageDiT, torch.nn.Module, List[float], List[Dict[str, float]]]:
    """Run :class:`DiTTrainer` to ``recipe.dit_steps``; with ``state_path``, resume from and save states there.

    Every ``recipe.curve_every`` steps and at the end, ``probe`` scores the EMA DiT and text encoder; the scores,
    with the step and the training seconds so far, make the returned curve.
    """
    trainer = DiTTrainer(latents, captions, text_encoder, tokenizer, recipe)
    if state_path is not None and state_path.exists():
        trainer.load_state_dict(torch.load(state_path, weights_only=True))
    with tqdm(total=recipe.dit_steps, initial=trainer.step, desc="teacher dit", mininterval=5) as progress:
        while trainer.step < recipe.dit_steps:
            loss = trainer.train_step()
            progress.update()
            progress.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if probe is not None and (trainer.step % recipe.curve_every == 0 or trainer.step == recipe.dit_steps):
                scores = probe(*trainer.ema_models())
                trainer.curve.append({"step": trainer.step, "train_seconds": round(trainer.seconds, 1), **scores})
                progress.write(f"teacher step {trainer.step}: {scores}")
            if state_path is not None and trainer.step % recipe.checkpoint_every == 0:
                with atomic_path(state_path) as temp_path:
                    torch.save(trainer.state_dict(), temp_path)
    dit, text_encoder = trainer.ema_models()
    return dit, text_encoder, trainer.losses, trainer.curve


def teacher_pipeline(
    dit: ZImageDiT, text_encoder: torch.nn.Module, tokenizer: Any, vae_decoder: torch.nn.Module
) -> ZImagePipeline:
    """The stock pipeline around in-memory fp32 teacher parts (as :func:`load_teacher` loads the files on CPU)."""
    pipe = ZImagePipeline(device="cpu", torch_dtype=torch.float32)
    pipe.dit, pipe.text_encoder = run_time_embedder_in_weight_dtype(dit), text_encoder
    pipe.tokenizer, pipe.vae_decoder = tokenizer, vae_decoder
    return pipe


def _load_autoencoder(work_dir: Path) -> Tuple[TinyVAEEncoder, TinyVAEDecoder]:
    encoder, decoder = TinyVAEEncoder(), TinyVAEDecoder()
    encoder.load_state_dict(load_file(work_dir / VAE_ENCODER_FILE))
    decoder.load_state_dict(load_file(work_dir / VAE_DECODER_FILE))
    return encoder.eval(), decoder.eval()


def train_teacher(
    out_dir: Union[str, os.PathLike],
    work_dir: Union[str, os.PathLike],
    recipe: TeacherRecipe = TeacherRecipe(),
    score: Optional[Callable[[ZImagePipeline], Dict[str, float]]] = None,
) -> Dict[str, Any]:
    """Train the tiny-world teacher from scratch into ``out_dir`` (new or empty; written atomically).

    ``work_dir`` keeps the autoencoder and the DiT's training state, so a killed run resumes where it stopped.
    Data: ``recipe.dataset_size`` seeded shapes-world images without held-out pairs for the DiT, and as many
    random-color images for the autoencoder.  With ``score`` (a pipeline -> scores function), the EMA teacher is
    scored during training (see :func:`train_dit`).  Returns the summary, also written to ``teacher.json``.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    text_dir = work_dir / "text"  # a random tiny model set; the teacher keeps its text encoder and tokenizer
    if not (text_dir / TOKENIZER_DIR).exists():
        build_tiny_l2p(text_dir, seed=TEXT_ENCODER_SEED)

    ae_losses: List[float] = []
    decoder_losses: List[float] = []
    if not (work_dir / VAE_DECODER_FILE).exists():
        codec_images = images_to_tensor(list(sample_codec_images(recipe.dataset_size, recipe.seed + 1)))
        encoder, decoder, ae_losses = train_autoencoder(
            codec_images, recipe.ae_steps, recipe.ae_batch_size, recipe.ae_lr, seed=recipe.seed
        )
        final_loss = float(np.mean(ae_losses[-50:]))
        limit = recipe.ae_max_final_loss
        if limit is not None and final_loss > limit:  # a collapsed codec would waste the DiT stage on blank latents
            raise RuntimeError(f"The autoencoder did not learn (final loss {final_loss:.4f} > {limit}); lower ae_lr.")
        if recipe.decoder_steps:
            decoder_losses = fine_tune_decoder(
                encoder,
                decoder,
                codec_images,
                recipe.decoder_steps,
                recipe.ae_batch_size,
                recipe.ae_lr,
                recipe.seed,
                recipe.decoder_latent_noise,
            )
        save_module(encoder, work_dir / VAE_ENCODER_FILE)
        save_module(decoder, work_dir / VAE_DECODER_FILE)  # last: its presence marks the autoencoder as done
    encoder, decoder = _load_autoencoder(work_dir)
    ae_seconds = time.perf_counter() - start

    images, captions = zip(*sample_dataset(recipe.dataset_size, recipe.seed), strict=True)
    with torch.no_grad():
        latents = torch.cat([encoder(chunk) for chunk in images_to_tensor(list(images)).split(512)])
    text_encoder, tokenizer = load_text_parts(text_dir)

    def probe(dit: ZImageDiT, text: torch.nn.Module) -> Dict[str, float]:
        return score(teacher_pipeline(dit, text, tokenizer, decoder))

    dit, text_encoder, dit_losses, curve = train_dit(
        latents, list(captions), text_encoder, tokenizer, recipe, work_dir / "dit_state.pt", probe if score else None
    )

    with atomic_directory(out_dir, "the teacher") as staging:
        save_module(dit, staging / DIT_FILE, torch.bfloat16)
        (staging / TEXT_ENCODER_DIR).mkdir()
        save_module(text_encoder, staging / TEXT_ENCODER_DIR / "model.safetensors", torch.bfloat16)
        for name in (VAE_ENCODER_FILE, VAE_DECODER_FILE):
            shutil.copyfile(work_dir / name, staging / name)
        shutil.copytree(text_dir / TOKENIZER_DIR, staging / TOKENIZER_DIR)
        summary = {
            "recipe": asdict(recipe),
            "ae_final_loss": float(np.mean(ae_losses[-50:])) if ae_losses else None,
            "decoder_final_loss": float(np.mean(decoder_losses[-50:])) if decoder_losses else None,
            "dit_final_loss": float(np.mean(dit_losses[-100:])),
            "curve": curve,
            "seconds_this_run": {
                "autoencoder": round(ae_seconds, 1),
                "total": round(time.perf_counter() - start, 1),
            },
            "torch_threads": torch.get_num_threads(),
        }
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
