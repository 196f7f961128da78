// GGUF: round trip of a random MoE + MTP model (identical f32 logits, f16/q8_0 within tolerance), the
// kv_b -> attn_k_b/attn_v_b split, tokenizer embedding, refusals/warnings, and hostile files.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/arena.h"
#include "core/error.h"
#include "io/gguf.h"
#include "model/gguf_model.h"
#include "model/model.h"

namespace fs = std::filesystem;
using namespace mtp;
using json = nlohmann::json;

namespace {

struct tmp_dir {
    fs::path p = fs::temp_directory_path() / ("mtp_gguf_test_" + std::to_string(getpid()));
    tmp_dir() { fs::create_directories(p); }
    ~tmp_dir() { fs::remove_all(p); }
    std::string operator/(const std::string& f) const { return (p / f).string(); }
};

// MoE trunk, D = 1, q_lora, MoE MTP layer (llama.cpp draft-mtp shape); non-binary decimals in float keys.
json moe_config() {
    return {{"vocab_size", 67}, {"hidden_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
            {"intermediate_size", 96}, {"moe_intermediate_size", 32}, {"n_routed_experts", 4},
            {"n_shared_experts", 1}, {"num_experts_per_tok", 2}, {"first_k_dense_replace", 1},
            {"n_group", 2}, {"topk_group", 1}, {"routed_scaling_factor", 2.827}, {"norm_topk_prob", true},
            {"kv_lora_rank", 32}, {"q_lora_rank", 32}, {"qk_nope_head_dim", 16}, {"qk_rope_head_dim", 8},
            {"v_head_dim", 16}, {"num_nextn_predict_layers", 1}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0},
            {"max_position_embeddings", 256},
            {"rope_scaling", {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 64},
                              {"beta_fast", 32.0}, {"beta_slow", 1.0}, {"mscale", 0.707}, {"mscale_all_dim", 0.707}}}};
}

model_files make_model(const json& j, uint64_t seed = 5) {
    model_files m;
    m.config = config_from_json(j, "test");
    m.layout = layout_build(m.config);
    weights_init(m.config, m.layout, m.weights, seed);
    // a non-zero router bias so that its mapping is exercised
    for (const auto& l : m.layout.layers)
        if (l.router_bias != no_param)
            for (int e = 0; e < m.config.n_routed_experts; ++e) m.weights[l.router_bias + size_t(e)] = 0.01f * float(e);
    return m;
}

struct logits_out { std::vector<float> main, mtp; };

logits_out run(const model_files& m, const std::vector<int>& ids) {
    arena a;
    model_state s;
    model_forward(m.config, m.layout, m.weights.data(), s, ids.data(), int(ids.size()), 0.0f, a);
    const size_t V = size_t(m.config.vocab_size), T = ids.size();
    logits_out o;
    o.main.assign(s.logits, s.logits + T * V);
    o.mtp.assign(s.mtp[0].logits, s.mtp[0].logits + (T - 1) * V);
    return o;
}

const std::vector<int> kIds = {1, 5, 9, 2, 33, 66, 7, 0, 12, 40};

} // namespace

TEST(Gguf, F32RoundTripIsExact) {
    tmp_dir d;
    model_files m = make_model(moe_config());
    auto warnings = gguf_export(m, d / "m.gguf", {});
    EXPECT_TRUE(warnings.empty());
    model_files r = model_load_gguf(d / "m.gguf");
    EXPECT_EQ(config_to_json(r.config).dump(), config_to_json(m.config).dump());   // float keys restored exactly
    ASSERT_EQ(r.weights.size(), m.weights.size());
    EXPECT_EQ(0, std::memcmp(r.weights.data(), m.weights.data(), m.weights.size() * 4));
    logits_out a = run(m, kIds), b = run(r, kIds);
    EXPECT_EQ(a.main, b.main);
    EXPECT_EQ(a.mtp, b.mtp);
    // model_load_dir takes the .gguf path too (the hook `mtp logits --model F.gguf` uses).
    model_files r2 = model_load_dir(d / "m.gguf");
    EXPECT_EQ(0, std::memcmp(r2.weights.data(), m.weights.data(), m.weights.size() * 4));
}

TEST(Gguf, KvBSplitMatchesSpec) {
    tmp_dir d;
    model_files m = make_model(moe_config());
    gguf_export(m, d / "m.gguf", {});
    gguf_file g = gguf_read(d / "m.gguf");
    const auto& c = m.config;
    const int H = c.num_attention_heads, nope = c.qk_nope_head_dim, v = c.v_head_dim, r = c.kv_lora_rank;
    const float* kvb = m.weights.data() + m.layout.layers[1].kv_b;   // torch [H*(nope+v), r]
    std::vector<float> kb, vb;
    const gguf_tensor* tk = g.tensor("blk.1.attn_k_b.weight");
    const gguf_tensor* tv = g.tensor("blk.1.attn_v_b.weight");
    ASSERT_TRUE(tk && tv);
    EXPECT_EQ(tk->ne, (std::vector<int64_t>{nope, r, H}));
    EXPECT_EQ(tv->ne, (std::vector<int64_t>{r, v, H}));
    g.read_f32(*tk, kb);
    g.read_f32(*tv, vb);
    for (int h = 0; h < H; ++h)
        for (int ci = 0; ci < r; ++ci) {
            for (int j = 0; j < nope; ++j)   // k_b[h][c][j] = kv_b row h*(nope+v)+j, column c
                ASSERT_EQ(kb[size_t((h * r + ci) * nope + j)], kvb[size_t((h * (nope + v) + j) * r + ci)]);
            for (int j = 0; j < v; ++j)      // v_b[h][j][c] = kv_b row h*(nope+v)+nope+j, column c
                ASSERT_EQ(vb[size_t((h * v + j) * r + ci)], kvb[size_t((h * (nope + v) + nope + j) * r + ci)]);
        }
    EXPECT_EQ(g.get_int("deepseek2.block_count"), 3);
    EXPECT_EQ(g.get_int("deepseek2.nextn_predict_layers"), 1);
    EXPECT_EQ(g.get_string("tokenizer.ggml.model"), "none");
    EXPECT_TRUE(g.tensor("blk.2.nextn.eh_proj.weight") && g.tensor("blk.2.ffn_gate_exps.weight") &&
                g.tensor("blk.2.exp_probs_b.bias") && g.tensor("blk.2.nextn.shared_head_head.weight"));
    EXPECT_EQ(g.tensor("blk.1.ffn_down_exps.weight")->ne, (std::vector<int64_t>{32, 64, 4}));
}

TEST(Gguf, F16AndQ8RoundTripWithinTolerance) {
    tmp_dir d;
    model_files m = make_model(moe_config());
    logits_out ref = run(m, kIds);
    for (const char* type : {"f16", "q8_0"}) {
        gguf_export_options o;
        o.type = type;
        gguf_export(m, d / "m.gguf", o);
        gguf_file g = gguf_read(d / "m.gguf");
        if (std::string(type) == "q8_0") {
            EXPECT_EQ(g.tensor("blk.1.attn_q_b.weight")->type, ggml_type::q8_0);
            EXPECT_EQ(g.tensor("blk.1.attn_norm.weight")->type, ggml_type::f32);
            EXPECT_EQ(g.tensor("blk.1.attn_k_b.weight")->type, ggml_type::f16);   // ne0 = nope = 16: f16 fallback
        }
        model_files r = model_load_gguf(d / "m.gguf");
        // weights: f16 relative 2^-11; q8_0 absolute amax/254 per 32-block. Weights are N(0, 0.02) (norms, router and
        // router bias stay f32): f16's half-ulp is ≤ 2^-14 = 6.1e-5 below 0.25 (12σ), q8_0's amax/254 < 1e-3 while a
        // block's amax < 0.254. Measured: 3.0e-5 (f16), 3.4e-4 (q8_0).
        double max_w = 0;
        for (size_t i = 0; i < m.weights.size(); ++i) max_w = std::max(max_w, double(std::fabs(r.weights[i] - m.weights[i])));
        EXPECT_LT(max_w, std::string(type) == "f16" ? 1e-4 : 1e-3) << type;
        logits_out b = run(r, kIds);
        double max_l = 0, scale = 0;
        for (size_t i = 0; i < ref.main.size(); ++i) {
            max_l = std::max(max_l, double(std::fabs(b.main[i] - ref.main[i])));
            scale = std::max(scale, double(std::fabs(ref.main[i])));
        }
        for (size_t i = 0; i < ref.mtp.size(); ++i) max_l = std::max(max_l, double(std::fabs(b.mtp[i] - ref.mtp[i])));
        // measured max_l / max(scale, 1): 2.5e-4 (f16), 5.9e-3 (q8_0); the bounds leave 8× and 3.4×
        EXPECT_LT(max_l, (std::string(type) == "f16" ? 2e-3 : 2e-2) * std::max(scale, 1.0)) << type;
    }
}

TEST(Gguf, Q8BlockCodec) {
    std::vector<float> x(64), y(64);
    for (int i = 0; i < 64; ++i) x[size_t(i)] = std::sin(float(i)) * (i < 32 ? 1.0f : 1e-3f);
    std::vector<uint8_t> q(68);
    q8_0_quantize_row(x.data(), 64, q.data());
    q8_0_dequantize_row(q.data(), 64, y.data());
    // |x − d16·q| ≤ d/2 + 127·|d − d16| (+ fp32 roundings), d = amax/127 ≤ scale/127, d16 its f16 rounding:
    // |d − d16| ≤ 2^-11·d for a normal f16, ≤ 2^-25 (half the subnormal spacing 2^-24) below 2^-14 (block 1 here).
    for (int i = 0; i < 64; ++i) {
        const float d = (i < 32 ? 1.0f : 1e-3f) / 127.0f;
        const float bound = 0.5f * d + 127.0f * std::max(0x1p-11f * d, 0x1p-25f) + 1e-7f;
        EXPECT_NEAR(y[size_t(i)], x[size_t(i)], bound) << i;
    }
}

TEST(Gguf, RefusesAndWarns) {
    tmp_dir d;
    json j = moe_config();
    j["moe_layer_freq"] = 2;   // layer 1 MoE? 1 % 2 != 0 -> dense after leading_dense_block_count
    model_files m = make_model(j);
    try {
        gguf_export(m, d / "x.gguf", {});
        FAIL() << "expected a refusal";
    } catch (const error& e) {
        EXPECT_NE(std::string(e.what()).find("moe_layer_freq"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(d / "x.gguf"));
    json j2 = moe_config();
    j2["num_nextn_predict_layers"] = 2;
    j2["q_lora_rank"] = nullptr;
    model_files m2 = make_model(j2);
    auto w = gguf_export(m2, d / "y.gguf", {});
    EXPECT_EQ(w.size(), 2u);
    model_files r = model_load_gguf(d / "y.gguf");   // still round-trips exactly
    EXPECT_EQ(0, std::memcmp(r.weights.data(), m2.weights.data(), m2.weights.size() * 4));
    gguf_export_options bad;
    bad.type = "q4_0";
    EXPECT_THROW(gguf_export(m2, d / "z.gguf", bad), error);
}

TEST(Gguf, EmbedsGpt2Tokenizer) {
    tmp_dir d;
    json vocab = json::object();
    // a tiny byte-level vocabulary: "a"=0, "b"=1, "ab"=2, an added special token at 3
    vocab["a"] = 0;
    vocab["b"] = 1;
    vocab["ab"] = 2;
    json doc;
    doc["version"] = "1.0";
    doc["added_tokens"] = json::array({{{"id", 3}, {"content", "<|end|>"}, {"single_word", false}, {"lstrip", false},
                                        {"rstrip", false}, {"normalized", false}, {"special", true}}});
    doc["normalizer"] = nullptr;
    doc["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    doc["post_processor"] = nullptr;
    doc["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    doc["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", {"a b"}}};
    std::ofstream(d / "tokenizer.json") << doc.dump();
    model_files m = make_model(moe_config());
    gguf_export_options o;
    o.tokenizer_json = d / "tokenizer.json";
    gguf_export(m, d / "t.gguf", o);
    gguf_file g = gguf_read(d / "t.gguf");
    EXPECT_EQ(g.get_string("tokenizer.ggml.model"), "gpt2");
    EXPECT_EQ(g.get_string("tokenizer.ggml.pre"), "gpt-2");
    const gguf_kv* toks = g.find("tokenizer.ggml.tokens");
    const gguf_kv* types = g.find("tokenizer.ggml.token_type");
    const gguf_kv* merges = g.find("tokenizer.ggml.merges");
    ASSERT_TRUE(toks && types && merges);
    ASSERT_EQ(toks->as.size(), 67u);   // padded to vocab_size
    EXPECT_EQ(toks->as[2], "ab");
    EXPECT_EQ(toks->as[3], "<|end|>");
    EXPECT_EQ(toks->as[10], "[PAD10]");
    EXPECT_EQ(types->ai[0], 1);
    EXPECT_EQ(types->ai[3], 3);
    EXPECT_EQ(types->ai[10], 5);
    EXPECT_EQ(merges->as, std::vector<std::string>{"a b"});
    model_files r = model_load_gguf(d / "t.gguf");
    EXPECT_EQ(r.config.vocab_size, 67);
}

// Hostile files: every prefix of a valid file, and targeted corruptions, give one-line errors naming the file.
TEST(Gguf, HostileFiles) {
    tmp_dir d;
    json j = moe_config();
    j["num_hidden_layers"] = 1;
    j["num_nextn_predict_layers"] = 0;
    j["first_k_dense_replace"] = 0;
    model_files m = make_model(j);
    gguf_export(m, d / "ok.gguf", {});
    std::ifstream f(d / "ok.gguf", std::ios::binary);
    std::string good((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    gguf_file g = gguf_read(d / "ok.gguf");
    const std::string bad = d / "bad.gguf";
    auto expect_fail = [&](const std::string& bytes, const std::string& needle) {
        std::ofstream(bad, std::ios::binary | std::ios::trunc) << bytes;
        try {
            model_load_gguf(bad);
            ADD_FAILURE() << "accepted: " << needle;
        } catch (const error& e) {
            std::string w = e.what();
            EXPECT_EQ(w.rfind(bad, 0), 0u) << w;
            EXPECT_EQ(w.find('\n'), std::string::npos) << w;
            EXPECT_NE(w.find(needle), std::string::npos) << "wanted '" << needle << "' in: " << w;
        }
    };
    // every truncation of the header + tensor table, and some of the data
    for (size_t n = 0; n < g.data_start + 64; n += (n < 400 ? 1 : 7)) expect_fail(good.substr(0, n), "");
    auto patch = [&](size_t at, const void* p, size_t k) {
        std::string s = good;
        std::memcpy(s.data() + at, p, k);
        return s;
    };
    expect_fail(patch(0, "GGUX", 4), "magic");
    uint32_t v2 = 2, vbe = 0x03000000u;
    expect_fail(patch(4, &v2, 4), "version");
    expect_fail(patch(4, &vbe, 4), "big-endian");
    int64_t huge = int64_t(1) << 60, neg = -1;
    expect_fail(patch(8, &huge, 8), "tensor_count");
    expect_fail(patch(16, &huge, 8), "kv_count");
    expect_fail(patch(16, &neg, 8), "kv_count");
    uint64_t biglen = uint64_t(1) << 62;
    expect_fail(patch(24, &biglen, 8), "string");
    uint32_t badtype = 99;
    expect_fail(patch(24 + 8 + 20, &badtype, 4), "value type");   // "general.architecture" is 20 bytes
    // tensor table: locate the first tensor's fields by scanning for its name
    const std::string tname = g.tensors[0].name;
    size_t at = good.find(tname, 24);
    ASSERT_NE(at, std::string::npos);
    size_t nd_at = at + tname.size(), ne_at = nd_at + 4, ty_at = ne_at + 8 * g.tensors[0].ne.size(), off_at = ty_at + 4;
    uint32_t nd9 = 9, ty2 = 2;
    expect_fail(patch(nd_at, &nd9, 4), "n_dims");
    expect_fail(patch(ty_at, &ty2, 4), "unsupported ggml type");
    int64_t negdim = -5;
    expect_fail(patch(ne_at, &negdim, 8), "negative dimension");
    uint64_t off3 = 3, offbig = uint64_t(1) << 40;
    expect_fail(patch(off_at, &off3, 8), "alignment");
    expect_fail(patch(off_at, &offbig, 8), "past the end");
    uint64_t off_dup = g.tensors[1].offset;
    expect_fail(patch(off_at, &off_dup, 8), "overlaps");
    int64_t wrong_dim = g.tensors[0].ne[0] + 32;
    expect_fail(patch(ne_at, &wrong_dim, 8), "");
    EXPECT_THROW(gguf_read(d / "missing.gguf"), error);
}
