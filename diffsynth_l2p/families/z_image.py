"""Z-Image (Turbo and Base): the released L2P family (``ZImageL2PDiT``, ``docs/architecture.md``)."""

from ..models.configs import L2P_CONFIGS, config_for_kwargs
from . import Family

# The stock latent DiT with the tiny L2P backbone (dim, layers, heads, caption width, RoPE): patch 2 over 16-channel
# latents of an 8x-down autoencoder, the same token grid as the tiny L2P DiT's patch 16 (the tiny-world teacher).
TINY_LATENT_KWARGS = {
    **{key: value for key, value in L2P_CONFIGS["tiny"].kwargs.items() if not key.startswith("head_")},
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
}

FAMILY = Family(
    name="z-image",
    title="Z-Image",
    dit_model_name="z_image_l2p_dit",
    dit_class="diffsynth_l2p.models.z_image_l2p_dit.ZImageL2PDiT",
    pipeline_class="diffsynth_l2p.pipelines.z_image_l2p.ZImageL2PPipeline",
    configs=L2P_CONFIGS,
    latent_model_names=("z_image_dit",),
    latent_class="diffsynth.models.z_image_dit.ZImageDiT",
    latent_kwargs={"1k": {}, "tiny": TINY_LATENT_KWARGS},
    new_parts=("all_x_embedder", "local_decoder"),
    block_containers=("layers",),
    # The released 1K checkpoint trains the first and last 5 of the 30 main blocks (plus refiners and embedders).
    release_blocks=5,
    # DiffSynth's Z-Image LoRA targets ("to_q,to_k,to_v,to_out.0,w1,w2,w3"), restricted to the main blocks.
    lora_target=r"layers\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])",
    nearest_config=config_for_kwargs,  # UHR checkpoints of other backbone widths keep their layout's defaults
    tiny_set="diffsynth_l2p.tiny.build_tiny_l2p",
)

