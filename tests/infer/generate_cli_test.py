#!/usr/bin/env python3
"""`mtp generate` / `mtp bench` / `mtp draft-vocab` through the CLI: speculative greedy output equals plain greedy
output (also with a restricted draft vocabulary), the stats line, the no-MTP fallback, text prompts with a tokenizer,
bench JSON (rows, time breakdown, forward costs), the draft vocabulary file, and bad input (each case: exit 1, or 2
for flag syntax, with ONE line on stderr starting with 'error:' that names the flag)."""
import json, re, os, shutil, subprocess, sys

mtp, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
env = dict(os.environ, OMP_NUM_THREADS="1")   # tiny model: threads only add fork/join overhead

CFG = {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
       "intermediate_size": 48, "moe_intermediate_size": 16, "n_routed_experts": 4, "n_shared_experts": 1,
       "num_experts_per_tok": 2, "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 16,
       "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "num_nextn_predict_layers": 2,
       "initializer_range": 0.2, "max_position_embeddings": 64}

def run(args, timeout=120):   # a hang guard: all ~100 calls of this script together take 1-2 s (ctest)
    p = subprocess.run([mtp] + args, capture_output=True, text=True, errors="replace", timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr

passed = failed = 0
def check(name, ok, detail=""):
    global passed, failed
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail and not ok else ''}")
    if ok: passed += 1
    else: failed += 1

def make_model(name, **over):
    cfg = dict(CFG, **over)
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f: json.dump(cfg, f)
    out = os.path.join(work, name)
    rc, so, se = run(["init", "--config", path, "--seed", "5", "--out", out])
    assert rc == 0, se
    return out

model = make_model("d2")
model0 = make_model("d0", num_nextn_predict_layers=0)

def gen(m, extra, name):
    toks = os.path.join(work, name + ".tokens")
    rc, so, se = run(["generate", "--model", m, "--prompt-tokens", "5,17,3,99,42", "-n", "40", "--ignore-eos",
                      "--tokens-out", toks] + extra)
    ids = open(toks).read().strip() if rc == 0 and os.path.exists(toks) else None
    return rc, so, se, ids

# --- speculative greedy == plain greedy, stats line
rc, so, se, plain = gen(model, ["--spec", "none"], "plain")
check("plain greedy runs", rc == 0 and plain and len(plain.split(",")) == 40, se)
check("stats line: prompt and generated tokens/s",
      rc == 0 and "prompt 5 tokens" in se.splitlines()[-1] and "generated 40 tokens" in se.splitlines()[-1], se)
for extra in (["--spec", "mtp"], ["--draft", "1"], ["--draft", "4", "--draft-reuse"], ["--draft-p-min", "0.2"],
              ["--draft-reuse"], ["--batch", "2", "--draft", "2"], ["-t", "2"]):
    rc, so, se, ids = gen(model, extra, "spec")
    last = se.splitlines()[-1] if se else ""
    check("speculative greedy == plain " + " ".join(extra), rc == 0 and ids == plain, se)
    check("stats line " + " ".join(extra),
          all(k in last for k in ("drafts", "draft tokens", "accepted", "acceptance", "mean acceptance length")), last)
check("stdout streams the ids", so.split() == plain.split(","), so[:200])

# --- sampling with speculation runs and is reproducible by seed
a = gen(model, ["--temp", "0.8", "--top-p", "0.9", "--seed", "3"], "s1")
b = gen(model, ["--temp", "0.8", "--top-p", "0.9", "--seed", "3"], "s2")
check("sampling reproducible by seed", a[0] == 0 and a[3] == b[3], a[2])

# --- no MTP modules: --spec mtp falls back with a warning
rc, so, se, ids0 = gen(model0, ["--spec", "none"], "nomtp_plain")
rc2, so2, se2, ids1 = gen(model0, ["--spec", "mtp"], "nomtp_spec")
check("--spec mtp without MTP modules falls back", rc2 == 0 and ids1 == ids0, se2)
check("... with a warning", "warning:" in se2 and "no MTP modules" in se2, se2)

# --- text prompt with a tokenizer (trained here on a small text)
corpus = os.path.join(work, "corpus.txt")
with open(corpus, "w") as f:
    f.write("the quick brown fox jumps over the lazy dog. " * 50 + "hello world, hello there. " * 30)
tok = os.path.join(work, "tokenizer.json")
rc, so, se = run(["tokenizer", "train", "--vocab-size", "290", "--input", corpus, "--out", tok])
check("tokenizer trained", rc == 0, se)
shutil.copy(tok, os.path.join(model, "tokenizer.json"))    # picked up from the model dir by default
rc, so, se = run(["generate", "--model", model, "--prompt", "hello world", "-n", "12", "--ignore-eos"])
check("text prompt via MODEL/tokenizer.json", rc == 0 and len(so) > 0 and "generated 12 tokens" in se, se)
pf = os.path.join(work, "prompt.txt")
with open(pf, "w") as f: f.write("the quick brown fox")
rc, so, se = run(["generate", "--model", model0, "--tokenizer", tok, "--prompt-file", pf, "-n", "8", "--ignore-eos"])
check("--prompt-file with --tokenizer", rc == 0 and "prompt " in se, se)

# --- bench
rc, so, se = run(["bench", "--model", model, "-p", "8", "-n", "8", "-r", "2", "--temp", "0", "0.8", "--json",
                  "--cost-rows", "1", "2"])
try:
    res = json.loads(so)
    rows = res["rows"]
except Exception:
    res, rows = {}, []
tests = [(r["test"], r["temperature"], r["draft"], r["reuse"]) for r in rows]
want = [("pp8", 0, 0, False)] + [x for t in (0.0, 0.8) for x in
        [("tg8", t, 0, False), ("tg8+mtp", t, 1, False), ("tg8+mtp", t, 2, False), ("tg8+mtp", t, 3, True),
         ("tg8+mtp", t, 4, True)]]
check("bench --json rows", rc == 0 and [(a, round(b, 2), c, d) for a, b, c, d in tests] == want, f"{tests} {se}")
check("bench speed-up and acceptance fields",
      rc == 0 and all("speedup_mean" in r and len(r["acceptance_per_position"]) == r["draft"] and
                      len(r["tokens_per_s"]) == 2 for r in rows if r["draft"] > 0), so[:300])
check("bench time breakdown per token",
      rc == 0 and all(set(r["us_per_token"]) == {"total", "draft", "verify", "sampling", "rollback", "other"} and
                      r["us_per_token"]["total"] > 0 and r["main_rows"] > 0
                      for r in rows if r["test"].startswith("tg")) and
      all(r["us_per_token"]["draft"] == 0 for r in rows if r["test"] == "tg8"), so[:300])
costs = res.get("forward_costs", {}).get("rows", [])
check("bench forward-cost rows", rc == 0 and [c["rows"] for c in costs] == [1, 2] and
      all(c["main_full_us"] > 0 and c["module_us"] > 0 for c in costs), json.dumps(res.get("forward_costs"))[:300])
rc, so, se = run(["bench", "--model", model, "-p", "8", "-n", "8", "-r", "1", "--temp", "0"])
check("bench table", rc == 0 and "| pp8 |" in so and "| tg8+mtp |" in so and "speed-up" in so and
      "Where the decode time goes" in so and "One forward over R new positions" in so, so + se)
rc, so, se = run(["bench", "--model", model, "--prompt-file", corpus, "-p", "16", "-n", "8", "-r", "2", "--temp", "0",
                  "--no-costs"])
check("bench prompts from held-out text", rc == 0 and corpus in so and "One forward" not in so, so + se)

# --- draft vocabulary (FR-Spec): frequencies from a shard or MODEL/draft_vocab.json
docs = os.path.join(work, "docs")
os.makedirs(docs, exist_ok=True)
shutil.copy(corpus, os.path.join(docs, "a.txt"))
import random
rnd = random.Random(7)                                       # many distinct byte-level tokens
with open(os.path.join(docs, "b.txt"), "w") as f:
    f.write(" ".join("".join(rnd.choice("abcdefghijklmnopqrstuvwxyz,.!?0123456789") for _ in range(rnd.randint(1, 7)))
                     for _ in range(3000)))
data = os.path.join(work, "data")
rc, so, se = run(["data", "prepare", "--tokenizer", tok, "--input", docs, "--out", data, "--val-fraction", "0"])
check("data prepared for draft-vocab", rc == 0, se)
shard = os.path.join(data, "train_000.bin")
dvfile = os.path.join(model, "draft_vocab.json")
rc, so, se = run(["draft-vocab", "--data", data, "--out", dvfile, "--n", "40"])
try:
    dvj = json.load(open(dvfile))
except Exception:
    dvj = {}
check("draft-vocab writes the ranking", rc == 0 and dvj.get("n") == 40 and len(dvj.get("ids", [])) == 40 and
      dvj["counts"] == sorted(dvj["counts"], reverse=True) and 0 < dvj["coverage"] <= 1, so + se)
# prompt ids inside and outside the draft vocabulary; greedy output must not change
for extra in (["--draft-vocab", "20"], ["--draft-vocab", "40", "--draft", "4", "--draft-reuse"],
              ["--draft-vocab", "7", "--draft-vocab-from", shard], ["--draft-vocab", "1", "--draft-p-min", "0.1"]):
    rc, so, se, ids = gen(model, extra, "dv")
    check("draft vocab: speculative greedy == plain " + " ".join(extra), rc == 0 and ids == plain, se)
rc, so, se, ids = gen(model, [], "dvdefault")
check("MODEL/draft_vocab.json used by default", rc == 0 and ids == plain and "draft vocab 40" in se, se)
rc, so, se, ids = gen(model, ["--draft-vocab", "0"], "dvoff")
check("--draft-vocab 0 turns it off", rc == 0 and ids == plain and "draft vocab" not in se, se)
a = gen(model, ["--temp", "0.8", "--seed", "4", "--draft-vocab", "30"], "dvs1")
b = gen(model, ["--temp", "0.8", "--seed", "4", "--draft-vocab", "30"], "dvs2")
check("draft vocab sampling reproducible", a[0] == 0 and a[3] == b[3], a[2])
rc, so, se = run(["bench", "--model", model, "-p", "8", "-n", "8", "-r", "1", "--temp", "0", "--json",
                  "--draft-vocab", "0", "16", "--cost-rows", "1"])
try:
    rows = json.loads(so)["rows"]
    costs = json.loads(so)["forward_costs"]
except Exception:
    rows, costs = [], {}
check("bench draft vocab rows", rc == 0 and sorted({r["draft_vocab"] for r in rows if r["draft"] > 0}) == [0, 16] and
      costs.get("draft_vocab") == 16 and costs["rows"][0]["module_draft_head_us"] > 0, so[:400] + se)

# --- weight types through the CLI: speculative greedy == plain greedy of the same served type; the bench compares
# the types side by side and names the kernels it runs
for wt in ("bf16", "q8_0"):
    rc1, so1, se1, ids1 = gen(model, ["--weights", wt, "--spec", "none"], "w_plain_" + wt)
    rc2, so2, se2, ids2 = gen(model, ["--weights", wt, "--spec", "mtp"], "w_spec_" + wt)
    check(f"--weights {wt}: speculative greedy == plain greedy", rc1 == 0 and rc2 == 0 and ids1 == ids2 and
          len(ids1) > 0, se1 + se2)
rc, so, se = run(["bench", "--model", model, "-p", "8", "-n", "8", "-r", "2", "--temp", "0", "--no-costs",
                  "--weights", "f32", "bf16", "q8_0"])
check("bench --weights f32 bf16 q8_0: one row each, ratios against f32, kernels named",
      rc == 0 and all(f"| {w} |" in so for w in ("f32", "bf16", "q8_0")) and re.search(r"kernels (avx2|avx512|avx512bf16|amx) ", so) is not None and
      "weights f32:" in so, so[:1500] + se)

# --- EOS through the CLI: a copy of the model whose eos_token_id is the 8th greedy token stops right after its
# first occurrence (the token itself kept, counted once), plain and speculative alike; --ignore-eos runs on
pl = plain.split(",")
eos = int(pl[7]); first = pl.index(str(eos))
eos_model = os.path.join(work, "d2_eos"); shutil.copytree(model, eos_model)
ec = json.load(open(os.path.join(eos_model, "config.json"))); ec["eos_token_id"] = eos
json.dump(ec, open(os.path.join(eos_model, "config.json"), "w"))
for extra in (["--spec", "none"], ["--draft", "2"], ["--draft", "4", "--draft-reuse"], ["--draft-tree", "2,2"]):
    toks = os.path.join(work, "eos.tokens")
    rc, so, se = run(["generate", "--model", eos_model, "--prompt-tokens", "5,17,3,99,42", "-n", "40",
                      "--tokens-out", toks] + extra)
    got = open(toks).read().strip().split(",") if rc == 0 else []
    check("EOS stops generation " + " ".join(extra), rc == 0 and got == pl[:first + 1] and
          f"generated {first + 1} tokens" in se.splitlines()[-1], (got, first, se[-300:]))
rc, so, se, ids = gen(eos_model, ["--spec", "none"], "eos_ignored")
check("--ignore-eos generates past EOS", rc == 0 and ids == plain, se)

# --- token trees through the CLI (greedy): output == plain; the bench measures them at temperature 0 only
for extra in (["--draft-tree", "2,2"], ["--draft-tree", "3,1,2", "--draft-reuse"], ["--draft-tree", "2", "--draft-vocab", "20"]):
    rc, so, se, ids = gen(model, extra, "tree")
    check("token tree: speculative greedy == plain " + " ".join(extra), rc == 0 and ids == plain and "drafts" in se, se)
rc, so, se = run(["bench", "--model", model, "-p", "8", "-n", "8", "-r", "1", "--temp", "0", "0.8", "--json",
                  "--no-costs", "--draft-vocab", "0", "--draft-tree", "2,1", "3"])
try:
    rows = json.loads(so)["rows"]
except Exception:
    rows = []
trees = sorted((r["temperature"], tuple(r["tree"])) for r in rows if r.get("tree"))
check("bench --draft-tree: one greedy row per tree, none sampled", rc == 0 and trees == [(0, (2, 1)), (0, (3,))],
      so[:600] + se)

# --- parallel heads (mtp_style "parallel"): speculative greedy == plain; the bench measures the chain only
pmodel = make_model("par2", mtp_style="parallel")
rc, so, se, pplain = gen(pmodel, ["--spec", "none"], "pplain")
check("parallel heads: plain greedy runs", rc == 0 and pplain and len(pplain.split(",")) == 40, se)
for extra in (["--spec", "mtp"], ["--draft", "1"], ["--draft-p-min", "0.2"], ["-t", "2"]):
    rc, so, se, ids = gen(pmodel, extra, "pspec")
    check("parallel heads: speculative greedy == plain " + " ".join(extra), rc == 0 and ids == pplain and
          "drafts" in se, se)
rc, so, se = run(["bench", "--model", pmodel, "-p", "8", "-n", "8", "-r", "1", "--temp", "0", "--json", "--no-costs"])
try:
    prow = [(r["draft"], r["reuse"]) for r in json.loads(so)["rows"] if r["draft"] > 0]
except Exception:
    prow = []
check("parallel heads: bench drafts 1..D, no reuse rows", rc == 0 and prow == [(1, False), (2, False)], so[:300] + se)

# --- bad input
def bad(name, args, expect, codes=(1,)):
    rc, so, se = run(args)
    lines = [l for l in se.splitlines() if l.strip()]
    ok = rc in codes and len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0]
    check("bad input: " + name, ok, f"rc={rc} stderr={se.strip()!r}")

G = ["generate", "--model", model]
P = ["--prompt-tokens", "1,2,3"]
bad("no prompt", G, "--prompt")
bad("empty --prompt", G + ["--prompt", ""], "empty prompt")
empty = os.path.join(work, "empty.txt"); open(empty, "w").close()
bad("empty --prompt-file", G + ["--prompt-file", empty], "empty prompt")
bad("missing --prompt-file", G + ["--prompt-file", os.path.join(work, "nope.txt")], "--prompt-file")
bad("empty --prompt-tokens", G + ["--prompt-tokens", ""], "--prompt-tokens")
bad("token id out of vocab", G + ["--prompt-tokens", "1,300"], "--prompt-tokens")   # vocab_size 300: ids 0..299
bad("token id not a number", G + ["--prompt-tokens", "1,x"], "--prompt-tokens")
bad("prompt longer than max_position_embeddings", G + ["--prompt-tokens", ",".join(["7"] * 65)],   # 64 + 1
    "max_position_embeddings")
bad("text prompt without a tokenizer", ["generate", "--model", model0, "--prompt", "hi"], "tokenizer")
bad("--temp negative", G + P + ["--temp", "-1"], "--temp")
bad("--top-p 0", G + P + ["--top-p", "0"], "--top-p")
bad("--top-p above 1", G + P + ["--top-p", "1.5"], "--top-p")
bad("--min-p 1", G + P + ["--min-p", "1"], "--min-p")
bad("--top-k negative", G + P + ["--top-k", "-3"], "--top-k")
bad("--repeat-penalty 0", G + P + ["--repeat-penalty", "0"], "--repeat-penalty")
bad("-n negative", G + P + ["-n", "-1"], "-n")
bad("--draft 0", G + P + ["--draft", "0"], "--draft")
bad("--draft above D without reuse", G + P + ["--draft", "3"], "--draft-reuse")   # D = 2
bad("parallel heads: --draft-reuse", ["generate", "--model", pmodel] + P + ["--draft", "3", "--draft-reuse"],
    "--draft-reuse")
bad("parallel heads: --draft-tree", ["generate", "--model", pmodel] + P + ["--draft-tree", "2,1"], "--draft-tree")
bad("parallel heads: bench --draft-tree", ["bench", "--model", pmodel, "-p", "4", "-n", "4", "--draft-tree", "2"],
    "--draft-tree")
bad("--draft-p-min above 1", G + P + ["--draft-p-min", "2"], "--draft-p-min")
bad("--spec unknown", G + P + ["--spec", "eagle"], "--spec")
bad("--batch 0", G + P + ["--batch", "0"], "--batch")
bad("--threads negative", G + P + ["--threads", "-2"], "--threads")
bad("--temp not a number", G + P + ["--temp", "warm"], "--temp", codes=(2,))
bad("two prompt sources", G + P + ["--prompt", "x"], "excludes", codes=(2,))
bad("missing model", ["generate", "--model", os.path.join(work, "nomodel")] + P, "nomodel")
bad("--tokens-out unwritable", G + P + ["-n", "3", "--tokens-out", os.path.join(work, "no", "dir", "f")], "--tokens-out")
bad("bench -p 0", ["bench", "--model", model, "-p", "0"], "-p")
bad("bench -n 1", ["bench", "--model", model, "-n", "1"], "-n")
bad("bench -r 0", ["bench", "--model", model, "-r", "0"], "-r")
# 60 + 10 > max_position_embeddings 64
bad("bench beyond max_position_embeddings", ["bench", "--model", model, "-p", "60", "-n", "10"], "max_position_embeddings")
bad("bench --prompt-file without tokenizer", ["bench", "--model", model0, "--prompt-file", corpus, "-p", "8", "-n", "8"],
    "tokenizer")
bad("bench --temp negative", ["bench", "--model", model, "--temp", "-0.5"], "--temp")
bad("--draft-vocab negative", G + P + ["--draft-vocab", "-1"], "--draft-vocab")
bad("--draft-vocab above vocab_size", G + P + ["--draft-vocab", "301"], "--draft-vocab")        # 300 + 1
bad("--draft-vocab above the ranked tokens", G + P + ["--draft-vocab", "41"], "--draft-vocab")   # draft_vocab.json: 40
bad("--draft-vocab without frequencies", ["generate", "--model", model0] + P + ["--draft-vocab", "5"], "draft_vocab.json")
bad("--draft-vocab-from without --draft-vocab", G + P + ["--draft-vocab-from", shard], "--draft-vocab-from")
bad("--draft-vocab-from missing shard", G + P + ["--draft-vocab", "5", "--draft-vocab-from", os.path.join(work, "no.bin")],
    "no.bin")
badjson = os.path.join(work, "bad_dv")
shutil.copytree(model0, badjson)
with open(os.path.join(badjson, "draft_vocab.json"), "w") as f: f.write('{"ids": [1, 2, 2]}')
bad("draft_vocab.json with a duplicate id", ["generate", "--model", badjson] + P + ["--draft-vocab", "2"], "twice")
with open(os.path.join(badjson, "draft_vocab.json"), "w") as f: f.write('{"ids": [1, 2')
bad("draft_vocab.json not JSON", ["generate", "--model", badjson] + P + ["--draft-vocab", "2"], "draft_vocab.json")
bad("draft-vocab --data without meta.json", ["draft-vocab", "--data", work, "--out", os.path.join(work, "x.json")],
    "meta.json")
bad("draft-vocab --n negative", ["draft-vocab", "--data", data, "--out", os.path.join(work, "x.json"), "--n", "-2"], "--n")
bad("draft-vocab --out unwritable", ["draft-vocab", "--data", data, "--out", os.path.join(work, "no", "dir", "x.json")],
    "--out")
bad("bench --draft-vocab negative", ["bench", "--model", model, "--draft-vocab", "-3"], "--draft-vocab")
bad("--weights unknown", G + P + ["--weights", "q4_0"], "--weights")
bad("serve --weights unknown", ["serve", "--model", model, "--port", "0", "--weights", "fp8"], "--weights")
bad("bench --weights unknown", ["bench", "--model", model, "-p", "8", "-n", "8", "--weights", "f32", "int4"], "--weights")
for spec in ("2,,1", "0", "9", "x", "4,4,4"):
    bad("--draft-tree " + spec, G + P + ["--draft-tree", spec], "--draft-tree")
bad("--draft-tree deeper than D without reuse", G + P + ["--draft-tree", "2,2,2"], "--draft-reuse")
bad("--draft-tree with --draft-p-min", G + P + ["--draft-tree", "2", "--draft-p-min", "0.2"], "--draft-tree")
bad("bench --draft-tree unparsable", ["bench", "--model", model, "-p", "8", "-n", "8", "--draft-tree", "2;1"], "--draft-tree")
bad("serve --draft-tree unparsable", ["serve", "--model", model, "--port", "0", "--draft-tree", "a"], "--draft-tree")
bad("bench --cost-rows 0", ["bench", "--model", model, "--cost-rows", "0"], "--cost-rows")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
