// deepseek2 GGUF export / import: one tensor mapping table drives both directions.
#include "model/gguf_model.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf.h"
#include "io/pretokenizer.h"
#include "model/rope.h"
#include "io/tokenizer.h"

namespace mtp {

namespace {

// One GGUF tensor and where its values live in the flat fp32 buffer.
struct tmap {
    enum class kind { concat, k_b, v_b };
    std::string name;
    std::vector<int64_t> ne;           // ggml order
    kind k = kind::concat;
    std::vector<size_t> srcs;          // concat: segment starts (each seg floats); k_b/v_b: kv_b offset
    size_t seg = 0;
    bool copy = false;                 // MTP embed/head copies: written, ignored on load
    bool keep_f32 = false;             // norms, router, router bias
};

std::vector<tmap> build_map(const model_config& c, const model_layout& L) {
    std::vector<tmap> out;
    const int64_t d = c.hidden_size, V = c.vocab_size, H = c.num_attention_heads;
    auto add = [&](const std::string& name, std::vector<int64_t> ne, size_t src, bool f32 = false) {
        size_t n = 1;
        for (auto x : ne) n *= size_t(x);
        out.push_back({name, ne, tmap::kind::concat, {src}, n, false, f32});
    };
    add("token_embd.weight", {d, V}, L.embed);
    add("output_norm.weight", {d}, L.final_norm, true);
    add("output.weight", {d, V}, L.lm_head);
    auto layer = [&](const layer_offsets& l, bool mtp) {
        const std::string b = "blk." + std::to_string(l.index) + ".";
        add(b + "attn_norm.weight", {d}, l.input_norm, true);
        if (c.q_lora_rank > 0) {
            add(b + "attn_q_a.weight", {d, c.q_lora_rank}, l.q_a);
            add(b + "attn_q_a_norm.weight", {c.q_lora_rank}, l.q_a_norm, true);
            add(b + "attn_q_b.weight", {c.q_lora_rank, H * c.qk_head_dim()}, l.q_b);
        } else {
            add(b + "attn_q.weight", {d, H * c.qk_head_dim()}, l.q_proj);
        }
        add(b + "attn_kv_a_mqa.weight", {d, c.kv_lora_rank + c.qk_rope_head_dim}, l.kv_a);
        add(b + "attn_kv_a_norm.weight", {c.kv_lora_rank}, l.kv_a_norm, true);
        out.push_back({b + "attn_k_b.weight", {c.qk_nope_head_dim, c.kv_lora_rank, H}, tmap::kind::k_b, {l.kv_b}, 0});
        out.push_back({b + "attn_v_b.weight", {c.kv_lora_rank, c.v_head_dim, H}, tmap::kind::v_b, {l.kv_b}, 0});
        add(b + "attn_output.weight", {H * c.v_head_dim, d}, l.o_proj);
        add(b + "ffn_norm.weight", {d}, l.post_norm, true);
        if (l.moe) {
            const int64_t E = c.n_routed_experts, F = c.moe_intermediate_size;
            add(b + "ffn_gate_inp.weight", {d, E}, l.router, true);
            if (l.router_bias != no_param) add(b + "exp_probs_b.bias", {E}, l.router_bias, true);
            tmap g, u, dn;
            g.name = b + "ffn_gate_exps.weight", g.ne = {d, F, E};
            u.name = b + "ffn_up_exps.weight", u.ne = {d, F, E};
            dn.name = b + "ffn_down_exps.weight", dn.ne = {F, d, E};
            g.seg = u.seg = dn.seg = size_t(d * F);
            for (const auto& e : l.experts) {
                g.srcs.push_back(e.gate);
                u.srcs.push_back(e.up);
                dn.srcs.push_back(e.down);
            }
            out.push_back(g);
            out.push_back(u);
            out.push_back(dn);
            if (l.shared.inner > 0) {
                add(b + "ffn_gate_shexp.weight", {d, l.shared.inner}, l.shared.gate);
                add(b + "ffn_up_shexp.weight", {d, l.shared.inner}, l.shared.up);
                add(b + "ffn_down_shexp.weight", {l.shared.inner, d}, l.shared.down);
            }
        } else {
            add(b + "ffn_gate.weight", {d, l.mlp.inner}, l.mlp.gate);
            add(b + "ffn_up.weight", {d, l.mlp.inner}, l.mlp.up);
            add(b + "ffn_down.weight", {l.mlp.inner, d}, l.mlp.down);
        }
        if (mtp) {
            add(b + "nextn.eh_proj.weight", {2 * d, d}, l.eh_proj);
            add(b + "nextn.enorm.weight", {d}, l.enorm, true);
            add(b + "nextn.hnorm.weight", {d}, l.hnorm, true);
            add(b + "nextn.shared_head_norm.weight", {d}, l.shared_head_norm, true);
            add(b + "nextn.embed_tokens.weight", {d, V}, L.embed);
            out.back().copy = true;
            add(b + "nextn.shared_head_head.weight", {d, V}, L.lm_head);
            out.back().copy = true;
        }
    };
    for (const auto& l : L.layers) layer(l, false);
    for (const auto& l : L.mtp) layer(l, true);
    return out;
}

size_t n_of(const tmap& t) {
    size_t n = 1;
    for (auto x : t.ne) n *= size_t(x);
    return n;
}

// kv_b is [H, nope+v, kv_lora] (torch). k_b[h][c][j] = kv_b[h][j][c] (j < nope); v_b[h][j][c] = kv_b[h][nope+j][c].
void gather(const model_config& c, const tmap& t, const float* W, float* dst) {
    const int64_t H = c.num_attention_heads, nope = c.qk_nope_head_dim, v = c.v_head_dim, r = c.kv_lora_rank;
    const float* kvb = W + t.srcs[0];
    if (t.k == tmap::kind::concat) {
        for (size_t s = 0; s < t.srcs.size(); ++s) std::memcpy(dst + s * t.seg, W + t.srcs[s], t.seg * 4);
    } else if (t.k == tmap::kind::k_b) {
        for (int64_t h = 0; h < H; ++h)
            for (int64_t ci = 0; ci < r; ++ci)
                for (int64_t j = 0; j < nope; ++j) dst[(h * r + ci) * nope + j] = kvb[(h * (nope + v) + j) * r + ci];
    } else {
        for (int64_t h = 0; h < H; ++h)
            for (int64_t j = 0; j < v; ++j)
                std::memcpy(dst + (h * v + j) * r, kvb + (h * (nope + v) + nope + j) * r, size_t(r) * 4);
    }
}

void scatter(const model_config& c, const tmap& t, const float* src, float* W) {
    const int64_t H = c.num_attention_heads, nope = c.qk_nope_head_dim, v = c.v_head_dim, r = c.kv_lora_rank;
    float* kvb = W + t.srcs[0];
    if (t.k == tmap::kind::concat) {
        for (size_t s = 0; s < t.srcs.size(); ++s) std::memcpy(W + t.srcs[s], src + s * t.seg, t.seg * 4);
    } else if (t.k == tmap::kind::k_b) {
        for (int64_t h = 0; h < H; ++h)
            for (int64_t ci = 0; ci < r; ++ci)
                for (int64_t j = 0; j < nope; ++j) kvb[(h * (nope + v) + j) * r + ci] = src[(h * r + ci) * nope + j];
    } else {
        for (int64_t h = 0; h < H; ++h)
            for (int64_t j = 0; j < v; ++j)
                std::memcpy(kvb + (h * (nope + v) + nope + j) * r, src + (h * v + j) * r, size_t(r) * 4);
    }
}

std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

// float32-stored config values back to their decimal spelling (7 significant digits).
double round7(double x) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.7g", x);
    return std::strtod(buf, nullptr);
}

std::string pre_name(const tokenizer& t, std::vector<std::string>& warnings) {
    std::vector<std::string> splits;
    bool byte_level_regex = false;
    for (const auto& s : t.pre_tokenizer) {
        if (s.type == pretokenizer_step::kind::split) splits.push_back(s.pattern);
        else byte_level_regex = s.use_regex;
    }
    if (splits.size() == 3 && splits[0] == deepseek_v3_regexes[0] && splits[1] == deepseek_v3_regexes[1] &&
        splits[2] == deepseek_v3_regexes[2])
        return "deepseek-v3";
    if (splits.empty() && byte_level_regex) return "gpt-2";
    warnings.push_back("tokenizer pre-tokenizer is neither GPT-2's nor DeepSeek-V3's; wrote tokenizer.ggml.pre = \"gpt-2\", "
                       "so llama.cpp may split text differently");
    return "gpt-2";
}

} // namespace

std::vector<std::string> gguf_export_check(const model_config& c, const std::string& where) {
    const int n = c.n_layers_total();
    if (c.n_routed_experts > 0)
        for (int i = c.first_k_dense_replace; i < n; ++i)
            if (!c.is_moe_layer(i))
                fail(where, "moe_layer_freq " + std::to_string(c.moe_layer_freq) + " makes layer " + std::to_string(i) +
                                " dense, but llama.cpp's deepseek2 treats every layer from leading_dense_block_count (" +
                                std::to_string(c.first_k_dense_replace) + ") on as MoE; refusing to write a GGUF it would misread");
    if (const double af = rope_attention_factor(c); std::fabs(af - 1.0) > 1e-6)
        fail(where, "rope_scaling: YaRN attention factor " + std::to_string(af) +
                        " (from mscale / mscale_all_dim / attention_factor) is not 1; llama.cpp's deepseek2 scales cos/sin "
                        "by 1 only, so it would misread this model (give mscale = mscale_all_dim); refusing to write it");
    if (c.mtp_parallel)
        fail(where, "mtp_style \"parallel\": llama.cpp's deepseek2 knows only sequential MTP layers (nextn.eh_proj, "
                    "nextn.enorm), so it would misread these heads; refusing to write it (--mtp-layers 0 exports the "
                    "trunk alone)");
    std::vector<std::string> w;
    const int D = c.n_mtp();
    if (D > 1)
        w.push_back("num_nextn_predict_layers = " + std::to_string(D) +
                    ": llama.cpp's draft-mtp path uses exactly one MTP layer; the trunk loads, MTP drafting will not be usable");
    if (D > 0 && c.q_lora_rank <= 0)
        w.push_back("q_lora_rank is null: llama.cpp's draft-mtp path needs q_lora_rank > 0; MTP drafting will not be usable");
    if (D > 0 && !c.is_moe_layer(c.num_hidden_layers))
        w.push_back("the MTP layer is dense: llama.cpp's draft-mtp path needs an MoE MTP layer; MTP drafting will not be usable");
    return w;
}

std::vector<std::string> gguf_export(const model_files& m, const std::string& out, const gguf_export_options& o) {
    const model_config& c = m.config;
    std::vector<std::string> warnings = gguf_export_check(c, out);
    ggml_type wt;
    uint32_t file_type;
    if (o.type == "f32") wt = ggml_type::f32, file_type = 0;
    else if (o.type == "f16") wt = ggml_type::f16, file_type = 1;
    else if (o.type == "q8_0") wt = ggml_type::q8_0, file_type = 7;
    else fail("--type", "expected f32, f16 or q8_0, got '" + o.type + "'");

    gguf_writer g;
    const std::string a = "deepseek2.";
    g.add_string("general.architecture", "deepseek2");
    g.add_string("general.name", o.name);
    g.add_u32("general.file_type", file_type);
    g.add_u32("general.quantization_version", 2);
    g.add_u32(a + "block_count", uint32_t(c.n_layers_total()));
    g.add_u32(a + "context_length", uint32_t(c.max_position_embeddings));
    g.add_u32(a + "embedding_length", uint32_t(c.hidden_size));
    g.add_u32(a + "feed_forward_length", uint32_t(c.intermediate_size));
    g.add_u32(a + "attention.head_count", uint32_t(c.num_attention_heads));
    g.add_u32(a + "attention.head_count_kv", 1);
    g.add_f32(a + "rope.freq_base", float(c.rope_theta));
    g.add_f32(a + "attention.layer_norm_rms_epsilon", float(c.rms_norm_eps));
    // A dense model has no experts to use (llama.cpp asserts expert_used_count <= expert_count).
    g.add_u32(a + "expert_used_count", uint32_t(c.n_routed_experts > 0 ? c.num_experts_per_tok : 0));
    g.add_u32(a + "leading_dense_block_count",
              uint32_t(c.n_routed_experts > 0 ? std::min(c.first_k_dense_replace, c.n_layers_total()) : c.n_layers_total()));
    g.add_u32(a + "vocab_size", uint32_t(c.vocab_size));
    if (c.q_lora_rank > 0) g.add_u32(a + "attention.q_lora_rank", uint32_t(c.q_lora_rank));
    g.add_u32(a + "attention.kv_lora_rank", uint32_t(c.kv_lora_rank));
    g.add_u32(a + "attention.key_length", uint32_t(c.kv_lora_rank + c.qk_rope_head_dim));
    g.add_u32(a + "attention.value_length", uint32_t(c.kv_lora_rank));
    g.add_u32(a + "attention.key_length_mla", uint32_t(c.qk_head_dim()));
    g.add_u32(a + "attention.value_length_mla", uint32_t(c.v_head_dim));
    g.add_u32(a + "expert_feed_forward_length", uint32_t(c.moe_intermediate_size));
    g.add_u32(a + "expert_count", uint32_t(c.n_routed_experts));
    g.add_u32(a + "expert_shared_count", uint32_t(c.n_shared_experts));
    g.add_f32(a + "expert_weights_scale", float(c.routed_scaling_factor));
    g.add_bool(a + "expert_weights_norm", c.norm_topk_prob);
    g.add_u32(a + "expert_gating_func", c.scoring_sigmoid ? 2 : 1);
    g.add_u32(a + "expert_group_count", uint32_t(c.n_routed_experts > 0 ? c.n_group : 0));   // dense: no groups
    g.add_u32(a + "expert_group_used_count", uint32_t(c.n_routed_experts > 0 ? c.topk_group : 0));
    g.add_u32(a + "rope.dimension_count", uint32_t(c.qk_rope_head_dim));
    if (c.rope_scaling.yarn) {
        g.add_string(a + "rope.scaling.type", "yarn");
        g.add_f32(a + "rope.scaling.factor", float(c.rope_scaling.factor));
        g.add_u32(a + "rope.scaling.original_context_length", uint32_t(c.rope_scaling.original_max_position_embeddings));
        g.add_f32(a + "rope.scaling.yarn_log_multiplier", float(0.1 * c.rope_scaling.mscale_all_dim));
        g.add_f32(a + "rope.scaling.yarn_beta_fast", float(c.rope_scaling.beta_fast));
        g.add_f32(a + "rope.scaling.yarn_beta_slow", float(c.rope_scaling.beta_slow));
    }
    g.add_u32(a + "nextn_predict_layers", uint32_t(c.n_mtp()));

    if (!o.tokenizer_json.empty()) {
        tokenizer t = tokenizer_load(o.tokenizer_json);
        const int nv = tokenizer_vocab_size(t);
        if (nv > c.vocab_size)
            fail(o.tokenizer_json, "tokenizer has " + std::to_string(nv) + " ids but config vocab_size is " + std::to_string(c.vocab_size));
        std::vector<std::string> tokens(size_t(c.vocab_size));
        std::vector<int32_t> types(size_t(c.vocab_size), 1);   // 1 normal, 3 control, 4 user-defined, 5 unused
        for (int i = 0; i < c.vocab_size; ++i) {
            if (size_t(i) < t.vocab.size() && !t.vocab[size_t(i)].empty()) tokens[size_t(i)] = t.vocab[size_t(i)];
            else tokens[size_t(i)] = "[PAD" + std::to_string(i) + "]", types[size_t(i)] = 5;
        }
        for (const auto& at : t.added_tokens) {
            tokens[size_t(at.id)] = at.content;
            types[size_t(at.id)] = at.special ? 3 : 4;
        }
        std::vector<std::string> merges;
        merges.reserve(t.merges.size());
        for (const auto& [x, y] : t.merges) merges.push_back(t.vocab[size_t(x)] + " " + t.vocab[size_t(y)]);
        g.add_string("tokenizer.ggml.model", "gpt2");
        g.add_string("tokenizer.ggml.pre", pre_name(t, warnings));
        g.add_string_array("tokenizer.ggml.tokens", tokens);
        g.add_i32_array("tokenizer.ggml.token_type", types);
        g.add_string_array("tokenizer.ggml.merges", merges);
    } else {
        g.add_string("tokenizer.ggml.model", "none");
    }
    g.add_u32("tokenizer.ggml.bos_token_id", uint32_t(c.bos_token_id));
    g.add_u32("tokenizer.ggml.eos_token_id", uint32_t(c.eos_token_id));

    std::vector<float> buf;
    for (const auto& t : build_map(c, m.layout)) {
        buf.resize(n_of(t));
        gather(c, t, m.weights.data(), buf.data());
        ggml_type tt = t.keep_f32 ? ggml_type::f32 : wt;
        if (tt == ggml_type::q8_0 && t.ne[0] % 32 != 0) tt = ggml_type::f16;   // as llama.cpp's converter falls back
        g.add_tensor(t.name, t.ne, tt, buf.data());
    }
    g.write(out);
    return warnings;
}

model_files model_load_gguf(const std::string& path) {
    gguf_file g = gguf_read(path);
    const std::string arch = g.get_string("general.architecture");
    if (arch != "deepseek2") fail(path, "key 'general.architecture': expected \"deepseek2\", got \"" + arch + "\"");
    const std::string a = "deepseek2.";
    auto u = [&](const std::string& k) {
        int64_t v = g.get_int(a + k);
        if (v < 0 || v > (int64_t(1) << 31) - 1) fail(path, "key '" + a + k + "': value " + std::to_string(v) + " out of range");
        return int(v);
    };
    auto uo = [&](const std::string& k, int dflt) { return g.find(a + k) ? u(k) : dflt; };
    model_config c;
    const int blocks = u("block_count"), D = uo("nextn_predict_layers", 0);
    if (D > blocks) fail(path, "key 'deepseek2.nextn_predict_layers': " + std::to_string(D) + " exceeds block_count");
    c.num_hidden_layers = blocks - D;
    c.num_nextn_predict_layers = D;
    if (g.find(a + "vocab_size")) c.vocab_size = u("vocab_size");
    else if (const gguf_kv* tk = g.find("tokenizer.ggml.tokens")) c.vocab_size = int(tk->as.size());
    else fail(path, "key 'deepseek2.vocab_size': missing (and no tokenizer.ggml.tokens)");
    c.hidden_size = u("embedding_length");
    c.max_position_embeddings = u("context_length");
    c.intermediate_size = u("feed_forward_length");
    c.num_attention_heads = u("attention.head_count");
    c.rope_theta = round7(g.get_float(a + "rope.freq_base", 10000.0));
    c.rms_norm_eps = round7(g.get_float(a + "attention.layer_norm_rms_epsilon"));
    c.n_routed_experts = uo("expert_count", 0);
    c.num_experts_per_tok = c.n_routed_experts > 0 ? uo("expert_used_count", 0) : 1;   // 1: the config default
    c.first_k_dense_replace = c.n_routed_experts > 0 ? std::min(uo("leading_dense_block_count", 0), blocks) : 0;
    c.moe_layer_freq = 1;
    c.q_lora_rank = uo("attention.q_lora_rank", 0);
    c.kv_lora_rank = u("attention.kv_lora_rank");
    c.qk_rope_head_dim = u("rope.dimension_count");
    const int klm = u("attention.key_length_mla");
    if (klm < c.qk_rope_head_dim) fail(path, "key 'deepseek2.attention.key_length_mla': smaller than rope.dimension_count");
    c.qk_nope_head_dim = klm - c.qk_rope_head_dim;
    c.v_head_dim = u("attention.value_length_mla");
    c.moe_intermediate_size = uo("expert_feed_forward_length", 0);
    c.n_shared_experts = uo("expert_shared_count", 0);
    c.routed_scaling_factor = round7(g.get_float(a + "expert_weights_scale", 1.0));
    c.norm_topk_prob = g.get_bool(a + "expert_weights_norm", false);
    const int gating = uo("expert_gating_func", 1);
    if (gating != 1 && gating != 2) fail(path, "key 'deepseek2.expert_gating_func': " + std::to_string(gating) + " (expected 1 softmax or 2 sigmoid)");
    c.scoring_sigmoid = gating == 2;
    c.n_group = std::max(1, uo("expert_group_count", 1));
    c.topk_group = std::max(1, uo("expert_group_used_count", 1));
    bool bias = false;
    for (const auto& t : g.tensors)
        if (t.name.size() > 17 && t.name.compare(t.name.size() - 17, 17, ".exp_probs_b.bias") == 0) bias = true;
    c.topk_method = bias ? "noaux_tc" : "greedy";
    if (g.find(a + "rope.scaling.type")) {
        const std::string st = g.get_string(a + "rope.scaling.type");
        if (st == "yarn") {
            c.rope_scaling.yarn = true;
            c.rope_scaling.factor = round7(g.get_float(a + "rope.scaling.factor"));
            c.rope_scaling.original_max_position_embeddings = u("rope.scaling.original_context_length");
            c.rope_scaling.mscale_all_dim = round7(g.get_float(a + "rope.scaling.yarn_log_multiplier", 0.0) / 0.1);
            c.rope_scaling.mscale = c.rope_scaling.mscale_all_dim;
            // llama.cpp's deepseek2 leaves cos/sin unscaled; with mscale = mscale_all_dim != 0 that is a = 1 already
            if (c.rope_scaling.mscale_all_dim == 0) c.rope_scaling.attention_factor = 1.0;
            c.rope_scaling.beta_fast = round7(g.get_float(a + "rope.scaling.yarn_beta_fast", 32.0));
            c.rope_scaling.beta_slow = round7(g.get_float(a + "rope.scaling.yarn_beta_slow", 1.0));
        } else if (st != "none") {
            fail(path, "key 'deepseek2.rope.scaling.type': unsupported \"" + st + "\" (expected yarn or none)");
        }
    }
    c.bos_token_id = int(g.get_int("tokenizer.ggml.bos_token_id", 0));
    c.eos_token_id = int(g.get_int("tokenizer.ggml.eos_token_id", 1));

    model_files m;
    m.config = config_from_json(config_to_json(c), path);   // the same validation as config.json
    m.layout = layout_build(m.config);
    m.weights.assign(m.layout.n_floats, 0.0f);
    std::map<std::string, bool> used;
    std::vector<float> buf;
    for (const auto& t : build_map(m.config, m.layout)) {
        const gguf_tensor* gt = g.tensor(t.name);
        if (!gt) {
            if (t.copy) continue;
            fail(path, "tensor '" + t.name + "': missing (expected ne " + shape_str(t.ne) + ")");
        }
        if (gt->ne != t.ne) fail(path, "tensor '" + t.name + "': ne " + shape_str(gt->ne) + ", expected " + shape_str(t.ne));
        used[t.name] = true;
        if (t.copy) continue;
        g.read_f32(*gt, buf);
        scatter(m.config, t, buf.data(), m.weights.data());
    }
    for (const auto& t : g.tensors)
        if (!used.count(t.name)) fail(path, "tensor '" + t.name + "': unexpected (not part of this model config)");
    if (const gguf_tensor* out = g.tensor("output.weight"))
        m.storage = out->type == ggml_type::q8_0 ? "q8_0" : out->type == ggml_type::f16 ? "f16" : "f32";
    return m;
}

} // namespace mtp
