#!/usr/bin/env bash
# dev/bench_scaling.sh: data-parallel scaling of train_mdn on the GPUs of one machine. Tokens per
# second of the 400M model at the paper's micro-batch (8 rows x 4096 tokens per GPU, one micro-step
# per optimizer step, bf16) on 1 GPU, then on N GPUs (mpirun, one process per GPU, NCCL ZeRO-1),
# and the scaling efficiency tok/s(N) / (N * tok/s(1)); the target is >= 95%.
# The trainer's tok/s is the moving average of its step lines, the first step left out.
#
# Usage: dev/bench_scaling.sh [N]    (N: GPUs for the second run; default: all that nvidia-smi lists)
# Environment: STEPS (default 12), CONFIG (default configs/momentum_deltanet_400M.json),
#   DATA (default data/tinyshakespeare/*train*.bin; scripts/prepare_tinyshakespeare.sh makes it),
#   LOGDIR (the two runs' output, default build/bench_scaling).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-$(nvidia-smi -L 2>/dev/null | grep -c GPU || true)}
STEPS=${STEPS:-12}
CONFIG=${CONFIG:-configs/momentum_deltanet_400M.json}
DATA=${DATA:-data/tinyshakespeare/*train*.bin}
LOGDIR=${LOGDIR:-build/bench_scaling}
[ -x ./train_mdn ] || { echo "error: ./train_mdn not built (make)"; exit 1; }
[ "$N" -ge 1 ] 2>/dev/null || { echo "error: no GPU found (nvidia-smi -L)"; exit 1; }
mkdir -p "$LOGDIR"
FLAGS=(--config "$CONFIG" --train-data "$DATA" --val-data "" --batch-size 8 --seq-len 4096 --grad-accum 1
       --steps "$STEPS" --warmup-steps 2 --val-interval 0 --sample-interval 0 --checkpoint-interval 0)

# tokens/s (all GPUs together) of the last step line of a run
run() {
    local gpus=$1 log="$LOGDIR/gpus$1.log"
    if [ "$gpus" -eq 1 ]; then
        ./train_mdn "${FLAGS[@]}" >"$log" 2>&1 || { tail -n 20 "$log" >&2; echo "error: the 1-GPU run failed ($log)" >&2; exit 1; }
    else
        mpirun --allow-run-as-root -np "$gpus" ./train_mdn "${FLAGS[@]}" >"$log" 2>&1 \
            || { tail -n 20 "$log" >&2; echo "error: the $gpus-GPU run failed ($log)" >&2; exit 1; }
    fi
    grep -o '[0-9.]* tok/s' "$log" | tail -n 1 | cut -d' ' -f1
}

one=$(run 1)
echo "1 GPU:  $one tok/s ($(grep -m1 '^device' "$LOGDIR/gpus1.log"))"
if [ "$N" -lt 2 ]; then
    echo "only $N GPU here: no scaling run"
    exit 0
fi
many=$(run "$N")
echo "$N GPUs: $many tok/s"
awk -v one="$one" -v many="$many" -v n="$N" 'BEGIN {
    e = many / (n * one);
    printf "scaling efficiency: %.1f%% (target >= 95%%)\n", 100 * e;
    exit (e >= 0.95 ? 0 : 2) }'
