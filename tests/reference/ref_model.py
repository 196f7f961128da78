"""Independent PyTorch reference of the mtp.cpp model (DeepSeek-V3 trunk + MTP modules).

Written directly from docs spec /work/shared/spec/architecture.md §1-§5. Float64 by default (the
parity oracle); the same code in float32 serves as the PyTorch training benchmark.

Public API
  forward(cfg, W, tokens)            -> (logits [T,V], [mtp logits of depth k: [T-k,V]] for k=1..D)
  loss(cfg, W, tokens, lam)          -> scalar torch tensor
  loss_and_grads(cfg, W, tokens, lam)-> (float loss, {trainable name: np.float64 gradient})
  param_shapes / trainable_names / init_params / layer_is_moe / rope_freqs_and_scale
``cfg`` is a Hugging Face config.json dict; ``W`` maps HF tensor names to arrays/tensors
(torch-style [out, in] shapes). ``tokens`` is [T] or [B,T] (then the outputs get a batch dim).
"""
import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

NORM_SUFFIXES = ("input_layernorm.weight", "post_attention_layernorm.weight", "q_a_layernorm.weight",
                 "kv_a_layernorm.weight", "enorm.weight", "hnorm.weight", "shared_head.norm.weight")


# --------------------------------------------------------------------------------------------
# configuration helpers
# --------------------------------------------------------------------------------------------
def num_mtp(cfg):
    return int(cfg.get("num_nextn_predict_layers") or 0)


def mtp_parallel(cfg):
    """True for "mtp_style": "parallel" (§8: independent heads on the trunk's h), False for the §5 chain."""
    return cfg.get("mtp_style", "sequential") == "parallel"


def parallel_head_input(h, hprev):
    """What parallel head k reads: the trunk's h (hprev, the previous head's output, is NOT used)."""
    return h


def layer_is_moe(cfg, i):
    E = int(cfg.get("n_routed_experts") or 0)
    freq = int(cfg.get("moe_layer_freq") or 1)
    return E > 0 and i >= int(cfg.get("first_k_dense_replace") or 0) and i % freq == 0


def has_router_bias(cfg):
    return cfg.get("topk_method") == "noaux_tc"


def is_norm_name(name):
    return name == "model.norm.weight" or name.endswith(NORM_SUFFIXES)


def is_copy_name(cfg, name):
    """The optional per-MTP-layer copies of embed_tokens / lm_head (never used, never trained)."""
    L = int(cfg["num_hidden_layers"])
    if not name.startswith("model.layers."):
        return False
    rest = name[len("model.layers."):]
    idx, _, tail = rest.partition(".")
    return int(idx) >= L and tail in ("embed_tokens.weight", "shared_head.head.weight")


def param_shapes(cfg, include_bias=True, include_copies=False):
    """OrderedDict HF name -> shape of every tensor of the model."""
    d = int(cfg["hidden_size"])
    V = int(cfg["vocab_size"])
    H = int(cfg["num_attention_heads"])
    L = int(cfg["num_hidden_layers"])
    D = num_mtp(cfg)
    nope, rope, vd = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"]), int(cfg["v_head_dim"])
    kvl = int(cfg["kv_lora_rank"])
    ql = cfg.get("q_lora_rank")
    E = int(cfg.get("n_routed_experts") or 0)
    mi = int(cfg.get("moe_intermediate_size") or 0)
    ns = int(cfg.get("n_shared_experts") or 0)
    inter = int(cfg["intermediate_size"])
    S = OrderedDict()
    S["model.embed_tokens.weight"] = (V, d)
    for i in range(L + D):
        p = f"model.layers.{i}."
        if i >= L and not mtp_parallel(cfg):
            S[p + "enorm.weight"] = (d,)
        if i >= L:
            S[p + "hnorm.weight"] = (d,)
        if i >= L and not mtp_parallel(cfg):
            S[p + "eh_proj.weight"] = (d, 2 * d)
        S[p + "input_layernorm.weight"] = (d,)
        a = p + "self_attn."
        if ql:
            S[a + "q_a_proj.weight"] = (int(ql), d)
            S[a + "q_a_layernorm.weight"] = (int(ql),)
            S[a + "q_b_proj.weight"] = (H * (nope + rope), int(ql))
        else:
            S[a + "q_proj.weight"] = (H * (nope + rope), d)
        S[a + "kv_a_proj_with_mqa.weight"] = (kvl + rope, d)
        S[a + "kv_a_layernorm.weight"] = (kvl,)
        S[a + "kv_b_proj.weight"] = (H * (nope + vd), kvl)
        S[a + "o_proj.weight"] = (d, H * vd)
        S[p + "post_attention_layernorm.weight"] = (d,)
        m = p + "mlp."
        if layer_is_moe(cfg, i):
            S[m + "gate.weight"] = (E, d)
            if include_bias and has_router_bias(cfg):
                S[m + "gate.e_score_correction_bias"] = (E,)
            for e in range(E):
                S[m + f"experts.{e}.gate_proj.weight"] = (mi, d)
                S[m + f"experts.{e}.up_proj.weight"] = (mi, d)
                S[m + f"experts.{e}.down_proj.weight"] = (d, mi)
            if ns > 0:
                S[m + "shared_experts.gate_proj.weight"] = (ns * mi, d)
                S[m + "shared_experts.up_proj.weight"] = (ns * mi, d)
                S[m + "shared_experts.down_proj.weight"] = (d, ns * mi)
        else:
            S[m + "gate_proj.weight"] = (inter, d)
            S[m + "up_proj.weight"] = (inter, d)
            S[m + "down_proj.weight"] = (d, inter)
        if i >= L:
            S[p + "shared_head.norm.weight"] = (d,)
            if include_copies:
                S[p + "embed_tokens.weight"] = (V, d)
                S[p + "shared_head.head.weight"] = (V, d)
    S["model.norm.weight"] = (d,)
    S["lm_head.weight"] = (V, d)
    return S


def trainable_names(cfg):
    """Names that receive gradients: everything except router biases and the optional copies."""
    return list(param_shapes(cfg, include_bias=False, include_copies=False).keys())


def init_params(cfg, seed=0, std=None, dtype=np.float32, include_copies=False):
    """Random init: N(0, initializer_range) for matrices, 1 for norm weights, 0 for router bias."""
    std = float(cfg.get("initializer_range", 0.02)) if std is None else std
    rng = np.random.default_rng(seed)
    W = {}
    for name, shape in param_shapes(cfg, include_bias=True).items():
        if is_norm_name(name):
            W[name] = np.ones(shape, dtype=dtype)
        elif name.endswith("e_score_correction_bias"):
            W[name] = np.zeros(shape, dtype=dtype)
        else:
            W[name] = (rng.standard_normal(shape) * std).astype(dtype)
    if include_copies:
        L = int(cfg["num_hidden_layers"])
        for k in range(1, num_mtp(cfg) + 1):
            W[f"model.layers.{L + k - 1}.embed_tokens.weight"] = W["model.embed_tokens.weight"].copy()
            W[f"model.layers.{L + k - 1}.shared_head.head.weight"] = W["lm_head.weight"].copy()
    return W


def rope_freqs_and_scale(cfg):
    """(f [rope/2] float64 numpy, softmax scale) per §3.3 and §3.6."""
    rope = int(cfg["qk_rope_head_dim"])
    nope = int(cfg["qk_nope_head_dim"])
    theta = float(cfg.get("rope_theta", 10000.0))
    i = np.arange(rope // 2, dtype=np.float64)
    f = theta ** (-2.0 * i / rope)
    rs = cfg.get("rope_scaling")
    m = 1.0
    if rs and (rs.get("type") or rs.get("rope_type")) == "yarn":
        factor = float(rs.get("factor", 1.0))
        orig = float(rs["original_max_position_embeddings"])
        beta_fast = float(rs.get("beta_fast", 32))
        beta_slow = float(rs.get("beta_slow", 1))

        def cd(b):
            return rope * math.log(orig / (b * 2.0 * math.pi)) / (2.0 * math.log(theta))

        low = max(math.floor(cd(beta_fast)), 0)
        high = min(math.ceil(cd(beta_slow)), rope - 1)
        if low == high:
            high += 0.001
        r = np.clip((i - low) / (high - low), 0.0, 1.0)
        f = f / factor * r + f * (1.0 - r)
        if factor > 1.0:
            m = 0.1 * float(rs.get("mscale_all_dim", 0.0)) * math.log(factor) + 1.0
    scale = (nope + rope) ** -0.5 * m * m
    return f, scale


def rope_attention_factor(cfg):
    """YaRN's factor on cos and sin, as transformers' _compute_yarn_parameters computes it (§3.3)."""
    rs = cfg.get("rope_scaling")
    if not rs or (rs.get("type") or rs.get("rope_type")) != "yarn":
        return 1.0
    factor = float(rs.get("factor", 1.0))

    def get_mscale(scale, ms=1.0):
        return 1.0 if scale <= 1 else 0.1 * ms * math.log(scale) + 1.0

    if rs.get("attention_factor") is not None:
        return float(rs["attention_factor"])
    if rs.get("mscale") and rs.get("mscale_all_dim"):
        return get_mscale(factor, float(rs["mscale"])) / get_mscale(factor, float(rs["mscale_all_dim"]))
    return get_mscale(factor)


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
def rmsnorm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def linear(x, w):
    return x @ w.t()


def swiglu(x, g, u, dn):
    return linear(F.silu(linear(x, g)) * linear(x, u), dn)


def apply_rope(x, cos, sin):
    """Interleaved pairs (x[2i], x[2i+1]); cos/sin broadcast against x[..., rope/2]."""
    x1 = x[..., 0::2]
    x2 = x[..., 1::2]
    y1 = x1 * cos - x2 * sin
    y2 = x1 * sin + x2 * cos
    return torch.stack([y1, y2], dim=-1).flatten(-2)


class Model:
    """Holds the config, a {name: torch tensor} dict and the rope tables; see module docstring."""

    def __init__(self, cfg, W, dtype=torch.float64, requires_grad=False, max_len=None):
        self.cfg = cfg
        self.dtype = dtype
        self.P = {}
        train = set(trainable_names(cfg))
        for name, shape in param_shapes(cfg, include_bias=True).items():
            if name not in W:
                raise KeyError(f"missing tensor {name}")
            t = W[name]
            t = t.detach().clone() if isinstance(t, torch.Tensor) else torch.from_numpy(np.array(t))
            t = t.to(dtype)
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"{name}: shape {tuple(t.shape)} != expected {tuple(shape)}")
            if requires_grad and name in train:
                t.requires_grad_(True)
            self.P[name] = t
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        f, self.scale = rope_freqs_and_scale(cfg)
        self.freqs = torch.from_numpy(f)  # float64
        self.trace = None  # list to receive router diagnostics, or None
        self.attn_trace = None  # list to receive attention sharpness per layer, or None
        self.route_terms = None  # list to receive (layer, scores s [N,E] with their graph, idx [N,K]), or None
        self._masks = {}

    # -- parameters ------------------------------------------------------------------------
    def trainable(self):
        return OrderedDict((n, self.P[n]) for n in trainable_names(self.cfg))

    def _rope_tables(self, T):
        pos = torch.arange(T, dtype=torch.float64)
        ang = pos[:, None] * self.freqs[None, :]
        a = rope_attention_factor(self.cfg)
        return (torch.cos(ang) * a).to(self.dtype), (torch.sin(ang) * a).to(self.dtype)

    # -- attention (§3) ----------------------------------------------------------------------
    def attention(self, i, x, cos, sin):
        cfg, P = self.cfg, self.P
        a = f"model.layers.{i}.self_attn."
        B, T, _ = x.shape
        H = int(cfg["num_attention_heads"])
        nope, rope, vd = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"]), int(cfg["v_head_dim"])
        kvl = int(cfg["kv_lora_rank"])
        if cfg.get("q_lora_rank"):
            q = linear(rmsnorm(linear(x, P[a + "q_a_proj.weight"]), P[a + "q_a_layernorm.weight"], self.eps),
                       P[a + "q_b_proj.weight"])
        else:
            q = linear(x, P[a + "q_proj.weight"])
        q = q.view(B, T, H, nope + rope)
        q_nope, q_pe = q[..., :nope], q[..., nope:]
        kv = linear(x, P[a + "kv_a_proj_with_mqa.weight"])
        c, k_pe = kv[..., :kvl], kv[..., kvl:]
        c = rmsnorm(c, P[a + "kv_a_layernorm.weight"], self.eps)
        wkv = P[a + "kv_b_proj.weight"].view(H, nope + vd, kvl)
        k_nope = torch.einsum("btc,hnc->bthn", c, wkv[:, :nope, :])
        v = torch.einsum("btc,hvc->bthv", c, wkv[:, nope:, :])
        q_pe = apply_rope(q_pe, cos[:, None, :], sin[:, None, :])   # [B,T,H,rope]
        k_pe = apply_rope(k_pe, cos, sin)                           # [B,T,rope], one shared head
        s = torch.einsum("bihn,bjhn->bhij", q_nope, k_nope) + torch.einsum("bihr,bjr->bhij", q_pe, k_pe)
        s = s * self.scale
        causal = self._masks.get(T)
        if causal is None:
            causal = self._masks[T] = torch.ones(T, T, dtype=torch.bool).triu(1)
        s = s.masked_fill(causal, float("-inf"))
        p = torch.softmax(s, dim=-1)
        if self.attn_trace is not None and T > 1:
            # entropy of each row over its i+1 keys relative to uniform (1 = uniform, 0 = one key)
            with torch.no_grad():
                ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)[..., 1:]          # [B,H,T-1]
                self.attn_trace.append(float((ent / torch.log(torch.arange(2, T + 1, dtype=p.dtype))).mean()))
        o = torch.einsum("bhij,bjhv->bihv", p, v).reshape(B, T, H * vd)
        return linear(o, P[a + "o_proj.weight"])

    # -- FFN (§2, §4) ------------------------------------------------------------------------
    def dense_mlp(self, i, x):
        m = f"model.layers.{i}.mlp."
        P = self.P
        return swiglu(x, P[m + "gate_proj.weight"], P[m + "up_proj.weight"], P[m + "down_proj.weight"])

    def route(self, i, xf):
        """Router of layer i on tokens xf [N,d] -> (s [N,E], idx [N,K] long, w [N,K])."""
        cfg, P = self.cfg, self.P
        m = f"model.layers.{i}.mlp."
        E = int(cfg["n_routed_experts"])
        K = int(cfg["num_experts_per_tok"])
        G = int(cfg.get("n_group") or 1)
        TG = int(cfg.get("topk_group") or G)
        logits = linear(xf, P[m + "gate.weight"])
        if cfg.get("scoring_func", "softmax") == "sigmoid":
            s = torch.sigmoid(logits)
        else:
            s = torch.softmax(logits, dim=-1)
        bias = has_router_bias(cfg)
        with torch.no_grad():
            b = s.detach().clone()
            if bias:
                b = b + P[m + "gate.e_score_correction_bias"].detach().to(b.dtype)
            plain = torch.topk(b, K, dim=-1).indices
            if G > 1:
                bg = b.view(-1, G, E // G)
                if bias:
                    gs = torch.topk(bg, min(2, E // G), dim=-1).values.sum(-1)
                else:
                    gs = bg.max(dim=-1).values
                gsel = torch.topk(gs, TG, dim=-1).indices
                keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gsel, True)
                b = b.masked_fill(~keep.repeat_interleave(E // G, dim=1), float("-inf"))
            top = torch.topk(b, min(K + 1, E), dim=-1)
            idx = top.indices[:, :K]
            if self.trace is not None:
                vals = top.values
                gap = (vals[:, K - 1] - vals[:, K]) if K < E else torch.full_like(vals[:, 0], float("inf"))
                gap = torch.where(torch.isfinite(gap), gap, torch.full_like(gap, float("inf")))
                ggap = torch.full_like(gap, float("inf"))
                if G > 1 and TG < G:
                    gv = torch.sort(gs, dim=-1, descending=True).values
                    ggap = gv[:, TG - 1] - gv[:, TG]
                self.trace.append({
                    "layer": i,
                    "idx": idx.clone(),
                    "plain": plain.clone(),
                    "differs": int((torch.sort(idx, -1).values != torch.sort(plain, -1).values).any(-1).sum()),
                    "min_gap": float(gap.min()) if gap.numel() else float("inf"),
                    "min_group_gap": float(ggap.min()) if ggap.numel() else float("inf"),
                })
        w = s.gather(1, idx)
        if cfg.get("norm_topk_prob") and K > 1:
            w = w / w.sum(dim=-1, keepdim=True)
        w = w * float(cfg.get("routed_scaling_factor", 1.0))
        return s, idx, w

    def moe(self, i, x):
        cfg, P = self.cfg, self.P
        m = f"model.layers.{i}.mlp."
        shp = x.shape
        xf = x.reshape(-1, shp[-1])
        s, idx, w = self.route(i, xf)
        if self.route_terms is not None:
            self.route_terms.append((i, s, idx))
        y = torch.zeros_like(xf)
        for e in range(int(cfg["n_routed_experts"])):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            ex = m + f"experts.{e}."
            ye = swiglu(xf.index_select(0, tok), P[ex + "gate_proj.weight"], P[ex + "up_proj.weight"],
                        P[ex + "down_proj.weight"])
            y = y.index_add(0, tok, ye * w[tok, slot].unsqueeze(-1))
        if int(cfg.get("n_shared_experts") or 0) > 0:
            sh = m + "shared_experts."
            y = y + swiglu(xf, P[sh + "gate_proj.weight"], P[sh + "up_proj.weight"], P[sh + "down_proj.weight"])
        return y.view(shp)

    # -- decoder layer and full model (§2, §5) -----------------------------------------------
    def layer(self, i, x, cos, sin):
        p = f"model.layers.{i}."
        x = x + self.attention(i, rmsnorm(x, self.P[p + "input_layernorm.weight"], self.eps), cos, sin)
        hn = rmsnorm(x, self.P[p + "post_attention_layernorm.weight"], self.eps)
        return x + (self.moe(i, hn) if layer_is_moe(self.cfg, i) else self.dense_mlp(i, hn))

    def forward(self, tok):
        """tok: LongTensor [B,T] -> (logits [B,T,V], [mtp logits [B,T-k,V] for k=1..D])."""
        cfg, P = self.cfg, self.P
        B, T = tok.shape
        L = int(cfg["num_hidden_layers"])
        emb = P["model.embed_tokens.weight"]
        head = P["lm_head.weight"]
        cos, sin = self._rope_tables(T)
        x = emb[tok]
        for i in range(L):
            x = self.layer(i, x, cos, sin)
        h = rmsnorm(x, P["model.norm.weight"], self.eps)
        logits = linear(h, head)
        mtp = []
        hprev = h
        for k in range(1, num_mtp(cfg) + 1):
            n = T - k
            if n <= 0:
                mtp.append(logits.new_zeros(B, 0, logits.shape[-1]))
                hprev = hprev[:, :0]
                continue
            p = f"model.layers.{L + k - 1}."
            if mtp_parallel(cfg):  # §8: u = hnorm(h_i), no token, no eh_proj
                u = rmsnorm(parallel_head_input(h, hprev)[:, :n], P[p + "hnorm.weight"], self.eps)
            else:
                e = rmsnorm(emb[tok[:, k:]], P[p + "enorm.weight"], self.eps)
                hh = rmsnorm(hprev[:, :n], P[p + "hnorm.weight"], self.eps)
                u = linear(torch.cat([e, hh], dim=-1), P[p + "eh_proj.weight"])
            y = self.layer(L + k - 1, u, cos[:n], sin[:n])
            hprev = rmsnorm(y, P[p + "shared_head.norm.weight"], self.eps)
            mtp.append(linear(hprev, head))
        return logits, mtp

    def loss(self, tok, lam):
        logits, mtp = self.forward(tok)
        return loss_from_logits(tok, logits, mtp, lam)


def loss_from_logits(tok, logits, mtp, lam):
    """L = CE_main (T-1 targets) + lam/D * sum_k CE_k (T-k-1 targets each, 0 when none)."""
    B, T = tok.shape
    V = logits.shape[-1]
    if T >= 2:
        L = F.cross_entropy(logits[:, :-1].reshape(-1, V), tok[:, 1:].reshape(-1))
    else:
        L = logits.sum() * 0.0
    D = len(mtp)
    if D > 0:
        extra = logits.sum() * 0.0
        for k, lk in enumerate(mtp, start=1):
            n = T - k - 1
            if n <= 0:
                continue
            extra = extra + F.cross_entropy(lk[:, :n].reshape(-1, V), tok[:, k + 1:].reshape(-1))
        L = L + (lam / D) * extra
    return L


def _tok_tensor(tokens):
    t = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    return (t[None, :], True) if t.dim() == 1 else (t, False)


# --------------------------------------------------------------------------------------------
# functional API
# --------------------------------------------------------------------------------------------
def forward(cfg, W, tokens, dtype=torch.float64, trace=None, attn_trace=None):
    model = Model(cfg, W, dtype=dtype)
    model.trace = trace
    model.attn_trace = attn_trace
    tok, single = _tok_tensor(tokens)
    with torch.no_grad():
        logits, mtp = model.forward(tok)
    if single:
        return logits[0], [m[0] for m in mtp]
    return logits, mtp


def loss(cfg, W, tokens, lam, dtype=torch.float64):
    model = Model(cfg, W, dtype=dtype)
    tok, _ = _tok_tensor(tokens)
    with torch.no_grad():
        return model.loss(tok, lam)


def loss_and_grads(cfg, W, tokens, lam, dtype=torch.float64):
    model = Model(cfg, W, dtype=dtype, requires_grad=True)
    tok, _ = _tok_tensor(tokens)
    L = model.loss(tok, lam)
    params = model.trainable()
    grads = torch.autograd.grad(L, list(params.values()), allow_unused=True)
    out = {}
    for (n, p), g in zip(params.items(), grads):
        out[n] = (torch.zeros_like(p) if g is None else g).detach().numpy()
    return float(L.detach()), out
