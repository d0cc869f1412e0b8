#!/usr/bin/env bash
# Low-VRAM L2P training on one GPU (< 24 GB): captions are encoded once and the text encoder is freed
# (--cache_text_embeddings), the fp32 master weights and AdamW states live on the CPU (DeepSpeed ZeRO-2
# optimizer offload, ~38 GiB of host RAM for the release preset), and gradient accumulation over 8
# micro-batches matches the release's 8-GPU batch. `l2p train --dry-run` prints the memory table behind
# these settings. Extra arguments are passed on (e.g. --resume latest).
set -euo pipefail

DATASET=data/l2p_corpus            # images + metadata.csv with image,prompt,seed (e.g. from `l2p synthesize`)
MODEL=models/L2P                   # <pixel init>.safetensors (from `l2p convert`) + text_encoder/ + tokenizer/
OUTPUT=models/train/L2P_low_VRAM
PRESET=release                     # lora:32 needs far less memory still (see --dry-run)
LEARNING_RATE=5e-5
WEIGHT_DECAY=0.01
MAX_PIXELS=1048576
BATCH_SIZE=1
GRADIENT_ACCUMULATION_STEPS=8
MAX_STEPS=20000
SAVE_STEPS=5000
ACCELERATE_CONFIG=examples/z_image/accelerate_config_zero2_offload.yaml
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

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
  --gradient_accumulation_steps "$GRADIENT_ACCUMULATION_STEPS" \
  --max_steps "$MAX_STEPS" \
  --save_steps "$SAVE_STEPS" \
  --cache_text_embeddings \
  --remove_prefix_in_ckpt "pipe.dit." \
  --output_path "$OUTPUT" \
  "$@"
