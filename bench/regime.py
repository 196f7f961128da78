#!/usr/bin/env python3
"""Where MTP speculation pays on this CPU: a ladder of model sizes (the cache-resident default up to > 1 GB at f32,
dense and MoE) x weight types (f32, bf16, q8_0). For each it runs `mtp bench` on randomly initialised weights and
records (a) plain decoding tokens/s and the cost of one main-model forward over k rows relative to one row (what a
verify pass of k-1 drafts costs), (b) the speed-up that cost implies for speculation with 1..3 drafts at a given
acceptance profile (default: the per-depth acceptance measured on the trained memory-bound model, see
docs/results.md), counting each draft as one MTP-module pass with its head. Writes a markdown table and a PNG plot.

  /usr/bin/python3 bench/regime.py [--out DIR] [--threads 2] [--accept 0.8,0.6,0.45] [--quick]

Random weights give the costs (they do not depend on the values); acceptance must come from a trained model, so
(b) is a projection from measured costs, labelled as such. Not part of CI (about 15 minutes on 2 cores)."""
import argparse, json, os, subprocess, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--out", default=os.path.join(root, "runs", "regime"))
ap.add_argument("--mtp", default=os.path.join(root, "build", "mtp"))
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--accept", default="0.8,0.6,0.45", help="acceptance at draft positions 1,2,3 (conditional)")
ap.add_argument("--quick", action="store_true", help="the two smallest models only")
a = ap.parse_args()
acc = [float(x) for x in a.accept.split(",")]
os.makedirs(a.out, exist_ok=True)

LADDER = [("default MoE 6.6M", "configs/model_default.json"),
          ("dense 30M", "bench/configs/model_dense_30m.json"),
          ("MoE 125M (16 experts, top-2 + 1 shared)", "bench/configs/model_moe_120m.json"),
          ("dense 97M", "bench/configs/model_dense_100m.json"),
          ("dense 260M", "bench/configs/model_dense_270m.json")]
if a.quick: LADDER = LADDER[:2]
TYPES = ["f32", "bf16", "q8_0"]
ROWS = [1, 2, 3, 4, 5, 6, 8]

def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"regime: {' '.join(cmd)} failed: {p.stderr.strip()[-400:]}")
    return p.stdout

results = []
for name, cfg in LADDER:
    mdir = os.path.join(a.out, "models", os.path.basename(cfg).replace(".json", ""))
    if not os.path.exists(os.path.join(mdir, "config.json")):
        run([a.mtp, "init", "--config", os.path.join(root, cfg), "--out", mdir])
    c = json.load(open(os.path.join(root, cfg)))
    for t in TYPES:
        print(f"regime: {name} at {t}", file=sys.stderr, flush=True)
        out = run([a.mtp, "bench", "--model", mdir, "--weights", t, "--json", "-p", "32", "-n", "16", "-r", "1",
                   "--temp", "0", "--draft-vocab", "0", "-t", str(a.threads), "--cost-rows"] + [str(r) for r in ROWS])
        j = json.loads(out)
        tg = next(r["tokens_per_s_mean"] for r in j["rows"] if r["test"].startswith("tg") and r["draft"] == 0)
        costs = {r["rows"]: r for r in j["forward_costs"]["rows"]}
        one = costs[1]["main_full_us"]
        rel = {k: costs[k]["main_full_us"] / one for k in ROWS}
        draft = costs[1]["module_full_head_us"]            # one module pass + full head on its last row
        dr = draft / one
        # Speed-up with n drafts: expected tokens per round / (verify of n+1 rows + n draft passes), in plain steps.
        spd = {}
        for n in (1, 2, 3):
            expect, p = 1.0, 1.0
            for i in range(n):
                p *= acc[i] if i < len(acc) else acc[-1]
                expect += p
            spd[n] = expect / (rel[n + 1] + n * dr)
        ex = {k: costs[k].get("experts_read", -1) for k in ROWS}
        results.append({"model": name, "config": cfg, "type": t, "tg": tg, "rel": rel, "draft_rel": dr,
                        "speedup": spd, "main_us": one, "experts": ex})

json.dump(results, open(os.path.join(a.out, "regime.json"), "w"), indent=1)
bpw = {"f32": 4.0, "bf16": 2.0, "q8_0": 34 / 32}
lines = ["| model | weights | plain tg t/s | main fwd µs (1 row) | 2 rows | 3 rows | 4 rows | 6 rows | 8 rows | "
         "draft pass | projected speed-up 1 / 2 / 3 drafts |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
for r in results:
    lines.append(f"| {r['model']} | {r['type']} | {r['tg']:.1f} | {r['main_us']:.0f} | " +
                 " | ".join(f"{r['rel'][k]:.2f}" for k in (2, 3, 4, 6, 8)) +
                 f" | {r['draft_rel']:.3f} | " + " / ".join(f"{r['speedup'][n]:.2f}×" for n in (1, 2, 3)) + " |")
moe = [r for r in results if r["experts"][1] > 0 and r["type"] == "f32"]
if moe:
    lines += ["", "Routed experts a verify pass reads (all MoE layers), against one row:", "",
              "| model | " + " | ".join(f"{k} rows" for k in ROWS) + " |", "|---|" + "---:|" * len(ROWS)]
    for r in moe:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r['experts'][k]} ({r['experts'][k] / r['experts'][1]:.2f}×)"
                                                     for k in ROWS) + " |")
table = "\n".join(lines)
open(os.path.join(a.out, "regime.md"), "w").write(
    f"Forward cost of k rows relative to 1 row (a verify pass of k-1 drafts), {a.threads} threads; projected speed-up "
    f"at acceptance {acc} per draft position.\n\n" + table + "\n")
print(table)

# Plot: cost of 3 rows / 1 row and projected 2-draft speed-up against the plain step time.
dat = os.path.join(a.out, "regime.dat")
with open(dat, "w") as f:
    for t in TYPES:
        f.write(f"# {t}\n")
        for r in sorted((r for r in results if r["type"] == t), key=lambda r: r["main_us"]):
            f.write(f"{r['main_us'] / 1000:.3f} {r['rel'][3]:.4f} {r['speedup'][2]:.4f}\n")
        f.write("\n\n")
png = os.path.join(a.out, "regime.png")
gp = f"""set terminal pngcairo size 1100,450 font ',10' noenhanced
set output '{png}'
set multiplot layout 1,2
set logscale x
set xlabel 'plain decode step (ms, log scale): bigger model / wider weights to the right'
set ylabel 'verify 3 rows / 1 row'
set grid
set key top left
plot for [i=0:2] '{dat}' index i using 1:2 with points pointsize 1.5 title word('{' '.join(TYPES)}', i+1)
set ylabel 'projected speed-up, 2 drafts'
plot for [i=0:2] '{dat}' index i using 1:3 with points pointsize 1.5 title word('{' '.join(TYPES)}', i+1), 1 with lines dt 2 title 'break-even'
unset multiplot
"""
p = subprocess.run(["gnuplot"], input=gp, capture_output=True, text=True)
print(f"\nwrote {os.path.join(a.out, 'regime.md')}, {png}" if p.returncode == 0 else f"plot skipped: {p.stderr.strip()}")
