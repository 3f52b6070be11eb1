#!/usr/bin/env bash
# test_bad_input.sh: every kind of bad input to train_mdn_cpu must end in ONE line
# "error: <file or flag>: <problem>" on stderr and exit status 1: no crash, no partial output taken
# for good, and the last good checkpoint left intact. Each case prints what the trainer said.
set -u
cd "$(dirname "$0")/.." || exit 1
# one OpenMP thread per process unless told otherwise: the tiny model gains little from more, and
# threads that wait at every parallel region's barrier crawl on a busy 2-core machine
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
BIN=./train_mdn_cpu
work=$(mktemp -d /tmp/mdn_test_bad.XXXXXX)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
failures=0

# expect_error NAME FRAGMENT CMD...: CMD exits 1 with exactly one "error:" line containing FRAGMENT
expect_error() {
    local name="$1" fragment="$2"
    shift 2
    "$@" >"$work/out.txt" 2>"$work/err.txt"
    local rc=$?
    local errors
    errors=$(grep -c '^error: ' "$work/err.txt")
    if [ $rc -ne 1 ] || [ "$errors" != 1 ] || ! grep -q "^error: .*$fragment" "$work/err.txt"; then
        echo "FAIL $name: exit $rc, $errors error lines, expected one containing '$fragment':"
        sed 's/^/    /' "$work/err.txt" | tail -n 5
        failures=$((failures + 1))
    else
        echo "ok   $name: $(grep '^error: ' "$work/err.txt")"
    fi
}
# expect_ok NAME CMD...: CMD exits 0
expect_ok() {
    local name="$1"
    shift
    if ! "$@" >"$work/out.txt" 2>"$work/err.txt"; then
        echo "FAIL $name: exit status not 0"; sed 's/^/    /' "$work/err.txt" | tail -n 5
        failures=$((failures + 1))
        return 1
    fi
    return 0
}
# write_shard PATH MAGIC VERSION NTOKENS_CLAIMED NTOKENS_WRITTEN [TOKEN]
write_shard() {
    python3 - "$@" <<'PY'
import struct, sys
path, magic, version, claimed, written = sys.argv[1], *map(int, sys.argv[2:6])
token = int(sys.argv[6]) if len(sys.argv) > 6 else None
data = open("data/tinyshakespeare.txt", "rb").read()
toks = [token if token is not None and i == written // 2 else data[i % len(data)] for i in range(written)]
with open(path, "wb") as f:
    f.write(struct.pack("<256i", magic, version, claimed, *([0] * 253)))
    f.write(struct.pack("<%dH" % written, *toks))
PY
}

mkdir -p "$work/data" "$work/badmagic" "$work/short" "$work/bigtoken"
write_shard "$work/data/train_000000.bin" 20240520 1 100000 100000
write_shard "$work/data/val_000000.bin" 20240520 1 20000 20000
write_shard "$work/badmagic/train_000000.bin" 12345 1 100000 100000
write_shard "$work/short/train_000000.bin" 20240520 1 100000 50000
write_shard "$work/bigtoken/train_000000.bin" 20240520 1 100000 100000 300
CONFIG=test/data/trainer_tiny.json
DATA=(--train-data "$work/data/train_*.bin" --val-data "$work/data/val_*.bin")
RUN=(--seq-len 32 --batch-size 2 --lr 3e-3 --warmup-steps 2 --sample-interval 0 --val-interval 0)

# configs
printf '{"hidden_size": 32, "num_heads": ' >"$work/malformed.json"
: >"$work/empty.json"
printf '{"model_type": "llama", "hidden_size": 32}' >"$work/llama.json"
sed 's/"hidden_size": 32/"hidden_size": 48/' $CONFIG >"$work/other.json"
expect_error "malformed config" "$work/malformed.json" $BIN --config "$work/malformed.json" "${DATA[@]}"
expect_error "empty config" "$work/empty.json" $BIN --config "$work/empty.json" "${DATA[@]}"
expect_error "missing config file" "$work/none.json" $BIN --config "$work/none.json" "${DATA[@]}"
expect_error "unknown model_type" "$work/llama.json.*model_type" $BIN --config "$work/llama.json" "${DATA[@]}"

# flags
expect_error "no --config" "--config: missing" $BIN "${DATA[@]}"
expect_error "unknown flag" "--learning-rate: unknown flag" $BIN --config $CONFIG --learning-rate 1e-3
expect_error "flag without value" "--steps: missing value" $BIN --config $CONFIG --steps
expect_error "zero batch size" "--batch-size: must be" $BIN --config $CONFIG --batch-size 0
expect_error "negative seq len" "--seq-len: must be" $BIN --config $CONFIG --seq-len -8
expect_error "zero steps" "--steps: must be" $BIN --config $CONFIG --steps 0
expect_error "zero grad accum" "--grad-accum: must be" $BIN --config $CONFIG --grad-accum 0
expect_error "bad number" "--lr: expected a number" $BIN --config $CONFIG --lr 3e-4x
expect_error "resume without --out" "--resume: needs --out" $BIN --config $CONFIG --resume
expect_error "reset-state-at-eot" "--reset-state-at-eot: not implemented" $BIN --config $CONFIG --reset-state-at-eot

# shards
expect_error "no shard matches" "$work/nothing" $BIN --config $CONFIG --train-data "$work/nothing/*.bin" --val-data ""
expect_error "bad shard magic" "$work/badmagic/train_000000.bin" $BIN --config $CONFIG --train-data "$work/badmagic/*.bin" --val-data "" "${RUN[@]}"
expect_error "truncated shard" "$work/short/train_000000.bin" $BIN --config $CONFIG --train-data "$work/short/*.bin" --val-data "" "${RUN[@]}"
expect_error "token id >= vocab" "$work/bigtoken/train_000000.bin" $BIN --config $CONFIG --train-data "$work/bigtoken/*.bin" --val-data "" "${RUN[@]}" --steps 1000 --batch-size 8 --seq-len 64

# output directory
touch "$work/afile"
expect_error "unwritable --out" "$work/afile" $BIN --config $CONFIG "${DATA[@]}" "${RUN[@]}" --steps 2 --out "$work/afile/out"
expect_error "missing --init-from" "$work/nomodel" $BIN --config $CONFIG "${DATA[@]}" "${RUN[@]}" --steps 2 --init-from "$work/nomodel"

# checkpoints: a good one at step 4, then the failures
OUT="$work/out"
expect_ok "4 good steps" $BIN --config $CONFIG "${DATA[@]}" "${RUN[@]}" --steps 8 --checkpoint-interval 4 --keep-latest-k 0 --out "$OUT"
ckpt4="$OUT/checkpoint_00000004.safetensors"
rm -f "$OUT/checkpoint_00000008.safetensors"
sum4=$(md5sum <"$ckpt4")
expect_error "checkpoint of another config" "$ckpt4: checkpoint of another model config.*hidden_size" \
    $BIN --config "$work/other.json" "${DATA[@]}" "${RUN[@]}" --steps 8 --out "$OUT" --resume
# a full disk while writing the step-8 checkpoint: its temporary file is a link to /dev/full
ln -s /dev/full "$OUT/checkpoint_00000008.safetensors.tmp"
expect_error "full disk at checkpoint" "checkpoint_00000008.safetensors.tmp: write failed (No space left on device)" \
    $BIN --config $CONFIG "${DATA[@]}" "${RUN[@]}" --steps 8 --checkpoint-interval 4 --out "$OUT" --resume
[ "$(md5sum <"$ckpt4")" = "$sum4" ] && [ ! -e "$OUT/checkpoint_00000008.safetensors" ] ||
    { echo "FAIL full disk: the step-4 checkpoint changed or a step-8 one appeared"; failures=$((failures + 1)); }
rm -f "$OUT/checkpoint_00000008.safetensors.tmp"
# non-finite steps: skipped and counted; the run goes on
if MDN_INJECT_NAN_AT=6 expect_ok "one NaN step" $BIN --config $CONFIG "${DATA[@]}" "${RUN[@]}" --steps 8 --out "$work/nan1"; then
    if grep -q '"step":6,"loss":null.*"skipped":true' "$work/nan1/log.jsonl" && grep -q "update skipped (1 in a row, 1 in all)" "$work/err.txt"; then
        echo "ok   one NaN step: $(grep warning "$work/err.txt")"
    else
        echo "FAIL one NaN step: not logged as skipped"; failures=$((failures + 1))
    fi
fi
# too many in a row: error, exit 1, the step-4 checkpoint untouched (and still the latest)
MDN_INJECT_NAN_AT=5,6,7 expect_error "3 NaN steps in a row" "--max-nan-steps: 3 non-finite steps in a row (steps 5 to 7)" \
    $BIN --config $CONFIG "${DATA[@]}" "${RUN[@]}" --steps 8 --checkpoint-interval 4 --max-nan-steps 3 --out "$OUT" --resume
[ "$(md5sum <"$ckpt4")" = "$sum4" ] || { echo "FAIL NaN abort: the step-4 checkpoint changed"; failures=$((failures + 1)); }
# a corrupt newest checkpoint (one flipped byte) and a truncated one: skipped with a warning, the step-4 one used
expect_ok "8 steps" $BIN --config $CONFIG "${DATA[@]}" "${RUN[@]}" --steps 12 --checkpoint-interval 4 --keep-latest-k 0 --out "$OUT" --resume
python3 -c "
import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[-7] ^= 1; open(p, 'wb').write(b)" "$OUT/checkpoint_00000012.safetensors"
truncate -s 3000 "$OUT/checkpoint_00000008.safetensors"
if expect_ok "resume past a corrupt and a truncated checkpoint" $BIN --config $CONFIG "${DATA[@]}" "${RUN[@]}" --steps 12 --out "$OUT" --resume; then
    if grep -q "checkpoint_00000012.safetensors: checksum mismatch" "$work/err.txt" && grep -q "checkpoint_00000008.safetensors: .*truncated" "$work/err.txt" &&
       grep -q "resumed from $ckpt4 at step 4" "$work/out.txt"; then
        echo "ok   corrupt + truncated checkpoints skipped:"; grep warning "$work/err.txt" | sed 's/^/       /'
    else
        echo "FAIL corrupt checkpoints: expected warnings and a resume from step 4"; cat "$work/err.txt"; failures=$((failures + 1))
    fi
fi

[ $failures -eq 0 ] && echo "all bad inputs handled" || echo "$failures bad-input cases failed"
[ $failures -eq 0 ]
