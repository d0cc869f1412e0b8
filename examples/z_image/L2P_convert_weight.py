"""Convert a latent Z-Image DiT into an L2P pixel-space init (release-compatible entry point for `l2p convert`).

    python examples/z_image/L2P_convert_weight.py \
        --latent_ckpt_files transformer/diffusion_pytorch_model-0000{1,2,3}-of-00003.safetensors \
        --output_path models/L2P/pixel_init.safetensors [--seed 42] [--dry-run]
"""

import sys

from diffsynth_l2p.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
