"""Merge a training checkpoint into a full L2P checkpoint (release-compatible entry point for `l2p merge`).

A LoRA checkpoint (``--preset lora:R``) is fused instead: W += B @ A, plus the full-rank tensors it carries.

    python merge_weights.py --file_a step-5000.safetensors --file_b pixel_init.safetensors --file_out merged.safetensors
"""

import sys

from diffsynth_l2p.cli import build_parser, main


def merge_or_fuse(argv: list) -> int:
    """``l2p merge``, or ``fuse_lora`` when FILE_A is a LoRA checkpoint (recognised by its ``lora_A/lora_B`` keys)."""
    args = build_parser().parse_args(["merge", *argv])
    from diffsynth_l2p.merge import fuse_lora, is_lora_checkpoint
    from diffsynth_l2p.safetensors_io import read_headers

    try:
        if not is_lora_checkpoint(read_headers(args.file_a)):
            return main(["merge", *argv])
        print(fuse_lora(args.file_a, args.file_b, args.file_out).summary())
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as error:
        print(f"merge_weights.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(merge_or_fuse(sys.argv[1:]))
