// Parameter layout (HF names), random init, and checkpoint load/save.
#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "model/gguf_model.h"

namespace mtp {

const param_info* model_layout::find(const std::string& name) const {
    for (const auto& p : params)
        if (p.name == name) return &p;
    return nullptr;
}

namespace {

struct builder {
    model_layout& L;
    size_t add(const std::string& name, std::vector<int64_t> shape, bool decay = true, bool trainable = true) {
        param_info p;
        p.name = name;
        p.shape = shape;
        p.size = 1;
        for (auto s : shape) p.size *= size_t(s);
        p.offset = L.n_floats;
        p.trainable = trainable;
        p.decay = decay && trainable;
        L.n_floats += (p.size + 15) & ~size_t(15);          // 64-byte aligned tensors
        L.params.push_back(p);
        return p.offset;
    }
    swiglu_offsets swiglu(const std::string& pre, int d, int inner) {
        swiglu_offsets s;
        s.inner = inner;
        s.gate = add(pre + ".gate_proj.weight", {inner, d});
        s.up = add(pre + ".up_proj.weight", {inner, d});
        s.down = add(pre + ".down_proj.weight", {d, inner});
        return s;
    }
};

layer_offsets build_layer(builder& b, const model_config& c, int i, bool mtp) {
    layer_offsets l;
    l.index = i;
    const int d = c.hidden_size, H = c.num_attention_heads;
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    if (mtp && !c.mtp_parallel) l.enorm = b.add(pre + "enorm.weight", {d}, false);
    if (mtp) l.hnorm = b.add(pre + "hnorm.weight", {d}, false);
    if (mtp && !c.mtp_parallel) l.eh_proj = b.add(pre + "eh_proj.weight", {d, 2 * d});
    l.input_norm = b.add(pre + "input_layernorm.weight", {d}, false);
    const std::string at = pre + "self_attn.";
    if (c.q_lora_rank > 0) {
        l.q_a = b.add(at + "q_a_proj.weight", {c.q_lora_rank, d});
        l.q_a_norm = b.add(at + "q_a_layernorm.weight", {c.q_lora_rank}, false);
        l.q_b = b.add(at + "q_b_proj.weight", {H * c.qk_head_dim(), c.q_lora_rank});
    } else {
        l.q_proj = b.add(at + "q_proj.weight", {H * c.qk_head_dim(), d});
    }
    l.kv_a = b.add(at + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, d});
    l.kv_a_norm = b.add(at + "kv_a_layernorm.weight", {c.kv_lora_rank}, false);
    l.kv_b = b.add(at + "kv_b_proj.weight", {H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
    l.o_proj = b.add(at + "o_proj.weight", {d, H * c.v_head_dim});
    l.post_norm = b.add(pre + "post_attention_layernorm.weight", {d}, false);
    l.moe = c.is_moe_layer(i);
    if (l.moe) {
        const int E = c.n_routed_experts;
        l.router = b.add(pre + "mlp.gate.weight", {E, d});
        if (c.has_router_bias()) l.router_bias = b.add(pre + "mlp.gate.e_score_correction_bias", {E}, false, false);
        for (int e = 0; e < E; ++e)
            l.experts.push_back(b.swiglu(pre + "mlp.experts." + std::to_string(e), d, c.moe_intermediate_size));
        if (c.n_shared_experts > 0)
            l.shared = b.swiglu(pre + "mlp.shared_experts", d, c.n_shared_experts * c.moe_intermediate_size);
    } else {
        l.mlp = b.swiglu(pre + "mlp", d, c.intermediate_size);
    }
    if (mtp) l.shared_head_norm = b.add(pre + "shared_head.norm.weight", {d}, false);
    return l;
}

bool is_norm_name(const std::string& n) {
    return n.find("norm.weight") != std::string::npos || n.find("layernorm.weight") != std::string::npos;
}

} // namespace

model_layout layout_build(const model_config& c) {
    model_layout L;
    builder b{L};
    L.embed = b.add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
    for (int i = 0; i < c.num_hidden_layers; ++i) L.layers.push_back(build_layer(b, c, i, false));
    L.final_norm = b.add("model.norm.weight", {c.hidden_size}, false);
    L.lm_head = b.add("lm_head.weight", {c.vocab_size, c.hidden_size});
    for (int k = 0; k < c.n_mtp(); ++k) L.mtp.push_back(build_layer(b, c, c.num_hidden_layers + k, true));
    L.parallel_heads = c.mtp_parallel;
    return L;
}

void weights_init(const model_config& c, const model_layout& L, std::vector<float>& w, uint64_t seed) {
    w.assign(L.n_floats, 0.0f);
    rng r(seed);
    for (const auto& p : L.params) {
        float* dst = w.data() + p.offset;
        if (!p.trainable) continue;                                    // router bias starts at 0
        if (is_norm_name(p.name)) {
            for (size_t i = 0; i < p.size; ++i) dst[i] = 1.0f;
        } else {
            for (size_t i = 0; i < p.size; ++i) dst[i] = float(c.initializer_range * r.normal());
        }
    }
}

static std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

void weights_load(const model_layout& L, const std::string& path, std::vector<float>& w, std::string* storage) {
    checkpoint ck = checkpoint_open(path);
    if (storage && ck.has("lm_head.weight")) {
        switch (ck.info("lm_head.weight").type) {
            case dtype::f32: *storage = "f32"; break;
            case dtype::f16: *storage = "f16"; break;
            case dtype::bf16: *storage = "bf16"; break;
            case dtype::f8_e4m3: *storage = "f8"; break;
        }
    }
    w.assign(L.n_floats, 0.0f);
    std::map<std::string, bool> used;
    std::vector<float> buf;
    for (const auto& p : L.params) {
        if (!ck.has(p.name)) fail(ck.dir, "missing tensor '" + p.name + "' (expected shape " + shape_str(p.shape) + ")");
        ck.read_f32(p.name, buf, p.shape);
        std::copy(buf.begin(), buf.end(), w.begin() + long(p.offset));
        used[p.name] = true;
    }
    for (const auto& name : ck.names()) {
        if (used.count(name)) continue;
        auto ends = [&](const std::string& suf) {
            return name.size() >= suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0;
        };
        if (ends("weight_scale_inv") || ends(".embed_tokens.weight") || ends(".shared_head.head.weight")) continue;
        if (L.parallel_heads && (ends(".enorm.weight") || ends(".eh_proj.weight")))
            fail(ck.dir, "unexpected tensor '" + name + "': a sequential MTP module's, but config.json says "
                         "\"mtp_style\": \"parallel\" (parallel heads have no enorm / eh_proj)");
        fail(ck.dir, "unexpected tensor '" + name + "' (not part of this model config)");
    }
}

void weights_save(const model_config& c, const model_layout& L, const std::vector<float>& w, const std::string& file,
                  const std::string& dtype_name) {
    dtype t;
    if (!dtype_from_name(dtype_name, t) || t == dtype::f8_e4m3) fail("--dtype", "expected F32, F16 or BF16, got " + dtype_name);
    std::vector<st_write_item> items;
    for (const auto& p : L.params) {
        // The router's selection bias stays fp32 as in the released DeepSeek-V3 checkpoints.
        dtype tt = p.trainable ? t : dtype::f32;
        items.push_back({p.name, p.shape, w.data() + p.offset, tt});
    }
    for (const auto& m : L.mtp) {   // copies other engines (vLLM, SGLang, llama.cpp) expect in the MTP layer
        std::string pre = "model.layers." + std::to_string(m.index) + ".";
        items.push_back({pre + "embed_tokens.weight", {c.vocab_size, c.hidden_size}, w.data() + L.embed, t});
        items.push_back({pre + "shared_head.head.weight", {c.vocab_size, c.hidden_size}, w.data() + L.lm_head, t});
    }
    st_write(file, items, {{"format", "pt"}});
}

namespace {
bool check_finite = true;
}

void weights_check_finite(bool on) { check_finite = on; }

void weights_require_finite(const model_layout& L, const std::vector<float>& w, const std::string& source) {
    for (const auto& p : L.params)
        for (size_t i = 0; i < p.size; ++i)
            if (!std::isfinite(w[p.offset + i]))
                fail(source, "tensor " + p.name + " holds " + (std::isnan(w[p.offset + i]) ? "NaN" : "Inf") +
                                 " at index " + std::to_string(i) + " (--allow-nonfinite loads it anyway)");
}

model_files model_load_dir(const std::string& dir) {
    namespace fs = std::filesystem;
    model_files m;
    if (fs::is_regular_file(dir) && fs::path(dir).extension() == ".gguf") {
        m = model_load_gguf(dir);   // gguf_model.h
    } else {
        if (!fs::is_directory(dir)) fail(dir, "model directory not found");
        m.config = config_load((fs::path(dir) / "config.json").string());
        m.layout = layout_build(m.config);
        weights_load(m.layout, dir, m.weights, &m.storage);
    }
    if (check_finite) weights_require_finite(m.layout, m.weights, dir);
    return m;
}

void model_save_dir(const model_files& m, const std::string& dir, const std::string& dtype_name) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (dir.empty()) fail("output directory", "empty path");
    const bool existed = fs::exists(dir);
    fs::create_directories(dir, ec);
    if (!fs::is_directory(dir)) fail(dir, "cannot create output directory");
    try {
        weights_save(m.config, m.layout, m.weights, (fs::path(dir) / "model.safetensors").string(), dtype_name);
        config_save(m.config, (fs::path(dir) / "config.json").string());
    } catch (...) {
        if (!existed) fs::remove_all(dir, ec);       // a failed write leaves no folder behind it created
        throw;
    }
}

model_files model_keep_mtp(const model_files& m, int n) {
    if (n < 0 || n > m.config.n_mtp())
        fail("--mtp-layers", "must be in 0.." + std::to_string(m.config.n_mtp()) + " (the model's MTP modules)");
    model_files r;
    r.config = m.config;
    r.config.num_nextn_predict_layers = n;
    if (n == 0) r.config.mtp_parallel = false;     // no heads left: a plain next-token model
    r.layout = layout_build(r.config);
    r.storage = m.storage;
    r.weights.assign(r.layout.n_floats, 0.0f);
    for (const param_info& p : r.layout.params) {
        const param_info* q = m.layout.find(p.name);
        if (!q || q->size != p.size) fail("--mtp-layers", "tensor " + p.name + " has no counterpart");
        std::copy_n(m.weights.data() + q->offset, p.size, r.weights.data() + p.offset);
    }
    return r;
}

} // namespace mtp
