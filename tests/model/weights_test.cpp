// Checkpoint layout: HF names, MTP export copies, files without the copies, BF16/F16 storage, config round trip.
#include <filesystem>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/weights.h"

namespace fs = std::filesystem;
using namespace mtp;

namespace {

nlohmann::json small_config() {
    return {{"vocab_size", 37}, {"hidden_size", 16}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
            {"intermediate_size", 24}, {"moe_intermediate_size", 8}, {"n_routed_experts", 4},
            {"n_shared_experts", 1}, {"num_experts_per_tok", 2}, {"first_k_dense_replace", 1},
            {"kv_lora_rank", 8}, {"q_lora_rank", 12}, {"qk_nope_head_dim", 4}, {"qk_rope_head_dim", 4},
            {"v_head_dim", 4}, {"num_nextn_predict_layers", 2}};
}

struct tmp_dir {
    fs::path p = fs::temp_directory_path() / ("mtp_weights_test_" + std::to_string(getpid()));
    tmp_dir() { fs::create_directories(p); }
    ~tmp_dir() { fs::remove_all(p); }
};

model_files make_model() {
    model_files m;
    m.config = config_from_json(small_config(), "test");
    m.layout = layout_build(m.config);
    weights_init(m.config, m.layout, m.weights, 7);
    return m;
}

} // namespace

TEST(Weights, MtpLayersUseHfIndicesAndExportCopies) {
    tmp_dir d;
    model_files m = make_model();
    model_save_dir(m, d.p.string());
    checkpoint ck = checkpoint_open(d.p.string());
    // MTP module k is layer num_hidden_layers + k - 1 = 2, 3
    for (int layer : {2, 3}) {
        std::string pre = "model.layers." + std::to_string(layer) + ".";
        for (const char* n : {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                              "embed_tokens.weight", "shared_head.head.weight", "self_attn.kv_b_proj.weight"})
            EXPECT_TRUE(ck.has(pre + n)) << pre + n;
        std::vector<float> copy, orig;
        ck.read_f32(pre + "shared_head.head.weight", copy);
        ck.read_f32("lm_head.weight", orig);
        EXPECT_EQ(copy, orig);
        ck.read_f32(pre + "embed_tokens.weight", copy);
        ck.read_f32("model.embed_tokens.weight", orig);
        EXPECT_EQ(copy, orig);
    }
    EXPECT_FALSE(ck.has("model.layers.4.enorm.weight"));
    // layer 1 is MoE (first_k_dense_replace 1), layer 0 dense, MTP layers follow the same rule
    EXPECT_TRUE(ck.has("model.layers.1.mlp.experts.3.down_proj.weight"));
    EXPECT_TRUE(ck.has("model.layers.0.mlp.gate_proj.weight"));
    EXPECT_TRUE(ck.has("model.layers.3.mlp.gate.e_score_correction_bias"));
    model_files back = model_load_dir(d.p.string());
    EXPECT_EQ(back.weights, m.weights);
}

TEST(Weights, LoadsFilesWithoutTheMtpCopies) {
    tmp_dir d;
    model_files m = make_model();
    std::vector<st_write_item> items;
    for (const auto& p : m.layout.params) items.push_back({p.name, p.shape, m.weights.data() + p.offset, dtype::f32});
    st_write((d.p / "model.safetensors").string(), items);
    config_save(m.config, (d.p / "config.json").string());
    model_files back = model_load_dir(d.p.string());
    EXPECT_EQ(back.weights, m.weights);
}

TEST(Weights, Bf16AndF16StorageRoundTrip) {
    for (const char* t : {"BF16", "F16"}) {
        tmp_dir d;
        model_files m = make_model();
        model_save_dir(m, d.p.string(), t);
        model_files back = model_load_dir(d.p.string());
        dtype dt;
        ASSERT_TRUE(dtype_from_name(t, dt));
        for (const auto& p : m.layout.params)
            for (size_t i = 0; i < p.size; ++i) {
                float w = m.weights[p.offset + i];
                // the router bias stays F32; everything else is rounded to the storage type
                float expect = !p.trainable ? w : dt == dtype::bf16 ? bf16_to_f32(f32_to_bf16(w)) : f16_to_f32(f32_to_f16(w));
                ASSERT_EQ(back.weights[p.offset + i], expect) << p.name;
            }
    }
}

TEST(Weights, ConfigRoundTripKeepsEveryKey) {
    model_config c = config_from_json(small_config(), "test");
    model_config back = config_from_json(config_to_json(c), "test");
    EXPECT_EQ(config_to_json(back), config_to_json(c));
    EXPECT_EQ(back.num_nextn_predict_layers, 2);
    EXPECT_EQ(back.q_lora_rank, 12);
}

TEST(Weights, ParallelHeadsRoundTripWithoutChainTensors) {
    nlohmann::json j = small_config();
    j["mtp_style"] = "parallel";
    const model_config c = config_from_json(j, "test");
    EXPECT_TRUE(c.mtp_parallel);
    const model_config back = config_from_json(config_to_json(c), "test");
    EXPECT_TRUE(back.mtp_parallel);
    EXPECT_EQ(config_to_json(back), config_to_json(c));
    EXPECT_FALSE(config_to_json(config_from_json(small_config(), "test")).contains("mtp_style"));
    const model_layout L = layout_build(c);
    EXPECT_EQ(L.find("model.layers." + std::to_string(c.num_hidden_layers) + ".eh_proj.weight"), nullptr);
    EXPECT_EQ(L.find("model.layers." + std::to_string(c.num_hidden_layers) + ".enorm.weight"), nullptr);
    EXPECT_NE(L.find("model.layers." + std::to_string(c.num_hidden_layers) + ".hnorm.weight"), nullptr);
    // Saved and loaded back: every weight bitwise.
    std::vector<float> w;
    weights_init(c, L, w, 5);
    const std::string dir = ::testing::TempDir() + "parallel_heads_rt";
    std::filesystem::create_directories(dir);
    weights_save(c, L, w, dir + "/model.safetensors");
    std::vector<float> w2;
    weights_load(L, dir, w2);
    EXPECT_EQ(w, w2);
    std::filesystem::remove_all(dir);
}

TEST(Weights, DeepSeekV3AttentionScale) {
    // spec §3.6: 192^-0.5 * (0.1*1*ln 40 + 1)^2 = 0.13523378
    nlohmann::json j = small_config();
    j["qk_nope_head_dim"] = 128;
    j["qk_rope_head_dim"] = 64;
    j["rope_scaling"] = {{"type", "yarn"}, {"factor", 40}, {"original_max_position_embeddings", 4096},
                         {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
    // the spec quotes 8 decimals (exact: 0.1352337789, 1.1e-9 away): 1e-8 = one unit of the last quoted digit
    EXPECT_NEAR(config_from_json(j, "test").attn_scale(), 0.13523378, 1e-8);
}

TEST(Weights, UnexpectedTensorIsAnError) {
    tmp_dir d;
    model_files m = make_model();
    std::vector<st_write_item> items;
    for (const auto& p : m.layout.params) items.push_back({p.name, p.shape, m.weights.data() + p.offset, dtype::f32});
    float x = 1;
    items.push_back({"model.layers.9.foo.weight", {1}, &x, dtype::f32});
    st_write((d.p / "model.safetensors").string(), items);
    config_save(m.config, (d.p / "config.json").string());
    try {
        model_load_dir(d.p.string());
        FAIL() << "expected an error";
    } catch (const mtp::error& e) {
        EXPECT_NE(std::string(e.what()).find("model.layers.9.foo.weight"), std::string::npos);
    }
}
