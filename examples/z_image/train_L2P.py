"""Train an L2P pixel DiT: the entry point that ``train_run.sh`` starts with ``accelerate launch``.

    accelerate launch --config_file examples/z_image/accelerate_config_zero2.yaml examples/z_image/train_L2P.py \
        --dataset_base_path data/l2p_corpus --model models/L2P --preset release --output_path models/train/L2P

Same options as ``l2p train`` (see ``--help``); ``--dry-run`` prints the preset's parameter counts and memory.
"""

import sys

from diffsynth_l2p.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
