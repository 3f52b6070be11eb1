#!/usr/bin/env bash
# data/tinyshakespeare.txt (1.1 MB, shipped) -> GPT-2 token shards for the quickstart:
#   data/tinyshakespeare/tinyshakespeare_val_000000.bin     the first 10% of the text (~34K tokens)
#   data/tinyshakespeare/tinyshakespeare_train_000000.bin   the rest (~304K tokens)
# The text is one document: one EOT (50256) at its start. data/*/ is git-ignored.
# Usage: scripts/prepare_tinyshakespeare.sh   (from anywhere; builds mdn_tokenize if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x ./mdn_tokenize ] || make mdn_tokenize
./mdn_tokenize --val-fraction 0.1 --out data/tinyshakespeare data/tinyshakespeare.txt
