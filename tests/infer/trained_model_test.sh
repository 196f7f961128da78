#!/usr/bin/env bash
# Speculative decoding on a TRAINED model: trains a small MoE with D=2 on the Brown corpus for a couple of
# minutes (tokenizer, shards, `mtp train`), then runs the greedy-identity test on it and checks that the MTP
# drafts are actually accepted (a trained drafter, unlike a random one, predicts the main model), and that
# the trained model's GGUF export reads back with identical logits.
# usage: trained_model_test.sh MTP_BINARY MTP_TESTS_BINARY WORK_DIR
set -euo pipefail
mtp="$1"; tests="$2"; work="$3"
root="$(cd "$(dirname "$0")/../.." && pwd)"
rm -rf "$work"; mkdir -p "$work"
# The corpus is fetched by scripts/setup.sh (tests use no network).
[ -f "$root/data/.brown.done" ] || { echo "trained_model_test: data/brown missing: run scripts/setup.sh" >&2; exit 1; }
"$mtp" tokenizer train --vocab-size 2048 --input "$root/data/brown" --out "$work/tok.json" >/dev/null
"$mtp" data prepare --tokenizer "$work/tok.json" --input "$root/data/brown" --out "$work/data" >/dev/null
sed -e 's/"vocab_size": 8000/"vocab_size": 2048/' -e 's/"hidden_size": 192/"hidden_size": 96/' \
    "$root/configs/model_default.json" > "$work/model.json"
"$mtp" train --config "$root/configs/train_default.json" --model-config "$work/model.json" --data "$work/data" \
    --out-dir "$work/run" --max-steps 250 --max-time 0 --eval-every 250 --ckpt-every 0 --sample-tokens 16 \
    --progress false --log-every 50 --plot false --threads 2 > "$work/train.log"
grep -E "^eval" "$work/train.log"
MTP_TRAINED_MODEL="$work/run/model" "$tests" --gtest_filter='SpecGreedy.TrainedModelFromEnv'
# Drafts must be accepted on a trained model (a random drafter gets ~0 under greedy decoding).
out=$("$mtp" generate --model "$work/run/model" --prompt "The jury said" -n 64 --spec mtp --draft 2 -t 2 2>&1 >/dev/null)
echo "$out" | tail -n 3
rate=$(echo "$out" | grep -oE "acceptance [0-9.]+" | head -1 | grep -oE "[0-9.]+$" || true)
echo "depth-1 acceptance: ${rate:-none}"
# The trained model exported to GGUF (f32) reads back with identical logits.
"$mtp" convert --model "$work/run/model" --to gguf --out "$work/model.gguf" --type f32 2>/dev/null >/dev/null
"$mtp" logits --model "$work/run/model" --tokens 5,17,3,99,42,7,1000,2 --out "$work/logits_st.safetensors"
"$mtp" logits --model "$work/model.gguf" --tokens 5,17,3,99,42,7,1000,2 --out "$work/logits_gguf.safetensors"
same=0; cmp -s "$work/logits_st.safetensors" "$work/logits_gguf.safetensors" && same=1
echo "gguf logits identical: $same"
/usr/bin/python3 - "$rate" "$same" <<'PY'
import sys
r, same = sys.argv[1], sys.argv[2] == "1"
# 0.2: a floor, not derived; measured 0.96 on this prompt after 250 steps (one run); the random models of SpecCaches
# reach 0.02-0.20 at temperature 0
ok = [r != "" and float(r) > 0.2, same]
print(f"{sum(ok)} passed, {len(ok) - sum(ok)} failed")
sys.exit(0 if all(ok) else 1)
PY
