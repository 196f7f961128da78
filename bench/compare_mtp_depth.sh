#!/usr/bin/env bash
# Trains the default model with D = 0, 1 and 2 MTP modules at the same steps, data and seed, and prints the
# main validation loss, each depth's validation loss and tokens/s side by side (plots in runs/compare_d*/).
# Needs the main job's data (runs/default/data): run scripts/main.sh first.
# usage: bench/compare_mtp_depth.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-600}"
[ -f runs/default/data/meta.json ] || { echo "error: runs/default/data missing (run scripts/main.sh)" >&2; exit 1; }
for d in 0 1 2; do
  rm -rf runs/compare_d$d
  ./build/mtp train --config configs/train_default.json --mtp-depth $d --max-steps "$steps" --max-time 0 \
    --out-dir runs/compare_d$d --eval-every "$steps" --ckpt-every 0 --progress false --log-every 100 \
    > runs/compare_d$d.log 2>&1
done
/usr/bin/python3 - "$steps" <<'PY'
import json, sys
steps = int(sys.argv[1])
print(f"| D | steps | val main | val MTP depth 1 | val MTP depth 2 | train tokens/s (median) |")
print(f"|---|---|---|---|---|---|")
for d in (0, 1, 2):
    recs = [json.loads(l) for l in open(f"runs/compare_d{d}/metrics.jsonl")]
    ev = [r for r in recs if r["type"] == "eval"][-1]
    tps = sorted(r["tokens_per_s"] for r in recs if r["type"] == "train")
    mtp = ev["val_mtp"] + [None] * (2 - len(ev["val_mtp"]))
    cell = lambda x: "—" if x is None else f"{x:.4f}"
    print(f"| {d} | {ev['step']} | {ev['val_main']:.4f} | {cell(mtp[0])} | {cell(mtp[1])} | {tps[len(tps)//2]:.0f} |")
PY
