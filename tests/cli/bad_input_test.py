#!/usr/bin/env python3
"""Bad input through the `mtp` CLI: each case must exit with the documented status (1 for errors, 2 for flag
syntax) with ONE line on stderr that starts with 'error:' and names the file/field, and must not leave a
partial output file."""
import json
import os, shutil, struct, subprocess, sys

mtp, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)

CFG = {"vocab_size": 61, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
       "intermediate_size": 24, "moe_intermediate_size": 8, "n_routed_experts": 4, "n_shared_experts": 1,
       "num_experts_per_tok": 2, "first_k_dense_replace": 1, "kv_lora_rank": 8, "q_lora_rank": 12,
       "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4, "num_nextn_predict_layers": 1}

def write(path, text):
    with open(path, "w") as f: f.write(text)

def run(args):
    p = subprocess.run([mtp] + args, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr

passed = failed = 0
def case(name, args, expect, out=None, code=1):
    """code: the documented exit status: 1 for errors, 2 for flag syntax (unknown flag or command, a value the
    flag's own validator refuses)."""
    global passed, failed
    rc, so, se = run(args)
    lines = [l for l in se.splitlines() if l.strip()]
    ok = (rc == code and len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0])
    if out and os.path.exists(out): ok = False
    leftovers = [f for f in os.listdir(work) if ".tmp." in f]
    if leftovers: ok = False
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rc={rc} stderr={se.strip()!r}")
    if ok: passed += 1
    else: failed += 1

# A valid model to start from.
good_cfg = os.path.join(work, "good.json"); write(good_cfg, json.dumps(CFG))
model = os.path.join(work, "model")
rc, so, se = run(["init", "--config", good_cfg, "--seed", "3", "--out", model])
assert rc == 0, se
st_path = os.path.join(model, "model.safetensors")
blob = open(st_path, "rb").read()
n = struct.unpack("<Q", blob[:8])[0]
header = json.loads(blob[8:8 + n])
data = blob[8 + n:]

def variant(name, mutate_header=None, raw=None, cfg=None):
    """A copy of the model dir with a modified safetensors file or config."""
    d = os.path.join(work, name); os.makedirs(d, exist_ok=True)
    write(os.path.join(d, "config.json"), json.dumps(cfg if cfg is not None else CFG))
    if raw is None:
        h = json.loads(json.dumps(header))
        if mutate_header: mutate_header(h)
        hb = json.dumps(h).encode()
        raw = struct.pack("<Q", len(hb)) + hb + data
    open(os.path.join(d, "model.safetensors"), "wb").write(raw)
    return d

tok = ["--tokens", "1,2,3,4"]
def logits(d, expect, name):
    out = os.path.join(work, name + ".out.safetensors")
    case(name, ["logits", "--model", d] + tok + ["--out", out], expect, out)

# --- safetensors files
logits(variant("truncated", raw=blob[: len(blob) // 2]), "model.safetensors", "truncated file")
logits(variant("short", raw=blob[:5]), "model.safetensors", "file shorter than header length")
logits(variant("hugelen", raw=struct.pack("<Q", 1 << 40) + blob[8:]), "model.safetensors", "header length past EOF")
bad_json = struct.pack("<Q", 10) + b"{not json}" + data
logits(variant("badjson", raw=bad_json), "model.safetensors", "bad header JSON")
first, second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[:2]
def overlap(h): h[second]["data_offsets"] = [h[first]["data_offsets"][0], h[first]["data_offsets"][0] + h[second]["data_offsets"][1] - h[second]["data_offsets"][0]]
logits(variant("overlap", overlap), "model.safetensors", "overlapping offsets")
def baddtype(h): h[first]["dtype"] = "Q4_K"
logits(variant("dtype", baddtype), "model.safetensors", "unknown dtype")
def wrongshape(h):
    name = "model.layers.0.self_attn.o_proj.weight"
    s = h[name]["shape"]; h[name]["shape"] = [s[1], s[0]]
logits(variant("wrongshape", wrongshape), "o_proj", "wrong shape for a name")
def missing(h):
    name = "model.layers.1.mlp.gate.weight"
    b, e = h[name]["data_offsets"]
    h[name] = {"dtype": "F32", "shape": [(e - b) // 4], "data_offsets": [b, e]}   # keep bytes, rename below
    h["model.layers.1.mlp.gate.weightX"] = h.pop(name)
logits(variant("missing", missing), "model.layers.1.mlp.gate.weight", "missing tensor")

# --- config.json
def cfgcase(name, text, expect):
    d = os.path.join(work, name); os.makedirs(d, exist_ok=True)
    write(os.path.join(d, "config.json"), text)
    open(os.path.join(d, "model.safetensors"), "wb").write(blob)
    logits(d, expect, name)
    out = os.path.join(work, name + ".init")
    case(name + " (init)", ["init", "--config", os.path.join(d, "config.json"), "--out", out], expect, out)

cfgcase("cfg_badjson", "{\"vocab_size\": 61,", "invalid JSON")
cfgcase("cfg_nan", json.dumps(CFG).replace("\"hidden_size\": 16", "\"rms_norm_eps\": NaN, \"hidden_size\": 16"), "invalid JSON")
cfgcase("cfg_inf", json.dumps(CFG).replace("\"hidden_size\": 16", "\"rms_norm_eps\": 1e999, \"hidden_size\": 16"), "overflow")
cfgcase("cfg_neg_eps", json.dumps(dict(CFG, rms_norm_eps=-1e-6)), "rms_norm_eps")
cfgcase("cfg_type", json.dumps(dict(CFG, hidden_size="16")), "hidden_size")
cfgcase("cfg_negative", json.dumps(dict(CFG, num_hidden_layers=-1)), "num_hidden_layers")
cfgcase("cfg_missing", json.dumps({k: v for k, v in CFG.items() if k != "kv_lora_rank"}), "kv_lora_rank")
cfgcase("cfg_topk", json.dumps(dict(CFG, num_experts_per_tok=9)), "num_experts_per_tok")
cfgcase("cfg_rope_odd", json.dumps(dict(CFG, qk_rope_head_dim=3)), "qk_rope_head_dim")
cfgcase("cfg_scoring", json.dumps(dict(CFG, scoring_func="relu")), "scoring_func")
cfgcase("cfg_not_object", "[1, 2, 3]", "object")
cfgcase("cfg_mtp_style", json.dumps(dict(CFG, mtp_style="tree")), "mtp_style")
cfgcase("cfg_parallel_no_heads", json.dumps(dict(CFG, mtp_style="parallel", num_nextn_predict_layers=0)), "mtp_style")

# --- parallel heads (mtp_style "parallel") against sequential checkpoints, and the GGUF refusal
PCFG = dict(CFG, mtp_style="parallel")
logits(variant("parallel_cfg_seq_weights", cfg=PCFG), "mtp_style", "parallel config, sequential checkpoint")
pmodel = os.path.join(work, "pmodel")
write(os.path.join(work, "pcfg.json"), json.dumps(PCFG))
rc, so, se = run(["init", "--config", os.path.join(work, "pcfg.json"), "--seed", "3", "--out", pmodel])
assert rc == 0, se
seq_over_par = os.path.join(work, "seq_cfg_par_weights"); os.makedirs(seq_over_par, exist_ok=True)
write(os.path.join(seq_over_par, "config.json"), json.dumps(CFG))
shutil.copy(os.path.join(pmodel, "model.safetensors"), seq_over_par)
logits(seq_over_par, "enorm.weight", "sequential config, parallel-heads checkpoint")
pg = os.path.join(work, "p.gguf")
case("convert: parallel heads to GGUF refused", ["convert", "--model", pmodel, "--to", "gguf", "--out", pg],
     "parallel", pg)

# --- flags
out = os.path.join(work, "x.safetensors")
case("token out of range", ["logits", "--model", model, "--tokens", "1,2,999", "--out", out], "--tokens", out)
case("token not a number", ["logits", "--model", model, "--tokens", "1,a,3", "--out", out], "--tokens", out)
case("grad one token", ["grad", "--model", model, "--tokens", "5", "--out", out], "--tokens", out)
case("model dir missing", ["logits", "--model", os.path.join(work, "nope"), "--tokens", "1", "--out", out], "nope", out)
case("output dir missing", ["logits", "--model", model, "--tokens", "1,2", "--out", os.path.join(work, "no/dir/x.st")], "no/dir", None)
case("unknown flag", ["logits", "--model", model, "--tokens", "1", "--out", out, "--frobnicate", "1"], "frobnicate", out, code=2)
case("missing required flag", ["logits", "--model", model], "--tokens", out, code=2)


# --- tokenizer training and data preparation
corpus = os.path.join(work, "corpus.txt")
write(corpus, "the quick brown fox jumps over the lazy dog. " * 50)
tokf = os.path.join(work, "tok.json")
rc, so, se = run(["tokenizer", "train", "--vocab-size", "300", "--input", corpus, "--out", tokf])
assert rc == 0, se
emptyf = os.path.join(work, "empty.txt"); write(emptyf, "")
case("tokenizer: vocab below 256 + specials", ["tokenizer", "train", "--vocab-size", "200", "--input", corpus,
     "--out", os.path.join(work, "t2.json")], "--vocab-size", os.path.join(work, "t2.json"))
case("tokenizer: missing input", ["tokenizer", "train", "--vocab-size", "300", "--input", os.path.join(work, "nofile.txt"),
     "--out", os.path.join(work, "t3.json")], "nofile.txt", os.path.join(work, "t3.json"))
case("tokenizer: empty corpus", ["tokenizer", "train", "--vocab-size", "300", "--input", emptyf,
     "--out", os.path.join(work, "t4.json")], "empty", os.path.join(work, "t4.json"))
dout = os.path.join(work, "data_out")
case("data prepare: missing input", ["data", "prepare", "--tokenizer", tokf, "--input", os.path.join(work, "nofile.txt"),
     "--out", dout], "nofile.txt", os.path.join(dout, "meta.json"))
case("data prepare: empty corpus", ["data", "prepare", "--tokenizer", tokf, "--input", emptyf, "--out", dout],
     "empty corpus", os.path.join(dout, "meta.json"))
case("data prepare: bad tokenizer file", ["data", "prepare", "--tokenizer", corpus, "--input", corpus, "--out", dout],
     "corpus.txt", os.path.join(dout, "meta.json"))
case("data prepare: bad val fraction", ["data", "prepare", "--tokenizer", tokf, "--input", corpus, "--out", dout,
     "--val-fraction", "1.5"], "--val-fraction", os.path.join(dout, "meta.json"))

# --- hostile inputs (issue: no input crashes mtp): deep nesting, huge ids, non-finite weights, wrapped flags
deep = "[" * 100000 + "]" * 100000
cfgcase("cfg_nested_100k", deep, "nesting deeper than 64")
deep10k = os.path.join(work, "deep10k"); os.makedirs(deep10k, exist_ok=True)
write(os.path.join(deep10k, "config.json"), '{"a": ' + "[" * 10000 + "]" * 10000 + "}")
rc, so, se = run(["logits", "--model", deep10k] + tok + ["--out", os.path.join(work, "d10k.st")])
ok = rc == 1 and len(se) < 300 and "nesting deeper" in se
print(f"{'ok  ' if ok else 'FAIL'} 10,000-level config: a short one-line error ({len(se)} bytes)")
passed, failed = passed + ok, failed + (not ok)
good_tok = json.load(open(tokf))
def tokcase(name, mutate, expect):
    t = json.loads(json.dumps(good_tok)); text = mutate(t)
    f = os.path.join(work, name + ".json"); write(f, text if isinstance(text, str) else json.dumps(t))
    case("tokenizer.json: " + name, ["tokenizer", "encode", "--tokenizer", f, "--text", "the fox"], expect)
def deep_section(key):
    def m(t):
        return json.dumps(dict(t, **{key: None})).replace('"%s": null' % key, '"%s": %s' % (key, '{"type": "Sequence", "decoders": ' + "[" * 100000 + "]" * 100000 + "}"))
    return m
tokcase("decoder nested 100k", deep_section("decoder"), "nesting deeper")
tokcase("post_processor nested 100k", deep_section("post_processor"), "nesting deeper")
def huge_id(t): t["model"]["vocab"]["zzzq"] = 2 ** 30 - 1
tokcase("vocab id 2^30-1", huge_id, "dense")
def neg_id(t): t["model"]["vocab"]["zzzq"] = 2 ** 64 - 1
tokcase("vocab id 2^64-1", neg_id, "token id")
for tname in ["model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias",
              "model.embed_tokens.weight", "lm_head.weight"]:
    bad_w = bytearray(blob)
    off = 8 + n + header[tname]["data_offsets"][0] + 4
    bad_w[off:off + 4] = struct.pack("<f", float("nan") if "gate" in tname else float("inf"))
    d = variant("nonfinite_" + tname.split(".")[-2], raw=bytes(bad_w))
    logits(d, tname, "non-finite " + tname)
    rc, so, se = run(["--allow-nonfinite", "logits", "--model", d] + tok + ["--out", os.path.join(work, "nf.st")])
    ok = rc == 0
    print(f"{'ok  ' if ok else 'FAIL'} --allow-nonfinite loads {tname}: rc={rc} {se.strip()[:200]}")
    passed, failed = passed + ok, failed + (not ok)
case("init --seed -1", ["init", "--config", good_cfg, "--seed", "-1", "--out", os.path.join(work, "s1")], "--seed",
     os.path.join(work, "s1"), code=2)
case("generate --seed -1", ["generate", "--model", model, "--prompt-tokens", "1,2", "--seed", "-1"], "--seed", code=2)
case("bench --seed -1", ["bench", "--model", model, "--seed", "-1"], "--seed", code=2)
case("data prepare --seed -1", ["data", "prepare", "--tokenizer", tokf, "--input", corpus, "--out", dout, "--seed", "-1"],
     "--seed", os.path.join(dout, "meta.json"), code=2)
case("serve --max-body-bytes -1", ["serve", "--model", model, "--max-body-bytes", "-1"], "--max-body-bytes", code=2)
case("serve --host 999.1.1.1", ["serve", "--model", model, "--tokenizer", tokf, "--host", "999.1.1.1", "--port", "0"], "--host")
case("serve --host not on this machine", ["serve", "--model", model, "--tokenizer", tokf, "--host", "192.0.2.1", "--port", "8090"], "--host")
case("unknown command", ["frobnicate"], "frobnicate", code=2)
case("init --out empty", ["init", "--config", good_cfg, "--out", ""], "--out", code=2)
case("convert --out empty", ["convert", "--model", model, "--to", "gguf", "--out", ""], "--out", code=2)
failed_init = os.path.join(work, "failed_init")
case("failed init leaves no folder", ["init", "--config", good_cfg, "--out", failed_init, "--dtype", "F9"], "--dtype",
     failed_init)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
