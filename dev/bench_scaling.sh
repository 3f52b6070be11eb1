#!/usr/bin/env bash
# dev/bench_scaling.sh: data-parallel scaling of train_mdn on the GPUs of one machine. Tokens per
# second of the 400M model at the paper's micro-batch (8 rows x 4096 tokens per GPU, one micro-step
# per optimizer step, bf16: the reduction's worst case, one per 8 x 4096 tokens) on each GPU alone,
# then on N GPUs (mpirun, one process per GPU, NCCL ZeRO-1), and the scaling efficiency
# tok/s(N) / (N * tok/s(1)); the target is >= 95%. The cards of one machine differ by a few percent
# and N GPUs in lockstep run at the pace of the slowest, so tok/s(1) is taken on each card and the
# efficiency is printed against the slowest card and against their mean.
# The trainer's tok/s is the moving average of its step lines, the first step left out.
#
# Usage: dev/bench_scaling.sh [N]    (N: GPUs for the second run; default: all that nvidia-smi lists)
# Environment: STEPS (default 12), CONFIG (default configs/momentum_deltanet_400M.json),
#   DATA (default data/tinyshakespeare/*train*.bin; scripts/prepare_tinyshakespeare.sh makes it),
#   LOGDIR (the runs' output, default build/bench_scaling).
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

# tok/s (all GPUs together) of the last step line of a run's log
tokens_per_s() { grep -o '[0-9.]* tok/s' "$1" | tail -n 1 | cut -d' ' -f1; }

ones=()
for (( gpu = 0; gpu < N; gpu++ )); do
    log="$LOGDIR/gpu$gpu.log"
    CUDA_VISIBLE_DEVICES=$gpu ./train_mdn "${FLAGS[@]}" >"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; echo "error: the 1-GPU run on GPU $gpu failed ($log)" >&2; exit 1; }
    ones+=("$(tokens_per_s "$log")")
    echo "GPU $gpu alone: ${ones[-1]} tok/s ($(grep -m1 '^device' "$log"))"
done
if [ "$N" -lt 2 ]; then
    echo "only $N GPU here: no scaling run"
    exit 0
fi
log="$LOGDIR/gpus$N.log"
mpirun --allow-run-as-root -np "$N" ./train_mdn "${FLAGS[@]}" >"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; echo "error: the $N-GPU run failed ($log)" >&2; exit 1; }
many=$(tokens_per_s "$log")
echo "$N GPUs together: $many tok/s"
printf '%s\n' "${ones[@]}" | awk -v many="$many" -v n="$N" '
    { sum += $1; if (NR == 1 || $1 < slowest) slowest = $1 }
    END {
        e = many / (n * slowest);
        printf "scaling efficiency: %.1f%% of %d x the slowest card, %.1f%% of %d x their mean (target >= 95%%)\n",
               100 * e, n, 100 * many / (n * sum / NR), n;
        exit (e >= 0.95 ? 0 : 2) }'
