"""Checkpoints for the convert / merge / inspect tests: a sharded tiny latent Z-Image DiT, header-only stand-ins."""

import json
import os
import struct
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import pytest
import torch
from diffsynth.models.z_image_dit import ZImageDiT
from safetensors.torch import save_file

from diffsynth_l2p.models.configs import L2P_CONFIGS

# Stock latent Z-Image DiT with the tiny L2P backbone sizes (patch 2 on 16 latent channels).
TINY_LATENT_KWARGS = {
    key: list(value) if isinstance(value, tuple) else value
    for key, value in L2P_CONFIGS["tiny"].kwargs.items()
    if key != "head_channels"
}
TINY_LATENT_KWARGS.update(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16)

# A small Z-Image backbone for the UHR heads' small versions (tests/test_uhr_models.py, test_convert_from_pixel.py).
SMALL_BACKBONE = dict(
    dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
    axes_dims=(4, 6, 6), axes_lens=(64, 16, 16),
)  # fmt: skip

# Narrow UHR heads whose stages keep their widths from 4K to 8K to 10K, as the released heads do (4K: 16 ... 512,
# 8K: the 4K head wrapped in a 3-channel stage, 10K: no stage 4, a 512-wide bottleneck on stage 3's 256 channels).
NARROW_HEADS = {
    "4k": dict(head_channels=(2, 4, 4, 8, 8, 16)),
    "8k": dict(head_channels=(3, 2, 4, 4, 8, 8, 16), head_decoder_channels=(2, 2, 4, 4, 8, 8, 16)),
    "10k": dict(
        head_channels=(3, 2, 4, 4, 8, 8), head_decoder_channels=(2, 2, 4, 4, 8, 8), head_bottleneck_channels=16
    ),
}


def narrow_uhr_kwargs(name: str, **overrides) -> dict:
    """``ZImageL2PDiT`` kwargs of the narrow-backbone UHR layout ``name`` (``overrides`` change the backbone)."""
    released = L2P_CONFIGS[name].kwargs
    return {
        **SMALL_BACKBONE,
        **NARROW_HEADS[name],
        **overrides,
        "all_patch_size": released["all_patch_size"],
        "head_stage_names": released["head_stage_names"],
    }


_DTYPE_BYTES = {"BF16": 2, "F32": 4}


def tiny_latent_state_dict(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights for the tiny latent DiT; the ``torch.empty`` pad tokens are initialised too."""
    torch.manual_seed(seed)
    model = ZImageDiT(**TINY_LATENT_KWARGS)
    with torch.no_grad():
        model.x_pad_token.normal_()
        model.cap_pad_token.normal_()
    return {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}


def save_sharded(state: Dict[str, torch.Tensor], directory: Path, shards: int = 2, stem: str = "dit") -> List[str]:
    """Save ``state`` as ``shards`` safetensors files and return their paths."""
    keys = list(state)
    paths = []
    for index in range(shards):
        path = directory / f"{stem}-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({key: state[key] for key in keys[index::shards]}, str(path))
        paths.append(str(path))
    return paths


def write_header_only(path: Path, shapes: Dict[str, Sequence[int]], dtype: str = "BF16") -> Tuple[int, int]:
    """A valid safetensors file whose tensor bytes are a sparse hole: real-size layout, ~no disk use.

    Returns (apparent size, bytes actually allocated).
    """
    header, offset = {}, 0
    for key, shape in shapes.items():
        numel = 1
        for size in shape:
            numel *= size
        nbytes = numel * _DTYPE_BYTES[dtype]
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
    os.truncate(path, 8 + len(encoded) + offset)
    stat = os.stat(path)
    return stat.st_size, stat.st_blocks * 512


def is_mapped(path) -> bool:
    """True while this process has ``path`` memory-mapped (Linux ``/proc/self/maps``)."""
    with open("/proc/self/maps") as maps:
        return os.path.realpath(path) in maps.read()


def failing_writer(after: int = 2) -> Callable:
    """A ``write_safetensors`` stand-in that reads ``after`` tensors, then fails like a full disk."""

    def write(path, layout: Mapping, fetch: Callable, *args, **kwargs) -> None:
        for key in list(layout)[:after]:
            fetch(key)
        raise OSError(28, "No space left on device")

    return write


needs_proc_maps = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")
