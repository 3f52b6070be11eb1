#!/usr/bin/env python3
"""ncu_phases.py: where a kernel's warps wait, phase by phase.

Nsight Compute samples each warp's program counter and why it is stalled. This sums those samples
over the SASS instructions between consecutive barriers (BAR.SYNC), the phases of a kernel written
as block-wide steps (the MDN op's kernels), and prints each phase's share of all samples, its three
largest stall reasons and its most executed instruction kinds: enough to tell a phase waiting on
global loads (long_sb) from one waiting at a barrier or on shared memory (short_sb, mio).

Collect on a GPU machine (one report, then its source page as CSV; -lineinfo is in the Makefile):
  ncu --set full --import-source yes -k regex:KERNEL -c 1 -o rep dev/bench_mdn --iters 1 --shape 400M
  ncu -i rep.ncu-rep --page source --csv > src.csv
Then, anywhere:
  dev/ncu_phases.py src.csv KERNEL [INDEX]    (INDEX: which of the matching kernels, default 0)
Phases with under 1% of the samples are not printed.
"""
import collections
import csv
import sys


def kernels(path):
    """[(name, header, rows)] of the CSV's kernel sections."""
    out = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "Kernel Name":
                out.append([row[1], None, []])
            elif row[0] == "Address" and out:
                out[-1][1] = row
            elif out and out[-1][1] is not None:
                out[-1][2].append(row)
    return out


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    path, want = sys.argv[1], sys.argv[2]
    index = int(sys.argv[3]) if len(sys.argv) == 4 else 0
    try:
        found = [k for k in kernels(path) if want in k[0]]
    except OSError as e:
        sys.exit(f"error: {path}: {e.strerror}")
    if index >= len(found):
        sys.exit(f"error: {path}: {len(found)} kernel(s) match '{want}', no index {index}")
    name, header, rows = found[index]
    try:
        col_samples = header.index("Warp Stall Sampling (All Samples)")
        col_executed = header.index("Instructions Executed")
    except ValueError:
        sys.exit(f"error: {path}: no stall-sampling columns (collect with --set full)")
    stalls = [(h, header.index(h)) for h in header if h.startswith("stall_") and "Not Issued" not in h]

    def number(row, col):
        return float(row[col]) if col < len(row) and row[col] else 0.0

    total = sum(number(r, col_samples) for r in rows)
    if total == 0:
        sys.exit(f"error: {path}: no samples for {name}")
    print(f"{name[:100]}: {len(rows)} instructions, {int(total)} samples")

    def report(first, last):
        samples = sum(number(rows[i], col_samples) for i in range(first, last))
        if samples < 0.01 * total:
            return
        reasons, kinds = collections.Counter(), collections.Counter()
        for i in range(first, last):
            for h, col in stalls:
                reasons[h] += number(rows[i], col)
            words = rows[i][1].split()
            if words and words[0].startswith("@"):
                words = words[1:]
            if words:
                kinds[words[0].split(".")[0]] += number(rows[i], col_executed)
        top = ", ".join(f"{h[len('stall_'):]} {v / samples * 100:.0f}%" for h, v in reasons.most_common(3))
        ops = " ".join(f"{k}:{int(v)}" for k, v in kinds.most_common(6))
        print(f"[{first:5d}, {last:5d}) {samples / total * 100:5.1f}%  {top} | {ops}")

    first = 0
    for i, row in enumerate(rows):
        if "BAR.SYNC" in row[1]:
            report(first, i + 1)
            first = i + 1
    report(first, len(rows))


if __name__ == "__main__":
    main()
