#!/usr/bin/env bash
# test_launch.sh: what scripts/train_mdn_400M.sh and train_mdn_1B.sh start, for each GPU count and
# hostfile, without a GPU: the trainer and mpirun are stand-ins that print their arguments.
# Checked: the gradient accumulation that keeps the paper's global batch (400M: 128 rows of 8 a GPU;
# 1B: 256 rows of 4), a direct start for one GPU and mpirun -np N for several, the hostfile and the
# forwarded NCCL variables, VAL_DATA (empty: no validation), EXTRA flags after the recipe's, and a
# GPU count that does not divide the global batch as a one-line error.
set -u
cd "$(dirname "$0")/.." || exit 1
work=$(mktemp -d /tmp/mdn_test_launch.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# stand-ins: each prints its name, then its arguments one a line
printf '#!/bin/sh\necho "trainer"\nfor a in "$@"; do echo "$a"; done\n' >"$work/trainer"
printf '#!/bin/sh\necho "mpirun"\nfor a in "$@"; do echo "$a"; done\n' >"$work/mpirun"
chmod +x "$work/trainer" "$work/mpirun"

# launch SCRIPT ARGS...: the stand-ins' output in $work/out.txt
launch() {
    PATH="$work:$PATH" TRAINER="$work/trainer" DATA=data/x OUT="$work/run" bash "$@" >"$work/out.txt" 2>"$work/err.txt"
}
# value FLAG: the argument after FLAG's last occurrence
value() { awk -v f="$1" 'prev == f { v = $0 } { prev = $0 } END { print v }' "$work/out.txt"; }
expect() {   # expect FLAG VALUE WHAT
    [ "$(value "$1")" = "$2" ] || fail "$3: $1 is '$(value "$1")', expected '$2'"
}

launch scripts/train_mdn_400M.sh || fail "400M, 1 GPU: exit status $? ($(cat "$work/err.txt"))"
[ "$(head -n 1 "$work/out.txt")" = trainer ] || fail "400M, 1 GPU: not a direct start"
expect --grad-accum 16 "400M, 1 GPU"
expect --batch-size 8 "400M, 1 GPU"
expect --recompute 1 "400M, 1 GPU"
expect --val-data "data/x/*val*.bin" "400M, 1 GPU"
expect --steps 30720 "400M, 1 GPU"
echo "OK: 400M on 1 GPU: a direct start, 8 rows x 16 micro-steps"

NCCL_SOCKET_IFNAME=eth9 launch scripts/train_mdn_400M.sh 8 || fail "400M, 8 GPUs: exit status $?"
[ "$(head -n 1 "$work/out.txt")" = mpirun ] || fail "400M, 8 GPUs: not started by mpirun"
expect -np 8 "400M, 8 GPUs"
expect --grad-accum 2 "400M, 8 GPUs"
grep -qx NCCL_SOCKET_IFNAME "$work/out.txt" || fail "400M, 8 GPUs: NCCL_SOCKET_IFNAME not forwarded"
grep -qx -- --hostfile "$work/out.txt" && fail "400M, 8 GPUs: a hostfile without one given"
echo "OK: 400M on 8 GPUs: mpirun -np 8, 2 micro-steps, NCCL_SOCKET_IFNAME forwarded"

VAL_DATA= EXTRA="--steps 5" launch scripts/train_mdn_1B.sh 16 hosts.txt || fail "1B, 16 GPUs: exit status $?"
expect -np 16 "1B, 16 GPUs"
expect --hostfile hosts.txt "1B, 16 GPUs"
expect --grad-accum 4 "1B, 16 GPUs"
expect --batch-size 4 "1B, 16 GPUs"
expect --val-data "" "1B, VAL_DATA empty"
expect --steps 5 "1B, EXTRA after the recipe's flags"
echo "OK: 1B on 16 GPUs with a hostfile: 4 rows x 4 micro-steps, no validation, EXTRA last"

launch scripts/train_mdn_400M.sh 3 && fail "400M on 3 GPUs: started (3 x 8 rows do not divide 128)"
[ "$(wc -l <"$work/err.txt")" -eq 1 ] && grep -q "^error: 3 GPUs x 8 rows do not divide the global batch of 128 rows" "$work/err.txt" \
    || fail "400M on 3 GPUs: expected one error line, got: $(cat "$work/err.txt")"
[ -s "$work/out.txt" ] && fail "400M on 3 GPUs: something was started"
echo "OK: 400M on 3 GPUs: $(cat "$work/err.txt")"
