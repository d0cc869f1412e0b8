"""Merge a training checkpoint into a full L2P checkpoint (release-compatible entry point for `l2p merge`).

    python merge_weights.py --file_a step-5000.safetensors --file_b pixel_init.safetensors --file_out merged.safetensors
"""

import sys

from diffsynth_l2p.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
