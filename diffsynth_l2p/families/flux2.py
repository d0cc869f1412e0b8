"""FLUX.2 (dev, klein-4B, klein-9B): DiffSynth's ``Flux2DiT`` as an L2P pixel DiT (``Flux2L2PDiT``, docs/transfer.md).

Sizes are DiffSynth's registered FLUX.2 transformers; the pixel configs keep their kwargs (the class defaults are
dev's).  Sampling defaults are the stock ``Flux2ImagePipeline``'s (30 steps, CFG 1.0, 1024x1024; the schedule's
shift follows the token count).  ``tiny`` is a CPU-sized model with a 28-layer, 32-wide Qwen3 text encoder, so the
stock prompt encoding's hidden layers 9, 18 and 27 exist.
"""

import os
from typing import Any, Dict, List, Union

from ..models.configs import TINY_TEXT_ENCODER_CONFIG, L2PConfig
from . import Family, config_entries, registry_entry

DIT_MODEL_NAME = "flux2_l2p_dit"
DIT_CLASS = "diffsynth_l2p.models.flux2_l2p_dit.Flux2L2PDiT"
LATENT_CLASS = "diffsynth.models.flux2_dit.Flux2DiT"
# ``models.text_encoder``'s registry name and class, spelled out so that importing this module imports no torch.
TEXT_ENCODER_MODEL_NAME = "z_image_text_encoder"
TEXT_ENCODER_CLASS = "diffsynth_l2p.models.text_encoder.Qwen3TextEncoder"

# DiffSynth's registered FLUX.2 transformers (``Flux2DiT`` kwargs); dev is the class defaults.
KLEIN_4B = dict(
    guidance_embeds=False, joint_attention_dim=7680, num_attention_heads=24, num_layers=5, num_single_layers=20
)
KLEIN_9B = dict(
    guidance_embeds=False, joint_attention_dim=12288, num_attention_heads=32, num_layers=8, num_single_layers=24
)
# The tiny text encoder: the tiny Z-Image one's vocabulary and attention, 32 wide, 28 layers (the stock FLUX.2 prompt
# encoding stacks hidden states 9, 18 and 27, so the DiT's text width is 3 x 32).
TINY_TEXT_ENCODER = {
    **TINY_TEXT_ENCODER_CONFIG,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 28,
    "head_dim": 16,
}
# 2 double-stream + 3 single-stream blocks of 64 (2 heads x 32); the release preset trains all 5 of them.
TINY_BACKBONE = dict(
    num_layers=2,
    num_single_layers=3,
    attention_head_dim=32,
    num_attention_heads=2,
    joint_attention_dim=3 * TINY_TEXT_ENCODER["hidden_size"],
    timestep_guidance_channels=32,
    axes_dims_rope=(8, 8, 8, 8),  # sums to the head width, as the stock RoPE needs
    guidance_embeds=False,
)

FLUX2_SAMPLING = dict(default_steps=30, default_cfg_scale=1.0)  # Flux2ImagePipeline.__call__'s defaults
CONFIGS: Dict[str, L2PConfig] = {
    "klein-4b": L2PConfig(kwargs=dict(KLEIN_4B), **FLUX2_SAMPLING),
    "klein-9b": L2PConfig(kwargs=dict(KLEIN_9B), **FLUX2_SAMPLING),
    "dev": L2PConfig(kwargs={}, **FLUX2_SAMPLING),
    "tiny": L2PConfig(
        kwargs={**TINY_BACKBONE, "head_channels": (16, 32, 64, 128)},
        default_height=64,
        default_width=64,
        **FLUX2_SAMPLING,
    ),
}
LATENT_KWARGS: Dict[str, Dict[str, Any]] = {
    "klein-4b": KLEIN_4B,
    "klein-9b": KLEIN_9B,
    "dev": {},
    "tiny": TINY_BACKBONE,
}

# DiffSynth hashes of the pixel DiT files (keys and shapes of ``Flux2L2PDiT(**kwargs)``) and of the tiny text
# encoder; ``tests/test_flux2_l2p.py`` recomputes each on the meta device.
DIT_HASHES = {
    "klein-4b": "eb2f8ca4e6ec3f3f608f741197e53ecc",
    "klein-9b": "37bb7680d1422b440f83c79fb472d485",
    "dev": "eb89989583cfa93afdc4b8e5f5521288",
    "tiny": "b32065f2e36a3b59e4e0f413f23b702b",
}
TINY_TEXT_ENCODER_HASH = "dd65cb55d3b63ed1822f1b8e77171871"


FAMILY = Family(
    name="flux2",
    title="FLUX.2",
    dit_model_name=DIT_MODEL_NAME,
    dit_class=DIT_CLASS,
    pipeline_class="diffsynth_l2p.pipelines.flux2_l2p.Flux2L2PPipeline",
    configs=CONFIGS,
    latent_model_names=("flux2_dit",),
    latent_class=LATENT_CLASS,
    latent_kwargs=LATENT_KWARGS,
    new_parts=("x_embedder", "local_decoder"),
    # Forward order: every double-stream block, then every single-stream block (one sequence for the presets).
    block_containers=("transformer_blocks", "single_transformer_blocks"),
    # The first and last sixth of the main blocks, as Z-Image's 5 of 30: klein-4B 4 of 25 (5 double + 20 single;
    # 42.9% of the parameters trainable, Z-Image 41%), klein-9B 5 of 32 (39.8%), dev 9 of 56 (42.0%). Everything
    # outside the frozen middle blocks trains, the top-level shared modulation modules included (docs/transfer.md).
    release_share=1 / 6,
    # DiffSynth's FLUX.2 LoRA targets, restricted to the main blocks.
    lora_target=(
        r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
        r"|ff(_context)?\.linear_(in|out))"
        r"|single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out)"
    ),
    registry_entries=(
        *config_entries(DIT_HASHES, DIT_MODEL_NAME, DIT_CLASS, CONFIGS),
        registry_entry(TINY_TEXT_ENCODER_HASH, TEXT_ENCODER_MODEL_NAME, TEXT_ENCODER_CLASS, TINY_TEXT_ENCODER),
    ),
    vram_maps={DIT_CLASS: (LATENT_CLASS, {"torch.nn.Conv2d": "diffsynth.core.vram.layers.AutoWrappedModule"})},
    tiny_set="diffsynth_l2p.families.flux2.build_tiny_flux2",
)


def build_tiny_flux2(out_dir: Union[str, os.PathLike], seed: int = 0) -> Dict[str, Union[str, List[str]]]:
    """Write a random tiny FLUX.2 L2P model set into ``out_dir`` (laid out as ``tiny.build_tiny_l2p``'s)."""
    from ..models.flux2_l2p_dit import Flux2L2PDiT
    from ..models.text_encoder import Qwen3TextEncoder
    from ..tiny import build_tokenizer, write_model_set

    dit, text_encoder = Flux2L2PDiT(**CONFIGS["tiny"].kwargs), Qwen3TextEncoder(**TINY_TEXT_ENCODER)
    return write_model_set(out_dir, dit, text_encoder, build_tokenizer(), seed)

