#!/usr/bin/env bash
# Configures and builds the checking build (clang 14, ASan + UBSan, libFuzzer targets) into build-san/. Used by
# scripts/sanitize.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=clang-14 CXX=clang++-14 cmake -S . -B build-san -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS=-O1 \
  -DCMAKE_CXX_FLAGS_DEBUG=-gline-tables-only \
  -DMTP_SANITIZE=ON -DMTP_FUZZ=ON >/dev/null
ninja -C build-san mtp mtp_tests $(ls tests/fuzz/fuzz_*.cpp | xargs -n1 basename | sed "s/\.cpp$//")
