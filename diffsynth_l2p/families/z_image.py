"""Z-Image (Turbo and Base): the released L2P family (``ZImageL2PDiT``, ``docs/architecture.md``)."""

import os
from pathlib import Path
from typing import Union

from ..models.configs import L2P_CONFIGS, config_for_kwargs
from . import Family

FAMILY = Family(
    name="z-image",
    title="Z-Image",
    dit_model_name="z_image_l2p_dit",
    dit_class="diffsynth_l2p.models.z_image_l2p_dit.ZImageL2PDiT",
    pipeline_class="diffsynth_l2p.pipelines.z_image_l2p.ZImageL2PPipeline",
    configs=L2P_CONFIGS,
    latent_model_names=("z_image_dit",),
    latent_class="diffsynth.models.z_image_dit.ZImageDiT",
    latent_kwargs={"1k": {}},
    new_parts=("all_x_embedder", "local_decoder"),
    block_containers=("layers",),
    # The released 1K checkpoint trains the first and last 5 of the 30 main blocks (plus refiners and embedders).
    release_blocks=5,
    # DiffSynth's Z-Image LoRA targets ("to_q,to_k,to_v,to_out.0,w1,w2,w3"), restricted to the main blocks.
    lora_target=r"layers\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])",
    nearest_config=config_for_kwargs,  # UHR checkpoints of other backbone widths keep their layout's defaults
    tiny_set="diffsynth_l2p.tiny.build_tiny_l2p",
    tiny_latent="diffsynth_l2p.families.z_image.write_tiny_latent_z_image",
)


def write_tiny_latent_z_image(path: Union[str, os.PathLike], seed: int = 0) -> None:
    """A random stock latent ``ZImageDiT`` with the tiny backbone (the tiny-world teacher's layout; ``l2p convert``
    turns it into the tiny L2P DiT)."""
    from diffsynth.models.z_image_dit import ZImageDiT

    from ..safetensors_io import save_module
    from ..tiny import init_weights
    from ..tiny_world.teacher import TEACHER_DIT_CONFIG

    model = ZImageDiT(**TEACHER_DIT_CONFIG)
    init_weights(model, seed)
    save_module(model, Path(path))
