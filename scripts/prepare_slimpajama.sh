#!/usr/bin/env bash
# SlimPajama-627B (a local copy) -> GPT-2 token shards of 100M tokens (200 MB) each:
#   OUT/slimpajama_train_000000.bin ...   from SRC/train
#   OUT/slimpajama_val_000000.bin ...     from SRC/validation
#
# Expected layout of SRC (the dataset repository cerebras/SlimPajama-627B as published, e.g. fetched
# with `huggingface-cli download cerebras/SlimPajama-627B --repo-type dataset --local-dir SRC`):
#   SRC/train/chunk1 .. chunk10/*.jsonl.zst        the training set
#   SRC/validation/chunk1 .. chunk5/*.jsonl.zst    held out, decontaminated (~500M tokens)
#   SRC/test/chunk1 .. chunk5/*.jsonl.zst          (not used here)
# 59,166 files, ~895 GB compressed, 627B tokens (Llama tokenizer; GPT-2's count is of the same
# order); each line is {"text": "...", "meta": {"redpajama_set_name": "RedPajamaC4"}}. Files already
# decompressed to .jsonl (or .jsonl.gz) work too. Only "text" is read; EOT (50256) goes before each.
# Size of the output: 2 bytes a token, so all of SlimPajama is ~1.3 TB of shards; the paper-sized
# runs need far less: set TRAIN_FILES (e.g. ~1,000 files for ~10B tokens; the files of one chunk
# are of similar size, a chunk holds ~1/10 of the tokens).
#
# .zst is decompressed by the zstd program (Debian: apt-get install zstd) into mdn_tokenize's
# standard input, so nothing is written to disk but the shards. With standard input mdn_tokenize
# shows MB/s and tokens but no ETA.
#
# Usage: scripts/prepare_slimpajama.sh SRC [OUT]    (OUT defaults to data/slimpajama)
# Environment: TRAIN_FILES=N  only the first N train files in sorted order (default: all)
#              VAL_FILES=N    only the first N validation files (default: 100, ~40M tokens)
#              THREADS=N      tokenizing threads (default: all cores)
set -euo pipefail
if [ $# -lt 1 ] || [ ! -d "$1/train" ] || [ ! -d "$1/validation" ]; then
    echo "usage: $0 SRC [OUT]   (SRC holds SlimPajama's train/ and validation/ folders; see the comment at the top)" >&2
    exit 1
fi
SRC=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
OUT=${2:-data/slimpajama}
[ -x ./mdn_tokenize ] || make mdn_tokenize
threads=(); [ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")

# list_files DIR N: the JSONL files under DIR in sorted order, at most N of them (N empty: all)
list_files() {
    # awk reads to the end (head would close the pipe early: a SIGPIPE that pipefail reports)
    find "$1" -type f \( -name '*.jsonl.zst' -o -name '*.jsonl' -o -name '*.jsonl.gz' \) | LC_ALL=C sort |
        awk -v n="${2:-0}" 'n == 0 || NR <= n' 
}
# decompress_all: the files named on standard input, decompressed, one after another
decompress_all() {
    while IFS= read -r f; do
        case "$f" in
            *.zst) zstd -dcq -- "$f" ;;
            *.gz) gzip -dc -- "$f" ;;
            *) cat -- "$f" ;;
        esac
    done
}
first=$(list_files "$SRC/train" 1)
if [ -z "$first" ]; then echo "error: $SRC/train: no .jsonl.zst, .jsonl or .jsonl.gz files" >&2; exit 1; fi
if [[ "$first" == *.zst ]] && ! command -v zstd >/dev/null; then
    echo "error: zstd not found (apt-get install zstd), needed to read SlimPajama's .jsonl.zst files" >&2
    exit 1
fi
mkdir -p "$OUT"
echo "validation: $(list_files "$SRC/validation" "${VAL_FILES:-100}" | wc -l) files -> $OUT/slimpajama_val_*.bin"
list_files "$SRC/validation" "${VAL_FILES:-100}" | decompress_all |
    ./mdn_tokenize --format jsonl --val-fraction 1 --name slimpajama "${threads[@]}" --out "$OUT" -
echo "train: $(list_files "$SRC/train" "${TRAIN_FILES:-}" | wc -l) files -> $OUT/slimpajama_train_*.bin"
list_files "$SRC/train" "${TRAIN_FILES:-}" | decompress_all |
    ./mdn_tokenize --format jsonl --val-fraction 0 --name slimpajama "${threads[@]}" --out "$OUT" -
