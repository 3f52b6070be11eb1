#!/usr/bin/env bash
# bench_layers.sh: the layer kernels' checks, their bandwidths (dev/bench_kernels) and the 400M (and 1B)
# step profile in one device call.
# Logs go to $OUT (or build/bench_layers); a short table is printed last.
# Usage: dev/bench_layers.sh [BASELINE_BENCH_TRAIN]   (a bench_train binary of an older commit to time
# in the same call, e.g. built in a git worktree and carried along)
set -u
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-build/bench_layers}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
make -j16 test_mdn train_mdn dev/bench_train dev/bench_kernels build/test/test_layers_cuda > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
timeout 120 build/test/test_layers_cuda > "$out/layers.log" 2>&1; echo "layers rc=$?" >> "$out/summary.txt"
for dt in f32 bf16; do
    timeout 60 ./test_mdn --model test/data/small --state test/data/small/state.safetensors --device cuda --dtype $dt \
        > "$out/test_mdn_$dt.log" 2>&1; echo "test_mdn $dt rc=$?" >> "$out/summary.txt"
done
for case in ${MULTIGPU_CASES:-accum np1}; do
    timeout 150 test/test_multigpu.sh $case > "$out/multigpu_$case.log" 2>&1; echo "multigpu $case rc=$?" >> "$out/summary.txt"
done
dev/bench_kernels --config configs/momentum_deltanet_400M.json > "$out/kernels_400M.log" 2>&1
echo "bench_kernels 400M rc=$?" >> "$out/summary.txt"
cfg400=(--config configs/momentum_deltanet_400M.json --batch-size 8 --seq-len 4096 --steps 3)
if [ -n "${1:-}" ]; then
    timeout 200 "$1" "${cfg400[@]}" --profile > "$out/bench_400M_base.log" 2>&1; echo "bench 400M base rc=$?" >> "$out/summary.txt"
fi
MDN_MATMUL_TUNE_LOG=1 timeout 200 dev/bench_train "${cfg400[@]}" --profile > "$out/bench_400M.log" 2>&1
echo "bench 400M rc=$?" >> "$out/summary.txt"
MDN_MATMUL_TUNE=1 timeout 200 dev/bench_train "${cfg400[@]}" > "$out/bench_400M_tune.log" 2>&1
echo "bench 400M tuned rc=$?" >> "$out/summary.txt"
timeout 200 dev/bench_train --config configs/momentum_deltanet_1B.json --batch-size 4 --seq-len 4096 --steps 3 \
    > "$out/bench_1B.log" 2>&1; echo "bench 1B rc=$?" >> "$out/summary.txt"
cat "$out/gpu.txt" "$out/summary.txt"
grep -E "FAIL|OK|worst" "$out"/layers.log "$out"/test_mdn_*.log | head -30
for f in "$out"/bench_*.log; do echo "== $f"; grep -vE "^linear.cu" "$f" | tail -40; done
cat "$out/kernels_400M.log"
