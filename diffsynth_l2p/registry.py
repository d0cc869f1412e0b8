"""Idempotent registration of L2P models into DiffSynth's model registry and VRAM maps, and meta-device builds."""

import functools
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar

import torch
from diffsynth.configs import MODEL_CONFIGS, VRAM_MANAGEMENT_MODULE_MAPS
from diffsynth.core import hash_state_dict_keys

from .models.configs import L2P_CONFIGS, TINY_TEXT_ENCODER_CONFIG
from .models.text_encoder import TEXT_ENCODER_CLASS, TEXT_ENCODER_MODEL_NAME, Qwen3TextEncoder
from .models.z_image_l2p_dit import ZImageL2PDiT

L2P_DIT_MODEL_NAME = "z_image_l2p_dit"
L2P_DIT_CLASS = f"{ZImageL2PDiT.__module__}.{ZImageL2PDiT.__qualname__}"
Z_IMAGE_TEXT_ENCODER_CLASS = "diffsynth.models.z_image_text_encoder.ZImageTextEncoder"

L2P_VRAM_MODULE_MAP = {
    "torch.nn.Linear": "diffsynth.core.vram.layers.AutoWrappedLinear",
    "torch.nn.Conv2d": "diffsynth.core.vram.layers.AutoWrappedModule",
    "diffsynth.models.general_modules.RMSNorm": "diffsynth.core.vram.layers.AutoWrappedModule",
}


ModelT = TypeVar("ModelT", bound=torch.nn.Module)
Shapes = Dict[str, Tuple[int, ...]]


def meta_model(model_class: Type[ModelT] = ZImageL2PDiT, /, **kwargs: Any) -> ModelT:
    """``model_class(**kwargs)`` (default ``ZImageL2PDiT``) on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return model_class(**kwargs)


def meta_state_shapes(model_class: Type[torch.nn.Module] = ZImageL2PDiT, /, **kwargs: Any) -> Shapes:
    """``{key: shape}`` of the state dict of ``model_class(**kwargs)``, built on the meta device."""
    return {key: tuple(value.shape) for key, value in meta_model(model_class, **kwargs).state_dict().items()}


@functools.cache
def family_layout(family_name: str, size: str, latent: bool = False) -> Shapes:
    """``{key: shape}`` of a family's named size, built on the meta device: its pixel DiT, or its stock latent DiT."""
    from .families import get_family, import_class

    family = get_family(family_name)
    if latent:
        return meta_state_shapes(import_class(family.latent_class), **family.latent_kwargs[size])
    return meta_state_shapes(import_class(family.dit_class), **family.configs[size].kwargs)


def meta_hash(model_class: Type[torch.nn.Module] = ZImageL2PDiT, /, **kwargs: Any) -> str:
    """DiffSynth's file hash of a ``model_class(**kwargs)`` checkpoint (default ``ZImageL2PDiT``), from meta."""
    return hash_state_dict_keys(meta_model(model_class, **kwargs).state_dict())


def register_model(
    model_hash: str,
    model_name: str,
    model_class: str,
    extra_kwargs: Optional[Dict[str, Any]] = None,
    state_dict_converter: Optional[str] = None,
) -> bool:
    """Append one entry to DiffSynth's ``MODEL_CONFIGS`` in place; return False if it is already there."""
    for entry in MODEL_CONFIGS:
        if entry["model_hash"] == model_hash and entry["model_class"] == model_class:
            return False
    entry: Dict[str, Any] = {"model_hash": model_hash, "model_name": model_name, "model_class": model_class}
    if extra_kwargs:
        entry["extra_kwargs"] = dict(extra_kwargs)
    if state_dict_converter:
        entry["state_dict_converter"] = state_dict_converter
    MODEL_CONFIGS.append(entry)
    return True


def register_l2p_dit(model_hash: Optional[str] = None, **kwargs: Any) -> str:
    """Register a ``ZImageL2PDiT`` configuration (hash computed unless given) and return its hash."""
    model_hash = model_hash or meta_hash(**kwargs)
    register_model(model_hash, L2P_DIT_MODEL_NAME, L2P_DIT_CLASS, kwargs)
    return model_hash


def find_registered(model_hash: str) -> list:
    """Every DiffSynth registry entry whose hash is ``model_hash`` (the L2P configurations registered first)."""
    register_all()
    return [entry for entry in MODEL_CONFIGS if entry["model_hash"] == model_hash]


# This package's entries in DiffSynth's registry (the counterpart of DiffSynth's ``configs/model_configs.py``):
# the released checkpoints' published hashes and the tiny model sets' hashes, as constants.
# ``tests/test_registry.py`` recomputes every hash on the meta device.
TINY_DIT_HASH = "216598ba024b4e86133f5de2dcf4d43f"
TINY_TEXT_ENCODER_HASH = "51e389d0d5b444101102d48f0652a036"
L2P_MODEL_CONFIGS: List[Dict[str, Any]] = [
    *(
        dict(model_hash=config.published_hash, model_name=L2P_DIT_MODEL_NAME, model_class=L2P_DIT_CLASS,
             extra_kwargs=dict(config.kwargs))
        for config in L2P_CONFIGS.values()
        if config.published_hash
    ),
    dict(model_hash=TINY_DIT_HASH, model_name=L2P_DIT_MODEL_NAME, model_class=L2P_DIT_CLASS,
         extra_kwargs=dict(L2P_CONFIGS["tiny"].kwargs)),
    dict(model_hash=TINY_TEXT_ENCODER_HASH, model_name=TEXT_ENCODER_MODEL_NAME, model_class=TEXT_ENCODER_CLASS,
         extra_kwargs=dict(TINY_TEXT_ENCODER_CONFIG)),
]


@functools.cache
def register_all() -> None:
    """Add :data:`L2P_MODEL_CONFIGS`, every family's entries and our classes' VRAM maps to DiffSynth's (once)."""
    from .families import all_families

    for entry in L2P_MODEL_CONFIGS:
        register_model(**entry)
    for family in all_families():
        for entry in family.registry_entries:
            register_model(**entry)
        for model_class, (base_class, extra) in family.vram_maps.items():
            VRAM_MANAGEMENT_MODULE_MAPS.setdefault(model_class, {**VRAM_MANAGEMENT_MODULE_MAPS[base_class], **extra})
    VRAM_MANAGEMENT_MODULE_MAPS.setdefault(L2P_DIT_CLASS, dict(L2P_VRAM_MODULE_MAP))
    VRAM_MANAGEMENT_MODULE_MAPS.setdefault(
        TEXT_ENCODER_CLASS, dict(VRAM_MANAGEMENT_MODULE_MAPS[Z_IMAGE_TEXT_ENCODER_CLASS])
    )


def register_text_encoder(**config: Any) -> str:
    """Register another ``Qwen3TextEncoder`` configuration as DiffSynth's ``z_image_text_encoder``; return its hash."""
    register_all()  # the class's VRAM-management map
    model_hash = meta_hash(Qwen3TextEncoder, **config)
    register_model(model_hash, TEXT_ENCODER_MODEL_NAME, TEXT_ENCODER_CLASS, config)
    return model_hash
