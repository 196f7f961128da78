#!/usr/bin/env bash
# Builds everything and runs the whole test suite (unit tests, PyTorch parity, CLI bad-input checks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
cd build
ctest --output-on-failure --timeout 900 -j2
