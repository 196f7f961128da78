#!/usr/bin/python3
"""Shows that the parity check can fail: single-term bugs injected into the reference must each be caught.

  /usr/bin/python3 tests/reference/inject_bugs.py --mtp build/mtp --work build/inject_bugs [--skip-driver]

Part 1 (model terms). For every config, the binary's logits and gradients are computed once on the realistic
weights of test_parity.py. Then each bug below is injected into the float64 reference (a patched function, a
changed config key or transformed weights: the engine is untouched) and the bugged reference is compared with
the binary exactly as test_parity.py compares: the bug is caught in a config when some logits/loss/gradient
tensor is further than the tolerance (1e-4 relative). Every bug must be caught in every config it applies to.
The table gives, per bug, the weakest catch (the smallest worst-tensor error over its configs, in units of the
tolerance) for logits and for gradients, and the same logits figure with the old weights (the config's
initializer_range, norms 1 + 0.1·N(0,1), router biases 0.05·N(0,1)), which is what the parity used to see.

Part 2 (the driver). test_parity.py itself is run against fake_mtp.py (a float32 stand-in for the binary) with
each FAKE_MTP_BUG: it must fail for every bug and pass without one.

Prints `N passed, M failed`; exit 1 on any failure.
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ref_model as R  # noqa: E402
import st  # noqa: E402
import selfcheck_ref as SC  # noqa: E402
import test_parity as TP  # noqa: E402

TOL = 1e-4  # test_parity.py's per-tensor relative tolerance
LAM = 0.3


def yarn(cfg):
    rs = cfg.get("rope_scaling") or {}
    return (rs.get("type") or rs.get("rope_type")) == "yarn" and float(rs.get("factor", 1.0)) > 1.0


def moe(cfg):
    return int(cfg.get("n_routed_experts") or 0) > 0


def names(W, suffix):
    return [n for n in W if n.endswith(suffix)]


# -- the bugs ------------------------------------------------------------------------------------------
# Each: (name, what it breaks, applies(cfg) -> bool, patch) where patch(cfg, W) is a context manager that
# yields the (cfg, W, lam) the bugged reference runs with.

def patch_function(obj, attr, fn):
    @contextlib.contextmanager
    def cm(cfg, W):
        old = getattr(obj, attr)
        setattr(obj, attr, fn(old))
        try:
            yield cfg, W, LAM
        finally:
            setattr(obj, attr, old)
    return cm


def change_cfg(**kv):
    @contextlib.contextmanager
    def cm(cfg, W):
        yield dict(cfg, **kv), W, LAM
    return cm


def change_weights(fn):
    @contextlib.contextmanager
    def cm(cfg, W):
        W2 = dict(W)
        fn(cfg, W2)
        yield cfg, W2, LAM
    return cm


def no_interpolation(old):
    def f(cfg):
        _, scale = old(cfg)
        plain = dict(cfg, rope_scaling=None)
        freqs, _ = old(plain)
        return freqs, scale  # the softmax scale keeps its mscale: only the frequency blend is removed
    return f


def no_softmax_mscale(old):
    def f(cfg):
        freqs, _ = old(cfg)
        return freqs, (int(cfg["qk_nope_head_dim"]) + int(cfg["qk_rope_head_dim"])) ** -0.5
    return f


def half_split_rope(old):
    def f(x, cos, sin):
        h = x.shape[-1] // 2  # NeoX pairing (x[i], x[i + rope/2]) instead of interleaved pairs
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return f


def causal_off_by_one(old):
    def f(self, i, x, cos, sin):
        T = x.shape[1]
        self._masks[T] = torch.ones(T, T, dtype=torch.bool).triu(2)  # each position also sees the next one
        try:
            return old(self, i, x, cos, sin)
        finally:
            self._masks.pop(T, None)
    return f


def ones(suffix):
    def fn(cfg, W):
        for n in names(W, suffix):
            W[n] = np.ones_like(W[n])
    return fn


def zero_bias(cfg, W):
    for n in names(W, "e_score_correction_bias"):
        W[n] = np.zeros_like(W[n])


def swap_gate_up(cfg, W):
    for n in names(W, "gate_proj.weight"):
        u = n[: -len("gate_proj.weight")] + "up_proj.weight"
        W[n], W[u] = W[u], W[n]


def swap_concat(cfg, W):
    d = int(cfg["hidden_size"])
    for n in names(W, "eh_proj.weight"):
        W[n] = np.concatenate([W[n][:, d:], W[n][:, :d]], axis=1)


@contextlib.contextmanager
def lam_not_divided(cfg, W):
    yield cfg, W, LAM * R.num_mtp(cfg)  # (λ/D)·Σ becomes λ·Σ


BUGS = [
    ("yarn_no_interpolation", "YaRN frequency blend removed", yarn,
     patch_function(R, "rope_freqs_and_scale", no_interpolation)),
    ("yarn_no_attention_factor", "cos/sin not multiplied by the attention factor",
     lambda c: yarn(c) and abs(R.rope_attention_factor(c) - 1.0) > 1e-9,
     patch_function(R, "rope_attention_factor", lambda old: (lambda cfg: 1.0))),
    ("yarn_no_softmax_mscale", "softmax scale without mscale(f, mscale_all_dim)^2",
     lambda c: yarn(c) and float(c["rope_scaling"].get("mscale_all_dim") or 0) > 0,
     patch_function(R, "rope_freqs_and_scale", no_softmax_mscale)),
    ("rope_half_split", "RoPE on (x[i], x[i+r/2]) pairs instead of interleaved", lambda c: True,
     patch_function(R, "apply_rope", half_split_rope)),
    ("causal_off_by_one", "attention sees one future token", lambda c: True,
     patch_function(R.Model, "attention", causal_off_by_one)),
    ("kv_norm_weight_ignored", "kv_a_layernorm weight ignored", lambda c: True,
     change_weights(ones("kv_a_layernorm.weight"))),
    ("q_norm_weight_ignored", "q_a_layernorm weight ignored", lambda c: bool(c.get("q_lora_rank")),
     change_weights(ones("q_a_layernorm.weight"))),
    ("final_norm_weight_ignored", "model.norm weight ignored", lambda c: True,
     change_weights(ones("model.norm.weight"))),
    ("swiglu_gate_up_swapped", "SiLU on the up projection instead of the gate", lambda c: True,
     change_weights(swap_gate_up)),
    ("router_bias_ignored", "e_score_correction_bias not used for selection",
     lambda c: moe(c) and R.has_router_bias(c), change_weights(zero_bias)),
    ("no_routed_scaling", "routed_scaling_factor ignored",
     lambda c: moe(c) and float(c.get("routed_scaling_factor", 1.0)) != 1.0, change_cfg(routed_scaling_factor=1.0)),
    ("no_topk_normalisation", "norm_topk_prob ignored",
     lambda c: moe(c) and bool(c.get("norm_topk_prob")) and int(c["num_experts_per_tok"]) > 1,
     change_cfg(norm_topk_prob=False)),
    ("no_group_limit", "group-limited routing replaced by plain top-k",
     # with top-1 and the max-score group rule the best expert is always in a kept group: the bug cannot show
     lambda c: moe(c) and int(c.get("n_group") or 1) > 1 and int(c.get("topk_group") or 1) < int(c["n_group"])
     and (R.has_router_bias(c) or int(c["num_experts_per_tok"]) > 1),
     change_cfg(n_group=1, topk_group=1)),
    ("no_shared_experts", "shared experts dropped",
     lambda c: moe(c) and int(c.get("n_shared_experts") or 0) > 0, change_cfg(n_shared_experts=0)),
    ("mtp_concat_swapped", "MTP concat [h | emb] instead of [emb | h]",
     lambda c: R.num_mtp(c) > 0 and not R.mtp_parallel(c), change_weights(swap_concat)),
    ("parallel_heads_chained", "parallel head k fed head k-1's output instead of the trunk's h",
     lambda c: R.num_mtp(c) > 1 and R.mtp_parallel(c),
     patch_function(R, "parallel_head_input", lambda old: (lambda h, hprev: hprev))),
    ("mtp_hnorm_weight_ignored", "MTP hnorm weight ignored", lambda c: R.num_mtp(c) > 0,
     change_weights(ones("hnorm.weight"))),
    ("mtp_lambda_not_divided", "MTP loss weight λ instead of λ/D", lambda c: R.num_mtp(c) > 1, lam_not_divided),
]


def worst(pairs):
    e = 0.0
    for got, ref in pairs:
        r, absolute = TP.rel_err(got, ref)
        e = max(e, r / (1e-6 if absolute else TOL))
    return e


def reference(cfg, W, tokens, lam):
    logits, mtp = R.forward(cfg, W, tokens)
    loss, grads = R.loss_and_grads(cfg, W, tokens, lam)
    return [logits.numpy()] + [m.numpy() for m in mtp], loss, grads


def model_terms(mtp, work):
    run = TP.Runner(mtp, 300.0, False)
    cases = []
    for path in sorted(os.path.join(TP.HERE, "configs", f) for f in os.listdir(os.path.join(TP.HERE, "configs"))):
        if not path.endswith(".json"):
            continue
        cfg = json.load(open(path))
        name = os.path.splitext(os.path.basename(path))[0]
        j = zlib.crc32(name.encode()) % 997
        out = os.path.join(work, name)
        shutil.rmtree(out, ignore_errors=True)
        run("init", "--config", path, "--seed", 1000 + j, "--out", out)
        mfile = os.path.join(out, "model.safetensors")
        W, meta = st.load(mfile, with_metadata=True)
        W = TP.realistic(cfg, W, 2000 + j)
        st.save(mfile, W, metadata=meta)
        rng = np.random.default_rng(3000 + j)
        tokens = rng.integers(0, cfg["vocab_size"], size=int(rng.integers(12, 21)))
        tok_s = ",".join(str(int(t)) for t in tokens)
        run("logits", "--model", out, "--tokens", tok_s, "--out", os.path.join(out, "logits.safetensors"))
        run("grad", "--model", out, "--tokens", tok_s, "--mtp-lambda", LAM, "--out", os.path.join(out, "grad.safetensors"))
        gl = st.load(os.path.join(out, "logits.safetensors"))
        gg = st.load(os.path.join(out, "grad.safetensors"))
        D = R.num_mtp(cfg)
        got_logits = [gl["logits"]] + [gl[f"mtp.{k}.logits"] for k in range(1, D + 1)]
        got_loss = float(np.asarray(gg.pop("loss")).reshape(-1)[0])
        # the unbugged reference must agree (otherwise the table below means nothing)
        rl, rloss, rg = reference(cfg, W, tokens, LAM)
        base = max(worst(zip(got_logits, rl)), worst((gg[n], rg[n]) for n in rg), abs(got_loss - rloss) / abs(rloss) / TOL)
        Wold = SC.perturbed_weights(cfg, 4000 + j)   # what the parity used before: init + perturbed norms/biases
        cases.append((name, cfg, W, tokens, got_logits, got_loss, gg, Wold, base))
    results = []
    for name, cfg, W, tokens, got_logits, got_loss, gg, Wold, base in cases:
        print(f"[{name}] unbugged reference vs binary: worst {base:.2f} x tolerance", flush=True)
        results.append(base <= 1.0)
    print(f"{'bug':<26s} {'configs':>7s} {'logits':>9s} {'grads':>9s} {'old logits':>10s}   (weakest catch, x tolerance)")
    for bname, what, applies, patch in BUGS:
        seen = [c for c in cases if applies(c[1])]
        caught_all, lmin, gmin, omin = True, float("inf"), float("inf"), float("inf")
        missed = []
        for name, cfg, W, tokens, got_logits, got_loss, gg, Wold, _ in seen:
            with patch(cfg, W) as (bc, bw, blam):
                bl, bloss, bg = reference(bc, bw, tokens, blam)
            with patch(cfg, Wold) as (oc, ow, _):
                ol, om = R.forward(oc, ow, tokens)
            cl, cm = R.forward(cfg, Wold, tokens)
            el = worst(zip(got_logits, bl))
            eg = max(worst((gg[n], bg[n]) for n in bg), abs(got_loss - bloss) / abs(bloss) / TOL)
            eo = worst(zip([t.numpy() for t in [ol] + om], [t.numpy() for t in [cl] + cm]))
            lmin, gmin, omin = min(lmin, el), min(gmin, eg), min(omin, eo)
            if max(el, eg) <= 1.0:
                caught_all = False
                missed.append(name)
        ok = bool(seen) and caught_all
        results.append(ok)
        print(f"{bname:<26s} {len(seen):>7d} {lmin:>9.3g} {gmin:>9.3g} {omin:>10.3g}   "
              f"{'caught' if ok else 'FAIL ' + ('applies to no config' if not seen else 'missed in ' + ', '.join(missed))}"
              f"  -- {what}", flush=True)
    return results


def driver(work):
    fake = f"/usr/bin/python3 {os.path.join(HERE, 'fake_mtp.py')}"
    results = []
    for bug in ["", "concat", "nogroup", "extra", "missing", "noise", "crash"]:
        env = dict(os.environ, FAKE_MTP_BUG=bug)
        p = subprocess.run([sys.executable, os.path.join(HERE, "test_parity.py"), "--mtp", fake, "--work",
                            os.path.join(work, "driver"), "--only", "moe_sigmoid_group"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        want = 0 if not bug else 1
        ok = p.returncode == want
        results.append(ok)
        fails = [ln for ln in p.stdout.decode(errors="replace").splitlines() if "FAIL" in ln or "error" in ln]
        print(f"driver FAKE_MTP_BUG={bug or '(none)':<8s} exit {p.returncode} (want {want}) {'ok' if ok else 'FAIL'}"
              + (f"  first failure: {fails[0][:110]}" if fails else ""), flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtp", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--skip-driver", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    try:
        results = model_terms(args.mtp, work)
    except TP.BinaryError as e:
        print(f"binary error: {e}")
        results = [False]
    if not args.skip_driver:
        results += driver(work)
    npass = sum(results)
    print(f"{npass} passed, {len(results) - npass} failed")
    sys.exit(0 if npass == len(results) else 1)


if __name__ == "__main__":
    main()
