"""Qwen-Image: DiffSynth's ``QwenImageDiT`` as an L2P pixel DiT (``QwenImageL2PDiT``, docs/transfer.md).

``20b`` is the one transformer layout DiffSynth registers for text-to-image Qwen-Image (hash 0319a1…; DiffSynth
has no other entry for the later Qwen-Image releases and edits); its sampling defaults are the stock
``QwenImagePipeline``'s (30 steps, CFG 4.0, 1328x1328, the schedule's shift following the token count).
Qwen-Image-Layered (RGBA layers of an input image) is not a text-to-image source; ``QwenImageL2PDiT`` still builds
its layout (``use_layer3d_rope``, ``use_additional_t_cond``).  ``tiny`` is a CPU-sized model with a tiny Qwen2.5-VL
language model as text encoder.
"""

import os
from typing import Any, Dict, List, Union

from ..models.configs import L2PConfig
from . import Family, config_entries, registry_entry

DIT_MODEL_NAME = "qwen_image_l2p_dit"
DIT_CLASS = "diffsynth_l2p.models.qwen_image_l2p_dit.QwenImageL2PDiT"
# ``QwenImageDiT``'s layout at any width (the defaults build exactly the stock model; DiffSynth's class cannot be
# built small).
LATENT_CLASS = "diffsynth_l2p.models.qwen_image_l2p_dit.QwenImageLatentDiT"
STOCK_DIT_CLASS = "diffsynth.models.qwen_image_dit.QwenImageDiT"
STOCK_TEXT_ENCODER_CLASS = "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
TEXT_ENCODER_MODEL_NAME = "qwen_image_text_encoder"
TINY_TEXT_ENCODER_CLASS = "diffsynth_l2p.models.text_encoder.QwenVLTextEncoder"

# The tiny text encoder (``Qwen2_5_VLTextConfig`` kwargs): the tiny word-level tokenizer with line breaks as tokens
# (``tiny.build_tokenizer(newline_token=True)``: the 112 tokens of ``tiny.VOCABULARY`` and "\n"), Qwen's
# special-token roles (bos <|endoftext|>, eos <|im_end|>), 2 heads of 24 with the stock multimodal RoPE split
# (sections sum to half the head width).
TINY_TEXT_ENCODER: Dict[str, Any] = dict(
    vocab_size=113,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    rope_scaling={"mrope_section": [4, 4, 4], "rope_type": "default", "type": "default"},
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=3,
    pad_token_id=0,
)
# 4 blocks of 64 (2 heads x 32; RoPE axes 8 + 12 + 12 = the head width, each even), text width = the encoder's.
TINY_BACKBONE: Dict[str, Any] = dict(
    num_layers=4, dim=64, num_attention_heads=2, axes_dim=(8, 12, 12), text_dim=TINY_TEXT_ENCODER["hidden_size"]
)

QWEN_IMAGE_SAMPLING = dict(default_steps=30, default_cfg_scale=4.0)  # QwenImagePipeline.__call__'s defaults
CONFIGS: Dict[str, L2PConfig] = {
    "20b": L2PConfig(kwargs={}, default_height=1328, default_width=1328, **QWEN_IMAGE_SAMPLING),
    "tiny": L2PConfig(
        kwargs={**TINY_BACKBONE, "head_channels": (16, 32, 64, 128)},
        default_height=64,
        default_width=64,
        **QWEN_IMAGE_SAMPLING,
    ),
}
LATENT_KWARGS: Dict[str, Dict[str, Any]] = {"20b": {}, "tiny": TINY_BACKBONE}

# DiffSynth hashes of the pixel DiT files (keys and shapes of ``QwenImageL2PDiT(**kwargs)``) and of the tiny text
# encoder; ``tests/test_qwen_image_l2p.py`` recomputes each on the meta device.
DIT_HASHES = {"20b": "222d03fcd326c791d449c5bba3bf1ded", "tiny": "939a1efadb4ff014d17d0eeb4a2d2e1f"}
TINY_TEXT_ENCODER_HASH = "8b60f0ce5d917cb214a718b719376a81"


FAMILY = Family(
    name="qwen-image",
    title="Qwen-Image",
    dit_model_name=DIT_MODEL_NAME,
    dit_class=DIT_CLASS,
    pipeline_class="diffsynth_l2p.pipelines.qwen_image_l2p.QwenImageL2PPipeline",
    configs=CONFIGS,
    latent_model_names=("qwen_image_dit",),
    latent_class=LATENT_CLASS,
    latent_kwargs=LATENT_KWARGS,
    new_parts=("img_in", "local_decoder"),
    block_containers=("transformer_blocks",),
    # The first and last sixth of the blocks, as Z-Image's 5 of 30: 10 of 60, ≈6.74B of 20.42B trainable
    # (docs/transfer.md). Qwen-Image has no refiner blocks, so its input side is only these.
    release_share=1 / 6,
    # DiffSynth's Qwen-Image LoRA targets (the attention projections of both streams and the MLP linears),
    # restricted to the main blocks.
    lora_target=(
        r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj|to_out\.0|to_add_out)"
        r"|(img|txt)_mlp\.net\.(0\.proj|2))"
    ),
    # Only the last block's image tokens reach the head, so its text-stream outputs and text queries feed nothing
    # (``{last}``: the last block's index). The 4 x dim rows of that block's ``txt_mod.1`` other than the
    # attention's shift and scale get zero gradient too; the rest of that parameter is used.
    no_gradient=tuple(
        f"transformer_blocks.{{last}}.{part}.*"
        for part in ("attn.add_q_proj", "attn.norm_added_q", "attn.to_add_out", "txt_mlp")
    ),
    registry_entries=(
        *config_entries(DIT_HASHES, DIT_MODEL_NAME, DIT_CLASS, CONFIGS),
        registry_entry(TINY_TEXT_ENCODER_HASH, TEXT_ENCODER_MODEL_NAME, TINY_TEXT_ENCODER_CLASS, TINY_TEXT_ENCODER),
    ),
    vram_maps={
        DIT_CLASS: (STOCK_DIT_CLASS, {"torch.nn.Conv2d": "diffsynth.core.vram.layers.AutoWrappedModule"}),
        TINY_TEXT_ENCODER_CLASS: (STOCK_TEXT_ENCODER_CLASS, {}),
    },
    tiny_set="diffsynth_l2p.families.qwen_image.build_tiny_qwen_image",
)


def build_tiny_qwen_image(out_dir: Union[str, os.PathLike], seed: int = 0) -> Dict[str, Union[str, List[str]]]:
    """Write a random tiny Qwen-Image L2P model set into ``out_dir`` (laid out as ``tiny.build_tiny_l2p``'s)."""
    from ..models.qwen_image_l2p_dit import QwenImageL2PDiT
    from ..models.text_encoder import QwenVLTextEncoder
    from ..tiny import build_tokenizer, write_model_set

    dit, text_encoder = QwenImageL2PDiT(**CONFIGS["tiny"].kwargs), QwenVLTextEncoder(**TINY_TEXT_ENCODER)
    return write_model_set(out_dir, dit, text_encoder, build_tokenizer(newline_token=True), seed)

