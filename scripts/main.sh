#!/usr/bin/env bash
# Main job: build everything, create the default ~10M-parameter MoE model with D=2 MTP modules, check it
# against the PyTorch reference (logits + gradients), and time a training step against PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
run=runs/default
mkdir -p "$run"
echo "== mtp init: DeepSeek-V3-style MoE, 2 MTP modules ($run/model)"
./build/mtp init --config bench/moe_10m.json --seed 1 --out "$run/model"
echo "== parity against the independent PyTorch float64 reference (6 configs)"
/usr/bin/python3 tests/reference/test_parity.py --mtp build/mtp --work "$run/parity" | tail -n 1
echo "== mtp grad on the default model"
./build/mtp grad --model "$run/model" --tokens 1,17,42,7,99,3,512,1024,7,7,31 --out "$run/grad.safetensors"
echo "== training step, mtp.cpp vs PyTorch"
bash bench/compare_train.sh bench/moe_10m.json 128 4 3
