#!/usr/bin/env bash
# test_train.sh CASE: end-to-end checks of train_mdn_cpu on a tiny model (test/data/trainer_tiny.json,
# vocab 256) and byte-level shards of data/tinyshakespeare.txt (token = byte), so each case runs in
# seconds on 2 cores. Cases:
#   resume    N steps in one run == k steps, stop, --resume, N-k steps: log.jsonl losses bit-identical
#             (with --shuffle and --grad-accum 2, so the data RNG and accumulation are covered)
#   signal    SIGTERM mid-run: exit 0 with a checkpoint; resuming gives the uninterrupted losses bit for bit
#             (if the run finished before the signal, the test still passes: the machine was too fast)
#   mpirun    mpirun -np 2 with batch B == one process with batch 2B (losses within 1e-5 relative:
#             the sums over rows are grouped differently, so the last bits differ)
#   ranks     a checkpoint written by 2 ranks resumed by 1 (and the other way) continues the same run
#   learn     200 steps: validation loss below the unigram entropy of the training bytes
#   export    --export-hf writes an HF directory that --init-from loads back exactly
#   nodecay   the parameters --no-decay-set spares from weight decay
#   dryrun    --dry-run prints the exact parameter counts of the paper's configs
set -u
cd "$(dirname "$0")/.." || exit 1
# one OpenMP thread per process unless told otherwise: the tiny model gains little from more, and
# threads that wait at every parallel region's barrier crawl on a busy 2-core machine
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
BIN=./train_mdn_cpu
MPIRUN="mpirun --allow-run-as-root --oversubscribe"
work=$(mktemp -d /tmp/mdn_test_train.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
source test/lib.sh

write_byte_shards "$work" || fail "could not write the byte-level shards"
COMMON=(--config test/data/trainer_tiny.json --train-data "$work/train_*.bin" --val-data "$work/val_*.bin"
        --seq-len 64 --lr 3e-3 --warmup-steps 5 --sample-interval 0)

# the "step,loss" pairs of a log, exactly as written
losses() { grep -o '"step":[0-9]*,"loss":[^,]*' "$1"; }

# the params, adam_m and adam_v tensors of two checkpoints are byte-identical (metadata may differ)
same_tensors() {
    python3 - "$1" "$2" <<'PY'
import json, struct, sys
def tensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    return {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
sys.exit(0 if a.keys() == b.keys() == {"params", "adam_m", "adam_v"} and all(a[k] == b[k] for k in a) else 1)
PY
}

case "${1:-}" in
resume)
    args=("${COMMON[@]}" --batch-size 2 --grad-accum 2 --shuffle --steps 24 --val-interval 8 --val-batches 4 --checkpoint-interval 8 --keep-latest-k 0)
    $BIN "${args[@]}" --out "$work/full" >"$work/full.txt" 2>&1 || { cat "$work/full.txt"; fail "uninterrupted run"; }
    # the state after step 8 as if the run had stopped there
    mkdir -p "$work/part" && cp "$work/full/checkpoint_00000008.safetensors" "$work/full/log.jsonl" "$work/part/"
    $BIN "${args[@]}" --out "$work/part" --resume >"$work/part.txt" 2>&1 || { cat "$work/part.txt"; fail "resumed run"; }
    grep -q "resumed from .*checkpoint_00000008.safetensors at step 8" "$work/part.txt" || fail "did not resume from step 8"
    [ "$(losses "$work/full/log.jsonl" | wc -l)" = 24 ] || fail "expected 24 logged steps"
    diff <(losses "$work/full/log.jsonl") <(losses "$work/part/log.jsonl") || fail "losses differ after resume"
    diff <(grep -o '"val_loss":[^}]*' "$work/full/log.jsonl") <(grep -o '"val_loss":[^}]*' "$work/part/log.jsonl") || fail "val losses differ"
    same_tensors "$work/full/checkpoint_00000024.safetensors" "$work/part/checkpoint_00000024.safetensors" ||
        fail "final parameters or moments differ"
    echo "OK: 24 steps == 8 + resume + 16: losses, val losses, final params and AdamW moments bit-identical"
    ;;
signal)
    args=("${COMMON[@]}" --batch-size 4 --steps 100 --val-interval 0 --checkpoint-interval 0)
    $BIN "${args[@]}" --out "$work/full" >/dev/null 2>&1 || fail "uninterrupted run"
    $BIN "${args[@]}" --out "$work/cut" >"$work/cut.txt" 2>&1 &
    pid=$!
    # wait for some steps, then ask it to stop
    for _ in $(seq 300); do grep -q "step *10/" "$work/cut.txt" 2>/dev/null && break; sleep 0.1; done
    kill -TERM $pid
    wait $pid || { cat "$work/cut.txt"; fail "SIGTERM: exit status not 0"; }
    grep -q "stopped by SIGTERM" "$work/cut.txt" || { tail "$work/cut.txt"; fail "no stop message"; }
    ls "$work/cut"/checkpoint_*.safetensors >/dev/null 2>&1 || fail "no checkpoint written on SIGTERM"
    stopped=$(losses "$work/cut/log.jsonl" | wc -l)
    $BIN "${args[@]}" --out "$work/cut" --resume >"$work/resume.txt" 2>&1 || { cat "$work/resume.txt"; fail "resume"; }
    diff <(losses "$work/full/log.jsonl") <(losses "$work/cut/log.jsonl") || fail "losses differ after SIGTERM + resume"
    echo "OK: stopped by SIGTERM after step $stopped of 100, resumed, losses bit-identical"
    ;;
mpirun)
    command -v mpirun >/dev/null || fail "mpirun not found"
    args=("${COMMON[@]}" --steps 20 --val-interval 10 --val-batches 2 --grad-accum 2)
    $BIN "${args[@]}" --batch-size 4 --out "$work/one" >"$work/one.txt" 2>&1 || { cat "$work/one.txt"; fail "1 process"; }
    $MPIRUN -np 2 $BIN "${args[@]}" --batch-size 2 --out "$work/two" >"$work/two.txt" 2>&1 || { cat "$work/two.txt"; fail "mpirun -np 2"; }
    grep -q "ranks: 2 (MPI)" "$work/two.txt" || fail "mpirun run did not use 2 MPI ranks"
    read -r diff count < <(max_rel_diff "$work/one/log.jsonl" "$work/two/log.jsonl")
    [ "$count" = 20 ] || fail "expected 20 steps in both logs, got $count"
    awk -v d="$diff" 'BEGIN {exit !(d < 1e-5)}' || fail "losses differ by $diff (relative) between 1x(B=4) and 2x(B=2)"
    echo "OK: mpirun -np 2 (B=2) vs 1 process (B=4), 20 steps: max relative loss difference $diff"
    ;;
ranks)
    command -v mpirun >/dev/null || fail "mpirun not found"
    args=("${COMMON[@]}" --steps 20 --val-interval 0 --checkpoint-interval 10 --keep-latest-k 0)
    $BIN "${args[@]}" --batch-size 4 --out "$work/ref" >/dev/null 2>&1 || fail "reference run"
    # written by 2 ranks, resumed by 1
    $MPIRUN -np 2 $BIN "${args[@]}" --batch-size 2 --out "$work/a" >"$work/a.txt" 2>&1 || { cat "$work/a.txt"; fail "mpirun -np 2"; }
    rm "$work/a/checkpoint_00000020.safetensors"
    $BIN "${args[@]}" --batch-size 4 --out "$work/a" --resume >"$work/a2.txt" 2>&1 || { cat "$work/a2.txt"; fail "resume on 1 rank"; }
    grep -q "at step 10 (written by 2 ranks)" "$work/a2.txt" || fail "did not resume the 2-rank checkpoint"
    read -r d1 n1 < <(max_rel_diff "$work/ref/log.jsonl" "$work/a/log.jsonl")
    # written by 1 rank, resumed by 2
    mkdir -p "$work/b" && cp "$work/ref/checkpoint_00000010.safetensors" "$work/b/" && head -n 10 "$work/ref/log.jsonl" >"$work/b/log.jsonl"
    $MPIRUN -np 2 $BIN "${args[@]}" --batch-size 2 --out "$work/b" --resume >"$work/b.txt" 2>&1 || { cat "$work/b.txt"; fail "resume on 2 ranks"; }
    grep -q "at step 10 (written by 1 rank)" "$work/b.txt" || fail "did not resume the 1-rank checkpoint"
    read -r d2 n2 < <(max_rel_diff "$work/ref/log.jsonl" "$work/b/log.jsonl")
    [ "$n1" = 20 ] && [ "$n2" = 20 ] || fail "expected 20 steps, got $n1 and $n2"
    awk -v a="$d1" -v b="$d2" 'BEGIN {exit !(a < 1e-5 && b < 1e-5)}' || fail "losses differ: $d1 (2->1 ranks), $d2 (1->2 ranks)"
    echo "OK: 2 ranks -> resume on 1: max relative difference $d1; 1 rank -> resume on 2: $d2"
    ;;
learn)
    # The bound: the unigram entropy of the training bytes (the best loss without any context) is
    # about 3.3 nats here; a model that uses its context must go below it on held-out text.
    # ln(256) = 5.55 is the loss at init.
    bound=$(python3 -c "
import math, collections
data = open('data/tinyshakespeare.txt', 'rb').read(); data = data[:len(data) * 9 // 10]
c = collections.Counter(data); n = len(data)
print('%.4f' % -sum(v / n * math.log(v / n) for v in c.values()))")
    args=("${COMMON[@]}" --batch-size 8 --steps 200 --warmup-steps 20 --val-interval 100 --val-batches 16)
    start=$(date +%s.%N)
    $BIN "${args[@]}" --out "$work/learn" >"$work/learn.txt" 2>&1 || { cat "$work/learn.txt"; fail "training run"; }
    seconds=$(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo "?")
    val=$(grep -o '"val_loss":[0-9.e+-]*' "$work/learn/log.jsonl" | tail -n 1 | sed 's/.*://')
    grep "val loss" "$work/learn.txt"
    awk -v v="$val" -v b="$bound" 'BEGIN {exit !(v < b)}' || fail "validation loss $val not below the unigram entropy $bound"
    echo "OK: 200 steps (${seconds}s): val loss $val < unigram entropy $bound nats (init: ln 256 = 5.545)"
    ;;
export)
    # --export-hf at the end: the HF file's tensors, in model order, are the run's final parameters
    # bit for bit; --init-from that directory starts from them (its first loss is far below a fresh start)
    args=("${COMMON[@]}" --batch-size 4 --val-interval 0)
    $BIN "${args[@]}" --steps 6 --lr 1e-2 --out "$work/a" --export-hf "$work/hf" >"$work/a.txt" 2>&1 || { cat "$work/a.txt"; fail "export run"; }
    [ -s "$work/hf/config.json" ] && [ -s "$work/hf/model.safetensors" ] || fail "no config.json/model.safetensors in $work/hf"
    grep -q '"model_type": *"momentum_deltanet"' "$work/hf/config.json" || fail "config.json lacks model_type"
    python3 - "$work/hf/model.safetensors" "$work/a/checkpoint_00000006.safetensors" <<'PY' || fail "exported weights != final params"
import json, struct, sys
def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    return raw[8 + n:], {k: v for k, v in header.items() if k != "__metadata__"}
data, tensors = load(sys.argv[1])
assert all(t["dtype"] == "F32" for t in tensors.values())
flat = b"".join(data[t["data_offsets"][0]:t["data_offsets"][1]] for t in sorted(tensors.values(), key=lambda t: t["data_offsets"][0]))
cdata, ctensors = load(sys.argv[2])
p = ctensors["params"]["data_offsets"]
sys.exit(0 if flat == cdata[p[0]:p[1]] else 1)
PY
    $BIN "${args[@]}" --steps 1 --out "$work/fresh" >/dev/null 2>&1 || fail "fresh run"
    $BIN "${args[@]}" --steps 1 --init-from "$work/hf" --out "$work/init" >"$work/b.txt" 2>&1 || { cat "$work/b.txt"; fail "--init-from"; }
    fresh=$(losses "$work/fresh/log.jsonl" | sed 's/.*"loss"://')
    init=$(losses "$work/init/log.jsonl" | sed 's/.*"loss"://')
    awk -v a="$init" -v b="$fresh" 'BEGIN {exit !(a < b - 0.1)}' || fail "--init-from loss $init not below the fresh loss $fresh"
    echo "OK: --export-hf == final params bit for bit; --init-from it: first loss $init (fresh init: $fresh)"
    ;;
nodecay)
    # the paper decays every parameter; --no-decay-set spares A_log, Mu_log, dt_bias, mu_bias,
    # log_factor, D_log (6 x 2 heads x 2 layers = 24) and the norms (attn_norm, mlp_norm 2 x 2 x 32,
    # o_norm 2 x 16, final norm 32 = 192) of the tiny model: 216 of its 77272 parameters
    args=("${COMMON[@]}" --batch-size 2 --steps 1 --val-interval 0)
    $BIN "${args[@]}" | grep -q "^params: 77272 .*weight decay on 77272 of them$" || fail "default: decay on every parameter"
    $BIN "${args[@]}" --no-decay-set | grep -q "^params: 77272 .*weight decay on 77056 of them" || fail "--no-decay-set: expected 77056 decayed"
    echo "OK: weight decay on all 77272 parameters by default, on 77056 with --no-decay-set"
    ;;
sample)
    # text samples (common/sample.c, the same sampler as train_mdn's) every 4 steps; a run resumed at
    # step 4 prints the same sample at step 8 (the sampler's RNG is in the checkpoint)
    args=("${COMMON[@]}" --sample-interval 4 --sample-tokens 24 --batch-size 2 --steps 8 --val-interval 0 --checkpoint-interval 4 --keep-latest-k 0)
    $BIN "${args[@]}" --out "$work/full" >"$work/full.txt" 2>&1 || { cat "$work/full.txt"; fail "uninterrupted run"; }
    [ "$(grep -ac '^sample: ' "$work/full.txt")" = 2 ] || { cat "$work/full.txt"; fail "expected 2 samples in 8 steps"; }
    mkdir -p "$work/part" && cp "$work/full/checkpoint_00000004.safetensors" "$work/part/"
    $BIN "${args[@]}" --out "$work/part" --resume >"$work/part.txt" 2>&1 || { cat "$work/part.txt"; fail "resumed run"; }
    diff <(grep -a '^sample: ' "$work/full.txt" | tail -n 1) <(grep -a '^sample: ' "$work/part.txt") ||
        fail "the sample after the resume differs"
    echo "OK: a sample every 4 steps; the resumed run's sample at step 8 is the same"
    ;;
dryrun)
    out=$($BIN --config configs/momentum_deltanet_400M.json --dry-run) || fail "dry run 400M"
    echo "$out" | grep -qx "params: 417537012" || { echo "$out" | tail; fail "400M: wrong or missing 'params: N' line"; }
    out=$($BIN --config configs/momentum_deltanet_1B.json --dry-run) || fail "dry run 1B"
    echo "$out" | grep -qx "params: 1462646004" || { echo "$out" | tail; fail "1B: wrong or missing 'params: N' line"; }
    echo "OK: --dry-run params 417537012 (400M), 1462646004 (1B)"
    ;;
*)
    echo "usage: $0 resume|signal|mpirun|ranks|learn|export|nodecay|sample|dryrun"; exit 2 ;;
esac
