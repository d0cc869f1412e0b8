"""Bytes a model's weights take as stored: measured on a loaded model, or predicted for a meta-device model."""

from collections import Counter
from itertools import chain
from typing import Dict, Optional

import torch

LINEAR_WEIGHT = "Linear weight"


def tensor_kind(module: torch.nn.Module, name: str) -> str:
    """``Linear weight``, ``Linear bias``, ``Conv2d weight``, ... : the owning layer's class and the tensor's name.

    DiffSynth's ``AutoWrappedLinear`` is a ``torch.nn.Linear``; its other wrappers hold the layer as ``.module``,
    so a wrapped and a plain model give the same kinds.
    """
    layer = "Linear" if isinstance(module, torch.nn.Linear) else type(module).__name__
    return f"{layer} {name}"


def stored_bytes(model: torch.nn.Module, storage_dtype: Optional[torch.dtype] = None) -> Dict[str, int]:
    """Bytes of the model's parameters and buffers (each tensor once) by :func:`tensor_kind`.

    ``storage_dtype=None`` measures the tensors as they are. A dtype predicts the bytes after DiffSynth's loader
    read every floating-point tensor of the state dict in it (what a float8 ``offload_dtype`` does), e.g. for a
    meta model; non-persistent buffers (rotary ``inv_freq``) are not in the checkpoint and keep their dtype.
    """
    in_checkpoint = {id(tensor) for tensor in model.state_dict(keep_vars=True).values()}
    seen = set()
    kinds: Counter = Counter()
    for module in model.modules():
        for name, tensor in chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False)):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            converted = storage_dtype is not None and tensor.is_floating_point() and id(tensor) in in_checkpoint
            dtype = storage_dtype if converted else tensor.dtype
            kinds[tensor_kind(module, name)] += tensor.numel() * dtype.itemsize
    return dict(sorted(kinds.items()))
