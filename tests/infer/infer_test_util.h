// Shared helpers of the inference tests: small random models and the fp32 rounding tolerance.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "core/rng.h"
#include "infer/decode.h"
#include "model/config.h"
#include "model/weights.h"

namespace mtp::test {

constexpr double u32 = 0x1p-24;

// A small DeepSeek-V3 config: dense or MoE (MTP layers then MoE too), q_lora or plain q_proj, YaRN or plain RoPE.
// initializer_range 0.2 so that logits are far from uniform and argmax is decisive.
inline nlohmann::json small_config(int D, bool moe, bool q_lora, bool yarn, int vocab = 40, int max_pos = 160) {
    nlohmann::json j{{"vocab_size", vocab},        {"hidden_size", 32},     {"num_hidden_layers", 2},
                     {"num_attention_heads", 2},   {"intermediate_size", 48}, {"kv_lora_rank", 16},
                     {"qk_nope_head_dim", 8},      {"qk_rope_head_dim", 4}, {"v_head_dim", 8},
                     {"rms_norm_eps", 1e-6},       {"initializer_range", 0.2}, {"rope_theta", 10000.0},
                     {"max_position_embeddings", max_pos}, {"num_nextn_predict_layers", D}};
    if (q_lora) j["q_lora_rank"] = 16;
    if (moe) {
        j["n_routed_experts"] = 4;
        j["n_shared_experts"] = 1;
        j["num_experts_per_tok"] = 2;
        j["moe_intermediate_size"] = 16;
        j["first_k_dense_replace"] = 1;
        j["n_group"] = 2;
        j["topk_group"] = 1;
        j["routed_scaling_factor"] = 2.5;
        j["norm_topk_prob"] = true;
    }
    if (yarn)
        j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32},
                             {"beta_fast", 32.0}, {"beta_slow", 1.0}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
    return j;
}

// The same config with parallel heads (spec §8) instead of the sequential MTP chain.
inline nlohmann::json with_parallel_heads(nlohmann::json j) {
    j["mtp_style"] = "parallel";
    return j;
}

// Random weights (N(0, initializer_range)), norms moved away from 1 so that a swapped norm is noticed.
inline model_files random_model(const nlohmann::json& j, uint64_t seed) {
    model_files m;
    m.config = config_from_json(j, "test config");
    m.layout = layout_build(m.config);
    weights_init(m.config, m.layout, m.weights, seed);
    rng r(seed + 99);
    for (const auto& p : m.layout.params)
        if (p.trainable && !p.decay)
            for (size_t i = 0; i < p.size; ++i) m.weights[p.offset + i] = float(1.0 + 0.3 * r.normal());
    return m;
}

// The generation tests run thousands of forwards over a few rows of a tiny model, where OpenMP fork/join would
// dominate and stall whenever the machine is loaded; they run single-threaded (the KV-cache test keeps the default).
struct single_thread_scope {
    int saved = omp_get_max_threads();
    single_thread_scope() { omp_set_num_threads(1); }
    ~single_thread_scope() { omp_set_num_threads(saved); }
};

// Decode passes of two or more rows split their row-wise steps across the helpers (at the default threshold these
// small models never do).
struct row_split_scope {
    size_t saved = mtp::decode_set_row_split_min(0);
    ~row_split_scope() { mtp::decode_set_row_split_min(saved); }
};

// Model from $MTP_TRAINED_MODEL when set (the lead's trained-model check), else nullptr-like empty.
inline bool trained_model_dir(std::string& dir) {
    const char* e = std::getenv("MTP_TRAINED_MODEL");
    if (!e || !*e) return false;
    dir = e;
    return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Rounding tolerance for "the same model computed two ways" (full forward vs cached decode in chunks, or one batch
// shape vs another). Both evaluate the same expression in fp32; they differ only in how reductions are associated
// (naive vs absorbed MLA, GEMM blocking that depends on the row count). A reduction of n terms in any order is
// within n·u·Σ|terms| of the exact sum (u = 2^-24), and a relative perturbation of a stage's inputs passes through
// the following stages with O(1) gain (norms renormalise, residual adds, softmax/SwiGLU are Lipschitz at these
// activation scales), so to first order the relative error of a logit is at most Σ_stages n_stage·u ≤ S·n_max·u,
// S = dependent fp32 stages on the path from the embedding to the logit, n_max = the longest reduction. The scale
// is that of the last reduction, Σ_i |W_vi h_i| of the logit's row. Both computations carry such an error: ×2.
// ---------------------------------------------------------------------------------------------------------------
constexpr int stages_per_layer = 22;   // 2 norms, q_a/q_a_norm/q_b, kv_a/kv_norm, absorb, score, softmax, P·V, W_UV,
                                       // o_proj, 2 residuals, router + combine, gate/up, silu·mul, down (20), + 2 slack
// + 2: final norm and lm_head; + 5 per MTP module beyond its layer (enorm, hnorm, eh_proj, shared_head.norm, head).
inline int stages_to_depth(const model_config& c, int k) {     // k = 0: main head, k >= 1: MTP depth k
    return stages_per_layer * c.num_hidden_layers + 2 + k * (stages_per_layer + 5);
}
inline int longest_reduction(const model_config& c, int T) {
    // 2·hidden: eh_proj's input [enorm(e); hnorm(h)]; T: the attention's P·V over the positions.
    int n = std::max({2 * c.hidden_size, c.q_lora_rank, c.kv_lora_rank, c.num_attention_heads * c.v_head_dim,
                      c.qk_head_dim(), c.intermediate_size, c.moe_intermediate_size, T});
    return n;
}
// Σ_i |W_vi h_i| maximised over v, for one hidden row h.
inline double head_scale(const model_files& m, const float* h) {
    const int d = m.config.hidden_size, V = m.config.vocab_size;
    const float* W = m.weights.data() + m.layout.lm_head;
    double best = 0;
    for (int v = 0; v < V; ++v) {
        double s = 0;
        for (int i = 0; i < d; ++i) s += std::fabs(double(W[size_t(v) * d + i]) * h[i]);
        best = std::max(best, s);
    }
    return best;
}
inline double logit_tolerance(const model_files& m, int k, int T, const float* h) {
    return 2.0 * stages_to_depth(m.config, k) * longest_reduction(m.config, T) * u32 * head_scale(m, h);
}

} // namespace mtp::test
