#!/usr/bin/python3
"""`mtp train` under mpirun on one machine (OpenMPI, started by this test as root with --allow-run-as-root):

  /usr/bin/python3 tests/train/mpi_test.py MTP_BINARY WORK_DIR

- data parallel over 2 ranks with global batch B equals one process with batch B: every step's losses and the final
  weights within 1e-5 relative (the fp32 gradient sum is taken in another order: one process accumulates B
  sequences in turn, two ranks each accumulate B/2 and then add; ~1e-7 per step, growing slowly through Adam), and
  two 2-rank runs are bitwise identical; only rank 0 writes;
- ZeRO-1 equals plain data parallel within the same tolerance; its checkpoint (2 ranks) resumes on 1 rank and on 4
  ranks and the continued runs equal the uninterrupted one within the tolerance;
- expert parallel over 2 ranks, and 2 x 2 ranks combined with data parallel, equals the single process: losses,
  gradient norms, every tensor of the first step's gradient (the trainer's MTP_TRAIN_TEST_DUMP_GRAD hook) and the
  final weights within 1e-5, router biases (driven by the expert loads) exactly equal;
- a rank killed mid-run ends the job in under 30 s, non-zero, with a message naming the rank;
- batch_size below the rank count is a one-line error.
Prints one line per check and `N passed, M failed`; exit 1 on failure.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)
import st  # noqa: E402
from markov_data import make_dataset  # noqa: E402
from report import check, finish  # noqa: E402

mtp, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
V = 64
TOL = 1e-5


MODEL = {"vocab_size": V, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 48, "moe_intermediate_size": 16, "n_routed_experts": 8, "n_shared_experts": 1,
         "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
         "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True,
         "kv_lora_rank": 16, "q_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
         "max_position_embeddings": 128, "num_nextn_predict_layers": 1}
data = os.path.join(work, "data")
make_dataset(data, V)
cfg = os.path.join(work, "model.json")
json.dump(MODEL, open(cfg, "w"))
BASE = ["train", "--model-config", cfg, "--data", data, "--batch-size", "4", "--seq-len", "32", "--lr", "3e-3",
        "--warmup-steps", "2", "--max-steps", "8", "--eval-every", "0", "--eval-batches", "2", "--sample-tokens", "0",
        "--ckpt-every", "0", "--threads", "1", "--plot", "false", "--progress", "false", "--seed", "3",
        "--bal-alpha", "0.01", "--bias-update-speed", "0.01"]
# OpenMPI as root on one machine; shared-memory transport only, without the cross-process copy (CMA) that
# containers often forbid.
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader",
          "--mca", "btl_vader_single_copy_mechanism", "none", "-np"]


def train(out, ranks=0, extra=(), resume=None, timeout=300):
    args = ["train", "--resume", resume] + list(extra) if resume else BASE + ["--out-dir", out] + list(extra)
    cmd = ([mtp] if ranks == 0 else MPIRUN + [str(ranks), mtp]) + args
    env = dict(os.environ)
    if out and not resume:   # the first step's gradient (trainer test hook), written by rank 0
        env["MTP_TRAIN_TEST_DUMP_GRAD"] = os.path.join(work, os.path.basename(out) + ".grad.safetensors")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        print(f"  $ {' '.join(cmd)}\n{(p.stdout + p.stderr)[-1500:]}")
    return p


def steps(out):
    return [json.loads(ln) for ln in open(os.path.join(out, "metrics.jsonl")) if json.loads(ln)["type"] == "train"]


def weights(out):
    return st.load(os.path.join(out, "model", "model.safetensors"))


def worst_loss(a, b, first=1):
    ra = {r["step"]: r for r in steps(a)}
    rb = {r["step"]: r for r in steps(b)}
    common = [s for s in ra if s in rb and s >= first]
    errs = [abs(ra[s][k] - rb[s][k]) / abs(rb[s][k]) for s in common for k in ("loss", "main") if rb[s][k]]
    return (max(errs) if errs else float("inf")), len(common)


def worst_grad(a, b):
    """Per-tensor relative error of the first step's gradient of runs a and b (router biases get none)."""
    ga = st.load(os.path.join(work, os.path.basename(a) + ".grad.safetensors"))
    gb = st.load(os.path.join(work, os.path.basename(b) + ".grad.safetensors"))
    e = {n: float(np.linalg.norm(ga[n].astype(np.float64) - gb[n]) / max(np.linalg.norm(gb[n]), 1e-30))
         for n in gb if not n.endswith("e_score_correction_bias") and np.linalg.norm(gb[n]) > 0}
    n = max(e, key=e.get)
    return e[n], n, len(e)


def worst_weight(a, b):
    wa, wb = weights(a), weights(b)
    if set(wa) != set(wb):
        return float("inf"), "different tensor names"
    e = {n: float(np.linalg.norm(wa[n].astype(np.float64) - wb[n]) / max(np.linalg.norm(wb[n]), 1e-30)) for n in wa}
    n = max(e, key=e.get)
    return e[n], n


one = os.path.join(work, "one")
dp_a, dp_b = os.path.join(work, "dp2a"), os.path.join(work, "dp2b")
p1 = train(one)
pa = train(dp_a, 2)
pb = train(dp_b, 2)
check("1 process and 2 x 2 ranks run", p1.returncode == 0 and pa.returncode == 0 and pb.returncode == 0)
if pa.returncode == 0 and p1.returncode == 0 and pb.returncode == 0:
    e, n = worst_loss(dp_a, one)
    check("data parallel (2 ranks) = 1 process: per-step losses", e <= TOL and n == 8, f"{n} steps, worst rel err {e:.2e}")
    e, name = worst_weight(dp_a, one)
    check("data parallel (2 ranks) = 1 process: final weights", e <= TOL, f"worst rel err {e:.2e} ({name})")
    e, name, nt = worst_grad(dp_a, one)
    check("data parallel (2 ranks) = 1 process: first-step gradient, every tensor", e <= TOL,
          f"{nt} tensors, worst rel err {e:.2e} ({name})")
    same = open(os.path.join(dp_a, "model", "model.safetensors"), "rb").read() == \
        open(os.path.join(dp_b, "model", "model.safetensors"), "rb").read()
    ka = [(r["loss"], r["grad_norm"]) for r in steps(dp_a)]
    kb = [(r["loss"], r["grad_norm"]) for r in steps(dp_b)]
    check("2-rank runs bitwise reproducible (weights, losses, grad norms)", same and ka == kb)
    nlines = sum(1 for ln in pa.stdout.splitlines() if ln.startswith("step "))
    check("only rank 0 logs", nlines == 8 and "distributed: 2 ranks" in pa.stdout and "communication:" in pa.stdout,
          f"{nlines} step lines")
    check("metrics record the communication time", all("comm_s" in r for r in steps(dp_a)))

# ZeRO-1
z = os.path.join(work, "zero")
pz = train(z, 2, ["--zero-stage", "1"])
check("ZeRO-1 (2 ranks) runs", pz.returncode == 0 and "ZeRO-1" in pz.stdout)
if pz.returncode == 0 and pa.returncode == 0:
    e, n = worst_loss(z, dp_a)
    check("ZeRO-1 = data parallel: per-step losses", e <= TOL and n == 8, f"worst rel err {e:.2e}")
    e, name = worst_weight(z, dp_a)
    check("ZeRO-1 = data parallel: final weights", e <= TOL, f"worst rel err {e:.2e} ({name})")

    # a ZeRO-1 checkpoint of 2 ranks resumes on 1 and on 4 ranks
    zs = os.path.join(work, "zero_stop")
    ps = train(zs, 2, ["--zero-stage", "1", "--stop-at-step", "4"])
    check("ZeRO-1 stops at step 4 with a checkpoint", ps.returncode == 0 and
          os.path.isdir(os.path.join(zs, "checkpoints", "step_00000004")))
    if ps.returncode == 0:
        opt = st.load(os.path.join(zs, "checkpoints", "step_00000004", "optimizer.safetensors"))
        nz = sum(int(np.count_nonzero(v)) for v in opt.values())
        tot = sum(int(v.size) for v in opt.values())
        check("the checkpoint holds the full optimizer state", nz > 0.9 * tot, f"{nz}/{tot} non-zero moments")
        for ranks in (1, 4):
            d = os.path.join(work, f"zero_resume_{ranks}")
            shutil.copytree(zs, d)
            pr = train(None, 0 if ranks == 1 else ranks, resume=d)
            ok = pr.returncode == 0
            if ok:
                e, n = worst_loss(d, z, first=5)
                ew, name = worst_weight(d, z)
                ok = e <= TOL and n == 4 and ew <= TOL
            check(f"resumed on {ranks} rank(s) = uninterrupted ZeRO-1 run", ok,
                  f"steps 5-8 worst loss rel err {e:.2e}, weights {ew:.2e}" if pr.returncode == 0 else pr.stderr[-300:])

# expert parallel: the 8 routed experts of each MoE layer (trunk and MTP module) over 2 ranks, then 2 groups of 2
# (data parallel x expert parallel, 4 ranks on 2 cores); against the single process. The gradient is compared
# through the per-step gradient norm and the final weights; the expert loads through the router biases, which move
# by ±γ per step from the loads and so must be exactly equal.
def worst_gnorm(a, b):
    ga = [r["grad_norm"] for r in steps(a)]
    gb = [r["grad_norm"] for r in steps(b)]
    return max(abs(x - y) / y for x, y in zip(ga, gb)) if len(ga) == len(gb) == 8 else float("inf")


for ranks, label in ((2, "expert parallel (2 ranks)"), (4, "expert x data parallel (2 x 2 ranks)")):
    d = os.path.join(work, f"ep_{ranks}")
    pe = train(d, ranks, ["--expert-parallel", "2"])
    check(f"{label} runs", pe.returncode == 0 and "expert parallel: groups of 2 ranks, 4 of the 8" in pe.stdout)
    if pe.returncode != 0 or p1.returncode != 0:
        continue
    e, n = worst_loss(d, one)
    check(f"{label} = 1 process: per-step losses", e <= TOL and n == 8, f"worst rel err {e:.2e}")
    e = worst_gnorm(d, one)
    check(f"{label} = 1 process: per-step gradient norms", e <= TOL, f"worst rel err {e:.2e}")
    e, name, nt = worst_grad(d, one)
    check(f"{label} = 1 process: first-step gradient, every tensor", e <= TOL,
          f"{nt} tensors, worst rel err {e:.2e} ({name})")
    e, name = worst_weight(d, one)
    check(f"{label} = 1 process: final weights", e <= TOL, f"worst rel err {e:.2e} ({name})")
    wa, wb = weights(d), weights(one)
    bias = [n for n in wb if n.endswith("e_score_correction_bias")]
    check(f"{label}: router biases (expert loads) equal", bias and all(np.array_equal(wa[n], wb[n]) for n in bias),
          f"{len(bias)} layers")
p = subprocess.run(MPIRUN + ["2", mtp] + BASE + ["--out-dir", os.path.join(work, "ep3"), "--expert-parallel", "3"],
                   capture_output=True, text=True, timeout=120)
check("expert_parallel not dividing the experts / ranks: an error", p.returncode != 0 and "expert_parallel" in p.stderr,
      p.stderr.strip().splitlines()[0] if p.stderr.strip() else "")

# a rank killed mid-run ends the job
long_out = os.path.join(work, "killed")
cmd = MPIRUN + ["2", mtp] + BASE + ["--out-dir", long_out, "--max-steps", "100000", "--log-every", "1"]
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
victim = None
t_end = time.time() + 60
lines = []
while time.time() < t_end and victim is None:
    ln = proc.stdout.readline()
    if not ln:
        break
    lines.append(ln)
    if ln.startswith("step 2/"):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if os.path.basename(exe) == "mtp" and b"OMPI_COMM_WORLD_RANK=1" in env and \
                    any(e.startswith(b"OMPI_MCA_orte_hnp_uri") or e.startswith(b"OMPI_COMM_WORLD_SIZE=2") for e in env):
                victim = int(pid)
                break
if victim is None:
    os.killpg(proc.pid, signal.SIGKILL)
    check("kill a rank: found rank 1", False, "".join(lines[-5:]))
else:
    t0 = time.time()
    os.kill(victim, signal.SIGKILL)
    try:
        rest, _ = proc.communicate(timeout=30)
        dt = time.time() - t0
        out = "".join(lines) + rest
        check("kill a rank: the job ends in < 30 s, non-zero, naming the rank", proc.returncode != 0 and
              "rank 1" in out, f"{dt:.1f} s, exit {proc.returncode}: "
              + " | ".join(ln.strip() for ln in out.splitlines() if "rank 1" in ln)[:300])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        check("kill a rank: the job ends in < 30 s", False, "still running after 30 s")

# batch_size below the rank count
p = subprocess.run(MPIRUN + ["2", mtp] + BASE + ["--out-dir", os.path.join(work, "tiny"), "--batch-size", "1"],
                   capture_output=True, text=True, timeout=120)
errs = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
check("batch_size < ranks: one error line per rank, non-zero", p.returncode != 0 and errs and
      all("batch_size" in e and "rank" in e for e in errs), repr(errs[:2]))

finish()
