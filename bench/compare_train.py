#!/usr/bin/python3
"""Training-step speed, mtp.cpp (fp32, and bf16 mixed precision where the CPU has AMX-BF16 or AVX-512 BF16) against
PyTorch (Debian python3-torch, float32) at PyTorch's best thread count, side by side and interleaved in one run, with
MFU against the fp32 SGEMM peak measured in the same run.

  /usr/bin/python3 bench/compare_train.py [--cases CONFIG:SEQ:BATCH ...] [--threads 2] [--steps 5] [--reps 2]
      [--blas-core env|auto|NAME]

Default cases: bench/moe_10m.json at 128 x 4 and 256 x 4, bench/configs/model_moe_16m.json at 128 x 8 and
256 x 8. For each case and repetition: mtp.cpp fp32 and bf16 (bench_train, --threads threads; bf16 only where the
CPU has a bf16 kernel, else the column says "-"), PyTorch with 1 thread and with `threads` threads, one after the
other, so machine drift hits all alike; each implementation's best repetition counts. bf16 MFU above 100% means
faster than the fp32 peak allows. MFU = model FLOPs of the step (3 x forward matmul + attention FLOPs, train/flops.h) / time /
peak, the best SGEMM peak of the repetitions (as the step times are each implementation's best). Both sides' fp32
products run on OpenBLAS; --blas-core gives both the same kernels: env (default) keeps
the environment's OPENBLAS_CORETYPE, auto unsets it (OpenBLAS detects the CPU), a name (e.g. SkylakeX) sets it.
Prints one table row per case: ms/step of each, PyTorch's best, the ratio and the MFUs.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = ["bench/moe_10m.json:128:4", "bench/moe_10m.json:256:4",
                 "bench/configs/model_moe_16m.json:128:8", "bench/configs/model_moe_16m.json:256:8"]


def run_json(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)}\n{p.stderr[-1500:]}")
    return json.loads(p.stdout.strip().splitlines()[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=DEFAULT_CASES)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--bench-train", default=os.path.join(ROOT, "build", "bench_train"))
    ap.add_argument("--blas-core", default="env",
                    help="OpenBLAS kernels for both sides: env (as the environment has it), auto (unset), or a name")
    args = ap.parse_args()
    base_env = dict(os.environ)
    if args.blas_core == "auto":
        base_env.pop("OPENBLAS_CORETYPE", None)
    elif args.blas_core != "env":
        base_env["OPENBLAS_CORETYPE"] = args.blas_core
    if not os.access(args.bench_train, os.X_OK):
        sys.exit(f"error: {args.bench_train} not built (run scripts/build.sh)")
    P = args.threads
    rows = []
    kernel = bf16_kernel(args.bench_train)
    blas = "?"
    has_bf16 = kernel is not None
    for case in args.cases:
        cfg, seq, batch = case.rsplit(":", 2)
        cfg = cfg if os.path.isabs(cfg) else os.path.join(ROOT, cfg)
        common = ["--config", cfg, "--seq", seq, "--batch", batch, "--steps", str(args.steps)]
        best = {"mtp": None, "bf16": None, "torch1": None, f"torch{P}": None}
        peak = flops = None
        for rep in range(args.reps):
            env = dict(base_env, OMP_NUM_THREADS=str(P))
            r = run_json([args.bench_train] + common + ["--threads", str(P), "--peak"], env)
            # the best peak of the reps, as the step times are the best: a busy moment in one measurement
            # neither inflates nor deflates the MFU
            peak, flops, blas = max(peak or 0, r["peak_gflops"]), r["flops_per_step"], r.get("blas", "?")
            res = {"mtp": r["ms_per_step"]}
            if has_bf16:
                res["bf16"] = run_json([args.bench_train] + common + ["--threads", str(P), "--precision", "bf16"],
                                       env)["ms_per_step"]
            for t in (1, P):
                r = run_json(["/usr/bin/python3", os.path.join(ROOT, "bench", "bench_train_torch.py")] + common +
                             ["--threads", str(t)], dict(base_env, OMP_NUM_THREADS=str(t)))
                res[f"torch{t}"] = r["ms_per_step"]
            for k, v in res.items():
                best[k] = v if best[k] is None else min(best[k], v)
            print(f"  {os.path.basename(cfg)} {seq}x{batch} rep {rep + 1}: " +
                  ", ".join(f"{k} {v:.1f} ms" for k, v in res.items()), flush=True)
        tbest = min(best["torch1"], best[f"torch{P}"])
        tname = "1" if best["torch1"] <= best[f"torch{P}"] else str(P)
        mfu = lambda ms: 100.0 * flops / (ms / 1000.0) / (peak * 1e9)  # noqa: E731
        rows.append((os.path.basename(cfg), f"{seq}x{batch}", best["mtp"], best["torch1"], best[f"torch{P}"], tname,
                     tbest / best["mtp"], mfu(best["mtp"]), mfu(tbest), peak, best["bf16"]))
    print(f"\nmtp.cpp with {P} threads ({'bf16 kernel ' + kernel if has_bf16 else 'no bf16 kernel on this CPU'}); "
          f"PyTorch {torch_version()} with 1 and {P} threads; best of {args.reps} runs of {args.steps} steps; MFU "
          f"against the fp32 SGEMM peak measured by bench_train with {P} threads; OpenBLAS {blas} kernels for both")
    print(f"{'config':<22s} {'seq x B':>8s} {'mtp ms':>8s} {'bf16 ms':>8s} {'torch1 ms':>10s} {f'torch{P} ms':>10s} "
          f"{'best':>5s} {'ratio':>6s} {'bf16':>6s} {'MFU mtp':>8s} {'MFU bf16':>9s} {'MFU torch':>10s} {'peak':>7s}")
    for r in rows:
        tbest = min(r[3], r[4])
        b16 = (f"{r[10]:8.1f}", f"{tbest / r[10]:5.2f}x", f"{r[7] * r[2] / r[10]:8.1f}%") if r[10] \
            else (f"{'-':>8s}", f"{'-':>6s}", f"{'-':>9s}")
        print(f"{r[0]:<22s} {r[1]:>8s} {r[2]:8.1f} {b16[0]} {r[3]:10.1f} {r[4]:10.1f} {r[5]:>5s} {r[6]:5.2f}x {b16[1]} "
              f"{r[7]:7.1f}% {b16[2]} {r[8]:9.1f}% {r[9]:7.1f}")


def bf16_kernel(bench_train):
    """The bf16 kernel bench_train would use here, or None when the CPU has none (bench_train refuses bf16)."""
    p = subprocess.run([bench_train, "--bf16-kernel"], capture_output=True, text=True)
    k = p.stdout.strip()
    return k if p.returncode == 0 and k not in ("", "scalar") else None


def torch_version():
    p = subprocess.run(["/usr/bin/python3", "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return p.stdout.strip() or "?"


if __name__ == "__main__":
    main()
