# lib.sh: shell helpers shared by the trainer tests (test_train.sh, test_multigpu.sh) and
# dev/gpu_checks.sh. Source it from the repository root.

# write_byte_shards DIR: byte-level token shards of the shipped corpus (vocabulary 256), the first
# 90% for training (DIR/train_000000.bin), the rest for validation (DIR/val_000000.bin); tiny models
# learn them in seconds
write_byte_shards() {
    python3 - "$1" <<'PY'
import struct, sys
data = open("data/tinyshakespeare.txt", "rb").read()
cut = len(data) * 9 // 10
def shard(path, toks):
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, len(toks), *([0] * 253)))
        f.write(struct.pack("<%dH" % len(toks), *toks))
shard(sys.argv[1] + "/train_000000.bin", data[:cut])
shard(sys.argv[1] + "/val_000000.bin", data[cut:])
PY
}

# loss_values LOG: the "loss" of every step of a log.jsonl, one a line, as written
loss_values() { grep -o '"step": *[0-9]*, *"loss": *[^,]*' "$1" | sed 's/.*"loss": *//'; }

# max_rel_diff LOG1 LOG2: the largest relative difference of the two logs' step losses, and the
# number of steps compared
max_rel_diff() {
    paste -d' ' <(loss_values "$1") <(loss_values "$2") |
        awk '{d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > m) m = r; n++} END {printf "%.3g %d\n", m, n}'
}
