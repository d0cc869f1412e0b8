#!/usr/bin/env bash
# Shallow-layer L2P training with the release's recipe: 8 GPUs, DeepSpeed ZeRO-2, bf16, batch 1 per GPU,
# AdamW lr 5e-5 / weight decay 0.01, gradient checkpointing, checkpoints every 5000 steps (trainable tensors only).
# Extra arguments are passed on, e.g. `./train_run.sh --resume latest`; `l2p train --dry-run` shows the memory.
# Afterwards: python merge_weights.py --file_a $OUTPUT/step-N.safetensors --file_b <pixel init> --file_out merged.safetensors
set -euo pipefail

DATASET=data/l2p_corpus            # images + metadata.csv with image,prompt,seed (e.g. from `l2p synthesize`)
MODEL=models/L2P                   # <pixel init>.safetensors (from `l2p convert`) + text_encoder/ + tokenizer/
OUTPUT=models/train/L2P
PRESET=release                     # release | shallow:N | lora:R | full (see `l2p train --help`)
LEARNING_RATE=5e-5
WEIGHT_DECAY=0.01
MAX_PIXELS=1048576
BATCH_SIZE=1                       # per GPU
MAX_STEPS=20000                    # 20k images on 8 GPUs = 2,500 steps per epoch
SAVE_STEPS=5000
ACCELERATE_CONFIG=examples/z_image/accelerate_config_zero2.yaml

cd "$(dirname "$0")"
# The accelerate configs use DeepSpeed, which is an optional extra.
if ! "${PYTHON:-python3}" -c 'import deepspeed' >/dev/null 2>&1; then
    echo "$(basename "$0"): DeepSpeed is not installed; run: pip install -e \".[deepspeed]\"" >&2
    exit 1
fi
accelerate launch --config_file "$ACCELERATE_CONFIG" examples/z_image/train_L2P.py \
  --dataset_base_path "$DATASET" \
  --model "$MODEL" \
  --preset "$PRESET" \
  --learning_rate "$LEARNING_RATE" \
  --weight_decay "$WEIGHT_DECAY" \
  --max_pixels "$MAX_PIXELS" \
  --batch_size "$BATCH_SIZE" \
  --max_steps "$MAX_STEPS" \
  --save_steps "$SAVE_STEPS" \
  --remove_prefix_in_ckpt "pipe.dit." \
  --output_path "$OUTPUT" \
  "$@"
