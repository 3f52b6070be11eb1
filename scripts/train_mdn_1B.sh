#!/usr/bin/env bash
# The paper's 1.3B run (mdn-spec.md §9): configs/momentum_deltanet_1B.json, SlimPajama tokenized
# with the GPT-2 BPE, T = 4096, global batch 256 sequences (1,048,576 tokens), 102,400 steps (~107B
# tokens), AdamW lr 3e-4 (betas 0.9/0.95, eps 1e-15, wd 0.1 on every parameter), 1024 warmup steps,
# cosine to 0.1*lr, clip 1.0, seed 42, checkpoint every 2048 steps keeping 2.
# The global batch is reached by gradient accumulation: 4 rows per GPU x (64 / GPUs) micro-steps.
#
# Usage: scripts/train_mdn_1B.sh [GPUS] [HOSTFILE]   (see scripts/train_mdn_400M.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS=${1:-1}
HOSTFILE=${2:-}
MICRO_BATCH=4
GLOBAL_BATCH=256
OUT=${OUT:-out/mdn_1B}
source scripts/launch_common.sh
launch --config configs/momentum_deltanet_1B.json --steps 102400
