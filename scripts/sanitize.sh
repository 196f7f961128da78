#!/usr/bin/env bash
# The checking build (CI runs it after the release suite): everything compiled by clang 14 with AddressSanitizer +
# UndefinedBehaviorSanitizer into build-san/, the test suite run there, then each libFuzzer target for
# FUZZ_SECONDS (default 7). Left out under the sanitizers, for time only (their code paths run in the other
# sanitized tests): the 5-million-draw chi-square test SpecSampling.KeepsTheTargetDistribution, the tokenizer
# parity against the JS reference, and the test that trains a model first (speculative_trained_model); and the
# tests whose C++ paths are exactly reference_parity's or that run no C++ at all (reference_selfcheck,
# reference_injected_bugs, docs_links); train_mpi (OpenMPI's own allocations read as leaks under LeakSanitizer); and
# serve_soak (its server paths, clean exits and LeakSanitizer checks run in serve_batch; memory is judged in release).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/sanitize_build.sh
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_WAIT_POLICY=PASSIVE MTP_SANITIZED=1   # serve_soak run by hand here: memory reported, not judged
(cd build-san && ctest --output-on-failure --timeout 900 -j2 \
   -E '^(SpecSampling\.KeepsTheTargetDistribution|tokenizer_parity|speculative_trained_model|reference_selfcheck|reference_injected_bugs|docs_links|train_mpi|serve_soak)$')
bash scripts/fuzz.sh "${FUZZ_SECONDS:-7}"
