#!/usr/bin/env bash
# Runs every libFuzzer target of build-san/ (scripts/sanitize.sh builds them) for SECONDS each, from the seed corpus
# in tests/fuzz/corpus/<target>/ plus what earlier runs found (build-san/fuzz/<target>/corpus). Limits: 2 GB RSS and
# 2 GB per allocation (a reader that asks for more on hostile input is a finding), 10 s per input. A crash, leak,
# sanitizer report, timeout or limit breach stops with the input saved as build-san/fuzz/<target>/crash-*;
# turn it into a regression test (a seed named after it) once fixed. Prints executions and coverage per target.
#   bash scripts/fuzz.sh 7                       # CI: 7 s each
#   bash scripts/fuzz.sh 600                     # the documented long run: 10 minutes each
#   bash scripts/fuzz.sh 600 fuzz_gguf           # one target
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-15}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(ls tests/fuzz/fuzz_*.cpp | xargs -n1 basename | sed 's/\.cpp$//'))
# Two targets at a time (two cores); each one's report is printed when it ends.
run_one() {
  local t="$1" bin="build-san/$1" work="build-san/fuzz/$1"
  mkdir -p "$work/corpus"
  local log="$work/last.log"
  if ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 -print_final_stats=1 \
       -artifact_prefix="$work/" "$work/corpus" "tests/fuzz/corpus/$t" > "$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "fuzz: $t ok, ${secs} s, ${execs:-?} executions, ${cov:-cov: ?}"
  else
    echo "fuzz: $t FAILED — see $log and $work/crash-*" >&2
    grep -E "ERROR|runtime error|SUMMARY|crash-|leak-|timeout-|oom-" "$log" | head -8 >&2
    return 1
  fi
}
for t in "${targets[@]}"; do
  [ -x "build-san/$t" ] || { echo "fuzz: build-san/$t missing (run scripts/sanitize.sh first)" >&2; exit 1; }
done
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do sleep 0.2; done
  ( if run_one "$t"; then st=0; else st=1; fi; echo "$st" > "build-san/fuzz/$t.status" ) &
done
wait
fail=0
for t in "${targets[@]}"; do
  [ "$(cat "build-san/fuzz/$t.status" 2>/dev/null)" = 0 ] || fail=1
done
exit $fail
