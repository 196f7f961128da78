#!/usr/bin/env bash
# Training-step time, mtp.cpp vs PyTorch at PyTorch's best thread count, interleaved in one run, with MFU
# (bench/compare_train.py; run it with --help for the options).
# usage: bench/compare_train.sh [CONFIG SEQ BATCH ...] (triples; default: two configs x two sequence lengths)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cases=()
while [ $# -ge 3 ]; do cases+=("$1:$2:$3"); shift 3; done
if [ ${#cases[@]} -gt 0 ]; then
  exec /usr/bin/python3 "$root/bench/compare_train.py" --cases "${cases[@]}"
fi
exec /usr/bin/python3 "$root/bench/compare_train.py"
