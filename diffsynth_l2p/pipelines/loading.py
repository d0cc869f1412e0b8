"""Find a model set's files (directory, explicit files, or the default tiny set) and load the pipeline."""

import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from diffsynth.core import ModelConfig, hash_model_file

from ..families import all_families, import_class
from ..model_set import TEXT_ENCODER_DIR, TOKENIZER_DIR, default_model_dir
from ..registry import find_registered
from ..safetensors_io import read_header, read_headers
from .pixel_pipeline import L2PPixelPipeline, family_of_file, native_config

ModelFiles = Dict[str, Union[str, List[str]]]
# The storage dtype of DiffSynth's fp8 option (``--fp8_models`` in its trainer): e4m3 keeps 3 mantissa bits.
FP8_WEIGHT_DTYPE = torch.float8_e4m3fn
ModelSpec = Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]], Mapping[str, object]]


def _is_l2p_dit(path: str) -> bool:
    read_header(path)  # a damaged file is reported as `l2p inspect` reports it, not by the hashing code
    names = {family.dit_model_name for family in all_families()}
    return any(entry["model_name"] in names for entry in find_registered(hash_model_file(path)))


def _from_directory(model_dir: Path) -> ModelFiles:
    """``<dir>/<dit>.safetensors`` + ``<dir>/text_encoder/*.safetensors`` + ``<dir>/tokenizer/``."""
    candidates = sorted(model_dir.glob("*.safetensors"))
    if not candidates:
        raise FileNotFoundError(
            f"No DiT checkpoint in {model_dir}: expected a top-level .safetensors file such as "
            "model-1k-merge.safetensors (an L2P DiT), next to text_encoder/ and tokenizer/."
        )
    dits = [str(path) for path in candidates if _is_l2p_dit(str(path))] if len(candidates) > 1 else [str(candidates[0])]
    if len(dits) != 1:
        raise ValueError(f"{model_dir} holds {len(dits)} L2P DiT checkpoints; pass the one to use explicitly.")
    text_encoder = sorted(str(path) for path in (model_dir / TEXT_ENCODER_DIR).glob("*.safetensors"))
    if not text_encoder:
        raise FileNotFoundError(
            f"No text encoder in {model_dir / TEXT_ENCODER_DIR}: copy the source model's text encoder shards there "
            "(e.g. Tongyi-MAI/Z-Image-Turbo text_encoder/*.safetensors)."
        )
    tokenizer = model_dir / TOKENIZER_DIR
    if not tokenizer.is_dir():
        raise FileNotFoundError(
            f"No tokenizer directory {tokenizer}: copy the source model's tokenizer/ folder there "
            "(e.g. Tongyi-MAI/Z-Image-Turbo's)."
        )
    return {"dit": dits[0], "text_encoder": text_encoder, "tokenizer": str(tokenizer)}


def _from_paths(paths: Sequence[str]) -> ModelFiles:
    """Explicit paths: the tokenizer directory, the L2P DiT file and the text-encoder shards (told apart by hash)."""
    directories = [path for path in paths if os.path.isdir(path)]
    files = [path for path in paths if os.path.isfile(path)]
    missing = sorted(set(paths) - set(directories) - set(files))
    if missing:
        raise FileNotFoundError(f"Model paths not found: {', '.join(missing)}.")
    if len(directories) != 1:
        raise ValueError(f"Pass exactly one tokenizer directory among the model paths, got {len(directories)}.")
    dits = [path for path in files if _is_l2p_dit(path)]
    if len(dits) != 1:
        raise ValueError(
            f"Pass exactly one L2P DiT file among the model paths, found {len(dits)} "
            "(a latent Z-Image DiT must be converted first with `l2p convert`)."
        )
    text_encoder = sorted(path for path in files if path != dits[0])
    if not text_encoder:
        raise ValueError("No text-encoder files among the model paths: add the text_encoder/*.safetensors shards.")
    return {"dit": dits[0], "text_encoder": text_encoder, "tokenizer": directories[0]}


def resolve_model_files(model: ModelSpec = None) -> ModelFiles:
    """``{"dit": file, "text_encoder": [files], "tokenizer": dir}`` for a model set.

    ``model`` is ``None`` (the default tiny set, built on first use), a directory laid out like
    ``build_tiny_l2p``'s output or like the release (``model-1k-merge.safetensors`` + ``text_encoder/`` +
    ``tokenizer/``), a list of paths (DiT file, text-encoder shards, tokenizer directory), or such a dict.
    """
    if model is None:
        return _from_directory(default_model_dir())
    if isinstance(model, Mapping):
        text_encoder = model["text_encoder"]
        text_encoder = [str(text_encoder)] if isinstance(text_encoder, (str, os.PathLike)) else list(text_encoder)
        return {
            "dit": str(model["dit"]),
            "text_encoder": [str(p) for p in text_encoder],
            "tokenizer": str(model["tokenizer"]),
        }
    paths = [str(model)] if isinstance(model, (str, os.PathLike)) else [str(path) for path in model]
    files = _from_directory(Path(paths[0])) if len(paths) == 1 and os.path.isdir(paths[0]) else _from_paths(paths)
    read_headers(files["dit"])
    read_headers(files["text_encoder"])  # all shards, so a truncated one is named before loading
    return files


def native_size(dit_path: str) -> Tuple[int, int]:
    """The (height, width) the file's configuration was made for (1024x1024 when unknown)."""
    config = native_config(dit_path)
    return config.default_height, config.default_width


def weight_storage_config(weight_dtype: Optional[torch.dtype], device: Union[str, torch.device]) -> Dict[str, object]:
    """The ``ModelConfig`` VRAM fields that keep a model's weights in ``weight_dtype`` on ``device``.

    ``None``: no fields (weights in the pipeline's ``torch_dtype``, no VRAM management).
    ``torch.float8_e4m3fn``: the layout of DiffSynth's own fp8 option. Its loader reads every checkpoint tensor
    in fp8 (norms, biases, pad tokens and the head's convolutions too) and keeps it there; each layer the VRAM
    map wraps (Linear, Conv2d, RMSNorm) is cast to the pipeline's ``torch_dtype`` for its computation.
    """
    if weight_dtype is None:
        return {}
    if weight_dtype != FP8_WEIGHT_DTYPE:
        raise ValueError(
            f"weight_dtype must be None (weights in torch_dtype) or torch.float8_e4m3fn (fp8 storage, computed in "
            f"torch_dtype), got {weight_dtype!r}; to store the weights in another dtype pass it as torch_dtype."
        )
    device = str(device)
    return dict(
        offload_dtype=weight_dtype,
        offload_device=device,
        onload_dtype=weight_dtype,
        onload_device=device,
        preparing_dtype=weight_dtype,
        preparing_device=device,
    )


def load_pipeline(
    model: ModelSpec = None,
    device: Union[str, torch.device] = "cpu",
    torch_dtype: torch.dtype = torch.float32,
    vram_limit: Optional[float] = None,
    weight_dtype: Optional[torch.dtype] = None,
) -> L2PPixelPipeline:
    """The DiT family's pipeline (``ZImageL2PPipeline``, ...) ``from_pretrained`` on ``resolve_model_files(model)``.

    ``weight_dtype=torch.float8_e4m3fn`` stores the DiT's and the text encoder's weights in fp8 (half the bytes
    of bfloat16) and computes in ``torch_dtype`` (see :func:`weight_storage_config`).
    """
    storage = weight_storage_config(weight_dtype, device)  # a bad value fails before any file is read
    files = resolve_model_files(model)
    return pipeline_class(files["dit"]).from_pretrained(
        torch_dtype=torch_dtype,
        device=device,
        model_configs=[ModelConfig(path=files["dit"], **storage), ModelConfig(path=files["text_encoder"], **storage)],
        tokenizer_config=ModelConfig(path=files["tokenizer"]),
        vram_limit=vram_limit,
    )


def pipeline_class(dit_path: str) -> type:
    """The pipeline class of the L2P DiT file's family (``ZImageL2PPipeline`` for Z-Image, ...)."""
    return import_class(family_of_file(dit_path).pipeline_class)
