// Hugging Face interop: a sharded FP8 checkpoint (F8_E4M3 weights with 128x128 weight_scale_inv blocks,
// partial edge blocks, BF16 norms, index json) loads via model_load_dir and matches its F32 twin; and
// `convert --to hf` output (sharded, index, MTP copies) loads back exactly.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/arena.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "model/hf_export.h"
#include "model/model.h"

namespace fs = std::filesystem;
using namespace mtp;
using json = nlohmann::json;

namespace {

struct tmp_dir {
    fs::path p = fs::temp_directory_path() / ("mtp_fp8_test_" + std::to_string(getpid()));
    tmp_dir() { fs::create_directories(p); }
    ~tmp_dir() { fs::remove_all(p); }
};

json cfg() {   // vocab 200 and intermediate 136: partial 128-blocks in both directions
    return {{"vocab_size", 200}, {"hidden_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
            {"intermediate_size", 136}, {"moe_intermediate_size", 32}, {"n_routed_experts", 4},
            {"n_shared_experts", 1}, {"num_experts_per_tok", 4}, {"first_k_dense_replace", 1},
            {"kv_lora_rank", 32}, {"q_lora_rank", 48}, {"qk_nope_head_dim", 16}, {"qk_rope_head_dim", 8},
            {"v_head_dim", 16}, {"num_nextn_predict_layers", 1}, {"initializer_range", 0.1}};
    // num_experts_per_tok = n_routed_experts: routing cannot flip, so logits are a smooth function of the
    // weights and a per-weight relative bound carries over to the logits (a flip would be a jump).
}

// Nearest E4M3FN code (finite values only) by exhaustive search: independent of the engine's decoder use.
uint8_t to_e4m3(float x) {
    uint8_t best = 0;
    float bd = INFINITY;
    for (int c = 0; c < 127; ++c) {
        float v = f8_e4m3_to_f32(uint8_t(c));
        float dd = std::fabs(std::fabs(x) - v);
        if (dd < bd) bd = dd, best = uint8_t(c);
    }
    return uint8_t(best | (x < 0 ? 0x80 : 0));
}

struct raw_tensor { std::string name, dtype; std::vector<int64_t> shape; std::string bytes; };

void write_st(const fs::path& p, const std::vector<raw_tensor>& ts) {
    json h = json::object();
    size_t off = 0;
    for (const auto& t : ts) {
        h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
        off += t.bytes.size();
    }
    std::string hs = h.dump();
    while (hs.size() % 8) hs += ' ';
    std::ofstream f(p, std::ios::binary);
    uint64_t n = hs.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << hs;
    for (const auto& t : ts) f << t.bytes;
}

std::vector<float> logits(const model_files& m, const std::vector<int>& ids) {
    arena a;
    model_state s;
    model_forward(m.config, m.layout, m.weights.data(), s, ids.data(), int(ids.size()), 0.0f, a);
    std::vector<float> out(s.logits, s.logits + ids.size() * size_t(m.config.vocab_size));
    out.insert(out.end(), s.mtp[0].logits, s.mtp[0].logits + (ids.size() - 1) * size_t(m.config.vocab_size));
    return out;
}

} // namespace

TEST(HfInterop, ShardedFp8CheckpointMatchesF32Twin) {
    tmp_dir d;
    model_files m;
    m.config = config_from_json(cfg(), "test");
    m.layout = layout_build(m.config);
    weights_init(m.config, m.layout, m.weights, 9);
    rng r(4);
    for (const auto& p : m.layout.params)   // norms 1 +- noise, a non-zero router bias
        if (p.shape.size() == 1)
            for (size_t i = 0; i < p.size; ++i) m.weights[p.offset + i] = float(p.trainable ? 1.0 + 0.1 * r.normal() : 0.01 * r.normal());

    std::vector<float> expect(m.weights);   // what the loader must produce, bit for bit
    std::vector<std::vector<raw_tensor>> shards(2);
    int k = 0;
    bool saw_partial = false;
    for (const auto& p : m.layout.params) {
        const float* w = m.weights.data() + p.offset;
        auto& shard = shards[size_t(k++ % 2)];
        if (p.shape.size() == 1) {
            raw_tensor t{p.name, p.trainable ? "BF16" : "F32", p.shape, {}};
            t.bytes.resize(p.size * (p.trainable ? 2 : 4));
            if (p.trainable) {
                for (size_t i = 0; i < p.size; ++i) {
                    uint16_t b = f32_to_bf16(w[i]);
                    std::memcpy(t.bytes.data() + 2 * i, &b, 2);
                    expect[p.offset + i] = bf16_to_f32(b);
                }
            } else {
                std::memcpy(t.bytes.data(), w, p.size * 4);
            }
            shard.push_back(t);
            continue;
        }
        const int64_t R = p.shape[0], C = p.shape[1], BR = (R + 127) / 128, BC = (C + 127) / 128;
        if (R % 128 || C % 128) saw_partial = true;
        std::vector<float> s(size_t(BR * BC));
        for (int64_t bi = 0; bi < BR; ++bi)
            for (int64_t bj = 0; bj < BC; ++bj) {
                float amax = 0;
                for (int64_t i = bi * 128; i < std::min(R, bi * 128 + 128); ++i)
                    for (int64_t j = bj * 128; j < std::min(C, bj * 128 + 128); ++j) amax = std::max(amax, std::fabs(w[i * C + j]));
                s[size_t(bi * BC + bj)] = amax > 0 ? amax / 448.0f : 1.0f;
            }
        raw_tensor q{p.name, "F8_E4M3", p.shape, std::string(size_t(R * C), '\0')};
        for (int64_t i = 0; i < R; ++i)
            for (int64_t j = 0; j < C; ++j) {
                const float sc = s[size_t((i / 128) * BC + j / 128)];
                uint8_t code = to_e4m3(w[i * C + j] / sc);
                q.bytes[size_t(i * C + j)] = char(code);
                expect[p.offset + size_t(i * C + j)] = f8_e4m3_to_f32(code) * sc;
            }
        raw_tensor st{p.name.substr(0, p.name.size() - 7) + ".weight_scale_inv", "F32", {BR, BC}, std::string(s.size() * 4, '\0')};
        std::memcpy(st.bytes.data(), s.data(), s.size() * 4);
        shard.push_back(q);
        shard.push_back(st);
    }
    ASSERT_TRUE(saw_partial);
    const fs::path dir = d.p / "fp8";
    fs::create_directories(dir);
    json wm = json::object();
    for (int i = 0; i < 2; ++i) {
        std::string name = "model-0000" + std::to_string(i + 1) + "-of-00002.safetensors";
        write_st(dir / name, shards[size_t(i)]);
        for (const auto& t : shards[size_t(i)]) wm[t.name] = name;
    }
    std::ofstream(dir / "model.safetensors.index.json") << json({{"metadata", json::object()}, {"weight_map", wm}}).dump();
    config_save(m.config, (dir / "config.json").string());

    model_files f = model_load_dir(dir.string());
    ASSERT_EQ(f.weights.size(), expect.size());
    // 1) the loader applies W = q * s[i/128, j/128] exactly, edge blocks included
    EXPECT_EQ(0, std::memcmp(f.weights.data(), expect.data(), expect.size() * 4));
    // 2) per weight, e4m3 keeps a 3-bit mantissa: |W8 - W| <= 2^-4 |W| (round to nearest), plus half the
    //    smallest subnormal step (2^-10 * s) for values that land in the subnormal range
    for (const auto& p : m.layout.params) {
        if (p.shape.size() != 2) continue;
        for (size_t i = 0; i < p.size; ++i) {
            float w = m.weights[p.offset + i], w8 = f.weights[p.offset + i];
            ASSERT_LE(std::fabs(w8 - w), std::ldexp(std::fabs(w), -4) + 1e-3f * 0.1f) << p.name << "[" << i << "]";
        }
    }
    // 3) logits of the FP8 model vs its F32 twin: each weight is off by at most 2^-4 relative, so every
    //    logit moves by a small fraction of the logit scale; bound the max deviation by 2^-4 * 4 of it
    //    (errors of the ~10 stacked matrices add roughly in quadrature).
    std::vector<int> ids = {3, 150, 7, 199, 42, 0, 88, 120};
    std::vector<float> a = logits(m, ids), b = logits(f, ids);
    double max_d = 0, scale = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        max_d = std::max(max_d, double(std::fabs(a[i] - b[i])));
        scale = std::max(scale, double(std::fabs(a[i])));
    }
    EXPECT_GT(max_d, 0.0);
    EXPECT_LE(max_d, std::ldexp(scale, -4) * 4) << "max |dlogit| " << max_d << " of scale " << scale;
}

TEST(HfInterop, ExportShardsAndLoadsBack) {
    tmp_dir d;
    model_files m;
    m.config = config_from_json(cfg(), "test");
    m.layout = layout_build(m.config);
    weights_init(m.config, m.layout, m.weights, 2);
    std::ofstream(d.p / "tokenizer.json") << "{}";
    hf_export_options o;
    o.dtype = "f32";
    o.shard_size_mb = 0.1;
    o.tokenizer_dir = d.p.string();
    const fs::path out = d.p / "hf";
    int n = hf_export(m, out.string(), o);
    EXPECT_GT(n, 2);
    EXPECT_TRUE(fs::exists(out / ("model-00001-of-0000" + std::to_string(n) + ".safetensors")));
    EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
    json idx = json::parse(std::ifstream(out / "model.safetensors.index.json"));
    EXPECT_TRUE(idx["weight_map"].contains("model.layers.2.shared_head.head.weight"));
    EXPECT_TRUE(idx["weight_map"].contains("model.layers.2.embed_tokens.weight"));
    json c = json::parse(std::ifstream(out / "config.json"));
    EXPECT_EQ(c["architectures"][0], "DeepseekV3ForCausalLM");
    EXPECT_EQ(c["model_type"], "deepseek_v3");
    EXPECT_EQ(c["num_nextn_predict_layers"], 1);
    model_files r = model_load_dir(out.string());
    EXPECT_EQ(0, std::memcmp(r.weights.data(), m.weights.data(), m.weights.size() * 4));
    // re-export as one bf16 file: the stale shards and index are removed
    o.dtype = "bf16";
    o.shard_size_mb = 5000;
    EXPECT_EQ(hf_export(m, out.string(), o), 1);
    EXPECT_FALSE(fs::exists(out / "model.safetensors.index.json"));
    model_files r2 = model_load_dir(out.string());
    for (size_t i = 0; i < m.weights.size(); ++i)
        ASSERT_EQ(r2.weights[i], bf16_to_f32(f32_to_bf16(m.weights[i])));
}
