#!/usr/bin/env bash
# Builds everything and runs the whole test suite (unit tests, PyTorch parity, CLI bad-input checks), then the
# same suite under ASan + UBSan and the fuzzers (scripts/sanitize.sh). Fails on the first failing part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
# The checking build starts now at the lowest priority: it takes the cycles the release suite leaves idle (Python
# start-ups, servers waiting on sockets) and yields the cores whenever a test needs them. scripts/sanitize.sh
# builds again below (a no-op when this finished; a build error shows there).
nice -n 19 bash scripts/sanitize_build.sh > build/sanitize-background.log 2>&1 &
bg=$!
trap 'kill $bg 2>/dev/null || true' EXIT
cd build
# Tests run two at a time and several use 2 OpenMP threads: idle threads sleep instead of spinning, so an
# oversubscribed core is not burnt by spin-waits (results do not depend on this).
export OMP_WAIT_POLICY=PASSIVE
ctest --output-on-failure --timeout 900 -j2
cd ..
wait $bg || echo "the background checking build failed; building again in the foreground" >&2
bash scripts/sanitize.sh
