#!/usr/bin/env python3
"""`mtp distill` end to end: a small model trained here (first-order Markov data), its MTP modules distilled on
the same data. The KL to the main model falls at every depth and the argmax agreement rises; the trunk, embeddings
and heads are bitwise unchanged while every module tensor moves; bad input gets a one-line error.
usage: distill_test.py MTP_BINARY WORK_DIR"""
import json, os, re, shutil, subprocess, sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

mtp, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
passed = failed = 0

def check(name, ok, detail=""):
    global passed, failed
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if ok: passed += 1
    else: failed += 1

from markov_data import make_dataset  # noqa: E402  (the Markov source of train_test.py)
V = 64

MODEL = {"vocab_size": V, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 48, "kv_lora_rank": 16, "q_lora_rank": 24, "qk_nope_head_dim": 8,
         "qk_rope_head_dim": 4, "v_head_dim": 8, "max_position_embeddings": 128, "num_nextn_predict_layers": 2}
data = os.path.join(work, "data"); make_dataset(data, V)
cfg = os.path.join(work, "model.json"); json.dump(MODEL, open(cfg, "w"))
run = os.path.join(work, "run")
# The main model is trained well; the modules barely (λ = 0.01): distillation has something to fix.
p = subprocess.run([mtp, "train", "--model-config", cfg, "--data", data, "--batch-size", "8", "--seq-len", "32",
                    "--lr", "1e-2", "--warmup-steps", "5", "--max-steps", "60", "--mtp-lambda", "0.01",
                    "--eval-every", "0", "--sample-tokens", "0", "--ckpt-every", "0", "--threads", "2",
                    "--plot", "false", "--progress", "false", "--out-dir", run],
                   capture_output=True, text=True, timeout=600)
check("train the model", p.returncode == 0, p.stderr[-500:])
model = os.path.join(run, "model")
out = os.path.join(work, "distilled")

def distill(args, out_dir):
    return subprocess.run([mtp, "distill", "--model", model, "--data", data, "--out", out_dir, "--batch-size", "8",
                           "--seq-len", "32", "--eval-batches", "8"] + args,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="2"))

def evals(stdout):
    res = []
    for line in stdout.splitlines():
        if line.startswith("eval step"):
            res.append([(float(a), float(b), float(c)) for a, b, c in
                        re.findall(r"KL ([0-9.]+) agree ([0-9.]+) CE ([0-9.]+)", line)])
    return res

p = distill(["--steps", "60", "--lr", "3e-3", "--eval-every", "0"], out)
check("distil runs", p.returncode == 0, p.stderr[-800:])
if p.returncode == 0:
    ev = evals(p.stdout)
    check("evaluated before and after, every depth", len(ev) == 2 and all(len(e) == 2 for e in ev), str(ev))
    if len(ev) == 2:
        (b1, b2), (a1, a2) = ev
        for k, (b, a) in enumerate([(b1, a1), (b2, a2)], 1):
            check(f"depth {k}: KL to the main model falls by half or more", a[0] <= 0.5 * b[0], f"({b[0]:.4f} -> {a[0]:.4f})")
            check(f"depth {k}: argmax agreement with the main model rises", a[1] > b[1], f"({b[1]:.3f} -> {a[1]:.3f})")
    w0 = st.load(os.path.join(model, "model.safetensors"))
    w1 = st.load(os.path.join(out, "model.safetensors"))
    N = MODEL["num_hidden_layers"]
    mod = [n for n in w0 if any(n.startswith(f"model.layers.{N + k}.") for k in range(2))
           and not n.endswith((".embed_tokens.weight", ".shared_head.head.weight"))]
    frozen = [n for n in w0 if n not in mod]
    check("trunk, embeddings and heads bitwise unchanged", all((w0[n] == w1[n]).all() for n in frozen),
          f"({len(frozen)} tensors)")
    check("every module tensor trained", all((w0[n] != w1[n]).any() for n in mod), f"({len(mod)} tensors)")
    check("the distilled folder is a complete model", os.path.exists(os.path.join(out, "config.json")))

# --eval-only: the same evaluation as before distilling, for the model as it is; no --out, nothing written
if p.returncode == 0:
    before, model_before = sorted(os.listdir(work)), sorted(os.listdir(model))
    q = subprocess.run([mtp, "distill", "--model", model, "--data", data, "--seq-len", "32", "--eval-batches", "8",
                        "--eval-only"], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    eo = evals(q.stdout)
    check("--eval-only: one evaluation, equal to the one before distilling", q.returncode == 0 and len(eo) == 1 and
          eo[0] == ev[0], q.stdout[-300:] + q.stderr[-300:])
    check("--eval-only: writes nothing", sorted(os.listdir(work)) == before and
          sorted(os.listdir(model)) == model_before, str(set(os.listdir(work)) ^ set(before)))

# --precision bf16: bf16 products (fp32 accumulation, weights, optimizer); fp32, with a message, where no bf16 kernel
# runs, and then bitwise the fp32 run
if p.returncode == 0:
    out16 = os.path.join(work, "distilled_bf16")
    q = distill(["--steps", "60", "--lr", "3e-3", "--eval-every", "0", "--precision", "bf16"], out16)
    check("--precision bf16 runs", q.returncode == 0, q.stderr[-800:])
    if q.returncode == 0:
        w16 = st.load(os.path.join(out16, "model.safetensors"))
        if "distilling in fp32" in q.stdout:
            check("--precision bf16 without a bf16 kernel: bitwise the fp32 run", all((w1[n] == w16[n]).all() for n in w1))
        else:
            e16 = evals(q.stdout)
            check("--precision bf16 says which kernel", "bf16 matrix products" in q.stdout, q.stdout[:400])
            check("--precision bf16: the products are bf16 (the weights differ from fp32's)",
                  any((w1[n] != w16[n]).any() for n in mod))
            check("--precision bf16: the trunk stays bitwise", all((w0[n] == w16[n]).all() for n in frozen))
            check("--precision bf16: KL falls by half or more at every depth", len(e16) == 2 and
                  all(a[0] <= 0.5 * b[0] for b, a in zip(e16[0], e16[1])), str(e16))

def bad(name, args, expect):
    p = subprocess.run([mtp, "distill"] + args, capture_output=True, text=True, timeout=120)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    ok = p.returncode == 1 and len(lines) == 1 and expect in lines[0]
    check("bad input: " + name, ok, repr(p.stderr.strip()[:300]))
nm = os.path.join(work, "d0")
os.makedirs(nm, exist_ok=True)
json.dump(dict(MODEL, num_nextn_predict_layers=0), open(os.path.join(work, "d0.json"), "w"))
subprocess.run([mtp, "init", "--config", os.path.join(work, "d0.json"), "--out", nm], capture_output=True)
bad("a model without MTP modules", ["--model", nm, "--data", data, "--out", os.path.join(work, "x1")], "no MTP modules")
bad("--out is the model itself", ["--model", model, "--data", data, "--out", model], "--out")
bad("--out is a non-empty folder", ["--model", model, "--data", data, "--out", data], "--out")
bad("unknown precision", ["--model", model, "--data", data, "--out", os.path.join(work, "x4"), "--precision", "fp16"],
    "--precision")
bad("zero steps", ["--model", model, "--data", data, "--out", os.path.join(work, "x2"), "--steps", "0"], "--steps")
bad("missing dataset", ["--model", model, "--data", os.path.join(work, "nope"), "--out", os.path.join(work, "x3")], "nope")
check("no output folder left by failed runs", not any(os.path.exists(os.path.join(work, x)) for x in ("x1", "x2", "x3", "x4")))

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
