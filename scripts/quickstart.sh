#!/usr/bin/env bash
# The README's first command (after `make`): tokenize the shipped corpus if needed, then train a
# small MDN on it and print text samples as it learns.
#   with a GPU (train_mdn built, nvidia-smi sees a GPU): configs/mdn_small.json (78M params),
#   ~410k tok/s on an H100: seconds
#   without: configs/mdn_tiny.json (13.9M params, most of them the 50257-token embedding and
#   head) on the CPU, a few minutes on 2 cores; its samples turn Shakespeare-shaped, not good.
# Extra flags go to the trainer (e.g. --steps 50). Output: out/quickstart/{log.jsonl, checkpoints}.
set -euo pipefail
cd "$(dirname "$0")/.."
ls data/tinyshakespeare/*train*.bin >/dev/null 2>&1 || scripts/prepare_tinyshakespeare.sh
rm -rf out/quickstart
if [ -x ./train_mdn ] && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    exec ./train_mdn --config configs/mdn_small.json --batch-size 16 --seq-len 512 --steps 150 \
        --warmup-steps 20 --lr 1e-3 --val-interval 50 --val-batches 4 --sample-interval 50 \
        --sample-tokens 48 --checkpoint-interval 0 --out out/quickstart "$@"
fi
exec ./train_mdn_cpu --config configs/mdn_tiny.json --batch-size 8 --seq-len 64 --steps 150 \
    --warmup-steps 15 --lr 2e-3 --val-interval 50 --val-batches 4 --sample-interval 50 \
    --sample-tokens 32 --checkpoint-interval 0 --out out/quickstart "$@"
