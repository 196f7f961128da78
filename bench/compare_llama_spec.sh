#!/usr/bin/env bash
# Self-speculative decoding with the model's own MTP layer, mtp.cpp against llama.cpp's `--spec-type draft-mtp`, on
# the same one-MTP-layer GGUF, the same held-out text prompts, greedy, the same threads; each engine's plain decoding
# measured in the same run, repetitions interleaved.
#   bash bench/compare_llama_spec.sh LLAMA_BUILD_DIR MODEL_DIR VAL_SHARD [TYPE=f32] [THREADS=2] [REPS=5] [N=64]
# LLAMA_BUILD_DIR: a llama.cpp build made outside this repository (llama-bench, llama-speculative-simple);
# MODEL_DIR: an mtp.cpp model whose first MTP module is MoE with q_lora_rank > 0 (what llama.cpp's draft-mtp
# accepts), e.g. runs/default/distilled; VAL_SHARD: held-out tokens (runs/default/data/val_000.bin).
# The GGUF (only the first MTP module: `mtp convert --mtp-layers 1`) and the prompts go to a temporary folder.
# Both engines run one process per measurement, cold, on the same prompt text: llama-speculative-simple and
# `mtp generate` report decode tokens/s without the prompt; llama.cpp's plain decoding is llama-bench at the
# prompt's depth (-d), mtp.cpp's is `mtp generate --spec none`. Drafts per round K = 1, 2, 3 in both (mtp.cpp
# continues past its one module with --draft-reuse; llama.cpp's draft-mtp feeds its layer its own output).
set -euo pipefail
llama="${1:?llama.cpp build dir}"; model="${2:?model dir}"; shard="${3:?held-out token shard}"
type="${4:-f32}"; t="${5:-2}"; reps="${6:-5}"; n="${7:-64}"
root="$(cd "$(dirname "$0")/.." && pwd)"
mtp="$root/build/mtp"
bin="$llama/bin"; [ -x "$bin/llama-bench" ] || bin="$llama"
for b in llama-bench llama-speculative-simple; do
  [ -x "$bin/$b" ] || { echo "error: $bin/$b not found (build llama.cpp with that target)" >&2; exit 1; }
done
tmp="$(mktemp -d)"; trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
gguf="$tmp/model.$type.gguf"
"$mtp" convert --model "$model" --to gguf --type "$type" --mtp-layers 1 --out "$gguf" >/dev/null
tok="$model/tokenizer.json"

# Held-out prompts: REPS windows of 64 tokens spread over the shard, decoded to text.
/usr/bin/python3 - "$shard" "$reps" > "$tmp/ids.jsonl" <<'PY'
import struct, sys, json
raw = open(sys.argv[1], "rb").read()
assert raw[:8] == b"MTPTOKS\0", "not a token shard"
width, count = struct.unpack_from("<I", raw, 12)[0], struct.unpack_from("<Q", raw, 16)[0]
ids = list(memoryview(raw)[32:32 + width * count].cast("H" if width == 2 else "I"))
reps = int(sys.argv[2]); stride = (len(ids) - 64) // reps
for r in range(reps):
    print(json.dumps(ids[r * stride:r * stride + 64]))
PY
"$mtp" tokenizer decode --tokenizer "$tok" --batch "$tmp/ids.jsonl" > "$tmp/texts.jsonl"
/usr/bin/python3 - "$tmp" <<'PY'
import json, sys
for r, line in enumerate(open(f"{sys.argv[1]}/texts.jsonl")):
    open(f"{sys.argv[1]}/prompt_{r}.txt", "w").write(json.loads(line))
PY

res="$tmp/results.txt"; : > "$res"
for r in $(seq 0 $((reps - 1))); do
  p="$tmp/prompt_$r.txt"
  np=$("$mtp" tokenizer encode --tokenizer "$tok" --file "$p" 2>&1 | sed -n "s/^\([0-9]*\) tokens, .*/\1/p")
  lp=$("$bin/llama-bench" -m "$gguf" -p 0 -n "$n" -d "$np" -t "$t" -r 1 -o json 2>/dev/null |
       /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])')
  echo "llama plain $r $lp 0" >> "$res"
  for k in 1 2 3; do
    out=$("$bin/llama-speculative-simple" -m "$gguf" -f "$p" -n "$n" -t "$t" --temp 0 -c 1024 \
          --spec-type draft-mtp --spec-draft-n-max "$k" 2>&1)
    ts=$(sed -n 's/.*decoded .* speed: *\([0-9.]*\) t\/s.*/\1/p' <<<"$out")
    acc=$(sed -n 's/.*accept *= *\([0-9.]*\)%.*/\1/p' <<<"$out")
    echo "llama $k $r $ts $acc" >> "$res"
  done
  gen() { "$mtp" generate --model "$gguf" --tokenizer "$tok" --weights "$type" --prompt-file "$p" -n "$n" -t "$t" \
            --temp 0 --ignore-eos --draft-vocab 0 "$@" 2>&1 >/dev/null | grep 'generated' | tail -1; }
  line=$(gen --spec none)
  echo "mtp plain $r $(sed -n 's/.*generated [0-9]* tokens \([0-9.]*\) t\/s.*/\1/p' <<<"$line") 0" >> "$res"
  for k in 1 2 3; do
    extra=(--draft "$k"); [ "$k" -gt 1 ] && extra+=(--draft-reuse)
    line=$(gen "${extra[@]}")
    ts=$(sed -n 's/.*generated [0-9]* tokens \([0-9.]*\) t\/s.*/\1/p' <<<"$line")
    acc=$(/usr/bin/python3 -c '
import re, sys
m = re.search(r"draft tokens (\d+), accepted (\d+)", sys.argv[1])
print(100.0 * int(m.group(2)) / max(1, int(m.group(1))) if m else 0)' "$line")
    echo "mtp $k $r $ts $acc" >> "$res"
  done
done

/usr/bin/python3 - "$res" "$type" "$t" "$reps" "$n" <<'PY'
import statistics as s, sys, collections
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    eng, k, r, ts, acc = line.split()
    rows[(eng, k)][int(r)] = (float(ts), float(acc))
typ, t, reps, n = sys.argv[2:6]
def ms(v): return f"{s.mean(v):.1f} ± {s.pstdev(v):.1f}"
print(f"greedy, {typ}, {t} threads, {reps} held-out prompts (interleaved), {n} tokens; one MTP layer (GGUF nextn)")
print("| engine | drafts per round | tokens/s | vs its plain | draft acceptance |")
print("|---|---:|---:|---:|---:|")
for eng in ("llama", "mtp"):
    plain = rows[(eng, "plain")]
    name = "llama.cpp" if eng == "llama" else "mtp.cpp"
    print(f"| {name} | plain | {ms([v[0] for v in plain.values()])} | 1.00 | - |")
    for k in ("1", "2", "3"):
        v = rows[(eng, k)]
        ratio = [v[r][0] / plain[r][0] for r in v if r in plain and plain[r][0] > 0]
        label = k if eng == "llama" or k == "1" else f"{k} (reuse)"
        print(f"| {name} | {label} | {ms([x[0] for x in v.values()])} | {s.mean(ratio):.2f}× ± {s.pstdev(ratio):.2f} | "
              f"{s.mean([x[1] for x in v.values()]):.1f}% |")
best = {e: max(s.mean([x[0] for x in rows[(e, k)].values()]) for k in ("1", "2", "3")) for e in ("llama", "mtp")}
print(f"best speculative: mtp.cpp {best['mtp']:.1f} t/s, llama.cpp {best['llama']:.1f} t/s -> {best['mtp'] / best['llama']:.2f}×")
PY
