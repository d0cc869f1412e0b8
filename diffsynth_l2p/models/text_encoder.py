"""A Qwen3 text encoder of any size, laid out like DiffSynth's ``ZImageTextEncoder`` (keys ``model.*``).

DiffSynth's ``ZImageTextEncoder`` only knows the 0.6B/4B/8B configurations and builds one in its
constructor, so small encoders (the tiny model set's) use this class instead.  Registered under
DiffSynth's ``z_image_text_encoder`` name, it is what ``ZImageUnit_PromptEmbedder`` calls.
"""

from typing import Any

import torch
from transformers import Qwen3Config, Qwen3Model

TEXT_ENCODER_MODEL_NAME = "z_image_text_encoder"


class Qwen3TextEncoder(torch.nn.Module):
    """``transformers.Qwen3Model`` built from ``Qwen3Config(**config)``; forward as ``ZImageTextEncoder``'s."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.model = Qwen3Model(Qwen3Config(**config))

    def forward(self, *args: Any, **kwargs: Any):
        return self.model(*args, **kwargs)


TEXT_ENCODER_CLASS = f"{Qwen3TextEncoder.__module__}.{Qwen3TextEncoder.__qualname__}"
