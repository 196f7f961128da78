#!/usr/bin/python3
"""bf16 mixed precision against fp32 on the main job's training run: the same config, data, seed and steps, trained
once in each precision, one after the other; prints the validation loss of both at every evaluation, their
difference at the end, the step time of each, and writes both curves in one plot.

  /usr/bin/python3 bench/compare_precision.py [--config configs/train_default.json] [--out runs/precision]
                                             [--steps N] [--eval-every 50]

Needs the main job's data (bash scripts/main.sh, or its tokenizer and `data prepare` steps) and a CPU with AMX-BF16 or
AVX-512 BF16 (elsewhere the bf16 run says so and trains in fp32, and the script stops). Writes OUT/fp32 and OUT/bf16
(ordinary run folders), OUT/precision.json and OUT/precision_loss.png (gnuplot).
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_metrics(path):
    steps, evals = [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") == "eval":
                evals.append((r["step"], r["val_main"], r["val_mtp"]))
            elif "loss" in r and "step" in r:
                steps.append((r["step"], r["loss"], r.get("step_s", 0.0)))
    return steps, evals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "train_default.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "precision"))
    ap.add_argument("--steps", type=int, default=0, help="override max_steps (0: the config's)")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--mtp", default=os.path.join(ROOT, "build", "mtp"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    res = {}
    for p in ("fp32", "bf16"):
        out = os.path.join(a.out, p)
        cmd = [a.mtp, "train", "--config", a.config, "--out-dir", out, "--precision", p, "--max-time", "0",
               "--eval-every", str(a.eval_every), "--sample-tokens", "0", "--plot", "false", "--progress", "false"]
        if a.steps:
            cmd += ["--max-steps", str(a.steps)]
        if os.path.exists(os.path.join(out, "metrics.jsonl")):
            subprocess.run(["rm", "-rf", out], check=True)
        print("$", " ".join(cmd), flush=True)
        log = subprocess.run(cmd, capture_output=True, text=True)
        if log.returncode != 0:
            sys.exit(f"error: the {p} run failed:\n{log.stderr[-2000:]}")
        if p == "bf16" and "training in fp32" in log.stdout:
            sys.exit("error: this CPU has no bf16 kernel (the bf16 run trained in fp32); nothing to compare")
        steps, evals = read_metrics(os.path.join(out, "metrics.jsonl"))
        step_s = sorted(s for _, _, s in steps[len(steps) // 10:])          # past the first tenth (warm-up)
        res[p] = {"evals": evals, "train": [(s, l) for s, l, _ in steps],
                  "median_step_s": step_s[len(step_s) // 2] if step_s else 0.0}
    f32, b16 = res["fp32"]["evals"], res["bf16"]["evals"]
    print(f"\n{'step':>6s} {'val fp32':>9s} {'val bf16':>9s} {'bf16 - fp32':>12s}")
    for (s, v32, _), (s2, v16, _) in zip(f32, b16):
        print(f"{s:6d} {v32:9.4f} {v16:9.4f} {v16 - v32:+12.4f}")
    final = b16[-1][1] - f32[-1][1]
    t32, t16 = res["fp32"]["median_step_s"], res["bf16"]["median_step_s"]
    print(f"\nfinal validation loss (main head): fp32 {f32[-1][1]:.4f}, bf16 {b16[-1][1]:.4f}, difference {final:+.4f} "
          f"nats (target |difference| <= 0.02)")
    print(f"median step: fp32 {1000 * t32:.1f} ms, bf16 {1000 * t16:.1f} ms ({t32 / t16:.2f}x)")
    with open(os.path.join(a.out, "precision.json"), "w") as f:
        json.dump({"fp32": res["fp32"], "bf16": res["bf16"], "final_difference": final}, f, indent=1)
    dat = os.path.join(a.out, "precision.dat")
    with open(dat, "w") as f:
        for p in ("fp32", "bf16"):
            f.write(f"# {p} train\n" + "".join(f"{s} {l:.5f}\n" for s, l in res[p]["train"]) + "\n\n")
        for p in ("fp32", "bf16"):
            f.write(f"# {p} val\n" + "".join(f"{s} {v:.5f}\n" for s, v, _ in res[p]["evals"]) + "\n\n")
    png = os.path.join(a.out, "precision_loss.png")
    gp = f"""set terminal pngcairo size 900,480 font ',10' noenhanced
set output '{png}'
set title 'main job: fp32 vs bf16 mixed precision (same data, seed, steps)'
set xlabel 'step'
set ylabel 'loss (nats)'
set key top right
plot '{dat}' index 0 using 1:2 with lines lc rgb '#9ecae1' title 'train fp32 (total)', \\
     '{dat}' index 1 using 1:2 with lines lc rgb '#fdae6b' title 'train bf16 (total)', \\
     '{dat}' index 2 using 1:2 with linespoints lc rgb '#08519c' lw 2 title 'validation fp32 (main head)', \\
     '{dat}' index 3 using 1:2 with linespoints lc rgb '#d94801' lw 2 title 'validation bf16 (main head)'
"""
    pr = subprocess.run(["gnuplot"], input=gp, capture_output=True, text=True)
    print(f"wrote {a.out}/precision.json" + (f", {png}" if pr.returncode == 0 else f" (plot skipped: {pr.stderr.strip()})"))


if __name__ == "__main__":
    main()
