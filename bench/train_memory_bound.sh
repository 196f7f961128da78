#!/usr/bin/env bash
# Trains a memory-bound benchmark model on the Brown corpus, self-distils its MTP modules, and benches plain vs
# speculative decoding on held-out prompts. Not part of CI. MODEL picks bench/configs/{model,train}_MODEL.json and
# the folder runs/MODEL:
#   dense_30m (default): dense, d 384, 12 layers, D = 2, 29.5M decode parameters = 118 MB at f32; ~70 minutes
#            in fp32, 15-35 in bf16
#   moe_55m: MoE, d 384, 10 layers, 16 routed experts (top 2) + 1 shared, D = 1 (one MoE MTP layer, the form
#            llama.cpp's draft-mtp runs: bench/compare_llama_spec.sh); ~60 minutes
#
# Resumable: run it again after an interruption and each stage continues from its last checkpoint (or is skipped
# when its output exists). Runs at low priority (nice 19); keep builds and benchmarks away from it.
#   bash bench/train_memory_bound.sh                # everything
#   STAGES="bench" bash bench/train_memory_bound.sh # only the benchmark of the finished model
#   MODEL=moe_55m bash bench/train_memory_bound.sh
# PRECISION=fp32|bf16 (default bf16) sets the matrix products of training and distillation; where no bf16 kernel runs,
# they say so and run in fp32. A resumed training keeps the precision it was started with.
set -euo pipefail
cd "$(dirname "$0")/.."
stages="${STAGES:-data train distill bench}"
name="${MODEL:-dense_30m}"
[ -f "bench/configs/train_$name.json" ] || { echo "error: MODEL=$name: no bench/configs/train_$name.json" >&2; exit 1; }
run=runs/$name
mtp=./build/mtp
[ -x "$mtp" ] || bash scripts/build.sh
has() { [[ " $stages " == *" $1 "* ]]; }

if has data; then
  bash scripts/fetch_corpus.sh
  # The default run's tokenizer and shards (the same as scripts/main.sh makes).
  if [ ! -f runs/default/data/meta.json ]; then
    mkdir -p runs/default
    $mtp tokenizer train --vocab-size 8000 --input data/brown --pre-tokenizer deepseek --out runs/default/tokenizer.json
    $mtp data prepare --tokenizer runs/default/tokenizer.json --input data/brown --out runs/default/data --val-fraction 0.05
  fi
fi

if has train; then
  if [ ! -f "$run/train/model/config.json" ]; then
    if ls -d "$run"/train/checkpoints/step_* >/dev/null 2>&1; then
      nice -n 19 $mtp train --resume "$run/train"
    else
      rm -rf "$run/train"
      nice -n 19 $mtp train --config "bench/configs/train_$name.json" --precision "${PRECISION:-bf16}"
    fi
  fi
fi

model="$run/train/model"
dist="$run/distilled"
if has distill; then
  [ -f "$model/draft_vocab.json" ] || $mtp draft-vocab --data runs/default/data --out "$model/draft_vocab.json" --n 1024
  if [ ! -f "$dist/config.json" ]; then
    rm -rf "$dist"
    nice -n 19 $mtp distill --model "$model" --data runs/default/data --out "$dist" --steps 200 --lr 1e-3 \
      --eval-every 50 --precision "${PRECISION:-bf16}" | tee "$run/distill.log"
  fi
fi

if has bench; then
  # Held-out prompts (the validation shard), 2 threads; plain vs speculative at each weight type; before and after
  # distillation. Speculation is measured against plain decoding of the same model at the same type in the same run.
  for m in "$model" "$dist"; do
    [ -f "$m/config.json" ] || continue
    for w in f32 q8_0; do
      echo "== bench $m at $w"
      $mtp bench --model "$m" --prompt-shard runs/default/data/val_000.bin -p 64 -n 64 -r 5 -t 2 \
        --weights $w $( [ $w = f32 ] && echo bf16 q8_0 ) --draft-vocab 0 1024 | tee "$run/bench_$(basename $m)_$w.md"
    done
  done
fi
