#!/usr/bin/env bash
# Training-step time, mtp.cpp vs PyTorch (Debian python3-torch, float32), same config, batch, sequence length
# and thread count, measured in one run; prints both and the ratio (PyTorch time / mtp.cpp time).
# usage: bench/compare_train.sh [CONFIG] [SEQ] [BATCH] [STEPS] [THREADS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cfg="${1:-$root/bench/moe_10m.json}"; seq="${2:-128}"; batch="${3:-4}"; steps="${4:-5}"; threads="${5:-$(nproc)}"
bin="$root/build/bench_train"
[ -x "$bin" ] || { echo "error: $bin not built (run scripts/build.sh)" >&2; exit 1; }
echo "config $(basename "$cfg"), seq $seq, batch $batch, $steps timed steps, $threads threads"
# Interleave the two implementations so drift in machine load affects both alike.
c1=$(OMP_NUM_THREADS=$threads "$bin" --config "$cfg" --seq "$seq" --batch "$batch" --steps "$steps" --threads "$threads")
t1=$(/usr/bin/python3 "$root/bench/bench_train_torch.py" --config "$cfg" --seq "$seq" --batch "$batch" --steps "$steps" --threads "$threads")
c2=$(OMP_NUM_THREADS=$threads "$bin" --config "$cfg" --seq "$seq" --batch "$batch" --steps "$steps" --threads "$threads")
t2=$(/usr/bin/python3 "$root/bench/bench_train_torch.py" --config "$cfg" --seq "$seq" --batch "$batch" --steps "$steps" --threads "$threads")
/usr/bin/python3 - "$c1" "$c2" "$t1" "$t2" <<'PY'
import json, sys
c = [json.loads(x) for x in sys.argv[1:3]]
t = [json.loads(x) for x in sys.argv[3:5]]
cm = min(x["ms_per_step"] for x in c); tm = min(x["ms_per_step"] for x in t)
print(f"params            mtp.cpp {c[0]['params']:,}   pytorch {t[0]['params']:,}")
print(f"ms/step (best of 2 runs)  mtp.cpp {cm:9.1f}   pytorch {tm:9.1f}")
print(f"tokens/s                  mtp.cpp {c[0]['tokens_per_s'] * c[0]['ms_per_step'] / cm:9.1f}   pytorch {t[0]['tokens_per_s'] * t[0]['ms_per_step'] / tm:9.1f}")
print(f"ratio pytorch/mtp.cpp: {tm / cm:.2f}x  ({'mtp.cpp faster' if tm > cm else 'mtp.cpp SLOWER'})")
PY
