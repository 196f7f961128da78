#!/usr/bin/python3
"""Independent check of `mtp convert --to gguf` against the GGUF v3 layout (written from the format
description, not from the C++ code): walks the header, every key (name and value type), the tensor table
(name, shape, ggml type, offset, alignment) and the data section; decodes EVERY tensor of the f32, f16 and
q8_0 files with its own decoder (f16: IEEE half via numpy; q8_0: ggml blocks of an fp16 scale d and 32 int8
q, x = d*q) and compares it with the source safetensors mapped to GGUF's names and layouts (the attn_k_b /
attn_v_b split, stacked experts): f32 exactly, f16 equal to the source rounded to half, q8_0 with each block's
scale fp16(max|x|/127) and every weight within half a quantisation step. Checks that `mtp logits` on the f32
GGUF equals `mtp logits` on the directory byte for byte, the YaRN keys of a YaRN config (and its logits), and
tokenizer.ggml.pre for a GPT-2 and the DeepSeek-V3 pre-tokenizer.

usage: gguf_check.py MTP_BINARY WORK_DIR
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np

MTP, WORK = sys.argv[1], sys.argv[2]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.makedirs(WORK, exist_ok=True)

CONFIG = {
    "vocab_size": 70, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 96, "moe_intermediate_size": 32, "n_routed_experts": 4, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    "routed_scaling_factor": 2.5, "norm_topk_prob": True, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
    "kv_lora_rank": 32, "q_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
    "rope_scaling": None,
}

VT = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4), 7: ("?", 1),
      10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg)


class Reader:
    def __init__(self, b):
        self.b, self.p = b, 0

    def take(self, fmt, n):
        assert self.p + n <= len(self.b), "truncated"
        v = struct.unpack_from("<" + fmt, self.b, self.p)[0]
        self.p += n
        return v

    def string(self):
        n = self.take("Q", 8)
        s = self.b[self.p:self.p + n].decode("utf-8")
        self.p += n
        return s

    def value(self, t):
        if t == STR:
            return self.string()
        if t == ARR:
            et, n = self.take("I", 4), self.take("Q", 8)
            return (et, [self.value(et) for _ in range(n)])
        fmt, n = VT[t]
        return self.take(fmt, n)


def parse_gguf(path):
    b = open(path, "rb").read()
    r = Reader(b)
    check(b[:4] == b"GGUF", "magic")
    r.p = 4
    version, n_t, n_kv = r.take("I", 4), r.take("q", 8), r.take("q", 8)
    check(version == 3, "version 3")
    kv = {}
    for _ in range(n_kv):
        k = r.string()
        t = r.take("I", 4)
        check(k not in kv, "duplicate key " + k)
        kv[k] = (t, r.value(t))
    align = kv.get("general.alignment", (U32, 32))[1]
    tensors = []
    for _ in range(n_t):
        name = r.string()
        nd = r.take("I", 4)
        ne = [r.take("q", 8) for _ in range(nd)]
        ty, off = r.take("I", 4), r.take("Q", 8)
        tensors.append((name, ne, ty, off))
    data_start = (r.p + align - 1) // align * align
    check(all(x == 0 for x in b[r.p:data_start]), "header padding is zeros")
    return b, kv, tensors, align, data_start


def tensor_bytes(ne, ty):
    n = 1
    for x in ne:
        n *= x
    if ty == 0:
        return n * 4
    if ty == 1:
        return n * 2
    assert ty == 8 and ne[0] % 32 == 0
    return n // 32 * 34


def expected_tensors(c):
    d, V, H = c["hidden_size"], c["vocab_size"], c["num_attention_heads"]
    ql, kl, nope, rope, v = c["q_lora_rank"], c["kv_lora_rank"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    E, F = c["n_routed_experts"], c["moe_intermediate_size"]
    S = c["n_shared_experts"] * F
    L, D = c["num_hidden_layers"], c["num_nextn_predict_layers"]
    t = {"token_embd.weight": [d, V], "output_norm.weight": [d], "output.weight": [d, V]}
    for i in range(L + D):
        b = "blk.%d." % i
        t.update({b + "attn_norm.weight": [d], b + "attn_q_a.weight": [d, ql], b + "attn_q_a_norm.weight": [ql],
                  b + "attn_q_b.weight": [ql, H * (nope + rope)], b + "attn_kv_a_mqa.weight": [d, kl + rope],
                  b + "attn_kv_a_norm.weight": [kl], b + "attn_k_b.weight": [nope, kl, H],
                  b + "attn_v_b.weight": [kl, v, H], b + "attn_output.weight": [H * v, d], b + "ffn_norm.weight": [d]})
        if i >= c["first_k_dense_replace"]:
            t.update({b + "ffn_gate_inp.weight": [d, E], b + "exp_probs_b.bias": [E],
                      b + "ffn_gate_exps.weight": [d, F, E], b + "ffn_up_exps.weight": [d, F, E],
                      b + "ffn_down_exps.weight": [F, d, E], b + "ffn_gate_shexp.weight": [d, S],
                      b + "ffn_up_shexp.weight": [d, S], b + "ffn_down_shexp.weight": [S, d]})
        else:
            I = c["intermediate_size"]
            t.update({b + "ffn_gate.weight": [d, I], b + "ffn_up.weight": [d, I], b + "ffn_down.weight": [I, d]})
        if i >= L:
            t.update({b + "nextn.eh_proj.weight": [2 * d, d], b + "nextn.enorm.weight": [d],
                      b + "nextn.hnorm.weight": [d], b + "nextn.shared_head_norm.weight": [d],
                      b + "nextn.embed_tokens.weight": [d, V], b + "nextn.shared_head_head.weight": [d, V]})
    return t


def expected_keys(c, with_vocab):
    a = "deepseek2."
    k = {"general.architecture": STR, "general.name": STR, "general.file_type": U32,
         "general.quantization_version": U32, "tokenizer.ggml.model": STR,
         "tokenizer.ggml.bos_token_id": U32, "tokenizer.ggml.eos_token_id": U32}
    for n in ["block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
              "attention.head_count_kv", "expert_used_count", "leading_dense_block_count", "vocab_size",
              "attention.q_lora_rank", "attention.kv_lora_rank", "attention.key_length", "attention.value_length",
              "attention.key_length_mla", "attention.value_length_mla", "expert_feed_forward_length", "expert_count",
              "expert_shared_count", "expert_gating_func", "expert_group_count", "expert_group_used_count",
              "rope.dimension_count", "nextn_predict_layers"]:
        k[a + n] = U32
    for n in ["rope.freq_base", "attention.layer_norm_rms_epsilon", "expert_weights_scale"]:
        k[a + n] = F32
    k[a + "expert_weights_norm"] = BOOL
    if with_vocab:
        k.update({"tokenizer.ggml.pre": STR, "tokenizer.ggml.tokens": ARR, "tokenizer.ggml.token_type": ARR,
                  "tokenizer.ggml.merges": ARR})
    return k


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack_from("<Q", b, 0)[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for name, info in h.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        raw = b[8 + n + s:8 + n + e]
        assert info["dtype"] == "F32"
        out[name] = (info["shape"], struct.unpack("<%df" % (len(raw) // 4), raw))
    return out


def source_as_gguf(src, c):
    """Every GGUF tensor name -> the source weights in GGUF's memory order (flat float32), written from the
    llama.cpp deepseek2 tensor naming: ne[0] is the fastest axis, so an HF [out, in] matrix keeps its bytes."""
    def t(name):
        shape, vals = src[name]
        return np.asarray(vals, np.float32).reshape(shape)
    H, nope, v, r = c["num_attention_heads"], c["qk_nope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
    out = {"token_embd.weight": t("model.embed_tokens.weight"), "output.weight": t("lm_head.weight"),
           "output_norm.weight": t("model.norm.weight")}
    names = {"attn_norm": "input_layernorm", "attn_q_a": "self_attn.q_a_proj", "attn_q_a_norm": "self_attn.q_a_layernorm",
             "attn_q_b": "self_attn.q_b_proj", "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
             "attn_kv_a_norm": "self_attn.kv_a_layernorm", "attn_output": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "ffn_gate_inp": "mlp.gate", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj", "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
             "ffn_up_shexp": "mlp.shared_experts.up_proj", "ffn_down_shexp": "mlp.shared_experts.down_proj",
             "nextn.eh_proj": "eh_proj", "nextn.enorm": "enorm", "nextn.hnorm": "hnorm",
             "nextn.shared_head_norm": "shared_head.norm"}
    for i in range(c["num_hidden_layers"] + c["num_nextn_predict_layers"]):
        hf = "model.layers.%d." % i
        for g, h in names.items():
            if hf + h + ".weight" in src:
                out["blk.%d.%s.weight" % (i, g)] = t(hf + h + ".weight")
        if hf + "mlp.gate.e_score_correction_bias" in src:
            out["blk.%d.exp_probs_b.bias" % i] = t(hf + "mlp.gate.e_score_correction_bias")
        for g in ("gate", "up", "down"):
            e = 0
            stack = []
            while hf + "mlp.experts.%d.%s_proj.weight" % (e, g) in src:
                stack.append(t(hf + "mlp.experts.%d.%s_proj.weight" % (e, g)))
                e += 1
            if stack:
                out["blk.%d.ffn_%s_exps.weight" % (i, g)] = np.stack(stack)
        kvb = t(hf + "self_attn.kv_b_proj.weight").reshape(H, nope + v, r)
        out["blk.%d.attn_k_b.weight" % i] = kvb[:, :nope, :].transpose(0, 2, 1)   # ne [nope, r, H]
        out["blk.%d.attn_v_b.weight" % i] = kvb[:, nope:, :]                      # ne [r, v, H]
        if i >= c["num_hidden_layers"]:
            out["blk.%d.nextn.embed_tokens.weight" % i] = t("model.embed_tokens.weight")
            out["blk.%d.nextn.shared_head_head.weight" % i] = t("lm_head.weight")
    return {k: np.ascontiguousarray(x).reshape(-1) for k, x in out.items()}


def decode(b, off, n, ty):
    """n values of ggml type ty at byte offset off: 0 f32, 1 f16, 8 q8_0."""
    if ty == 0:
        return np.frombuffer(b, "<f4", n, off).astype(np.float64), None
    if ty == 1:
        return np.frombuffer(b, "<f2", n, off).astype(np.float64), None
    assert ty == 8 and n % 32 == 0
    blocks = np.frombuffer(b, np.dtype([("d", "<f2"), ("q", "i1", 32)]), n // 32, off)
    d = blocks["d"].astype(np.float64)
    return (d[:, None] * blocks["q"].astype(np.float64)).reshape(-1), d


def check_data(b, data_start, tensors, src, c, ty_name):
    """Every tensor decoded and compared with the source (see the module docstring)."""
    want = source_as_gguf(src, c)
    bad = []
    for name, ne, ty, off in tensors:
        n = int(np.prod(ne))
        x = want.get(name)
        if x is None or x.size != n:
            bad.append("%s: no source of %d values" % (name, n))
            continue
        got, scales = decode(b, data_start + off, n, ty)
        if ty == 0:
            ok = np.array_equal(got, x.astype(np.float64))
        elif ty == 1:
            ok = np.array_equal(got, x.astype(np.float16).astype(np.float64))
        else:
            xb = x.astype(np.float64).reshape(-1, 32)
            d_want = (np.abs(xb).max(1) / 127.0).astype(np.float16).astype(np.float64)
            # |x - d q| <= d/2 where d is the stored scale, plus the fp16 rounding of the scale itself
            # (max|x|/127 vs its half: relative 2^-11, times |q| <= 127, i.e. <= 127 * 2^-11 * d)
            err = np.abs(xb - got.reshape(-1, 32)).max(1)
            ok = np.array_equal(scales, d_want) and bool(np.all(err <= scales * (0.5 + 127 * 2.0 ** -11) + 1e-12))
        if not ok:
            bad.append(name)
    check(not bad, "%s: %d tensors decoded, mismatches: %s" % (ty_name, len(tensors), bad[:5]))
    return len(tensors) - len(bad)


def run(*args, ok=True):
    p = subprocess.run([MTP] + list(args), capture_output=True, text=True)
    if ok and p.returncode != 0:
        print(p.stdout, p.stderr)
        sys.exit("command failed: " + " ".join(args))
    return p


def main():
    c = CONFIG
    model = os.path.join(WORK, "model")
    cfg = os.path.join(WORK, "config.json")
    json.dump(c, open(cfg, "w"))
    run("init", "--config", cfg, "--out", model, "--seed", "11")
    # a small byte-level tokenizer in the model dir, so the GGUF embeds a gpt2 vocabulary
    vocab = {"a": 0, "b": 1, "ab": 2}
    tok = {"version": "1.0", "added_tokens": [{"id": 3, "content": "<eos>", "single_word": False, "lstrip": False,
                                               "rstrip": False, "normalized": False, "special": True}],
           "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                                 "use_regex": True},
           "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                               "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "vocab": vocab, "merges": ["a b"]}}
    json.dump(tok, open(os.path.join(model, "tokenizer.json"), "w"))
    src = read_safetensors(os.path.join(model, "model.safetensors"))
    exp_t = expected_tensors(c)

    for ty_name, file_type in [("f32", 0), ("f16", 1), ("q8_0", 7)]:
        out = os.path.join(WORK, "m.%s.gguf" % ty_name)
        run("convert", "--model", model, "--to", "gguf", "--out", out, "--type", ty_name)
        b, kv, tensors, align, data_start = parse_gguf(out)
        # keys: names and value types
        ek = expected_keys(c, True)
        for k, t in ek.items():
            check(k in kv, "%s: key %s present" % (ty_name, k))
            if k in kv:
                check(kv[k][0] == t, "%s: key %s type %d (want %d)" % (ty_name, k, kv[k][0], t))
        for k in kv:
            check(k in ek, "%s: unexpected key %s" % (ty_name, k))
        check(kv["general.architecture"][1] == "deepseek2", "architecture")
        check(kv["general.file_type"][1] == file_type, "file_type")
        check(kv["deepseek2.block_count"][1] == 3 and kv["deepseek2.nextn_predict_layers"][1] == 1, "block_count = L + D")
        check(kv["deepseek2.attention.key_length"][1] == 40 and kv["deepseek2.attention.value_length"][1] == 32, "MLA lengths")
        check(kv["deepseek2.attention.key_length_mla"][1] == 24 and kv["deepseek2.attention.value_length_mla"][1] == 16, "MLA head dims")
        check(kv["deepseek2.attention.head_count_kv"][1] == 1, "head_count_kv = 1")
        check(kv["deepseek2.expert_gating_func"][1] == 2, "sigmoid gating = 2")
        check(kv["tokenizer.ggml.model"][1] == "gpt2" and kv["tokenizer.ggml.pre"][1] == "gpt-2", "tokenizer model/pre")
        et, toks = kv["tokenizer.ggml.tokens"][1]
        check(et == STR and len(toks) == c["vocab_size"] and toks[2] == "ab" and toks[3] == "<eos>", "tokens")
        et, types = kv["tokenizer.ggml.token_type"][1]
        check(et == I32 and types[0] == 1 and types[3] == 3 and types[50] == 5, "token types")
        check(kv["tokenizer.ggml.merges"][1] == (STR, ["a b"]), "merges")
        # tensor table
        names = [t[0] for t in tensors]
        check(sorted(names) == sorted(exp_t), "%s: tensor names (missing %s, extra %s)" % (
            ty_name, sorted(set(exp_t) - set(names)), sorted(set(names) - set(exp_t))))
        spans = []
        for name, ne, ty, off in tensors:
            check(ne == exp_t.get(name), "%s: %s shape %s want %s" % (ty_name, name, ne, exp_t.get(name)))
            check(off % align == 0, "%s: %s offset %d aligned to %d" % (ty_name, name, off, align))
            if len(ne) == 1 or name.endswith("ffn_gate_inp.weight"):
                want_ty = 0
            elif ty_name == "q8_0":
                want_ty = 8 if ne[0] % 32 == 0 else 1
            else:
                want_ty = {"f32": 0, "f16": 1}[ty_name]
            check(ty == want_ty, "%s: %s ggml type %d want %d" % (ty_name, name, ty, want_ty))
            nb = tensor_bytes(ne, ty)
            check(data_start + off + nb <= len(b), "%s: %s inside file" % (ty_name, name))
            spans.append((off, off + nb, name))
        spans.sort()
        for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            check(e0 <= s1, "%s: %s overlaps %s" % (ty_name, n0, n1))
            check(s1 - e0 < align, "%s: gap after %s" % (ty_name, n0))
        check(len(b) - data_start - spans[-1][1] < align, "%s: file ends after the last tensor (+padding)" % ty_name)
        print("%s: %d/%d tensors decoded equal to the source" % (
            ty_name, check_data(b, data_start, tensors, src, c, ty_name), len(tensors)))
        if ty_name == "f32":   # data equality with the source checkpoint
            tmap = {t[0]: t for t in tensors}

            def data(name):
                _, ne, _, off = tmap[name]
                n = tensor_bytes(ne, 0) // 4
                return struct.unpack_from("<%df" % n, b, data_start + off)

            H, nope, v, r = 2, 16, 16, 32
            for i in range(3):
                kvb = src["model.layers.%d.self_attn.kv_b_proj.weight" % i][1]
                kb, vb = data("blk.%d.attn_k_b.weight" % i), data("blk.%d.attn_v_b.weight" % i)
                ok_k = all(kb[(h * r + ci) * nope + j] == kvb[(h * (nope + v) + j) * r + ci]
                           for h in range(H) for ci in range(r) for j in range(nope))
                ok_v = all(vb[(h * v + j) * r + ci] == kvb[(h * (nope + v) + nope + j) * r + ci]
                           for h in range(H) for ci in range(r) for j in range(v))
                check(ok_k and ok_v, "attn_k_b/attn_v_b of layer %d" % i)
            check(data("token_embd.weight") == src["model.embed_tokens.weight"][1], "token_embd data")
            check(data("blk.2.nextn.shared_head_head.weight") == src["lm_head.weight"][1], "shared_head_head data")
            check(data("blk.2.nextn.eh_proj.weight") == src["model.layers.2.eh_proj.weight"][1], "eh_proj data")
            gate = data("blk.1.ffn_gate_exps.weight")
            n = 64 * 32
            check(all(gate[e * n:(e + 1) * n] == src["model.layers.1.mlp.experts.%d.gate_proj.weight" % e][1]
                      for e in range(4)), "stacked experts")
            # logits through the GGUF equal logits through the directory, byte for byte
            a, g = os.path.join(WORK, "a.st"), os.path.join(WORK, "g.st")
            run("logits", "--model", model, "--tokens", "1,2,3,60,5,9", "--out", a)
            run("logits", "--model", out, "--tokens", "1,2,3,60,5,9", "--out", g)
            check(open(a, "rb").read() == open(g, "rb").read(), "mtp logits from GGUF == from directory")
            # hostile: truncated file -> one-line error naming the file, exit 1
            bad = os.path.join(WORK, "trunc.gguf")
            open(bad, "wb").write(b[:data_start - 5])
            p = run("logits", "--model", bad, "--tokens", "1", "--out", a, ok=False)
            check(p.returncode == 1 and p.stderr.count("\n") == 1 and bad in p.stderr, "truncated GGUF error: " + p.stderr)

    # refusal: moe_layer_freq 2 leaves a dense layer after leading_dense_block_count
    c2 = dict(c, moe_layer_freq=2)
    json.dump(c2, open(cfg, "w"))
    run("init", "--config", cfg, "--out", os.path.join(WORK, "freq2"))
    p = run("convert", "--model", os.path.join(WORK, "freq2"), "--to", "gguf", "--out", os.path.join(WORK, "f2.gguf"), ok=False)
    check(p.returncode == 1 and "moe_layer_freq" in p.stderr and p.stderr.count("\n") == 1, "refusal: " + p.stderr)
    check(not os.path.exists(os.path.join(WORK, "f2.gguf")), "no file written on refusal")

    # a YaRN attention factor llama.cpp cannot express (no mscale keys: cos/sin x (0.1 ln 4 + 1)) is refused
    c4 = dict(c, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                               "beta_fast": 32.0, "beta_slow": 1.0})
    json.dump(c4, open(cfg, "w"))
    yd = os.path.join(WORK, "yarn_af")
    run("init", "--config", cfg, "--out", yd)
    p = run("convert", "--model", yd, "--to", "gguf", "--out", os.path.join(WORK, "yarn_af.gguf"), ok=False)
    check(p.returncode == 1 and "attention factor" in p.stderr and p.stderr.count("\n") == 1, "YaRN factor refusal: " + p.stderr)
    check(not os.path.exists(os.path.join(WORK, "yarn_af.gguf")), "no file written for the YaRN factor refusal")

    # YaRN that llama.cpp expresses (mscale = mscale_all_dim: attention factor 1): the keys, and the logits
    # through the GGUF equal those through the directory; the DeepSeek-V3 pre-tokenizer (taken from the real
    # tokenizer.json that scripts/fetch_tokenizer_refs.sh installs) is named "deepseek-v3" for llama.cpp.
    c5 = dict(c, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                               "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.8, "mscale_all_dim": 0.8})
    json.dump(c5, open(cfg, "w"))
    yk = os.path.join(WORK, "yarn_keys")
    run("init", "--config", cfg, "--out", yk, "--seed", "13")
    real = os.path.join(ROOT, "third_party_cache", "tokenizer_refs", "node_modules", "@lenml", "tokenizer-deepseek_v3",
                        "models", "tokenizer.json")
    check(os.path.exists(real), "the DeepSeek-V3 tokenizer.json (scripts/fetch_tokenizer_refs.sh) at " + real)
    if os.path.exists(real):
        ds = dict(tok, pre_tokenizer=json.load(open(real))["pre_tokenizer"])
        json.dump(ds, open(os.path.join(yk, "tokenizer.json"), "w"))
    out = os.path.join(WORK, "yarn_keys.gguf")
    run("convert", "--model", yk, "--to", "gguf", "--out", out, "--type", "f32")
    b, kv, tensors, align, data_start = parse_gguf(out)
    a = "deepseek2.rope.scaling."
    want = {a + "type": (STR, "yarn"), a + "factor": (F32, 4.0), a + "original_context_length": (U32, 16),
            a + "yarn_log_multiplier": (F32, np.float32(0.1 * 0.8)), a + "yarn_beta_fast": (F32, 32.0),
            a + "yarn_beta_slow": (F32, 1.0)}
    for k, (t, v) in want.items():
        check(k in kv and kv[k][0] == t and kv[k][1] == v, "YaRN key %s = %r (got %r)" % (k, v, kv.get(k)))
    if os.path.exists(real):
        check(kv["tokenizer.ggml.pre"][1] == "deepseek-v3", "tokenizer.ggml.pre deepseek-v3 (got %r)" % (kv["tokenizer.ggml.pre"],))
    ga, gg = os.path.join(WORK, "ya.st"), os.path.join(WORK, "yg.st")
    run("logits", "--model", yk, "--tokens", "1,2,3,60,5,9,7,8,9,10,11,12,13,14,15,16,17,18,19,20", "--out", ga)
    run("logits", "--model", out, "--tokens", "1,2,3,60,5,9,7,8,9,10,11,12,13,14,15,16,17,18,19,20", "--out", gg)
    check(open(ga, "rb").read() == open(gg, "rb").read(), "YaRN: mtp logits from GGUF == from directory")

    # --mtp-layers: a D = 2 model exported with its first MTP module only (what llama.cpp's draft-mtp runs)
    c3 = dict(c, num_nextn_predict_layers=2)
    json.dump(c3, open(cfg, "w"))
    d2 = os.path.join(WORK, "d2")
    run("init", "--config", cfg, "--out", d2, "--seed", "12")
    out = os.path.join(WORK, "d2_1.gguf")
    run("convert", "--model", d2, "--to", "gguf", "--out", out, "--type", "f32", "--mtp-layers", "1")
    b, kv, tensors, align, data_start = parse_gguf(out)
    check(kv["deepseek2.block_count"][1] == 3 and kv["deepseek2.nextn_predict_layers"][1] == 1,
          "--mtp-layers 1: block_count = L + 1, one nextn layer")
    check(sorted(t[0] for t in tensors) == sorted(expected_tensors(c)), "--mtp-layers 1: the D = 1 tensor set")
    src2 = read_safetensors(os.path.join(d2, "model.safetensors"))
    tmap = {t[0]: t for t in tensors}
    _, ne, _, off = tmap["blk.2.nextn.eh_proj.weight"]
    got = struct.unpack_from("<%df" % (tensor_bytes(ne, 0) // 4), b, data_start + off)
    check(got == src2["model.layers.2.eh_proj.weight"][1], "--mtp-layers 1: module 1's eh_proj kept")
    p = run("convert", "--model", d2, "--to", "gguf", "--out", os.path.join(WORK, "d2_3.gguf"), "--mtp-layers", "3",
            ok=False)
    check(p.returncode == 1 and "--mtp-layers" in p.stderr and p.stderr.count("\n") == 1, "--mtp-layers 3: " + p.stderr)
    check(not os.path.exists(os.path.join(WORK, "d2_3.gguf")), "no file written for --mtp-layers 3")

    if failures:
        sys.exit("%d failures" % len(failures))
    print("gguf_check: all checks passed")


main()
