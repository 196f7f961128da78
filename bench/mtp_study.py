#!/usr/bin/python3
"""The MTP study: next-token prediction vs DeepSeek-V3's sequential MTP modules vs parallel heads, at equal tokens.

  /usr/bin/python3 bench/mtp_study.py [--steps 400] [--out runs/study] [--bench-reps 4] [--only NAME ...]

Trains the model of --train-config (default configs/train_default.json: the default model, same data, batch,
seq_len and learning-rate schedule) once per variant for the same number of steps, i.e. on the same training tokens:
  ntp_s1, ntp_s2       D = 0 (two seeds: the noise between runs)
  seq1_s1, seq1_s2     sequential MTP, D = 1 (two seeds)
  seq2, seq3           sequential MTP, D = 2, 3
  par2, par3           parallel heads (mtp_style "parallel"), n = 2, 3
with DeepSeek-V3's λ schedule (0.3, then 0.1 for the last 30% of steps). For each trained model it measures:
  - the main head's and each depth's validation loss (the trainer's held-out evaluation, 32 windows);
  - training tokens/s (median of the logged steps) and the wall-clock of the run;
  - teacher-forced agreement of each depth with the main model on validation windows (`mtp distill --eval-only`:
    argmax of depth k at row i == argmax of the main head at row i + k);
  - acceptance per draft position, greedy and at temperature 0.8, and the speculative speed-up (`mtp bench` on
    held-out prompts, 1 thread, the full vocabulary as draft vocabulary, every draft length 1..D).
Writes OUT/study.md (tables), OUT/study.json and OUT/study_loss.png, OUT/study_accept.png (gnuplot).

Resumable: a variant whose OUT/NAME/study_eval.json exists is not trained or measured again; a variant with
checkpoints (every 100 steps) resumes from its last one. Needs build/mtp; prepares runs/default/data (the main
job's corpus, tokenizer and shards) when it is missing. Not part of CI (about 40 minutes at 400 steps on 2 cores).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MTP = os.path.join(ROOT, "build", "mtp")
DATA = os.path.join(ROOT, "runs", "default", "data")

VARIANTS = [  # name, D, style, seed
    ("ntp_s1", 0, "sequential", 1), ("ntp_s2", 0, "sequential", 2),
    ("seq1_s1", 1, "sequential", 1), ("seq1_s2", 1, "sequential", 2),
    ("seq2", 2, "sequential", 1), ("seq3", 3, "sequential", 1),
    ("par2", 2, "parallel", 1), ("par3", 3, "parallel", 1),
]


def run(cmd, log=None, check=True):
    t0 = time.time()
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT)
    if log:
        with open(log, "a") as f:
            f.write("$ " + " ".join(str(c) for c in cmd) + "\n" + p.stdout + p.stderr + "\n")
    if check and p.returncode != 0:
        sys.exit(f"error: {' '.join(str(c) for c in cmd[:3])} failed (exit {p.returncode}): {p.stderr.strip()[-800:]}")
    return p, time.time() - t0


def ensure_data():
    if os.path.exists(os.path.join(DATA, "meta.json")):
        return
    print("== preparing runs/default/data (Brown corpus, 8k BPE tokenizer, shards), as scripts/main.sh does")
    run(["bash", "scripts/fetch_corpus.sh"])
    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    tok = os.path.join(os.path.dirname(DATA), "tokenizer.json")
    run([MTP, "tokenizer", "train", "--vocab-size", 8000, "--input", "data/brown", "--pre-tokenizer", "deepseek",
         "--out", tok])
    run([MTP, "data", "prepare", "--tokenizer", tok, "--input", "data/brown", "--out", DATA, "--val-fraction", 0.05])


def train(name, D, style, seed, a):
    out = os.path.join(a.out, name)
    log = os.path.join(a.out, name + ".log")
    model = os.path.join(out, "model", "model.safetensors")
    if os.path.exists(model) and os.path.exists(os.path.join(out, "metrics.jsonl")):
        return
    cks = os.path.join(out, "checkpoints")
    if os.path.isdir(cks) and os.listdir(cks):
        print(f"   resuming {name} from {cks}")
        run([MTP, "train", "--resume", out], log)
        return
    if os.path.exists(out):
        subprocess.run(["rm", "-rf", out])
    switch = int(round(a.steps * 0.7))
    run([MTP, "train", "--config", a.train_config, "--out-dir", out, "--mtp-depth", D,
         "--mtp-style", style, "--seed", seed, "--max-steps", a.steps, "--max-time", 0,
         "--mtp-lambda", 0.3, "--mtp-lambda-schedule", f"0:0.3,{switch}:0.1",
         "--eval-every", max(1, a.steps // 4), "--eval-batches", 32, "--ckpt-every", 100, "--keep-checkpoints", 1,
         "--sample-tokens", 0, "--log-every", 50, "--threads", a.threads, "--plot", "false", "--progress", "false"],
        log)


def parse_agreement(text, D):
    """'eval step 0 | depth 1: KL a agree b CE c | ...' -> [(kl, agree, ce)] per depth."""
    for line in text.splitlines():
        if line.startswith("eval step 0"):
            parts = line.split("|")[1:]
            out = []
            for p in parts:
                w = p.split()
                out.append((float(w[3]), float(w[5]), float(w[7])))
            assert len(out) == D, line
            return out
    sys.exit("error: no evaluation line in mtp distill --eval-only output")


def measure(name, D, style, a):
    out = os.path.join(a.out, name)
    res_path = os.path.join(out, "study_eval.json")
    if os.path.exists(res_path):
        return json.load(open(res_path))
    log = os.path.join(a.out, name + ".log")
    recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    tr = [r for r in recs if r["type"] == "train"]
    ev = [r for r in recs if r["type"] == "eval"]
    r = {"name": name, "D": D, "style": style if D > 0 else "ntp", "steps": tr[-1]["step"],
         "tokens": tr[-1]["step"] * a.tok_step,
         "train_tokens_per_s": statistics.median(x["tokens_per_s"] for x in tr),
         "wall_s": tr[-1]["time"],
         "curve": [(e["step"], e["val_main"], e["val_mtp"]) for e in ev],
         "val_main": ev[-1]["val_main"], "val_mtp": ev[-1]["val_mtp"]}
    model = os.path.join(out, "model")
    if D > 0:
        p, _ = run([MTP, "distill", "--eval-only", "--model", model, "--data", DATA, "--eval-batches", 32,
                    "--seq-len", 128], log)
        r["agreement"] = [x[1] for x in parse_agreement(p.stdout, D)]
        r["kl"] = [x[0] for x in parse_agreement(p.stdout, D)]
        p, _ = run([MTP, "bench", "--model", model, "--prompt-shard", os.path.join(DATA, "val_000.bin"),
                    "-p", 64, "-n", 64, "-r", a.bench_reps, "-t", 1, "--draft-vocab", 0, "--no-costs", "--json"], log)
        rows = json.loads(p.stdout)["rows"]
        r["bench"] = {}
        for temp in (0.0, 0.8):
            plain = [x for x in rows if x["test"].startswith("tg") and x["draft"] == 0 and abs(x["temperature"] - temp) < 1e-3]
            spec = [x for x in rows if x["draft"] > 0 and not x["reuse"] and x["p_min"] == 0 and abs(x["temperature"] - temp) < 1e-3
                    and not x["tree"]]
            best = max(spec, key=lambda x: x["speedup_mean"])
            full = max(spec, key=lambda x: x["draft"])
            r["bench"][str(temp)] = {
                "plain_tokens_per_s": plain[0]["tokens_per_s_mean"],
                "acceptance_per_position": full["acceptance_per_position"],
                "mean_acceptance_length": full["mean_acceptance_length"],
                "speedup_full_draft": full["speedup_mean"], "speedup_full_draft_stddev": full["speedup_stddev"],
                "best_draft": best["draft"], "speedup_best": best["speedup_mean"],
                "speedup_best_stddev": best["speedup_stddev"],
                "by_draft": {str(x["draft"]): x["speedup_mean"] for x in spec}}
    json.dump(r, open(res_path, "w"), indent=1)
    return r


def fmt_list(v, f="{:.3f}"):
    return " / ".join(f.format(x) for x in v) if v else "—"


def report(results, a):
    by = {r["name"]: r for r in results}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    md = (f"{a.train_config} (model {a.model_config}), {a.steps} steps of {a.tok_step} tokens "
          f"({a.steps * a.tok_step / 1e6:.2f}M training tokens) per variant, λ 0.3 then 0.1 from step "
          f"{int(round(a.steps * 0.7))}; {a.threads} training threads; bench: 1 thread, {a.bench_reps} held-out prompts "
          f"of 64 tokens, 64 generated; cpu {cpu}.\n\n")
    md += ("| variant | D | val loss main | val loss per depth | train tok/s | wall s | teacher-forced agreement "
           "per depth | greedy acceptance per position | T=0.8 acceptance per position | speed-up greedy (best k) | "
           "speed-up T=0.8 (best k) |\n|---|---:|---:|---|---:|---:|---|---|---|---|---|\n")
    for r in results:
        b0 = r.get("bench", {}).get("0.0")
        b8 = r.get("bench", {}).get("0.8")
        sp = lambda b: f"{b['speedup_best']:.2f}x ± {b['speedup_best_stddev']:.2f} (k={b['best_draft']})" if b else "—"
        md += (f"| {r['name']} | {r['D']} | {r['val_main']:.4f} | {fmt_list(r['val_mtp'], '{:.3f}')} | "
               f"{r['train_tokens_per_s']:.0f} | {r['wall_s']:.0f} | {fmt_list(r.get('agreement'))} | "
               f"{fmt_list(b0['acceptance_per_position']) if b0 else '—'} | "
               f"{fmt_list(b8['acceptance_per_position']) if b8 else '—'} | {sp(b0)} | {sp(b8)} |\n")
    # noise between seeds next to the differences claimed
    def pair(x, y, key):
        return abs(by[x][key] - by[y][key]) if x in by and y in by else None
    md += "\nSeed noise and differences (main-head validation loss):\n\n| comparison | Δ val loss main |\n|---|---:|\n"
    rows = [("ntp_s2 - ntp_s1 (seed noise, NTP)", "ntp_s2", "ntp_s1"),
            ("seq1_s2 - seq1_s1 (seed noise, D=1)", "seq1_s2", "seq1_s1")]
    ntp_mean = statistics.mean(by[n]["val_main"] for n in ("ntp_s1", "ntp_s2") if n in by) if \
        any(n in by for n in ("ntp_s1", "ntp_s2")) else None
    for label, x, y in rows:
        if x in by and y in by:
            md += f"| {label} | {by[x]['val_main'] - by[y]['val_main']:+.4f} |\n"
    if ntp_mean is not None:
        for n in ("seq1_s1", "seq1_s2", "seq2", "seq3", "par2", "par3"):
            if n in by:
                md += f"| {n} - mean(NTP) | {by[n]['val_main'] - ntp_mean:+.4f} |\n"
    open(os.path.join(a.out, "study.md"), "w").write(md)
    json.dump(results, open(os.path.join(a.out, "study.json"), "w"), indent=1)
    print(md)
    # plots
    dat = os.path.join(a.out, "study_loss.dat")
    with open(dat, "w") as f:
        for r in results:
            f.write(f"# {r['name']}\n")
            for step, vm, _ in r["curve"]:
                f.write(f"{step * a.tok_step / 1e6:.4f} {vm:.5f}\n")
            f.write("\n\n")
    names = " ".join(r["name"] for r in results)
    acc = os.path.join(a.out, "study_accept.dat")
    spec = [r for r in results if r.get("bench")]
    with open(acc, "w") as f:
        for r in spec:
            f.write(f"# {r['name']}\n")
            for j, (g, s) in enumerate(zip(r["bench"]["0.0"]["acceptance_per_position"],
                                           r["bench"]["0.8"]["acceptance_per_position"])):
                f.write(f"{j + 1} {g:.4f} {s:.4f}\n")
            f.write("\n\n")
    snames = " ".join(r["name"] for r in spec)
    gp = f"""set terminal pngcairo size 1200,440 font ',10' noenhanced
set output '{os.path.join(a.out, "study_loss.png")}'
set multiplot layout 1,2 title 'MTP study: {os.path.basename(a.model_config)}, {a.steps} steps, equal tokens'
set xlabel 'training tokens (M)'
set ylabel 'validation loss, main head (nats)'
set key top right
set title 'whole run'
plot for [i=0:{len(results) - 1}] '{dat}' index i using 1:2 with linespoints title word('{names}', i+1)
set title 'from the second evaluation on (zoom)'
set offsets 0,0,0.02,0.02
plot for [i=0:{len(results) - 1}] '{dat}' index i every ::2 using 1:2 with linespoints title word('{names}', i+1)
unset multiplot
unset title
set output '{os.path.join(a.out, "study_accept.png")}'
set multiplot layout 1,2 title 'MTP study: acceptance per draft position on held-out prompts'
set xlabel 'draft position'
set ylabel 'acceptance (greedy)'
set xtics 1
set yrange [0:1]
set offsets 0.2,0.2,0,0
plot for [i=0:{max(0, len(spec) - 1)}] '{acc}' index i using 1:2 with linespoints title word('{snames}', i+1)
set ylabel 'acceptance (T = 0.8)'
plot for [i=0:{max(0, len(spec) - 1)}] '{acc}' index i using 1:3 with linespoints title word('{snames}', i+1)
unset multiplot
"""
    pr = subprocess.run(["gnuplot"], input=gp, capture_output=True, text=True)
    print(f"wrote {a.out}/study.md, study.json" +
          (", study_loss.png, study_accept.png" if pr.returncode == 0 else f" (plots skipped: {pr.stderr.strip()})"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps per variant (8 x 128 tokens each)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "study"))
    ap.add_argument("--threads", type=int, default=2, help="training threads")
    ap.add_argument("--bench-reps", type=int, default=4, help="held-out prompts per bench setting")
    ap.add_argument("--only", action="append", help="run only these variants (repeatable)")
    ap.add_argument("--train-config", default="configs/train_default.json",
                    help="training config (its model_config is the model; e.g. bench/configs/train_dense_30m.json "
                         "for the memory-bound model, with its own --out)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the tables and plots")
    a = ap.parse_args()
    if a.steps < 8:
        sys.exit("error: --steps must be >= 8")
    if not os.access(MTP, os.X_OK):
        sys.exit(f"error: {MTP} missing: build first (bash scripts/build.sh)")
    a.out = os.path.abspath(a.out)
    tc = json.load(open(os.path.join(ROOT, a.train_config)))
    a.tok_step = int(tc["batch_size"]) * int(tc["seq_len"]) * int(tc.get("grad_accum", 1))
    a.model_config = tc["model_config"]
    os.makedirs(a.out, exist_ok=True)
    meta = os.path.join(a.out, "study_args.json")
    if os.path.exists(meta) and json.load(open(meta))["steps"] != a.steps:
        sys.exit(f"error: {a.out} holds a study of {json.load(open(meta))['steps']} steps; use another --out")
    json.dump({"steps": a.steps}, open(meta, "w"))
    ensure_data()
    results = []
    for name, D, style, seed in VARIANTS:
        if a.only and name not in a.only:
            continue
        if not a.report_only:
            t0 = time.time()
            print(f"== {name}: D = {D} ({style if D else 'next-token only'}), seed {seed}", flush=True)
            train(name, D, style, seed, a)
        if os.path.exists(os.path.join(a.out, name, "metrics.jsonl")):
            results.append(measure(name, D, style, a))
            if not a.report_only:
                print(f"   done in {time.time() - t0:.0f} s: val main {results[-1]['val_main']:.4f}", flush=True)
    if results:
        report(results, a)


if __name__ == "__main__":
    main()
