#!/usr/bin/python3
"""Training throughput under mpirun, side by side in one run: 1 rank x 2 threads, 2 ranks x 1 thread (data
parallel), 2 ranks x 1 thread with ZeRO-1, and 2 ranks x 1 thread with expert parallelism, on the default model.

  /usr/bin/python3 bench/mpi_train.py [--mtp build/mtp] [--data runs/default/data] [--steps 30] [--reps 2]

The configurations run interleaved (A B C D A B C D ...) so that machine noise hits all of them alike. For each:
median tokens/s over the steps after the first 3, and the share of the step spent in MPI collectives (metrics.jsonl
`comm_s`), split into waiting for the slowest rank (`wait_s`, a barrier before the gradient reduction) and the rest. The data is the main job's (scripts/main.sh); scratch output goes to a temporary folder.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader",
          "--mca", "btl_vader_single_copy_mechanism", "none", "-np"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtp", default=os.path.join(ROOT, "build", "mtp"))
    ap.add_argument("--data", default=os.path.join(ROOT, "runs", "default", "data"))
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "train_default.json"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.data, "meta.json")):
        sys.exit(f"error: --data: {args.data} has no meta.json (run scripts/main.sh first, or give a prepared dataset)")
    base = ["train", "--config", args.config, "--model-config", os.path.join(ROOT, "configs", "model_default.json"),
            "--data", args.data, "--max-steps", str(args.steps), "--max-time", "0", "--eval-every", "0",
            "--eval-batches", "1", "--sample-tokens", "0", "--ckpt-every", "0", "--plot", "false", "--progress", "false",
            "--log-every", "1000"]
    configs = [("1 rank x 2 threads", [], ["--threads", "2"]),
               ("2 ranks x 1 thread (data parallel)", MPIRUN + ["2"], ["--threads", "1"]),
               ("2 ranks x 1 thread, ZeRO-1", MPIRUN + ["2"], ["--threads", "1", "--zero-stage", "1"]),
               ("2 ranks x 1 thread, expert parallel 2", MPIRUN + ["2"], ["--threads", "1", "--expert-parallel", "2"])]
    work = tempfile.mkdtemp(prefix="mtp_mpi_bench_")
    tps = {c[0]: [] for c in configs}
    comm = {c[0]: [] for c in configs}
    wait = {c[0]: [] for c in configs}
    try:
        for rep in range(args.reps):
            for name, launcher, extra in configs:
                out = os.path.join(work, f"r{rep}_{len(tps[name])}_{abs(hash(name))}")
                cmd = launcher + [args.mtp] + base + extra + ["--out-dir", out]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f"error: {' '.join(cmd)}\n{(p.stdout + p.stderr)[-1500:]}")
                recs = [json.loads(ln) for ln in open(os.path.join(out, "metrics.jsonl"))]
                recs = [r for r in recs if r["type"] == "train"][3:]
                tps[name] += [r["tokens_per_s"] for r in recs]
                comm[name] += [r["comm_s"] / r["step_s"] for r in recs if "comm_s" in r]
                wait[name] += [r["wait_s"] / r["step_s"] for r in recs if "wait_s" in r]
                shutil.rmtree(out, ignore_errors=True)
                print(f"  rep {rep + 1}: {name}: {statistics.median([r['tokens_per_s'] for r in recs]):.0f} tok/s",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref = statistics.median(tps[configs[0][0]])
    print(f"\n{'configuration':<40s} {'tokens/s':>9s} {'vs 1x2':>7s} {'in MPI':>7s} {'waiting':>8s} {'moving':>7s}")
    for name, _, _ in configs:
        t = statistics.median(tps[name])
        if comm[name]:
            c, w = statistics.median(comm[name]), statistics.median(wait[name])
            cols = f"{100 * c:6.1f}% {100 * w:7.1f}% {100 * (c - w):6.1f}%"
        else:
            cols = f"{'-':>7s} {'-':>8s} {'-':>7s}"
        print(f"{name:<40s} {t:9.0f} {t / ref:6.2f}x {cols}")
    print("(shares of the step: in MPI = all collectives; waiting = the barrier before the gradient reduction, i.e.\n"
          " time lost to the slowest rank; moving = the rest: the gradient reduction, statistics, expert all-to-alls)")


if __name__ == "__main__":
    main()
