"""A Qwen3 text encoder of any size, laid out like DiffSynth's ``ZImageTextEncoder`` (keys ``model.*``).

DiffSynth's ``ZImageTextEncoder`` only knows the 0.6B/4B/8B configurations and builds one in its
constructor, so small encoders (the tiny model set's) use this class instead.  Registered under
DiffSynth's ``z_image_text_encoder`` name, it is what ``ZImageUnit_PromptEmbedder`` calls.
``QwenVLTextEncoder`` does the same for Qwen-Image's Qwen2.5-VL encoder (``qwen_image_text_encoder``).
"""

import copy
from typing import Any, Optional

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


class QwenVLTextEncoder(torch.nn.Module):
    """A text-only Qwen2.5-VL language model of any size; forward as DiffSynth's ``QwenImageTextEncoder``'s.

    DiffSynth's ``QwenImageTextEncoder`` builds the 7B vision-language model in its constructor, so the tiny
    Qwen-Image model set uses this class, registered under DiffSynth's ``qwen_image_text_encoder`` name.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__()
        from transformers.models.qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

        # A deep copy: transformers completes the nested RoPE dict in place, which must not touch the caller's.
        self.model = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**copy.deepcopy(config)))

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs: Any):
        """Every layer's hidden states (a tuple; ``[-1]`` is the last layer's, after the final norm)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
