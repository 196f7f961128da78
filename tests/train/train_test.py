#!/usr/bin/env python3
"""`mtp train` end to end on a small synthetic dataset (shards written here in the documented format):
exact resume, auxiliary-loss-free balancing, the bias untouched by the optimizer, bad input.
usage: train_test.py MTP_BINARY WORK_DIR"""
import json, os, shutil, subprocess, sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402  (numpy safetensors reader of the reference tests)

mtp, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
V = 64
passed = failed = 0

def check(name, ok, detail=""):
    global passed, failed
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if ok: passed += 1
    else: failed += 1

from markov_data import write_shard, make_dataset as _make_dataset  # noqa: E402

def make_dataset(d, **kw):
    _make_dataset(d, V, **kw)

MODEL = {"vocab_size": V, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 48, "moe_intermediate_size": 16, "n_routed_experts": 8, "n_shared_experts": 1,
         "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
         "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True,
         "kv_lora_rank": 16, "q_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
         "max_position_embeddings": 128, "num_nextn_predict_layers": 2}
data = os.path.join(work, "data"); make_dataset(data)
cfg = os.path.join(work, "model.json"); json.dump(MODEL, open(cfg, "w"))
base = ["--model-config", cfg, "--data", data, "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3",
        "--warmup-steps", "2", "--eval-every", "4", "--eval-batches", "4", "--sample-tokens", "4",
        "--ckpt-every", "0", "--threads", "2", "--plot", "false", "--progress", "false"]

def train(args, expect_ok=True):
    p = subprocess.run([mtp, "train"] + base + args, capture_output=True, text=True, timeout=600)
    if expect_ok and p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-2000:])
    return p

def records(out, kind):
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if json.loads(l)["type"] == kind]

# --- exact resume: 8 steps straight == 4 steps, stop, resume, 4 more (same thread count)
a, b = os.path.join(work, "straight"), os.path.join(work, "resumed")
pa = train(["--max-steps", "8", "--out-dir", a])
pb1 = train(["--max-steps", "8", "--out-dir", b, "--stop-at-step", "4"])
pb2 = subprocess.run([mtp, "train", "--resume", b], capture_output=True, text=True, timeout=600)
check("runs succeed", pa.returncode == 0 and pb1.returncode == 0 and pb2.returncode == 0, pb2.stderr[-500:])
if pa.returncode == 0 and pb2.returncode == 0:
    same_model = open(os.path.join(a, "model", "model.safetensors"), "rb").read() == \
                 open(os.path.join(b, "model", "model.safetensors"), "rb").read()
    check("resume: final weights bitwise identical", same_model)
    keys = ["step", "loss", "main", "mtp", "bal", "grad_norm", "lr"]
    ra = [{k: r[k] for k in keys} for r in records(a, "train")]
    rb = [{k: r[k] for k in keys} for r in records(b, "train")]
    check("resume: identical loss log", ra == rb and len(ra) == 8, f"({len(ra)} vs {len(rb)} records)")
    ea = [(r["step"], r["val_main"], r["val_mtp"]) for r in records(a, "eval")]
    eb = [(r["step"], r["val_main"], r["val_mtp"]) for r in records(b, "eval")]
    check("resume: identical validation log", ea == eb and len(ea) >= 2)
    check("every MTP depth is logged", all(len(r["mtp"]) == 2 for r in ra))

# --- OpenBLAS's kernels are named in the log; OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU gets a warning (it halves
# fp32 products on AMD Zen 5). The expectation comes from OpenBLAS's own detection, here.
import re  # noqa: E402
env0 = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
# The OpenBLAS the binary itself loads (Debian has pthread and OpenMP variants), as ldd resolves it.
ldd = subprocess.run(["ldd", mtp], capture_output=True, text=True).stdout
lib = next((l.split("=>")[1].split("(")[0].strip() for l in ldd.splitlines() if "libopenblas" in l and "=>" in l),
           "libopenblas.so.0")
def corename(env):
    p = subprocess.run([sys.executable, "-c", f"import ctypes; l = ctypes.CDLL({lib!r}); "
                        "l.openblas_get_corename.restype = ctypes.c_char_p; print(l.openblas_get_corename().decode())"],
                       capture_output=True, text=True, env=env)
    return p.stdout.strip() if p.returncode == 0 else None
detected = corename(env0)
dynamic = corename(dict(env0, OPENBLAS_CORETYPE="Haswell")) == "Haswell"   # the variable only acts in DYNAMIC_ARCH
flags = set()
for line in open("/proc/cpuinfo"):
    if line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split()); break
wide_cpu = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags
def blas_of(env, out):
    p = subprocess.run([mtp, "train"] + base + ["--max-steps", "1", "--out-dir", os.path.join(work, out)],
                       capture_output=True, text=True, timeout=600, env=env)
    m = re.search(r"\(OpenBLAS (\S+) kernels\)", p.stdout + p.stderr)
    return (m.group(1) if m else f"(no kernel line; rc {p.returncode})"), "OPENBLAS_CORETYPE=Haswell" in p.stdout + p.stderr
got, warned = blas_of(env0, "blas_own")
check("OpenBLAS kernels: named in the log, OpenBLAS's own choice", detected is not None and got == detected and not warned,
      f"({lib}: detected {detected!r}, ran {got}, warned {warned})")
if dynamic:
    got, warned = blas_of(dict(env0, OPENBLAS_CORETYPE="Haswell"), "blas_haswell")
    check("OpenBLAS kernels: OPENBLAS_CORETYPE kept, warned about iff the CPU has AVX-512",
          got == "Haswell" and warned == wide_cpu, f"(ran {got}, warned {warned}, avx512 f/bw/dq/vl {wide_cpu})")
else:
    print(f"skip OpenBLAS kernels: {lib} is not a DYNAMIC_ARCH build, OPENBLAS_CORETYPE does not choose its kernels")

# --- parallel heads (mtp_style "parallel"): exact resume too, and the checkpoint keeps the style
pcfg = os.path.join(work, "model_parallel.json"); json.dump(dict(MODEL, mtp_style="parallel"), open(pcfg, "w"))
pa_dir, pb_dir = os.path.join(work, "p_straight"), os.path.join(work, "p_resumed")
pbase = [pcfg if x == cfg else x for x in base]
def ptrain(args):
    return subprocess.run([mtp, "train"] + pbase + args, capture_output=True, text=True, timeout=600)
qa = ptrain(["--max-steps", "6", "--out-dir", pa_dir])
qb1 = ptrain(["--max-steps", "6", "--out-dir", pb_dir, "--stop-at-step", "3"])
qb2 = subprocess.run([mtp, "train", "--resume", pb_dir], capture_output=True, text=True, timeout=600)
check("parallel heads: runs succeed", qa.returncode == 0 and qb1.returncode == 0 and qb2.returncode == 0,
      (qa.stderr + qb2.stderr)[-500:])
if qa.returncode == 0 and qb2.returncode == 0:
    check("parallel heads: resume bitwise identical",
          open(os.path.join(pa_dir, "model", "model.safetensors"), "rb").read() ==
          open(os.path.join(pb_dir, "model", "model.safetensors"), "rb").read())
    check("parallel heads: the saved config keeps mtp_style",
          json.load(open(os.path.join(pa_dir, "model", "config.json"))).get("mtp_style") == "parallel")
    check("parallel heads: both depths logged", all(len(r["mtp"]) == 2 for r in records(pa_dir, "train")))

# --- bf16 mixed precision: exact resume in bf16; where the CPU has no bf16 kernel, a clear message and fp32
#     (then bitwise the fp32 run); checkpoints interchangeable (a bf16 run resumes in fp32)
ba, bb, bf = os.path.join(work, "bf16_straight"), os.path.join(work, "bf16_resumed"), os.path.join(work, "bf16_ref32")
ra_ = train(["--max-steps", "6", "--out-dir", ba, "--precision", "bf16"])
rb1 = train(["--max-steps", "6", "--out-dir", bb, "--stop-at-step", "3", "--precision", "bf16"])
rb2 = subprocess.run([mtp, "train", "--resume", bb], capture_output=True, text=True, timeout=600)
rf = train(["--max-steps", "6", "--out-dir", bf])
native = "precision: bf16 matrix products" in ra_.stdout
fallback = "training in fp32" in ra_.stdout
check("bf16: runs succeed", ra_.returncode == 0 and rb1.returncode == 0 and rb2.returncode == 0 and rf.returncode == 0,
      (ra_.stderr + rb2.stderr)[-500:])
check("bf16: says which precision it trains in", native != fallback, ra_.stdout[:300])
if ra_.returncode == 0 and rb2.returncode == 0 and rf.returncode == 0:
    wa = open(os.path.join(ba, "model", "model.safetensors"), "rb").read()
    check("bf16: resume bitwise identical", wa == open(os.path.join(bb, "model", "model.safetensors"), "rb").read())
    w32 = open(os.path.join(bf, "model", "model.safetensors"), "rb").read()
    if native:
        check("bf16: differs from the fp32 run (the products ran in bf16)", wa != w32)
        la, l32 = records(ba, "train")[-1]["loss"], records(bf, "train")[-1]["loss"]
        check("bf16: loss within 0.05 of fp32 after 6 steps", abs(la - l32) < 0.05, f"({la:.4f} vs {l32:.4f})")
    else:
        check("bf16 on a CPU without it: exactly the fp32 run", wa == w32)
    import glob
    states = sorted(glob.glob(os.path.join(bb, "checkpoints", "step_*", "state.json")))
    check("bf16: the checkpoint records the precision", bool(states) and
          json.load(open(states[0]))["train_config"].get("precision") == "bf16", str(states))
    rc = subprocess.run([mtp, "train", "--resume", os.path.join(ba), "--precision", "fp32", "--max-steps", "8"],
                        capture_output=True, text=True, timeout=600)
    check("bf16 checkpoint resumes in fp32", rc.returncode == 0 and "precision: bf16" not in rc.stdout,
          rc.stderr[-300:])
bad = train(["--max-steps", "2", "--out-dir", os.path.join(work, "badprec"), "--precision", "fp16"], expect_ok=False)
check("unknown precision: one-line error naming the key", bad.returncode != 0 and "precision" in bad.stderr and
      len(bad.stderr.strip().splitlines()) == 1, bad.stderr[-300:])

# --- passes: the micro-batch's 4 sequences in one pass (default) or one per pass (pass_tokens = seq_len) give
#     the same training within rounding (the products sum in another order)
p1_dir = os.path.join(work, "pass1")
pp = train(["--max-steps", "8", "--stop-at-step", "4", "--out-dir", p1_dir, "--pass-tokens", "32"])
if pp.returncode == 0 and pa.returncode == 0:
    l1 = [r["loss"] for r in records(p1_dir, "train")]
    l4 = [r["loss"] for r in records(a, "train")][:4]
    check("pass_tokens: one sequence per pass = four per pass (losses within 1e-4)",
          len(l1) == 4 and all(abs(x - y) < 1e-4 * abs(y) for x, y in zip(l1, l4)), f"{l1} vs {l4}")

# --- auxiliary-loss-free balancing: max/mean expert load lower with γ > 0 than γ = 0, same data and init
def final_load(out):
    ev = records(out, "eval")[-1]["expert_load"]
    return sum(x["max_over_mean"] for x in ev) / len(ev)
g0, g1 = os.path.join(work, "gamma0"), os.path.join(work, "gamma1")
common = ["--max-steps", "40", "--bal-alpha", "0", "--eval-every", "20", "--lr", "1e-2"]
p0 = train(common + ["--out-dir", g0, "--bias-update-speed", "0"])
p1 = train(common + ["--out-dir", g1, "--bias-update-speed", "0.01"])
if p0.returncode == 0 and p1.returncode == 0:
    r1 = records(g1, "train")
    first, last = r1[0]["main"], sum(r["main"] for r in r1[-5:]) / 5
    check("training lowers the main loss", last < first - 0.3, f"({first:.3f} -> {last:.3f})")
    v1 = records(g1, "eval")[-1]
    check("validation: every MTP depth reported", len(v1["val_mtp"]) == 2, str(v1["val_mtp"]))
    l0, l1 = final_load(g0), final_load(g1)
    check("balancing: max/mean load lower with γ > 0", l1 < l0, f"(γ=0: {l0:.3f}, γ=0.01: {l1:.3f})")
    w0 = st.load(os.path.join(g0, "model", "model.safetensors"))
    w1 = st.load(os.path.join(g1, "model", "model.safetensors"))
    biases = [n for n in w0 if n.endswith("e_score_correction_bias")]
    check("balancing: MoE layers have a bias (trunk and MTP)", len(biases) == 3, str(biases))
    check("bias untouched by the optimizer (γ = 0 keeps it exactly 0)", all((w0[n] == 0).all() for n in biases))
    check("bias moved by the balancing rule (γ > 0)", all((w1[n] != 0).any() for n in biases))
else:
    check("balancing runs", False, (p0.stderr + p1.stderr)[-800:])

# --- bad input: one line, non-zero exit, before any work
def bad(name, args, expect, full=False, code=1):
    """code: the documented exit status (1 for errors, 2 for flag syntax)."""
    p = subprocess.run([mtp, "train"] + ([] if full else base) + args, capture_output=True, text=True, timeout=120)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    ok = p.returncode == code and len(lines) == 1 and expect in lines[0]
    check("bad input: " + name, ok, f"rc={p.returncode} " + repr(p.stderr.strip()[:300]))
bad("missing dataset", ["--data", os.path.join(work, "nope")], "nope")
bad("wrong-typed key", ["--batch-size", "four"], "--batch-size")
bad("unknown key", ["--batch-sise", "4"], "batch-sise")
cfgfile = os.path.join(work, "bad_train.json"); json.dump({"lr": "fast"}, open(cfgfile, "w"))
bad("wrong-typed key in file", ["--config", cfgfile], "'lr'")
small = dict(MODEL, vocab_size=32); sc = os.path.join(work, "small.json"); json.dump(small, open(sc, "w"))
bad("model vocab smaller than the data's", ["--model-config", sc], "vocab_size")
other = dict(MODEL, hidden_size=48); oc = os.path.join(work, "other.json"); json.dump(other, open(oc, "w"))
bad("checkpoint from a different model config", ["--resume", b, "--model-config", oc], "different model config", full=True)
empty = os.path.join(work, "empty"); os.makedirs(empty)
write_shard(os.path.join(empty, "train_000.bin"), [], V)
json.dump({"vocab_size": V, "eos_id": 1, "train": ["train_000.bin"], "val": []}, open(os.path.join(empty, "meta.json"), "w"))
bad("empty dataset", ["--data", empty], "empty")

# shards whose header claims vocab_size -1 (0xFFFFFFFF) with ids beyond the model's vocabulary
neg = os.path.join(work, "neg_vocab"); os.makedirs(neg)
with open(os.path.join(neg, "train_000.bin"), "wb") as f:
    ids = [5, 7, 60000, 9] * 100
    f.write(b"MTPTOKS\0" + __import__("struct").pack("<IIQII", 1, 2, len(ids), 0xFFFFFFFF, 0))
    f.write(__import__("struct").pack(f"<{len(ids)}H", *ids))
json.dump({"vocab_size": -1, "eos_id": 1, "train": ["train_000.bin"], "val": []}, open(os.path.join(neg, "meta.json"), "w"))
bad("meta.json vocab_size -1", ["--data", neg], "vocab_size")
json.dump({"vocab_size": V, "eos_id": 1, "train": ["train_000.bin"], "val": []}, open(os.path.join(neg, "meta.json"), "w"))
bad("shard header vocab_size 0xFFFFFFFF", ["--data", neg], "vocab_size 4294967295")
deep = os.path.join(work, "deep_train.json")
open(deep, "w").write("[" * 100000 + "]" * 100000)
bad("training config nested 100,000 deep", ["--config", deep], "nesting deeper")

# --- resume writes where the user points, never into the folder recorded in the checkpoint
def digest(d):
    import hashlib
    h = {}
    for root, _, files in os.walk(d):
        for f in sorted(files):
            q = os.path.join(root, f)
            h[os.path.relpath(q, d)] = (hashlib.sha256(open(q, "rb").read()).hexdigest(), os.path.getmtime(q))
    return h
orig = os.path.join(work, "orig")
p = train(["--max-steps", "6", "--out-dir", orig, "--stop-at-step", "3", "--ckpt-every", "3"])
copy = os.path.join(work, "copy"); shutil.copytree(orig, copy)
before = digest(orig)
stale = os.path.join(copy, "model"); os.makedirs(stale, exist_ok=True)
open(os.path.join(stale, "model.safetensors.tmp.99999"), "wb").write(b"x" * 1000)     # a killed final write
open(os.path.join(copy, "metrics.jsonl.tmp.4242"), "w").write("partial")
os.makedirs(os.path.join(copy, "checkpoints", "step_00000005.tmp"))
p = subprocess.run([mtp, "train", "--resume", copy], capture_output=True, text=True, timeout=600)
check("resume a copied run: succeeds", p.returncode == 0, p.stderr[-400:])
check("resume a copied run: the original is untouched", digest(orig) == before)
check("resume a copied run: the copy has the final model", os.path.exists(os.path.join(copy, "model", "model.safetensors")))
left = [os.path.join(r, f) for r, ds, fs in os.walk(copy) for f in fs + ds if ".tmp" in f]
check("stale temp files of the run removed at start", left == [], str(left))
# a checkpoint folder outside any run folder: --out-dir required; with it, output goes there
lone = os.path.join(work, "lone_ck")
shutil.copytree(os.path.join(orig, "checkpoints", sorted(os.listdir(os.path.join(orig, "checkpoints")))[-1]), lone)
bad("resume a lone checkpoint without --out-dir", ["--resume", lone], "--out-dir", full=True)
dest = os.path.join(work, "dest")
p = subprocess.run([mtp, "train", "--resume", lone, "--out-dir", dest], capture_output=True, text=True, timeout=600)
check("resume a lone checkpoint with --out-dir writes there", p.returncode == 0 and
      os.path.exists(os.path.join(dest, "model", "model.safetensors")) and digest(orig) == before, p.stderr[-300:])
bad("resume into another run's folder", ["--resume", copy, "--out-dir", orig], "another run", full=True)
# a checkpoint whose state says step -5
neg_ck = os.path.join(work, "neg_ck"); shutil.copytree(lone, neg_ck)
stp = json.load(open(os.path.join(neg_ck, "state.json"))); stp["step"] = -5
json.dump(stp, open(os.path.join(neg_ck, "state.json"), "w"))
bad("checkpoint at step -5", ["--resume", neg_ck, "--out-dir", os.path.join(work, "neg_out")], "step -5", full=True)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
