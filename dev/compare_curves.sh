#!/usr/bin/env bash
# The GPU trainer against the CPU reference trainer over a 200-step run on the shipped corpus:
# the same config, flags, data and seed; train_mdn in float32 (--dtype f32) and in bf16. Prints how
# far each GPU curve is from the CPU one (max and mean relative difference of the step losses, and
# the validation losses) and leaves the three log.jsonl under OUT for dev/plot_loss.
# Usage: dev/compare_curves.sh [OUT]   (default out/compare; needs a GPU and the tinyshakespeare shards)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/compare}
ls data/tinyshakespeare/*train*.bin >/dev/null 2>&1 || scripts/prepare_tinyshakespeare.sh
FLAGS=(--config configs/mdn_tiny.json --batch-size 8 --seq-len 256 --steps 200 --warmup-steps 20 --lr 1e-3
       --val-interval 50 --val-batches 4 --sample-interval 0 --checkpoint-interval 0)
rm -rf "$OUT" && mkdir -p "$OUT"
./train_mdn_cpu "${FLAGS[@]}" --out "$OUT/cpu" > "$OUT/cpu.txt"
./train_mdn "${FLAGS[@]}" --dtype f32 --out "$OUT/gpu_f32" > "$OUT/gpu_f32.txt"
./train_mdn "${FLAGS[@]}" --dtype bf16 --out "$OUT/gpu_bf16" > "$OUT/gpu_bf16.txt"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def load(name):
    rows = [json.loads(l) for l in open(f"{out}/{name}/log.jsonl") if l.strip()]
    return {r["step"]: r for r in rows}
cpu = load("cpu")
for name in ("gpu_f32", "gpu_bf16"):
    gpu = load(name)
    rel = [abs(gpu[s]["loss"] - cpu[s]["loss"]) / abs(cpu[s]["loss"]) for s in cpu if s in gpu]
    vals = [(s, cpu[s]["val_loss"], gpu[s].get("val_loss")) for s in cpu if "val_loss" in cpu[s]]
    print(f"{name} vs cpu over {len(rel)} steps: max rel diff {max(rel):.2e}, mean {sum(rel)/len(rel):.2e}; "
          f"final loss cpu {cpu[max(cpu)]['loss']:.5f} gpu {gpu[max(gpu)]['loss']:.5f}; val (step, cpu, gpu): "
          + ", ".join(f"({s}, {c:.4f}, {g:.4f})" for s, c, g in vals))
PY
