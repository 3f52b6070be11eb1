#!/usr/bin/env bash
# gpu_checks.sh: everything the GPU trainer needs checked on a lent GPU, in one command (device
# time is scarce): build, the GPU tests, a short real training run, the benchmarks. Logs go to
# $OUT (or build/gpu_checks); the summary lines are printed last.
# Usage: dev/gpu_checks.sh [quick|trainer|multigpu]   (quick: no 1B benchmark; trainer: the trainer's
# checks only: no layer tests and no benchmarks, but the NCCL path with one rank and a 400M run with a
# sample; multigpu, on a machine with several GPUs: the gpu2 tests and dev/bench_scaling.sh only)
set -u
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-build/gpu_checks}"
mode="${1:-}"
source test/lib.sh
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
if [ "$mode" = multigpu ]; then
    make -j16 train_mdn mdn_tokenize build/test/test_collectives_nccl > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
    test/run_tests.sh gpu2: > "$out/gpu2_tests.log" 2>&1; echo "gpu2 tests rc=$?" >> "$out/summary.txt"
    [ -f data/tinyshakespeare/tinyshakespeare_train_000000.bin ] || bash scripts/prepare_tinyshakespeare.sh > "$out/prepare.log" 2>&1
    STEPS=8 LOGDIR="$out/scaling" timeout 300 dev/bench_scaling.sh > "$out/scaling.log" 2>&1
    echo "bench_scaling rc=$?" >> "$out/summary.txt"
    cat "$out/gpu.txt" "$out/summary.txt"
    grep -E "^(PASS|FAIL)|passed|not run|    \|" "$out/gpu2_tests.log" | head -60
    cat "$out/scaling.log"
    exit 0
fi
if [ "$mode" = trainer ]; then
    targets=(train_mdn train_mdn_cpu test_mdn build/test/test_collectives_nccl)
else
    targets=(train_mdn train_mdn_cpu test_mdn dev/bench_train build/test/test_layers_cuda)
fi
start=$(date +%s)
make -j16 "${targets[@]}" > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s" >> "$out/summary.txt"
if [ "$mode" != trainer ]; then
    timeout 120 build/test/test_layers_cuda > "$out/layers.log" 2>&1; echo "layers rc=$?" >> "$out/summary.txt"
fi
for dt in f32 bf16; do
    timeout 60 ./test_mdn --model test/data/small --state test/data/small/state.safetensors --device cuda --dtype $dt \
        > "$out/test_mdn_$dt.log" 2>&1; echo "test_mdn $dt rc=$?" >> "$out/summary.txt"
done
# a short real run: byte-level tinyshakespeare shards, the tiny trainer config
work=$(mktemp -d)
write_byte_shards "$work"
timeout 120 ./train_mdn --config test/data/trainer_tiny.json --train-data "$work/train_*.bin" --val-data "$work/val_*.bin" \
    --batch-size 8 --seq-len 256 --steps 150 --warmup-steps 10 --lr 3e-3 --val-interval 50 --val-batches 4 \
    --sample-interval 50 --sample-tokens 48 --out "$work/run" > "$out/train_tiny.log" 2>&1
echo "train_mdn tiny rc=$?" >> "$out/summary.txt"
cp "$work/run/log.jsonl" "$out/train_tiny_log.jsonl" 2>/dev/null
# the NCCL path with one rank: the NCCL tests under mpirun -np 1, and train_mdn started by mpirun == direct
if [ "$mode" = trainer ]; then
    timeout 60 mpirun --allow-run-as-root -np 1 build/test/test_collectives_nccl 1 > "$out/nccl_np1.log" 2>&1
    echo "test_collectives_nccl mpirun -np 1 rc=$?" >> "$out/summary.txt"
    timeout 120 test/test_multigpu.sh np1 > "$out/multigpu_np1.log" 2>&1; echo "test_multigpu np1 rc=$?" >> "$out/summary.txt"
fi
# checkpoints across trainers: CPU 20 steps -> GPU resumes to 40, and GPU 20 -> CPU resumes to 40;
# each compared with the other trainer's uninterrupted 40 steps (bf16 vs float32: close, not equal)
common=(--config test/data/trainer_tiny.json --train-data "$work/train_*.bin" --val-data "" --batch-size 4 --seq-len 128
        --steps 40 --warmup-steps 5 --lr 1e-3 --checkpoint-interval 20)
{
    ./train_mdn_cpu "${common[@]}" --out "$work/cpu" && ./train_mdn "${common[@]}" --out "$work/gpu" &&
    mkdir -p "$work/g2" "$work/c2" && cp "$work/cpu/checkpoint_00000020.safetensors" "$work/g2/" &&
    cp "$work/gpu/checkpoint_00000020.safetensors" "$work/c2/" &&
    ./train_mdn "${common[@]}" --out "$work/g2" --resume && ./train_mdn_cpu "${common[@]}" --out "$work/c2" --resume &&
    ./train_mdn "${common[@]}" --dtype f32 --out "$work/gf" && mkdir -p "$work/cf" &&
    cp "$work/gf/checkpoint_00000020.safetensors" "$work/cf/" && ./train_mdn_cpu "${common[@]}" --out "$work/cf" --resume &&
    python3 -c '
import json, sys
w = sys.argv[1]
def losses(d): return {r["step"]: r["loss"] for r in map(json.loads, open(w + "/" + d + "/log.jsonl"))}
cpu, gpu, g2, c2, gf, cf = (losses(d) for d in ("cpu", "gpu", "g2", "c2", "gf", "cf"))
for s in (1, 20, 21, 40):
    print("step %d: cpu %.6f gpu %.6f gpu-f32 %.6f | cpu->gpu resumed %s | gpu->cpu resumed %s | gpu-f32->cpu resumed %s"
          % (s, cpu[s], gpu[s], gf[s], g2.get(s), c2.get(s), cf.get(s)))
rel = lambda a, b: abs(a - b) / abs(b)
ok = rel(g2[40], cpu[40]) < 3e-2 and rel(c2[40], gpu[40]) < 3e-2 and rel(gpu[40], cpu[40]) < 3e-2
ok32 = rel(gf[40], cpu[40]) < 1e-3 and rel(cf[40], cpu[40]) < 1e-3
print("gpu f32 vs cpu at step 40: %.3g, gpu f32 -> cpu resumed vs cpu: %.3g (1e-3)" % (rel(gf[40], cpu[40]), rel(cf[40], cpu[40])))
print("cross-trainer checkpoints", "OK" if ok and ok32 else "FAIL"); sys.exit(0 if ok and ok32 else 1)
' "$work"
} > "$out/cross.log" 2>&1; echo "cross-trainer checkpoints rc=$?" >> "$out/summary.txt"
if [ "$mode" = trainer ]; then
    # the 400M model through train_mdn (NCCL, one rank): step time against the 648.5 ms of 11:58,
    # and the time of one text sample on the CPU
    timeout 180 ./train_mdn --config configs/momentum_deltanet_400M.json --train-data "data/tinyshakespeare/*train*.bin" \
        --val-data "" --batch-size 8 --seq-len 4096 --steps 6 --warmup-steps 2 --sample-interval 6 --sample-tokens 32 \
        --checkpoint-interval 0 > "$out/train_400M.log" 2>&1; echo "train_mdn 400M rc=$?" >> "$out/summary.txt"
    cat "$out/gpu.txt" "$out/summary.txt"
    grep -E "FAIL|OK|worst" "$out"/test_mdn_*.log | head -20
    grep -aE "step +(1|50|100|150)/|val loss|error|sample" "$out/train_tiny.log" | head -16
    tail -n 4 "$out/nccl_np1.log" "$out/multigpu_np1.log"
    tail -7 "$out/cross.log"
    grep -E "step|sample|memory|error" "$out/train_400M.log" | tail -12
    exit 0
fi
timeout 200 dev/bench_train --config configs/momentum_deltanet_400M.json --batch-size 8 --seq-len 4096 --steps 3 --profile \
    > "$out/bench_400M.log" 2>&1; echo "bench 400M rc=$?" >> "$out/summary.txt"
if [ "${1:-}" != quick ]; then
    timeout 200 dev/bench_train --config configs/momentum_deltanet_1B.json --batch-size 4 --seq-len 4096 --steps 3 \
        > "$out/bench_1B.log" 2>&1; echo "bench 1B rc=$?" >> "$out/summary.txt"
fi
cat "$out/gpu.txt"; cat "$out/summary.txt"
grep -E "FAIL|OK|worst" "$out"/layers.log "$out"/test_mdn_*.log | head -40
grep -E "step +(1|50|100|150)/|val loss|error" "$out/train_tiny.log" | head -12
tail -6 "$out/cross.log"
cat "$out/bench_400M.log" "$out"/bench_1B.log 2>/dev/null | tail -60
