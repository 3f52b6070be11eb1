#!/usr/bin/env bash
# Runs every test in test/tests.txt from the repository root and ends with "N passed, N failed".
# tests.txt: one test a line, "name | shell command"; '#' starts a comment. A test passes when its
# command exits 0. Lines tagged "gpu:" before the name run only where nvidia-smi sees a GPU
# (the CI machine has none); they are listed as not run, never counted as passed. Lines tagged
# "gpu2:" (multi-GPU tests) likewise run only where nvidia-smi sees at least 2 GPUs.
# Usage: test/run_tests.sh [FILTER]   (run only tests whose name contains FILTER)
set -u
cd "$(dirname "$0")/.." || exit 1
filter="${1:-}"
num_gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then num_gpus=$(nvidia-smi -L 2>/dev/null | grep -c GPU); fi
mkdir -p build/test/logs
passed=0; failed=0; notrun=0; notrun2=0; failed_names=()
while IFS= read -r line; do
    line="${line%%#*}"
    [[ "$line" =~ ^[[:space:]]*$ ]] && continue
    name="$(echo "${line%%|*}" | xargs)"
    cmd="${line#*|}"
    [[ -n "$filter" && "$name" != *"$filter"* ]] && continue
    if [[ "$name" == gpu:* && $num_gpus -eq 0 ]]; then notrun=$((notrun + 1)); continue; fi
    if [[ "$name" == gpu2:* && $num_gpus -lt 2 ]]; then notrun2=$((notrun2 + 1)); continue; fi
    log="build/test/logs/$(echo "$name" | tr -c 'A-Za-z0-9_.-' '_').log"
    start=$(date +%s%N)
    if bash -c "$cmd" </dev/null >"$log" 2>&1; then
        status="PASS"; passed=$((passed + 1))
    else
        status="FAIL"; failed=$((failed + 1)); failed_names+=("$name")
    fi
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%-4s %-60s %5d.%01ds\n' "$status" "$name" $((ms / 1000)) $(((ms % 1000) / 100))
    if [[ "$status" == FAIL ]]; then sed 's/^/    | /' "$log" | tail -n 25; fi
done < test/tests.txt
[[ $notrun -gt 0 ]] && echo "($notrun GPU tests not run: no GPU on this machine)"
[[ $notrun2 -gt 0 ]] && echo "($notrun2 2-GPU tests not run: $num_gpus GPU(s) on this machine)"
for n in "${failed_names[@]+"${failed_names[@]}"}"; do echo "failed: $n"; done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
