"""``L2PPixelPipeline``: what every L2P pipeline shares, whatever latent family its DiT came from.

DiffSynth's pipeline with the VAE removed: the DiT denoises RGB pixels in [-1, 1] directly. A family's pipeline
(``ZImageL2PPipeline``, ``QwenImageL2PPipeline``, ``Flux2L2PPipeline``) adds its units, prompt encoding, schedule and
text-encoder checks; loading, input checks, the sampling loop, batched CFG and image output live here
(see ``docs/transfer.md``).
"""

import copy
import functools
import os
import warnings
from typing import Any, Callable, ClassVar, List, Optional, Sequence, Tuple, Union

import torch
from diffsynth.core import ModelConfig, hash_model_file
from diffsynth.core.device.npu_compatible_device import get_device_type
from diffsynth.diffusion import FlowMatchScheduler
from diffsynth.diffusion.base_pipeline import BasePipeline, PipelineUnit
from einops import reduce
from PIL import Image
from tqdm import tqdm

from ..families import Family, all_families, get_family
from ..models.configs import L2PConfig
from ..registry import find_registered, register_all
from ..safetensors_io import read_headers
from ..validation import check_device, check_float, check_image_size, check_int, check_seed

# DiffSynth's loader must know this package's models (registry.L2P_MODEL_CONFIGS) before ``from_pretrained`` runs.
register_all()

# ``generate_images`` arguments that default to the loaded config's values, and the ``L2PConfig`` fields they come from.
CONFIG_DEFAULTS = {
    "cfg_scale": "default_cfg_scale",
    "height": "default_height",
    "width": "default_width",
    "seed": "default_seed",
    "num_inference_steps": "default_steps",
    "cfg_max_sigma": "default_cfg_max_sigma",
}
# ``from_pretrained``'s default tokenizer: the pipeline's ``default_tokenizer_config`` (None means no tokenizer).
DEFAULT_TOKENIZER = ModelConfig(model_id="<the family's release>", origin_file_pattern="tokenizer/")
MAX_PIXELS_HINT = "or raise pipe.max_pixels (e.g. pipe.max_pixels = 10240 * 10240)"


def guidance_at(cfg_scale: float, cfg_max_sigma: Optional[float], sigma: Union[float, torch.Tensor]) -> float:
    """The CFG scale of a step at ``sigma``: ``cfg_scale`` unless the sigma is above ``cfg_max_sigma``, then 1."""
    return cfg_scale if cfg_max_sigma is None or float(sigma) <= cfg_max_sigma else 1.0


def check_input_image(image: Any) -> None:
    """Raise a ``TypeError`` naming the fix unless ``image`` is a PIL image."""
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"input_image must be a PIL.Image.Image, got {type(image).__name__}; "
            "load it with PIL.Image.open(path).convert('RGB')."
        )


class L2PUnit_PromptEmbedder(PipelineUnit):
    """``prompt_embeds``: one caption feature tensor for the prompt (and, separately, the negative prompt)."""

    def __init__(self):
        super().__init__(
            seperate_cfg=True,
            input_params_posi={"prompt": "prompt"},
            input_params_nega={"prompt": "negative_prompt"},
            output_params=("prompt_embeds",),
            onload_model_names=("text_encoder",),
        )

    def process(self, pipe: "L2PPixelPipeline", prompt: str) -> dict:
        pipe.load_models_to_device(self.onload_model_names)
        return {"prompt_embeds": pipe.encode_prompts([prompt])}


class L2PUnit_NoiseInitializer(PipelineUnit):
    """Pixel noise ``[num_images, 3, H, W]`` in fp32; image ``i`` has its own generator seeded ``seed + i``."""

    def __init__(self):
        super().__init__(
            input_params=("height", "width", "seed", "rand_device", "num_images"),
            output_params=("noise",),
        )

    def process(
        self,
        pipe: "L2PPixelPipeline",
        height: int,
        width: int,
        seed: Optional[int],
        rand_device: Union[str, torch.device],
        num_images: Optional[int] = None,
    ) -> dict:
        num_images = num_images or 1
        seeds = [None if seed is None else seed + i for i in range(num_images)]
        noise = [
            pipe.generate_noise(
                (1, 3, height, width),
                seed=s,
                rand_device=rand_device,
                rand_torch_dtype=torch.float32,
                torch_dtype=torch.float32,
            )
            for s in seeds
        ]
        return {"noise": torch.cat(noise)}


class L2PUnit_InputImageEmbedder(PipelineUnit):
    """The input image as pixels in [-1, 1]; noised to the first timestep for img2img, clean for training."""

    def __init__(self):
        super().__init__(
            input_params=("input_image", "noise", "height", "width"),
            output_params=("latents", "input_latents"),
        )

    def process(
        self, pipe: "L2PPixelPipeline", input_image: Optional[Image.Image], noise: torch.Tensor, height: int, width: int
    ) -> dict:
        if input_image is None:
            return {"latents": noise, "input_latents": None}
        check_input_image(input_image)
        image = input_image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.LANCZOS)
        input_latents = pipe.preprocess_image(image)
        if pipe.scheduler.training:
            return {"latents": noise, "input_latents": input_latents}
        latents = pipe.scheduler.add_noise(input_latents, noise, timestep=pipe.scheduler.timesteps[0])
        return {"latents": latents, "input_latents": input_latents}


class L2PPixelPipeline(BasePipeline):
    """Tokenizer + text encoder + an L2P pixel DiT, no VAE.  Subclasses set the class attributes and units."""

    family: ClassVar[str]  # a name in ``families.FAMILY_MODULES``
    text_encoder_model_name: ClassVar[str]  # DiffSynth registry name of the family's text encoder
    scheduler_template: ClassVar[str]  # ``FlowMatchScheduler`` template of the family's stock pipeline
    shape_checker: ClassVar[type]  # the family's stock shape-checking unit
    prompt_unit: ClassVar[type] = L2PUnit_PromptEmbedder  # writes ``prompt_embeds`` (default: ``encode_prompts``)
    default_tokenizer_config: ClassVar[ModelConfig]  # where the family's release keeps its tokenizer
    dit_hint: ClassVar[str]  # how to load the DiT, for the error when none is loaded
    text_encoder_hint: ClassVar[str]
    tokenizer_hint: ClassVar[str]

    def __init__(self, device: Union[str, torch.device] = get_device_type(), torch_dtype: torch.dtype = torch.bfloat16):
        super().__init__(device=device, torch_dtype=torch_dtype, height_division_factor=16, width_division_factor=16)
        self.scheduler = FlowMatchScheduler(self.scheduler_template)
        self.text_encoder: Optional[torch.nn.Module] = None
        self.dit: Optional[torch.nn.Module] = None
        self.tokenizer = None
        self.use_config(next(iter(self.family_spec().configs.values())))
        self.in_iteration_models = ("dit",)
        self.units = [
            self.shape_checker(),
            self.prompt_unit(),
            L2PUnit_NoiseInitializer(),
            L2PUnit_InputImageEmbedder(),
        ]
        self.model_fn = model_fn_l2p
        self.compilable_models = ["dit"]

    @classmethod
    def family_spec(cls) -> Family:
        """The :class:`~diffsynth_l2p.families.Family` this pipeline serves."""
        return get_family(cls.family)

    @classmethod
    def from_pretrained(
        cls,
        torch_dtype: torch.dtype = torch.bfloat16,
        device: Union[str, torch.device] = get_device_type(),
        model_configs: List[ModelConfig] = [],  # noqa: B006 -- DiffSynth's signature; only copies are used
        tokenizer_config: Optional[ModelConfig] = DEFAULT_TOKENIZER,
        vram_limit: Optional[float] = None,
    ) -> "L2PPixelPipeline":
        """Load the L2P DiT and the family's text encoder from ``model_configs`` and the tokenizer.

        ``tokenizer_config`` defaults to the family's release (``default_tokenizer_config``); None loads none.
        """
        if tokenizer_config is DEFAULT_TOKENIZER:
            tokenizer_config = cls.default_tokenizer_config
        check_device(str(device))
        pipe = cls(device=device, torch_dtype=torch_dtype)
        if vram_limit is not None and not hasattr(getattr(torch, pipe.device_type, None), "mem_get_info"):
            warnings.warn(f"vram_limit is ignored on {pipe.device_type}: it has no memory to query.", stacklevel=2)
            vram_limit = None
        # Copies: resolving fills in paths, which must not stick to the caller's (or the default) configs.
        model_configs = [copy.copy(config) for config in model_configs]
        entries = []
        for config in model_configs:
            resolve_files(config)
            entries += check_checkpoint(config.path, cls.family_spec())
        model_pool = pipe.download_and_load_models(model_configs, vram_limit)
        pipe.dit = model_pool.fetch_model(cls.family_spec().dit_model_name)
        pipe.text_encoder = model_pool.fetch_model(cls.text_encoder_model_name)
        if tokenizer_config is not None:
            from transformers import AutoTokenizer

            tokenizer_config = copy.copy(tokenizer_config)
            resolve_files(tokenizer_config, is_dir=True)
            pipe.tokenizer = AutoTokenizer.from_pretrained(tokenizer_config.path)
        pipe.check_models()
        pipe.use_config(config_of_entries(entries)[1])
        pipe.height_division_factor = pipe.width_division_factor = pipe.dit.size_multiple
        pipe.vram_management_enabled = pipe.check_vram_management_state()
        return pipe

    def encode_prompts(self, prompts: Sequence[str]) -> List[torch.Tensor]:
        """Caption features ``[L_i, text_dim]`` per prompt, through the family's stock prompt encoding."""
        raise NotImplementedError

    def check_text_encoder(self) -> None:
        """Raise a ``ValueError`` naming the fix when the text encoder or tokenizer does not fit the DiT."""

    def check_token_grid(self, height: int, width: int) -> None:
        """Raise a ``ValueError`` when the DiT cannot position a ``height`` x ``width`` image's tokens."""

    def sigma_shift_for(self, height: int, width: int) -> Optional[float]:
        """The shift used when a call gives none (None: the family's stock resolution rule)."""
        return self.config.default_sigma_shift

    def set_inference_timesteps(
        self, num_inference_steps: int, denoising_strength: float, sigma_shift: Optional[float], height: int, width: int
    ) -> None:
        """The sampling schedule at ``sigma_shift`` (``generate_images`` passes :meth:`sigma_shift_for`'s when the call
        gives none; None there means the family's stock rule)."""
        self.scheduler.set_timesteps(num_inference_steps, denoising_strength=denoising_strength, shift=sigma_shift)

    def compile_pipeline(
        self,
        mode: str = "default",
        dynamic: bool = True,
        fullgraph: bool = False,
        compile_models: Optional[List[str]] = None,
        **kwargs: Any,
    ) -> None:
        """DiffSynth's ``torch.compile`` of the DiT's repeated blocks, plus the detailer head.

        The head is most of a pixel-space step and lies outside the blocks DiffSynth compiles regionally; compiling
        it too is the faster variant in ``bench/compile.py``.
        """
        super().compile_pipeline(mode, dynamic, fullgraph, compile_models, **kwargs)
        if self.dit is not None and "dit" in (compile_models or self.compilable_models):
            self.dit.local_decoder.compile(mode=mode, dynamic=dynamic, fullgraph=fullgraph, **kwargs)

    def use_config(self, config: L2PConfig) -> None:
        """Take ``config``'s sampling defaults and pixel cap (``from_pretrained`` picks the checkpoint's config)."""
        self.config = config
        self.max_pixels = config.max_pixels  # larger images are refused before anything is allocated

    def with_defaults(self, **arguments: Any) -> dict:
        """``arguments`` (any of ``CONFIG_DEFAULTS``' names) with each ``None`` replaced by the config's default."""
        return {
            name: getattr(self.config, CONFIG_DEFAULTS[name]) if value is None else value
            for name, value in arguments.items()
        }

    def check_models(self) -> None:
        """Raise a ``ValueError`` naming what to load when the DiT, text encoder or tokenizer is missing."""
        if self.dit is None:
            raise ValueError(self.dit_hint)
        if self.text_encoder is None:
            raise ValueError(self.text_encoder_hint)
        if self.tokenizer is None:
            raise ValueError(self.tokenizer_hint)
        self.check_text_encoder()

    def check_resize_height_width(
        self, height: int, width: int, num_frames: Optional[int] = None, verbose: int = 1
    ) -> Tuple[int, ...]:
        """DiffSynth's rounding up to a multiple of the patch size, reported as a ``UserWarning``."""
        rounded = super().check_resize_height_width(height, width, num_frames, verbose=0)
        if verbose > 0 and tuple(rounded[:2]) != (height, width):
            factor = self.height_division_factor
            warnings.warn(
                f"height and width must be multiples of {factor}: {height}x{width} is rounded up to "
                f"{rounded[0]}x{rounded[1]}.",
                stacklevel=2,
            )
        return rounded

    def check_inputs(
        self,
        prompt: str,
        negative_prompt: str,
        cfg_scale: float,
        height: int,
        width: int,
        num_inference_steps: int,
        denoising_strength: float,
        num_images: int,
        input_image: Optional[Image.Image],
        sigma_shift: Optional[float] = None,
        seed: Optional[int] = None,
        cfg_max_sigma: Optional[float] = None,
    ) -> Tuple[int, int]:
        """Validate the call's arguments before anything is allocated; return the size rounded up to the patch."""
        self.check_models()
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {type(value).__name__}.")
        check_float(cfg_scale, "cfg_scale")
        for name, value in (("sigma_shift", sigma_shift), ("cfg_max_sigma", cfg_max_sigma)):
            if value is not None:
                check_float(value, name, inclusive=False)
        check_int(num_inference_steps, "num_inference_steps")
        check_int(num_images, "num_images")
        if seed is not None:
            check_seed(seed, "seed", num_images)
        check_image_size(height, width, self.max_pixels, step=self.height_division_factor, raise_hint=MAX_PIXELS_HINT)
        if not 0 < denoising_strength <= 1:
            raise ValueError(f"denoising_strength must be in (0, 1], got {denoising_strength}.")
        if denoising_strength < 1 and input_image is None:
            raise ValueError(
                f"denoising_strength={denoising_strength} only applies to img2img: pass input_image, or use 1.0 "
                "to generate from pure noise."
            )
        if input_image is not None:
            check_input_image(input_image)
        height, width = self.check_resize_height_width(height, width)
        check_image_size(height, width, self.max_pixels, step=self.height_division_factor, raise_hint=MAX_PIXELS_HINT)
        self.check_token_grid(height, width)
        return height, width

    def vae_output_to_image(
        self, vae_output: torch.Tensor, pattern: str = "B C H W", min_value: float = -1, max_value: float = 1
    ) -> Image.Image:
        """DiffSynth's tensor -> PIL conversion, but rounding to the nearest uint8 like the release (DiffSynth
        truncates, which makes about a third of the values one lower)."""
        if pattern != "H W C":
            vae_output = reduce(vae_output, f"{pattern} -> H W C", reduction="mean")
        unit = ((vae_output.float() - min_value) / (max_value - min_value)).clamp(0, 1)
        return Image.fromarray(unit.mul(255).round().to(device="cpu", dtype=torch.uint8).numpy())

    def load_models_to_device(self, model_names: Sequence[str]) -> None:
        """DiffSynth's onload/offload; on devices without ``empty_cache`` (CPU) it is done here without it."""
        if hasattr(getattr(torch, self.device_type, None), "empty_cache"):
            return super().load_models_to_device(model_names)
        if not self.vram_management_enabled:
            return
        for name, model in self.named_children():
            if getattr(model, "vram_management_enabled", False):
                _set_onloaded(model, name in model_names)

    def cfg_guided_model_fn(
        self,
        model_fn: Callable[..., torch.Tensor],
        cfg_scale: float,
        inputs_shared: dict,
        inputs_posi: dict,
        inputs_nega: dict,
        **inputs_others: Any,
    ) -> torch.Tensor:
        """DiffSynth's CFG, but both sides in one forward of batch 2B unless ``inputs_shared["batch_cfg"]`` is False."""
        per_side_lora = any(inputs_shared.get(f"{side}_only_lora") is not None for side in ("positive", "negative"))
        if cfg_scale == 1.0 or not inputs_shared.get("batch_cfg", True) or per_side_lora:
            return super().cfg_guided_model_fn(
                model_fn, cfg_scale, inputs_shared, inputs_posi, inputs_nega, **inputs_others
            )
        latents = inputs_shared["latents"]  # [B, 3, H, W]
        embeds = [per_image(inputs["prompt_embeds"], latents.shape[0]) for inputs in (inputs_posi, inputs_nega)]
        both = {**inputs_shared, "latents": torch.cat([latents, latents]), "prompt_embeds": embeds[0] + embeds[1]}
        posi, nega = model_fn(**both, **inputs_others).chunk(2)  # [2B, 3, H, W] -> 2 x [B, 3, H, W]
        return nega + cfg_scale * (posi - nega)

    @torch.no_grad()
    def generate_images(
        self,
        prompt: str,
        negative_prompt: str = "",
        cfg_scale: Optional[float] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        seed: Optional[int] = None,
        rand_device: Union[str, torch.device] = "cpu",
        num_inference_steps: Optional[int] = None,
        sigma_shift: Optional[float] = None,
        input_image: Optional[Image.Image] = None,
        denoising_strength: float = 1.0,
        num_images: int = 1,
        batch_cfg: bool = True,
        cfg_max_sigma: Optional[float] = None,
        progress_bar_cmd=tqdm,
    ) -> List[Image.Image]:
        """Generate ``num_images`` PIL images for one prompt (always a list; ``pipe(...)`` unwraps a single one).

        Every argument left at ``None`` takes the loaded checkpoint's default from ``self.config`` (see
        ``models/configs.py`` and the family modules in ``families/``): ``cfg_scale``, ``height``/``width`` (the native
        size), ``seed``, ``num_inference_steps`` and ``sigma_shift`` (:meth:`set_inference_timesteps`).
        Z-Image 1K: CFG 2.0, 1024x1024, seed 42, 30 steps, shift by resolution; 4K/8K/10K: CFG 4.0, native size,
        seed 42, 50 steps, shift 3; tiny: CFG 4.0 at 64x64. Images over ``self.max_pixels`` pixels are refused.
        Image ``i`` uses noise seeded with ``seed + i``, so a batch equals separate calls with those seeds.
        Sizes that are not multiples of the patch are rounded up with a warning; with ``input_image``,
        ``denoising_strength < 1`` keeps that much of the schedule (img2img) and the image is resized to
        ``width`` x ``height``.
        With ``cfg_scale != 1`` and ``batch_cfg`` (the default) the positive and negative prompt run as one
        DiT forward of batch ``2 * num_images`` per step; ``batch_cfg=False`` runs two forwards of batch
        ``num_images`` instead (about half the activation memory). The images agree up to batch rounding
        (a few uint8 levels on a few pixels).
        ``cfg_max_sigma`` limits guidance to the steps whose sigma is at most it (the others run the positive prompt
        alone); its default is the config's: every step (``None``), except 0.8 for the tiny models.
        """
        cfg_scale, height, width, seed, num_inference_steps, cfg_max_sigma = self.with_defaults(
            cfg_scale=cfg_scale,
            height=height,
            width=width,
            seed=seed,
            num_inference_steps=num_inference_steps,
            cfg_max_sigma=cfg_max_sigma,
        ).values()
        height, width = self.check_inputs(
            prompt,
            negative_prompt,
            cfg_scale,
            height,
            width,
            num_inference_steps,
            denoising_strength,
            num_images,
            input_image,
            sigma_shift,
            seed,
            cfg_max_sigma,
        )
        if sigma_shift is None:
            sigma_shift = self.sigma_shift_for(height, width)
        self.set_inference_timesteps(num_inference_steps, denoising_strength, sigma_shift, height, width)

        inputs_posi = {"prompt": prompt}
        inputs_nega = {"negative_prompt": negative_prompt}
        inputs_shared = {
            "cfg_scale": cfg_scale,
            "input_image": input_image,
            "denoising_strength": denoising_strength,
            "height": height,
            "width": width,
            "seed": seed,
            "rand_device": rand_device,
            "num_inference_steps": num_inference_steps,
            "num_images": num_images,
            "batch_cfg": batch_cfg,
            "computation_dtype": self.torch_dtype,
        }
        for unit in self.units:
            inputs_shared, inputs_posi, inputs_nega = self.unit_runner(
                unit, self, inputs_shared, inputs_posi, inputs_nega
            )

        # Denoise: velocity (CFG-combined; the negative branch is skipped at cfg_scale == 1) and an Euler step.
        self.load_models_to_device(self.in_iteration_models)
        models = {name: getattr(self, name) for name in self.in_iteration_models}
        for progress_id, timestep in enumerate(progress_bar_cmd(self.scheduler.timesteps)):
            timestep = timestep.unsqueeze(0).to(dtype=self.torch_dtype, device=self.device)
            noise_pred = self.cfg_guided_model_fn(
                self.model_fn,
                guidance_at(cfg_scale, cfg_max_sigma, self.scheduler.sigmas[progress_id]),
                inputs_shared,
                inputs_posi,
                inputs_nega,
                **models,
                timestep=timestep,
                progress_id=progress_id,
            )
            inputs_shared["latents"] = self.step(
                self.scheduler, progress_id=progress_id, noise_pred=noise_pred, **inputs_shared
            )
        self.load_models_to_device([])

        # The "latents" are pixels in [-1, 1]: no decoder.
        return [self.vae_output_to_image(sample.float(), pattern="C H W") for sample in inputs_shared["latents"]]

    @functools.wraps(generate_images, assigned=(), updated=())  # its signature (defaults) via __wrapped__
    def __call__(self, prompt: str, *args: Any, **kwargs: Any) -> Union[Image.Image, List[Image.Image]]:
        """:meth:`generate_images` with the release's return: one PIL image, or the list when ``num_images > 1``."""
        images = self.generate_images(prompt, *args, **kwargs)
        return images[0] if len(images) == 1 else images


def model_fn_l2p(
    dit: torch.nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: List[torch.Tensor],
    computation_dtype: Optional[torch.dtype] = None,
    use_gradient_checkpointing: bool = False,
    use_gradient_checkpointing_offload: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Flow velocity ``noise - x0`` for pixel ``latents`` [B, 3, H, W]; one caption embedding per image, or one for all.

    The pipeline keeps the pixels in fp32 between steps (as the release does) and the DiT computes in
    ``computation_dtype``; the Euler step then promotes the velocity back to fp32.
    """
    if computation_dtype is not None:
        latents = latents.to(computation_dtype)
    batch = latents.shape[0]
    # Every L2P DiT already returns the velocity (its head predicts x0 - noise and is negated inside).
    return dit(
        latents,
        timestep.expand(batch),
        per_image(prompt_embeds, batch),
        use_gradient_checkpointing=use_gradient_checkpointing,
        use_gradient_checkpointing_offload=use_gradient_checkpointing_offload,
    )


def per_image(prompt_embeds: Sequence[torch.Tensor], batch: int) -> List[torch.Tensor]:
    """One caption embedding per image: a single one is shared by all ``batch`` images."""
    return list(prompt_embeds) * batch if len(prompt_embeds) == 1 else list(prompt_embeds)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DiffSynth VRAM-management wrapper (or the module itself)."""
    return getattr(module, "module", module)


def _set_onloaded(model: torch.nn.Module, onload: bool) -> None:
    """Move a VRAM-managed model (or its wrapped layers) to its onload or offload place."""
    modules = [model] if hasattr(model, "onload") else [m for m in model.modules() if hasattr(m, "onload")]
    for module in modules:
        module.onload() if onload else module.offload()


def resolve_files(config: ModelConfig, is_dir: bool = False) -> None:
    """``config.download_if_necessary()``, with errors that say which files to fetch and how (fills ``config.path``)."""
    source = (
        config.path or f"ModelConfig(model_id={config.model_id!r}, origin_file_pattern={config.origin_file_pattern!r})"
    )
    try:
        config.download_if_necessary()
    except Exception as error:
        raise RuntimeError(
            f"Could not download {source}: {error}. Offline, fetch the files on another machine and pass "
            "ModelConfig(path=...), or set DIFFSYNTH_SKIP_DOWNLOAD=True to use files already under "
            "$DIFFSYNTH_MODEL_BASE_PATH (default ./models)."
        ) from error
    paths = config.path if isinstance(config.path, list) else [config.path]
    exists = os.path.isdir if is_dir else os.path.isfile
    missing = [path for path in paths if not (path and exists(path))]
    if not paths or missing:
        raise FileNotFoundError(
            f"{source}: {'directory' if is_dir else 'file'} not found ({missing or 'no files matched'}). "
            "Download it (with DIFFSYNTH_SKIP_DOWNLOAD unset) or point ModelConfig(path=...) at local files."
        )


def check_checkpoint(path: Union[str, List[str]], family: Family) -> List[dict]:
    """Reject, before loading, damaged files, files DiffSynth cannot identify, latent DiTs and other families' DiTs.

    Returns the file's DiffSynth registry entries.
    """
    read_headers([file for file in (path if isinstance(path, list) else [path]) if file.endswith(".safetensors")])
    model_hash = hash_model_file(path)
    entries = find_registered(model_hash)
    names = {entry["model_name"] for entry in entries}
    if not names:
        raise ValueError(
            f"{path} (DiffSynth hash {model_hash}) is not a checkpoint DiffSynth or diffsynth-l2p knows. Expected an "
            f"L2P {family.title} DiT, or all text-encoder shards together in one ModelConfig."
        )
    for other in all_families():
        if other.dit_model_name in names and other is not family:
            raise ValueError(
                f"{path} is an L2P {other.title} DiT; load it with {other.pipeline_class.rsplit('.', 1)[-1]}, "
                f"not the {family.title} pipeline."
            )
        if names & set(other.latent_model_names) and other.dit_model_name not in names:
            raise ValueError(
                f"{path} is a latent {other.title} DiT checkpoint (hash {model_hash}), not an L2P pixel DiT; "
                f"convert it first with `{other.convert_command}`."
            )
    return entries


def config_of_entries(entries: List[dict]) -> Tuple[Family, L2PConfig]:
    """The family and named configuration of the first L2P DiT among registry ``entries`` (Z-Image 1K if none)."""
    families = all_families()
    for entry in entries:
        for family in families:
            if entry["model_class"] == family.dit_class:
                return family, family.config_for_kwargs(entry.get("extra_kwargs", {}))
    return families[0], next(iter(families[0].configs.values()))


def family_and_config(dit_path: str) -> Tuple[Family, L2PConfig]:
    """The family and named L2P configuration of the DiT file, from its registered hash (Z-Image 1K if none)."""
    return config_of_entries(find_registered(hash_model_file(dit_path)))


def native_config(dit_path: str) -> L2PConfig:
    """The named L2P configuration of the DiT file (see :func:`family_and_config`)."""
    return family_and_config(dit_path)[1]


def family_of_file(dit_path: str) -> Family:
    """The family of an L2P DiT file (see :func:`family_and_config`)."""
    return family_and_config(dit_path)[0]
