"""Merge a training checkpoint into a full L2P checkpoint (release-compatible entry point for `l2p merge`).

Tensors of FILE_A overwrite FILE_B's where key and shape match; a LoRA checkpoint (``--preset lora:R``) is fused
instead (W += B @ A, plus the full-rank tensors it carries). The output is written atomically.

    python merge_weights.py --file_a step-5000.safetensors --file_b pixel_init.safetensors --file_out merged.safetensors
"""

import sys

from diffsynth_l2p.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
