#!/usr/bin/env bash
# final_checks.sh: one device call that checks a build end to end on a GPU: every GPU test of
# test/tests.txt, the GPU-vs-CPU 200-step curves, the quickstart's GPU branch, the 400M first-step
# latency and the 400M/1B throughput. Logs to $OUT (or build/final_checks).
set -u
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-build/final_checks}"
mkdir -p "$out"
export OMP_NUM_THREADS=8
start=$(date +%s)
make -j16 > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
echo "build $(( $(date +%s) - start )) s" >> "$out/summary.txt"
test/run_tests.sh gpu > "$out/gpu_tests.log" 2>&1; tail -n 4 "$out/gpu_tests.log" >> "$out/summary.txt"
t0=$(date +%s%N)
timeout 120 ./train_mdn --config configs/momentum_deltanet_400M.json --batch-size 8 --seq-len 4096 --steps 4 \
    --warmup-steps 2 --val-interval 0 --sample-interval 0 --checkpoint-interval 0 > "$out/bench.txt" 2>&1
echo "400M launch to exit of 4 steps: $(( ($(date +%s%N) - t0) / 1000000 )) ms" >> "$out/summary.txt"
timeout 150 dev/bench_train --config configs/momentum_deltanet_400M.json --batch-size 8 --seq-len 4096 --steps 3 >> "$out/bench.txt" 2>&1
timeout 150 dev/compare_curves.sh out/compare > "$out/compare.txt" 2>&1; tail -n 2 "$out/compare.txt" >> "$out/summary.txt"
for run in cpu gpu_f32 gpu_bf16; do cp "out/compare/$run/log.jsonl" "$out/$run.jsonl" 2>/dev/null; done
timeout 90 scripts/quickstart.sh --steps 100 > "$out/quickstart.txt" 2>&1; echo "quickstart rc=$?" >> "$out/summary.txt"
timeout 150 dev/bench_train --config configs/momentum_deltanet_1B.json --batch-size 4 --seq-len 4096 --steps 3 >> "$out/bench.txt" 2>&1
grep -E "tok/s|GiB|step +1/" "$out/bench.txt" | tail -n 8 >> "$out/summary.txt"
cat "$out/summary.txt"
