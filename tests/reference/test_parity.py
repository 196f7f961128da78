#!/usr/bin/python3
"""Parity of the `mtp` CLI against the independent float64 PyTorch reference (ref_model.py).

  /usr/bin/python3 tests/reference/test_parity.py --mtp build/mtp --work build/parity [--only NAME ...]

For every config in tests/reference/configs/:
  1. `MTP init --config CFG --seed S --out W/name`; check the tensor names/shapes, norm weights = 1, router
     bias = 0, and that W/name/config.json carries the §1 keys unchanged;
  2. replace the weights by realistic ones (see `realistic`: 1/sqrt(fan_in) matrices, perturbed norms and
     router biases, attention far from uniform -- checked) and write them back (F32);
  3. `MTP logits --model W/name --tokens ... --out W/name/logits.safetensors`: `logits` [T,V] and
     `mtp.{k}.logits` [T-k,V] for k=1..D against the reference;
  4. `MTP grad --model W/name --tokens ... --mtp-lambda 0.3 --out W/name/grad.safetensors`: `loss` and the
     gradient of every trainable parameter (exactly those names) against the reference;
  5. group-limited configs: the reference's group-limited selection differs from plain top-k for >= 1 token.
Tolerance: ||got-ref|| / ||ref|| <= 1e-4 per tensor (||got|| <= 1e-6 where ||ref|| = 0).
Ends with `N passed, M failed` (configs); exit status 1 if any config failed or the binary errored.
"""
import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_model as R  # noqa: E402
import st  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_KEYS = [  # §1
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "moe_intermediate_size", "first_k_dense_replace", "moe_layer_freq", "n_routed_experts", "n_shared_experts",
    "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "scoring_func",
    "topk_method", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "rope_theta", "rope_scaling", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "num_nextn_predict_layers", "mtp_style",
]


class BinaryError(Exception):
    pass


def rel_err(got, ref):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    nr = np.linalg.norm(ref)
    ng = np.linalg.norm(got - ref)
    if nr == 0.0:
        return np.linalg.norm(got), True  # absolute, compared against 1e-6
    return ng / nr, False


def same_value(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))
    return a == b


def group_of(cfg, name):
    """Short label of a tensor for the per-group report lines."""
    L = cfg["num_hidden_layers"]
    if not name.startswith("model.layers."):
        return {"model.embed_tokens.weight": "embed", "lm_head.weight": "lm_head",
                "model.norm.weight": "final_norm"}.get(name, name)
    i, _, tail = name[len("model.layers."):].partition(".")
    i = int(i)
    who = f"L{i}" if i < L else f"mtp{i - L + 1}"
    if tail.startswith("self_attn."):
        part = "attn_norm" if "layernorm" in tail else "attn"
    elif tail.startswith("mlp.experts."):
        part = "experts"
    elif tail.startswith("mlp.shared_experts."):
        part = "shared"
    elif tail.startswith("mlp.gate."):
        part = "router"
    elif tail.startswith("mlp."):
        part = "mlp"
    elif tail in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight"):
        part = "mtp_proj"
    else:
        part = "norms"
    return f"{who}.{part}"


class Runner:
    def __init__(self, mtp, timeout, verbose):
        self.mtp = shlex.split(mtp)
        self.timeout = timeout
        self.verbose = verbose

    def __call__(self, *args):
        cmd = self.mtp + [str(a) for a in args]
        if self.verbose:
            print("  $ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        t0 = time.time()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BinaryError(f"{' '.join(cmd)}: {e}") from e
        if p.returncode != 0:
            tail = (p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace"))[-2000:]
            raise BinaryError(f"{' '.join(cmd)}: exit status {p.returncode}\n{tail}")
        return time.time() - t0


class ConfigCheck:
    def __init__(self, name, tol):
        self.name = name
        self.tol = tol
        self.ok = True

    def line(self, what, ok, detail):
        self.ok &= bool(ok)
        print(f"[{self.name}] {what:<18s} {'ok  ' if ok else 'FAIL'} {detail}", flush=True)

    def compare(self, what, pairs):
        """pairs: list of (label, got, ref). One line with the max rel err over them."""
        worst, ok, bad = 0.0, True, []
        for label, got, ref in pairs:
            if tuple(np.shape(got)) != tuple(np.shape(ref)):
                ok = False
                bad.append(f"{label}: shape {tuple(np.shape(got))} != reference {tuple(np.shape(ref))}")
                continue
            e, absolute = rel_err(got, ref)
            good = bool(np.all(np.isfinite(got))) and (e <= 1e-6 if absolute else e <= self.tol)
            if not absolute:
                worst = max(worst, e)
            if not good:
                ok = False
                bad.append(f"{label}: " + (f"||got|| {e:.2e} with zero reference" if absolute else f"rel err {e:.2e}"))
        self.line(what, ok, f"n={len(pairs):<3d} max rel err {worst:.2e}" + ("" if ok else "  bad: " + "; ".join(bad[:4])))
        return ok


def realistic(cfg, W, seed):
    """Weights at the scale of a trained model, so that every term of the forward pass matters: matrices
    N(0, 1/fan_in) (the embedding N(0, 1)), query/key projections ×2 so that attention is far from uniform
    (mean row entropy well below uniform, checked), norm weights 1 + 0.2·N(0,1), router biases 0.1·N(0,1).
    The never-used per-MTP-layer copies of embed_tokens / lm_head follow their originals."""
    rng = np.random.default_rng(seed)
    out = dict(W)
    for n in sorted(W):
        if R.is_copy_name(cfg, n):
            continue
        shape = W[n].shape
        if R.is_norm_name(n):
            v = 1.0 + 0.2 * rng.standard_normal(shape)
        elif n.endswith("e_score_correction_bias"):
            v = 0.1 * rng.standard_normal(shape)
        elif n == "model.embed_tokens.weight":
            v = rng.standard_normal(shape)
        else:
            gain = 2.0 if n.endswith(("q_proj.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight",
                                      "kv_b_proj.weight")) else 1.0
            v = gain * rng.standard_normal(shape) / np.sqrt(shape[1])
        out[n] = v.astype(np.float32)
    L = int(cfg["num_hidden_layers"])
    for k in range(1, R.num_mtp(cfg) + 1):
        for tail, src in (("embed_tokens.weight", "model.embed_tokens.weight"),
                          ("shared_head.head.weight", "lm_head.weight")):
            if f"model.layers.{L + k - 1}.{tail}" in out:
                out[f"model.layers.{L + k - 1}.{tail}"] = out[src].copy()
    return out


# Attention must be far from uniform for the parity to see position-dependent terms (RoPE, YaRN): the mean
# row entropy relative to uniform (ref_model attn_trace) must stay below this. With initializer_range 0.02 it
# is 0.9999; the realistic weights give 0.3-0.6 (measured per config, printed).
ATTN_ENTROPY_MAX = 0.8


def run_config(run, path, work, tol, lam):
    cfg = json.load(open(path))
    name = os.path.splitext(os.path.basename(path))[0]
    j = zlib.crc32(name.encode()) % 997  # seeds depend on the config name only (stable under --only)
    C = ConfigCheck(name, tol)
    D = R.num_mtp(cfg)
    V = cfg["vocab_size"]
    out = os.path.join(work, name)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(work, exist_ok=True)

    # 1. init
    dt = run("init", "--config", path, "--seed", 1000 + j, "--out", out)
    mfile = os.path.join(out, "model.safetensors")
    W, meta = st.load(mfile, with_metadata=True)
    shapes = R.param_shapes(cfg, include_bias=True)
    copies = R.param_shapes(cfg, include_bias=True, include_copies=True)
    missing = [n for n in shapes if n not in W]
    extra = [n for n in W if n not in copies]
    bad_shape = [n for n in W if n in copies and tuple(W[n].shape) != tuple(copies[n])]
    norms_bad = [n for n in shapes if n in W and R.is_norm_name(n) and not np.all(W[n] == 1.0)]
    bias_bad = [n for n in shapes if n in W and n.endswith("e_score_correction_bias") and not np.all(W[n] == 0.0)]
    mats = [n for n in shapes if n in W and W[n].ndim == 2]
    stds = [float(np.std(W[n])) for n in mats]
    ncopy = sum(1 for n in W if n in copies and n not in shapes)
    problems = []
    for label, lst in (("missing", missing), ("unexpected", extra), ("bad shape", bad_shape),
                       ("norm != 1", norms_bad), ("bias != 0", bias_bad)):
        if lst:
            problems.append(f"{label}: {', '.join(lst[:4])}{' ...' if len(lst) > 4 else ''}")
    C.line("init", not problems,
           f"{len(shapes)} tensors (+{ncopy} copies), matrix std {min(stds):.4f}..{max(stds):.4f} ({dt:.2f}s)"
           + ("; " + "; ".join(problems) if problems else ""))
    if missing or bad_shape:
        return C.ok
    written = json.load(open(os.path.join(out, "config.json")))
    diff = [k for k in CONFIG_KEYS if k in cfg and not same_value(written.get(k, "<absent>"), cfg[k])]
    C.line("config.json", not diff, "§1 keys preserved" if not diff else
           "; ".join(f"{k}: {written.get(k, '<absent>')!r} != {cfg[k]!r}" for k in diff))

    # 2. realistic weights, written back
    W = realistic(cfg, W, 2000 + j)
    st.save(mfile, W, metadata=meta)

    rng = np.random.default_rng(3000 + j)
    T = int(rng.integers(12, 21))
    tokens = rng.integers(0, V, size=T)
    tok_s = ",".join(str(int(t)) for t in tokens)

    trace, attn = [], []
    ref_logits, ref_mtp = R.forward(cfg, W, tokens, trace=trace, attn_trace=attn)
    ent = float(np.mean(attn))
    C.line("attention", ent <= ATTN_ENTROPY_MAX,
           f"mean row entropy {ent:.3f} of uniform (<= {ATTN_ENTROPY_MAX}), per layer "
           + " ".join(f"{e:.2f}" for e in attn))
    ref_loss, ref_grads = R.loss_and_grads(cfg, W, tokens, lam)

    # 3. logits
    lfile = os.path.join(out, "logits.safetensors")
    run("logits", "--model", out, "--tokens", tok_s, "--out", lfile)
    got = st.load(lfile)
    want = ["logits"] + [f"mtp.{k}.logits" for k in range(1, D + 1)]
    C.line("logits names", set(got) == set(want),
           f"T={T} D={D}" + ("" if set(got) == set(want) else
                             f"; missing {sorted(set(want) - set(got))} unexpected {sorted(set(got) - set(want))}"))
    if "logits" in got:
        C.compare("logits", [("logits", got["logits"], ref_logits.numpy())])
    for k in range(1, D + 1):
        if f"mtp.{k}.logits" in got:
            C.compare(f"mtp.{k}.logits", [(f"mtp.{k}.logits", got[f"mtp.{k}.logits"], ref_mtp[k - 1].numpy())])

    # 4. gradients
    gfile = os.path.join(out, "grad.safetensors")
    run("grad", "--model", out, "--tokens", tok_s, "--mtp-lambda", lam, "--out", gfile)
    got = st.load(gfile)
    if "loss" in got and np.size(got["loss"]) == 1 and np.ndim(got["loss"]) <= 1:
        gl = float(np.asarray(got["loss"]).reshape(-1)[0])
        e = abs(gl - ref_loss) / abs(ref_loss)
        C.line("loss", e <= tol, f"got {gl:.8f} ref {ref_loss:.8f} rel err {e:.2e}")
    else:
        C.line("loss", False, "no scalar/[1] tensor `loss` in the gradient file")
    want = set(ref_grads)
    have = set(got) - {"loss"}
    C.line("grad names", have == want,
           f"{len(want)} trainable tensors" + ("" if have == want else
                                               f"; missing {sorted(want - have)[:6]} unexpected {sorted(have - want)[:6]}"))
    groups = {}
    for n in ref_grads:
        if n in got:
            groups.setdefault(group_of(cfg, n), []).append((n, got[n], ref_grads[n]))
    for g in groups:
        C.compare("grad " + g, groups[g])
    # How ill-conditioned this config is: the same reference run in float32 against float64. A binary whose error
    # sits near the tolerance while PyTorch's own float32 error is close to it is meeting the config's rounding
    # floor, not a bug (informational; the pass/fail bound stays `tol`).
    _, g32 = R.loss_and_grads(cfg, W, tokens, lam, dtype=torch.float32)
    # (tensors missing or of the wrong shape were reported above; they are left out here)
    worst = max(((rel_err(got[n], ref_grads[n])[0], n) for n in ref_grads if n in got and np.any(ref_grads[n])
                 and np.shape(got[n]) == np.shape(ref_grads[n])), default=(0.0, "-"))
    floor = max((rel_err(g32[n], ref_grads[n])[0] for n in ref_grads if np.any(ref_grads[n])), default=0.0)
    print(f"[{name}] note: worst gradient {worst[0]:.2e} ({worst[1]}); PyTorch float32's own worst {floor:.2e} "
          f"(x{worst[0] / max(floor, 1e-30):.1f})", flush=True)

    # 5. group-limited routing must matter in at least one selection
    if (cfg.get("n_group") or 1) > 1 and cfg.get("n_routed_experts") and \
            (R.has_router_bias(cfg) or cfg["num_experts_per_tok"] > 1):
        ndiff = sum(t["differs"] for t in trace)
        gap = min(t["min_gap"] for t in trace)
        ggap = min(t["min_group_gap"] for t in trace)
        C.line("group routing", ndiff > 0,
               f"{ndiff} token-layer selections differ from plain top-k" +
               ("" if ndiff else " -- WARNING: config does not exercise group limiting") +
               f"; min expert gap {gap:.1e}, group gap {ggap:.1e}")
    if trace:
        gap = min(min(t["min_gap"], t["min_group_gap"]) for t in trace)
        if gap < 1e-5:
            print(f"[{name}] note: router near-tie (gap {gap:.1e}); fp32 selection may legitimately differ")
    return C.ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtp", required=True, help="path of the mtp binary (or a command line)")
    ap.add_argument("--work", required=True, help="scratch directory")
    ap.add_argument("--configs", default=os.path.join(HERE, "configs"))
    ap.add_argument("--only", action="append", default=[], help="config name(s) to run")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--lam", type=float, default=0.3)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("-v", "--verbose", action="store_true", help="print the commands")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    paths = sorted(glob.glob(os.path.join(args.configs, "*.json")))
    if args.only:
        paths = [p for p in paths if os.path.splitext(os.path.basename(p))[0] in args.only]
    if not paths:
        print("no configs selected")
        print("0 passed, 1 failed")
        sys.exit(1)
    run = Runner(args.mtp, args.timeout, args.verbose)
    npass = nfail = 0
    binary_failed = False
    t0 = time.time()
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            ok = run_config(run, path, os.path.abspath(args.work), args.tol, args.lam)
        except BinaryError as e:
            print(f"[{name}] binary error: {e}", flush=True)
            ok = False
            binary_failed = True
        except (st.SafetensorsError, OSError, ValueError, KeyError) as e:
            print(f"[{name}] error reading the binary's output: {type(e).__name__}: {e}", flush=True)
            ok = False
        print(f"{'PASS' if ok else 'FAIL'} {name}", flush=True)
        npass += ok
        nfail += not ok
    print(f"({time.time() - t0:.1f}s)")
    print(f"{npass} passed, {nfail} failed")
    sys.exit(1 if nfail or binary_failed else 0)


if __name__ == "__main__":
    main()
