#!/usr/bin/python3
"""Self-checks of the PyTorch reference (no C++ binary needed).

  /usr/bin/python3 tests/reference/selfcheck_ref.py [--configs DIR]

Per config (weights: random init, then norm weights 1+0.1*randn and router bias 0.05*randn):
  (a) finite differences of loss (float64): one random direction over all trainable parameters, and the
      largest-gradient element of every trainable tensor, against autograd;
  (b) causality: logits (main and every MTP depth) of the first T-1 tokens equal the first rows at T tokens;
  (c) an independent naive numpy implementation (per-token loops, ABSORBED MLA form, per-token router with
      sorting) gives the same logits;
  (d) a batch [B,T] gives the same logits/loss as the sequences one by one;
  (e) float32 vs float64 relative error of logits and gradients (the parity tolerance is 1e-4);
  (f) group-limited configs: group limiting changes at least one selection.
Plus: st.py round trips (F32/F16/BF16 with round-to-nearest-even, F64), rejected malformed files,
and hand-computed YaRN numbers (incl. the DeepSeek-V3 softmax scale 0.13523378).
Prints one line per check and `N passed, M failed`; exit 1 on failure.
"""
import argparse
import glob
import json
import math
import os
import struct
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_model as R  # noqa: E402
import st  # noqa: E402

RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append(bool(ok))
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / nb if nb > 0 else np.linalg.norm(a)


def perturbed_weights(cfg, seed):
    W = R.init_params(cfg, seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed + 1000)
    for n in W:
        if R.is_norm_name(n):
            W[n] = (1.0 + 0.1 * rng.standard_normal(W[n].shape)).astype(np.float32)
        elif n.endswith("e_score_correction_bias"):
            W[n] = (0.05 * rng.standard_normal(W[n].shape)).astype(np.float32)
    return W


# ------------------------------------------------------------------------------------------------
# naive numpy implementation (independent code path for the forward)
# ------------------------------------------------------------------------------------------------
def naive_forward(cfg, W, tokens):
    W = {k: np.asarray(v, np.float64) for k, v in W.items()}
    eps = float(cfg["rms_norm_eps"])
    d, H, L, D = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], R.num_mtp(cfg)
    nope, rope, vd, kvl = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    freqs, scale = R.rope_freqs_and_scale(cfg)
    af = R.rope_attention_factor(cfg)  # checked against hand-computed values in check_yarn

    def rms(x, w):
        return w * x / math.sqrt(float(np.mean(x * x)) + eps)

    def rot(x, pos):
        y = x.copy()
        for i in range(rope // 2):
            th = pos * freqs[i]
            c, s = af * math.cos(th), af * math.sin(th)
            y[2 * i] = x[2 * i] * c - x[2 * i + 1] * s
            y[2 * i + 1] = x[2 * i] * s + x[2 * i + 1] * c
        return y

    def silu(z):
        return z / (1.0 + np.exp(-z))

    def mlp(x, pre):
        return W[pre + "down_proj.weight"] @ (silu(W[pre + "gate_proj.weight"] @ x) * (W[pre + "up_proj.weight"] @ x))

    def attn(li, X):
        a = f"model.layers.{li}.self_attn."
        T = X.shape[0]
        wkv = W[a + "kv_b_proj.weight"].reshape(H, nope + vd, kvl)
        ckv, kpe, qs = [], [], []
        for t in range(T):
            x = X[t]
            if cfg.get("q_lora_rank"):
                q = W[a + "q_b_proj.weight"] @ rms(W[a + "q_a_proj.weight"] @ x, W[a + "q_a_layernorm.weight"])
            else:
                q = W[a + "q_proj.weight"] @ x
            kv = W[a + "kv_a_proj_with_mqa.weight"] @ x
            ckv.append(rms(kv[:kvl], W[a + "kv_a_layernorm.weight"]))
            kpe.append(rot(kv[kvl:], t))
            qs.append(q.reshape(H, nope + rope))
        out = np.zeros((T, d))
        for t in range(T):
            o = np.zeros(H * vd)
            for h in range(H):
                q_nope = qs[t][h, :nope]
                q_pe = rot(qs[t][h, nope:], t)
                q_abs = wkv[h, :nope, :].T @ q_nope  # absorbed: W_UK_h^T q_nope
                sc = np.array([scale * (q_abs @ ckv[j] + q_pe @ kpe[j]) for j in range(t + 1)])
                p = np.exp(sc - sc.max())
                p /= p.sum()
                ctx = sum(p[j] * ckv[j] for j in range(t + 1))
                o[h * vd:(h + 1) * vd] = wkv[h, nope:, :] @ ctx
            out[t] = W[a + "o_proj.weight"] @ o
        return out

    def moe(li, x):
        m = f"model.layers.{li}.mlp."
        E, K = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
        G, TG = cfg.get("n_group") or 1, cfg.get("topk_group") or 1
        z = W[m + "gate.weight"] @ x
        if cfg["scoring_func"] == "sigmoid":
            s = 1.0 / (1.0 + np.exp(-z))
        else:
            s = np.exp(z - z.max())
            s /= s.sum()
        bias = cfg["topk_method"] == "noaux_tc"
        b = s + W[m + "gate.e_score_correction_bias"] if bias else s.copy()
        allowed = list(range(E))
        if G > 1:
            per = E // G
            gsc = []
            for g in range(G):
                vals = sorted(b[g * per:(g + 1) * per], reverse=True)
                gsc.append((sum(vals[:2]) if bias else vals[0], g))
            keep = [g for _, g in sorted(gsc, reverse=True)[:TG]]
            allowed = [e for e in range(E) if e // per in keep]
        chosen = sorted(allowed, key=lambda e: -b[e])[:K]
        w = np.array([s[e] for e in chosen])
        if cfg.get("norm_topk_prob") and K > 1:
            w = w / w.sum()
        w = w * cfg["routed_scaling_factor"]
        y = sum(w[j] * mlp(x, m + f"experts.{e}.") for j, e in enumerate(chosen))
        if (cfg.get("n_shared_experts") or 0) > 0:
            y = y + mlp(x, m + "shared_experts.")
        return y

    def layer(li, X):
        p = f"model.layers.{li}."
        Xn = np.stack([rms(x, W[p + "input_layernorm.weight"]) for x in X])
        X = X + attn(li, Xn)
        Y = np.zeros_like(X)
        for t in range(X.shape[0]):
            hn = rms(X[t], W[p + "post_attention_layernorm.weight"])
            Y[t] = X[t] + (moe(li, hn) if R.layer_is_moe(cfg, li) else mlp(hn, p + "mlp."))
        return Y

    tokens = list(tokens)
    T = len(tokens)
    X = np.stack([W["model.embed_tokens.weight"][t] for t in tokens])
    for li in range(L):
        X = layer(li, X)
    h = np.stack([rms(x, W["model.norm.weight"]) for x in X])
    logits = h @ W["lm_head.weight"].T
    mtp = []
    h0 = h
    for k in range(1, D + 1):
        p = f"model.layers.{L + k - 1}."
        n = T - k
        if R.mtp_parallel(cfg):  # every head reads the trunk's h
            U = np.stack([rms(h0[i], W[p + "hnorm.weight"]) for i in range(n)])
        else:
            U = np.stack([W[p + "eh_proj.weight"] @ np.concatenate([
                rms(W["model.embed_tokens.weight"][tokens[i + k]], W[p + "enorm.weight"]),
                rms(h[i], W[p + "hnorm.weight"])]) for i in range(n)])
        Y = layer(L + k - 1, U)
        h = np.stack([rms(y, W[p + "shared_head.norm.weight"]) for y in Y])
        mtp.append(h @ W["lm_head.weight"].T)
    return logits, mtp


# ------------------------------------------------------------------------------------------------
def check_config(path, seed):
    cfg = json.load(open(path))
    name = os.path.splitext(os.path.basename(path))[0]
    D = R.num_mtp(cfg)
    V = cfg["vocab_size"]
    W = perturbed_weights(cfg, seed)
    rng = np.random.default_rng(seed)
    T = int(rng.integers(12, 21))
    tokens = rng.integers(0, V, size=T)
    lam = 0.3

    # (a) finite differences in float64
    model = R.Model(cfg, W, dtype=torch.float64, requires_grad=True)
    tok = torch.as_tensor(tokens)[None]
    Lv = model.loss(tok, lam)
    params = model.trainable()
    grads = torch.autograd.grad(Lv, list(params.values()), allow_unused=True)
    G = {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params.items(), grads)}
    base = {n: p.detach().clone() for n, p in params.items()}

    def loss_at(delta):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(base[n] + delta.get(n, 0.0))
            val = float(model.loss(tok, lam))
            for n, p in params.items():
                p.copy_(base[n])
        return val

    # directional derivative over all trainable parameters
    drng = torch.Generator().manual_seed(seed)
    dirs = {n: torch.randn(p.shape, generator=drng, dtype=torch.float64) for n, p in params.items()}
    norm = math.sqrt(sum(float((v * v).sum()) for v in dirs.values()))
    dirs = {n: v / norm for n, v in dirs.items()}
    hstep = 1e-5
    fd = (loss_at({n: hstep * v for n, v in dirs.items()}) - loss_at({n: -hstep * v for n, v in dirs.items()})) / (2 * hstep)
    ad = sum(float((G[n] * dirs[n]).sum()) for n in params)
    check(f"{name}: (a) FD directional", abs(fd - ad) <= 1e-7 + 1e-6 * abs(ad), f"fd={fd:.10e} ad={ad:.10e}")
    # largest-gradient element of every trainable tensor
    worst = 0.0
    worst_name = ""
    worst_abs = 0.0
    nz = 0
    for n in params:
        g = G[n]
        j = int(torch.argmax(g.abs()))
        if float(g.reshape(-1)[j].abs()) == 0.0:
            continue
        nz += 1
        e = torch.zeros(g.numel(), dtype=torch.float64)
        e[j] = 1.0
        e = e.view(g.shape)
        fdj = (loss_at({n: hstep * e}) - loss_at({n: -hstep * e})) / (2 * hstep)
        adj = float(g.reshape(-1)[j])
        # FD noise is ~1e-16*|L|/h ~ 5e-11 absolute: allow that on top of a 1e-5 relative error
        err = max(abs(fdj - adj) - 1e-10, 0.0) / abs(adj)
        worst_abs = max(worst_abs, abs(fdj - adj))
        if err > worst:
            worst, worst_name = err, n
    check(f"{name}: (a) FD per tensor ({nz}/{len(params)} nonzero)", worst <= 1e-5,
          f"max rel err beyond 1e-10 abs {worst:.2e} ({worst_name}); max abs err {worst_abs:.1e}")

    # (b) causality
    lg, mt = R.forward(cfg, W, tokens)
    lg1, mt1 = R.forward(cfg, W, tokens[:-1])
    errs = [float((lg[:-1] - lg1).abs().max())] + [float((a[:-1] - b).abs().max()) for a, b in zip(mt, mt1)]
    shapes_ok = lg.shape == (T, V) and all(m.shape == (T - k, V) for k, m in enumerate(mt, 1)) and len(mt) == D
    check(f"{name}: (b) causality T={T} D={D}", shapes_ok and max(errs) <= 1e-12, f"max abs diff {max(errs):.1e}")

    # (c) naive numpy implementation, absorbed attention
    nl, nm = naive_forward(cfg, W, tokens)
    e = max([rel(lg.numpy(), nl)] + [rel(a.numpy(), b) for a, b in zip(mt, nm)])
    check(f"{name}: (c) naive/absorbed implementation", e <= 1e-10 and len(nm) == D, f"max rel err {e:.1e}")

    # (d) batch vs one by one
    toks = rng.integers(0, V, size=(3, T))
    lb, mb = R.forward(cfg, W, toks)
    e = 0.0
    for bi in range(3):
        l1, m1 = R.forward(cfg, W, toks[bi])
        e = max([e, rel(lb[bi].numpy(), l1.numpy())] + [rel(a[bi].numpy(), b.numpy()) for a, b in zip(mb, m1)])
    Lb = float(R.loss(cfg, W, toks, lam))
    Ls = np.mean([float(R.loss(cfg, W, toks[bi], lam)) for bi in range(3)])
    check(f"{name}: (d) batch == sequences", e <= 1e-12 and abs(Lb - Ls) <= 1e-12, f"logits {e:.1e} loss {abs(Lb - Ls):.1e}")

    # (e) float32 vs float64 (what the parity tolerance 1e-4 has to absorb)
    l32, m32 = R.forward(cfg, W, tokens, dtype=torch.float32)
    e_log = max([rel(l32.numpy(), lg.numpy())] + [rel(a.numpy(), b.numpy()) for a, b in zip(m32, mt)])
    L64, g64 = R.loss_and_grads(cfg, W, tokens, lam)
    L32, g32 = R.loss_and_grads(cfg, W, tokens, lam, dtype=torch.float32)
    e_g = 0.0
    for n in g64:
        e_g = max(e_g, rel(g32[n], g64[n]) if np.linalg.norm(g64[n]) > 0 else np.linalg.norm(g32[n]))
    check(f"{name}: (e) float32 vs float64", e_log <= 1e-5 and e_g <= 1e-5,
          f"logits {e_log:.1e} grads {e_g:.1e} loss {abs(L32 - L64) / abs(L64):.1e}")

    # (f) group limiting really changes selections
    # (with K = 1 and no bias, the best expert always lies in the best group: nothing can change)
    if (cfg.get("n_group") or 1) > 1 and cfg.get("n_routed_experts") and \
            (R.has_router_bias(cfg) or cfg["num_experts_per_tok"] > 1):
        trace = []
        R.forward(cfg, W, tokens, trace=trace)
        diff = sum(t["differs"] for t in trace)
        check(f"{name}: (f) group limiting changes selections", diff > 0,
              f"{diff} token-layer selections differ from plain top-k; "
              f"min gap {min(t['min_gap'] for t in trace):.1e}, "
              f"group gap {min(t['min_group_gap'] for t in trace):.1e}")


def check_st():
    tmp = tempfile.mkdtemp()
    p = os.path.join(tmp, "a.safetensors")
    rng = np.random.default_rng(0)
    T = {"w": rng.standard_normal((3, 5)).astype(np.float32), "s": np.array(2.5, np.float32),
         "e": np.zeros((0, 4), np.float32)}
    st.save(p, T, metadata={"format": "pt"})
    back, meta = st.load(p, with_metadata=True)
    ok = all(np.array_equal(back[k], T[k]) and back[k].shape == T[k].shape for k in T) and meta == {"format": "pt"}
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
    check("st: F32 round trip", ok and n % 8 == 0)
    st.save(p, T, dtype="F16")
    ok = all(np.array_equal(st.load(p)[k], T[k].astype(np.float16).astype(np.float32)) for k in T)
    check("st: F16 round trip", ok)
    st.save(p, {"x": T["w"].astype(np.float64)}, dtype="F64")
    check("st: F64 round trip", np.array_equal(st.load(p)["x"], T["w"].astype(np.float64)))
    # BF16: exact cases of round-to-nearest-even
    vals = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20, -2.0, np.inf, -np.inf,
                     3.0e38, 1e-40], np.float32)
    want = np.array([1.0, 1.0, 1.0 + 4 * 2 ** -8, 1.0 + 2 ** -7, -2.0, np.inf, -np.inf, 2.9975e38, 0], np.float32)
    st.save(p, {"b": vals}, dtype="BF16")
    got = st.load(p)["b"]
    ok = np.array_equal(got[:7], want[:7]) and abs(got[7] - 3.0e38) / 3e38 < 4e-3 and abs(got[8] - 1e-40) < 1e-41
    nanbits = st.f32_to_bf16_bits(np.array([np.nan], np.float32))
    check("st: BF16 round-to-nearest-even", ok and np.isnan(st.bf16_bits_to_f32(nanbits))[0], f"got {got[:4]}")
    # malformed files are rejected
    st.save(p, {"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)})
    raw = open(p, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])

    def variant(h, data=None, hlen=None):
        hb = json.dumps(h).encode()
        return struct.pack("<Q", len(hb) if hlen is None else hlen) + hb + (raw[8 + n:] if data is None else data)

    bad = {
        "header too long": variant(hdr, hlen=10 ** 9),
        "bad json": struct.pack("<Q", 5) + b"{abc}" + raw[8 + n:],
        "unknown dtype": variant({**hdr, "a": {**hdr["a"], "dtype": "Q7"}}),
        "gap": variant({**hdr, "b": {**hdr["b"], "data_offsets": [12, 24]}}, data=raw[8 + n:] + b"\0" * 4),
        "overlap": variant({**hdr, "b": {**hdr["b"], "data_offsets": [4, 16]}}),
        "short end": variant(hdr, data=raw[8 + n:] + b"\0" * 4),
        "shape mismatch": variant({**hdr, "a": {**hdr["a"], "shape": [3]}}),
        "duplicate": struct.pack("<Q", 0),
    }
    hb = ('{"a":%s,"a":%s}' % (json.dumps(hdr["a"]), json.dumps(hdr["b"]))).encode()
    bad["duplicate"] = struct.pack("<Q", len(hb)) + hb + raw[8 + n:]
    rejected = []
    for k, blob in bad.items():
        q = os.path.join(tmp, "bad.safetensors")
        open(q, "wb").write(blob)
        try:
            st.load(q)
        except st.SafetensorsError:
            rejected.append(k)
    check("st: malformed files rejected", len(rejected) == len(bad), f"{len(rejected)}/{len(bad)}")


def check_yarn():
    cfg = {"qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "rope_theta": 10000.0,
           "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}
    f, scale = R.rope_freqs_and_scale(cfg)
    # cd(32) = 64 ln(4096/(64pi)) / (2 ln 1e4) = 10.48 -> low 10; cd(1) = 22.97 -> high 23
    i = np.arange(32)
    base = 10000.0 ** (-2 * i / 64)
    r = np.clip((i - 10) / 13, 0, 1)
    ok = np.allclose(f, base / 40 * r + base * (1 - r), rtol=1e-14) and abs(scale - 0.13523378) < 1e-8
    check("yarn: DeepSeek-V3 numbers (low 10, high 23, scale 0.13523378)", ok, f"scale {scale:.8f}")
    c = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "yarn_freq2_d3.json")))
    f, scale = R.rope_freqs_and_scale(c)
    ok = np.allclose(f, [1.0, 0.0625, 0.0025, 0.00025], rtol=1e-14) and \
        abs(scale - 24 ** -0.5 * (1 + 0.1 * math.log(4)) ** 2) < 1e-15
    check("yarn: yarn_freq2_d3 (low 0, high 2: r = 0, .5, 1, 1)", ok, f"f={f} scale={scale:.8f}")
    # the attention factor on cos/sin (transformers' _compute_yarn_parameters), by hand for factor 4:
    # no keys -> 0.1 ln 4 + 1 = 1.138629; mscale 1, mscale_all_dim 0.5 -> 1.138629 / 1.069315 = 1.064822;
    # mscale = mscale_all_dim -> 1; attention_factor given -> itself; factor <= 1 -> 1.
    def af(**k):
        return R.rope_attention_factor({"rope_scaling": dict({"type": "yarn", "factor": 4.0}, **k)})
    got = [af(), af(mscale=1.0, mscale_all_dim=0.5), af(mscale=0.7, mscale_all_dim=0.7), af(attention_factor=0.9),
           af(factor=1.0)]
    want = [1.1386294361, 1.1386294361 / 1.0693147181, 1.0, 0.9, 1.0]
    check("yarn: attention factor (no keys, mscale != mscale_all_dim, equal, attention_factor, factor 1)",
          np.allclose(got, want, rtol=1e-9), f"{np.round(got, 6).tolist()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))
    args = ap.parse_args()
    torch.manual_seed(0)
    check_st()
    check_yarn()
    for j, path in enumerate(sorted(glob.glob(os.path.join(args.configs, "*.json")))):
        check_config(path, seed=100 + j)
    npass = sum(RESULTS)
    print(f"{npass} passed, {len(RESULTS) - npass} failed")
    sys.exit(0 if npass == len(RESULTS) else 1)


if __name__ == "__main__":
    main()
