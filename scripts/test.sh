#!/usr/bin/env bash
# Builds everything and runs the whole test suite (unit tests, PyTorch parity, CLI bad-input checks), then the
# same suite under ASan + UBSan and the fuzzers (scripts/sanitize.sh). Fails on the first failing part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
cd build
# Tests run two at a time and several use 2 OpenMP threads: idle threads sleep instead of spinning, so an
# oversubscribed core is not burnt by spin-waits (results do not depend on this).
export OMP_WAIT_POLICY=PASSIVE
ctest --output-on-failure --timeout 900 -j2
cd ..
bash scripts/sanitize.sh
