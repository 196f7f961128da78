// Model configuration: the Hugging Face DeepseekV3 config.json keys (spec §1), parsed with validation.
#pragma once
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace mtp {

struct rope_scaling_config {
    bool yarn = false;
    double factor = 1.0;
    int original_max_position_embeddings = 4096;
    double beta_fast = 32.0, beta_slow = 1.0;
    double mscale = 0.0, mscale_all_dim = 0.0;   // 0: absent (as Hugging Face reads them: absent or 0 alike)
    double attention_factor = 0.0;               // > 0: given explicitly (overrides the mscale rule)
};

struct model_config {
    int vocab_size = 0, hidden_size = 0, num_hidden_layers = 0, num_attention_heads = 0;
    int intermediate_size = 0, moe_intermediate_size = 0;
    int first_k_dense_replace = 0, moe_layer_freq = 1;
    int n_routed_experts = 0, n_shared_experts = 0, num_experts_per_tok = 0;
    int n_group = 1, topk_group = 1;
    double routed_scaling_factor = 1.0;
    bool norm_topk_prob = false;
    bool scoring_sigmoid = true;            // scoring_func: "sigmoid" (true) or "softmax"
    std::string topk_method = "noaux_tc";   // "noaux_tc" (selection bias present) or "greedy"
    int q_lora_rank = 0;                    // 0 = null: plain q_proj
    int kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
    double rope_theta = 10000.0;
    rope_scaling_config rope_scaling;
    int max_position_embeddings = 2048;
    double rms_norm_eps = 1e-6;
    double initializer_range = 0.02;
    int bos_token_id = 0, eos_token_id = 1;
    int num_nextn_predict_layers = 0;
    bool mtp_parallel = false;              // "mtp_style": "parallel" (spec §8: independent heads on h) or
                                            // "sequential" (absent; spec §5: the causal chain of modules)

    // derived
    int n_mtp() const { return num_nextn_predict_layers; }
    int n_layers_total() const { return num_hidden_layers + num_nextn_predict_layers; }
    // The stage whose hidden state feeds MTP stage k (1..D): k-1 in the sequential chain, 0 (the trunk) for
    // parallel heads. Parallel heads read no token either.
    int mtp_input_stage(int k) const { return mtp_parallel ? 0 : k - 1; }
    int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
    bool has_router_bias() const { return topk_method == "noaux_tc"; }
    // spec §1: layer i is MoE iff n_routed_experts>0 && i >= first_k_dense_replace && i % moe_layer_freq == 0
    bool is_moe_layer(int i) const {
        return n_routed_experts > 0 && i >= first_k_dense_replace && i % moe_layer_freq == 0;
    }
    double attn_scale() const;              // (nope+rope)^-0.5 * m^2 (spec §3.6)
};

// Parses and validates; `where` (a file path) prefixes every error, which names the bad key.
model_config config_from_json(const nlohmann::json& j, const std::string& where);
model_config config_load(const std::string& path);
nlohmann::json config_to_json(const model_config& c);
void config_save(const model_config& c, const std::string& path);   // atomic

} // namespace mtp
