// Tests the grouped experts (model/expert_group.cpp): one expert per thread gives the results of running the experts
// one after another, bitwise, forward and backward, whether an expert runs grouped or alone, with and without the
// shared expert in the job.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include <omp.h>

#include <nlohmann/json.hpp>

#include "core/arena.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/ffn.h"
#include "model/weights.h"

namespace {

using nlohmann::json;
using namespace mtp;

json moe_json(int shared) {
    return json{{"vocab_size", 37},         {"hidden_size", 24},        {"num_hidden_layers", 1},
                {"num_attention_heads", 2}, {"intermediate_size", 40},  {"q_lora_rank", 16},
                {"kv_lora_rank", 12},       {"qk_nope_head_dim", 8},    {"qk_rope_head_dim", 4},
                {"v_head_dim", 8},          {"rms_norm_eps", 1e-6},     {"initializer_range", 0.2},
                {"num_nextn_predict_layers", 0}, {"n_routed_experts", 8}, {"num_experts_per_tok", 2},
                {"n_group", 4},             {"topk_group", 2},          {"topk_method", "noaux_tc"},
                {"scoring_func", "sigmoid"}, {"norm_topk_prob", true},  {"routed_scaling_factor", 2.5},
                {"n_shared_experts", shared},    {"moe_intermediate_size", 8}, {"first_k_dense_replace", 0}};
}

struct moe_run {
    std::vector<float> y, dx, G;
    std::vector<int> rows;     // rows per expert
};

// One forward and backward of the layer's MoE over B sequences of T rows with the given thread count.
moe_run run_moe(const model_config& c, const model_layout& L, const std::vector<float>& W, const std::vector<float>& x,
                const std::vector<float>& dy, int T, int B, int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    const int R = B * T, d = c.hidden_size;
    const layer_offsets& l = L.layers[0];
    moe_run out;
    out.y.assign(size_t(R) * d, 0.0f);
    out.dx.assign(size_t(R) * d, 0.0f);
    out.G.assign(W.size(), 0.0f);
    arena a;
    moe_cache m;
    moe_forward(c, l, W.data(), m, out.y.data(), x.data(), T, /*alpha=*/0.01f, a, nullptr, B);
    moe_backward(c, l, W.data(), out.G.data(), m, out.dx.data(), dy.data(), 0.01f, 1.0f, a);
    for (int e = 0; e < c.n_routed_experts; ++e) out.rows.push_back(m.start[size_t(e) + 1] - m.start[size_t(e)]);
    omp_set_num_threads(saved);
    return out;
}

void expect_bitwise(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size());
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < a.size(); ++i)
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0 && bad++ == 0) first = i;
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << a.size() << " differ, first at " << first << " ("
                       << a[first] << " vs " << b[first] << ")";
}

// 4 threads: expert 0, given every token by its selection bias (half of the routed rows, a third of all rows with
// the shared expert's), has more than its share and runs alone on all threads, as does the shared expert; the
// other seven run one per thread. 1 thread runs every expert alone, in turn.
void check_threads(bool crowd_expert0, int shared = 1) {
    const model_config c = config_from_json(moe_json(shared), "expert_group_test config");
    const model_layout L = layout_build(c);
    std::vector<float> W;
    weights_init(c, L, W, 11);
    const layer_offsets& l = L.layers[0];
    if (crowd_expert0) W[l.router_bias] = 50.0f;
    const int T = 40, B = 3, R = B * T, d = c.hidden_size;
    rng r(12);
    std::vector<float> x(size_t(R) * d), dy(size_t(R) * d);
    for (auto& v : x) v = float(r.normal());
    for (auto& v : dy) v = float(r.normal());
    const moe_run one = run_moe(c, L, W, x, dy, T, B, 1), four = run_moe(c, L, W, x, dy, T, B, 4);
    EXPECT_EQ(one.rows, four.rows);
    int busy = 0;
    for (int n : one.rows) busy += n > 0;
    EXPECT_GE(busy, 5) << "the grouped job should hold several experts";
    if (crowd_expert0) {
        EXPECT_EQ(one.rows[0], R) << "expert 0 should hold half of the rows";
    }
    expect_bitwise(one.y, four.y, "y");
    expect_bitwise(one.dx, four.dx, "dx");
    expect_bitwise(one.G, four.G, "parameter gradients");
}

TEST(ExpertGroup, OneExpertPerThreadEqualsExpertsInTurn) { check_threads(false); }
TEST(ExpertGroup, AnExpertWithMoreThanItsShareRunsAloneWithTheSameResult) { check_threads(true); }
TEST(ExpertGroup, WithoutASharedExpert) { check_threads(false, 0); }
TEST(ExpertGroup, TwoSharedExpertsAsOneWiderSwiglu) { check_threads(false, 2); }

} // namespace
