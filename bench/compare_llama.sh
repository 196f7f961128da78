#!/usr/bin/env bash
# Plain decoding of the same GGUF in mtp.cpp and in llama.cpp, side by side in one run, at the same type and threads.
#   bash bench/compare_llama.sh LLAMA_BUILD_DIR MODEL_DIR [TYPE=q8_0] [THREADS=2] [REPS=5]
# LLAMA_BUILD_DIR: a llama.cpp build made outside this repository (with llama-bench); MODEL_DIR: an mtp.cpp model.
# Writes MODEL_DIR.<type>.gguf next to nothing else (a temporary folder) and prints both tokens/s and the ratio.
# llama-bench prompts are random ids; mtp bench is given random ids too (no --prompt-shard) so both decode the
# same kind of context; -p 64 -n 64.
set -euo pipefail
llama="${1:?llama.cpp build dir}"; model="${2:?model dir}"; type="${3:-q8_0}"; t="${4:-2}"; reps="${5:-5}"
root="$(cd "$(dirname "$0")/.." && pwd)"
mtp="$root/build/mtp"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
gguf="$tmp/model.$type.gguf"
"$mtp" convert --model "$model" --to gguf --type "$type" --out "$gguf" >/dev/null
bin="$llama/bin/llama-bench"; [ -x "$bin" ] || bin="$llama/llama-bench"
mt=(); lt=()
for r in $(seq "$reps"); do         # interleaved: one repetition of each, in turn
  lt+=("$("$bin" -m "$gguf" -p 0 -n 64 -t "$t" -r 1 -o json 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])')")
  mt+=("$("$mtp" bench --model "$gguf" --weights "$type" -p 64 -n 64 -r 1 -t "$t" --temp 0 --no-costs --json \
           --draft-vocab 0 2>/dev/null | /usr/bin/python3 -c '
import json,sys; print(next(r["tokens_per_s_mean"] for r in json.load(sys.stdin)["rows"] if r["test"].startswith("tg") and r["draft"] == 0))')")
done
/usr/bin/python3 - "$type" "$t" "${mt[*]}" "${lt[*]}" <<'PY'
import statistics as s, sys
typ, t, m, l = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3].split()], [float(x) for x in sys.argv[4].split()]
r = [a / b for a, b in zip(m, l)]
print(f"plain decoding tg64, {typ}, {t} threads, {len(m)} interleaved repetitions")
print(f"| engine | tokens/s |\n|---|---:|\n| mtp.cpp | {s.mean(m):.1f} ± {s.pstdev(m):.1f} |\n| llama.cpp | {s.mean(l):.1f} ± {s.pstdev(l):.1f} |")
print(f"mtp.cpp / llama.cpp: {s.mean(r):.2f}× (per repetition: {', '.join(f'{x:.2f}' for x in r)})")
PY
