// Tests the backward passes (MLA, SwiGLU, MoE, layer, MTP module, whole model) against central finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <omp.h>

#include <nlohmann/json.hpp>

#include "core/arena.h"
#include "core/gemm_bf16.h"
#include "core/ops.h"
#include "core/rng.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/ffn.h"
#include "model/layer.h"
#include "model/model.h"
#include "model/mtp.h"
#include "model/rope.h"
#include "model/weights.h"
#include "../fd_harness.h"

namespace {

using nlohmann::json;
using namespace mtp;

using namespace mtp::fd;

// Gradient checks: two random directions, one per tensor, four random coordinates (more for the whole model).
constexpr fd_plan grad_plan(int directions = 2, int coords = 4) { return fd_plan{directions, true, 0, coords}; }

// ---------------------------------------------------------------------------------------------------------------
// Configs and fixtures
// ---------------------------------------------------------------------------------------------------------------

json base_json() {
    return json{{"vocab_size", 37},        {"hidden_size", 24},       {"num_hidden_layers", 1},
                {"num_attention_heads", 2}, {"intermediate_size", 40}, {"q_lora_rank", 16},
                {"kv_lora_rank", 12},       {"qk_nope_head_dim", 8},   {"qk_rope_head_dim", 4},
                {"v_head_dim", 8},          {"rms_norm_eps", 1e-6},    {"initializer_range", 0.2},
                {"rope_theta", 10000.0},    {"num_nextn_predict_layers", 0}};
}

json with_yarn(json j) {
    // original 16 positions: cd(beta_fast) < 0 and cd(beta_slow) ∈ (0,1), so f_0 keeps its value, f_1 is divided.
    j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 16},
                         {"beta_fast", 32.0}, {"beta_slow", 1.0}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
    return j;
}

json without_q_lora(json j) {
    j.erase("q_lora_rank");
    return j;
}

// sigmoid scoring, selection bias, 4 groups keep 2 (top-2 group sums), normalised top-k, shared expert.
json moe_sigmoid_groups(json j) {
    j["n_routed_experts"] = 8;
    j["num_experts_per_tok"] = 2;
    j["n_group"] = 4;
    j["topk_group"] = 2;
    j["topk_method"] = "noaux_tc";
    j["scoring_func"] = "sigmoid";
    j["norm_topk_prob"] = true;
    j["routed_scaling_factor"] = 2.5;
    j["n_shared_experts"] = 1;
    j["moe_intermediate_size"] = 8;
    j["first_k_dense_replace"] = 0;
    return j;
}

// softmax scoring, plain greedy top-k, no normalisation, no shared expert.
json moe_softmax_greedy(json j) {
    j["n_routed_experts"] = 6;
    j["num_experts_per_tok"] = 2;
    j["n_group"] = 1;
    j["topk_group"] = 1;
    j["topk_method"] = "greedy";
    j["scoring_func"] = "softmax";
    j["norm_topk_prob"] = false;
    j["routed_scaling_factor"] = 1.0;
    j["n_shared_experts"] = 0;
    j["moe_intermediate_size"] = 8;
    j["first_k_dense_replace"] = 0;
    return j;
}

// softmax scoring, groups without bias (group score = max), normalised top-3, 2 shared experts.
json moe_softmax_grouped(json j) {
    j["n_routed_experts"] = 8;
    j["num_experts_per_tok"] = 3;
    j["n_group"] = 2;
    j["topk_group"] = 1;
    j["topk_method"] = "group_limited_greedy";
    j["scoring_func"] = "softmax";
    j["norm_topk_prob"] = true;
    j["routed_scaling_factor"] = 1.5;
    j["n_shared_experts"] = 2;
    j["moe_intermediate_size"] = 6;
    j["first_k_dense_replace"] = 0;
    return j;
}

struct fixture {
    model_config c;
    model_layout L;
    std::vector<float> W, G;

    fixture(const json& j, uint64_t seed) {
        c = config_from_json(j, "grad_test config");
        L = layout_build(c);
        weights_init(c, L, W, seed);
        rng r(seed * 7919 + 1);
        for (const auto& p : L.params) {
            float* w = W.data() + p.offset;
            if (!p.trainable) {                                   // router selection bias: matters for selection
                for (size_t i = 0; i < p.size; ++i) w[i] = float(0.05 * r.normal());
            } else if (!p.decay) {                                // norms: away from 1
                for (size_t i = 0; i < p.size; ++i) w[i] = float(1.0 + 0.3 * r.normal());
            }
        }
        G.assign(W.size(), 0.0f);
    }

    // Every trainable tensor whose name satisfies pred, as an FD slot over W with its gradient in G.
    template <class Pred>
    std::vector<fd_slot> slots(Pred pred) {
        std::vector<fd_slot> s;
        for (const auto& p : L.params) {
            if (!p.trainable || !pred(p.name)) continue;
            double ss = 0;
            for (size_t i = 0; i < p.size; ++i) ss += double(W[p.offset + i]) * W[p.offset + i];
            double rms = std::sqrt(ss / double(p.size));
            s.push_back({p.name, W.data() + p.offset, G.data() + p.offset, p.size, rms > 0 ? rms : 1.0});
        }
        return s;
    }

    // The router bias never receives a gradient, and nothing outside the parameters (alignment padding) does.
    void expect_no_stray_gradient() const {
        std::vector<char> covered(G.size(), 0);
        for (const auto& p : L.params) {
            if (!p.trainable) {
                for (size_t i = 0; i < p.size; ++i) EXPECT_EQ(G[p.offset + i], 0.0f) << p.name << "[" << i << "]";
                continue;
            }
            std::fill(covered.begin() + long(p.offset), covered.begin() + long(p.offset + p.size), 1);
        }
        for (size_t i = 0; i < G.size(); ++i)
            if (!covered[i]) {
                ASSERT_EQ(G[i], 0.0f) << "gradient written outside a trainable tensor at " << i;
            }
    }
};

bool starts_with(const std::string& s, const std::string& pre) { return s.compare(0, pre.size(), pre) == 0; }

struct rope_tab {
    std::vector<float> cos, sin;
    rope_tab(const model_config& c, int pos0, int T) {
        auto f = rope_frequencies(c);
        std::vector<int> pos(T);
        std::iota(pos.begin(), pos.end(), pos0);
        cos.resize(size_t(T) * f.size());
        sin.resize(size_t(T) * f.size());
        rope_table(f, pos.data(), T, cos.data(), sin.data());
    }
};

// Rounding stages on the longest path of one MLA: q_a, its norm, q_b, RoPE, scores, softmax, P·V, o_proj.
constexpr int mla_depth = 8;
// SwiGLU: gate/up GEMM, silu·u, down GEMM.
constexpr int swiglu_depth = 3;
// MoE: router GEMM, scores, top-k weights (normalisation), expert SwiGLU, weighted sum.
constexpr int moe_depth = 4 + swiglu_depth;
// Decoder layer: two norms and two residual adds around MLA and the FFN.
int layer_depth(const layer_offsets& l) { return 4 + mla_depth + (l.moe ? moe_depth : swiglu_depth); }
// MTP module: enorm/hnorm, eh_proj, the layer, shared_head.norm.
int mtp_depth(const layer_offsets& l) { return 3 + layer_depth(l); }

// ---------------------------------------------------------------------------------------------------------------
// Routing: an independent reference of the selection (spec §4), and the margin that decides it.
//
// The MoE output jumps when a selection changes, so a finite difference is only valid while every ± evaluation
// selects exactly as p does (asserted by the tests). Inputs are therefore redrawn until every routing decision
// has a margin of at least τ = 20·ε in selection-score units: a relative perturbation of 2ε moves a router
// logit z by ≈ 2ε·|z| (|z| ≈ 1 here) and a score by at most ½ of that (sigmoid and softmax slopes are ≤ ¼ and
// ≤ ½), so both sides of a decision together move by well under τ/2 (measured: under 3ε in the MoE-layer test).
// ---------------------------------------------------------------------------------------------------------------

double selection_margin(double eps) { return 20.0 * eps; }

struct route_decision {
    std::vector<int> selected;   // ascending expert indices
    double margin = 0;           // smallest gap between a kept and a dropped alternative (groups, then experts)
};

route_decision reference_route(const model_config& c, const float* s, const float* bias) {
    const int E = c.n_routed_experts, K = c.num_experts_per_tok;
    std::vector<double> b(E);
    for (int e = 0; e < E; ++e) b[e] = double(s[e]) + (bias ? double(bias[e]) : 0.0);
    std::vector<char> allowed(E, 1);
    route_decision r;
    r.margin = std::numeric_limits<double>::infinity();
    if (c.n_group > 1) {
        const int G = c.n_group, per = E / G;
        std::vector<std::pair<double, int>> gs;
        for (int g = 0; g < G; ++g) {
            std::vector<double> v(b.begin() + g * per, b.begin() + (g + 1) * per);
            std::sort(v.rbegin(), v.rend());
            gs.push_back({bias ? v[0] + v[1] : v[0], g});              // top-2 sum with a bias, else the max
        }
        std::stable_sort(gs.begin(), gs.end(), [](auto& x, auto& y) { return x.first > y.first; });
        if (c.topk_group < G) r.margin = gs[c.topk_group - 1].first - gs[c.topk_group].first;
        for (int k = c.topk_group; k < G; ++k)
            for (int i = 0; i < per; ++i) allowed[gs[k].second * per + i] = 0;
    }
    std::vector<std::pair<double, int>> cand;
    for (int e = 0; e < E; ++e)
        if (allowed[e]) cand.push_back({b[e], e});
    std::stable_sort(cand.begin(), cand.end(), [](auto& x, auto& y) { return x.first > y.first; });
    if (int(cand.size()) > K) r.margin = std::min(r.margin, cand[K - 1].first - cand[K].first);
    for (int k = 0; k < K; ++k) r.selected.push_back(cand[k].second);
    std::sort(r.selected.begin(), r.selected.end());
    return r;
}

// Smallest routing margin of the tokens rows [t0, t1) of one MoE forward.
double routing_margin(const model_config& c, const layer_offsets& l, const float* W, const moe_cache& m, int t0, int t1) {
    const float* bias = l.router_bias != no_param ? W + l.router_bias : nullptr;
    double mg = std::numeric_limits<double>::infinity();
    for (int t = t0; t < t1; ++t)
        mg = std::min(mg, reference_route(c, m.s + size_t(t) * c.n_routed_experts, bias).margin);
    return mg;
}

// The selected expert SET of each token (ascending): the order within a token's top-k does not change the loss.
std::vector<int> selection_sets(const int* idx, int T, int K) {
    std::vector<int> v(idx, idx + size_t(T) * K);
    for (int t = 0; t < T; ++t) std::sort(v.begin() + size_t(t) * K, v.begin() + size_t(t + 1) * K);
    return v;
}

// Redraws input rows in order t = 0..T-1 until the decisions whose latest input is row t have margin ≥ tau.
// margin_at(t) runs a forward on the current inputs; rows < t are already fixed and causal attention keeps them so.
void condition_inputs(int T, double tau, const std::function<double(int)>& margin_at,
                      const std::function<void(int)>& redraw) {
    single_thread_scope one_thread;
    for (int t = 0; t < T; ++t) {
        int tries = 0;
        while (margin_at(t) < tau) {
            // a loop guard, not a statistic: 5000 redraws only run out when τ cannot be met at all
            ASSERT_LT(++tries, 5000) << "cannot find an input row " << t << " with routing margin " << tau;
            redraw(t);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// MLA
// ---------------------------------------------------------------------------------------------------------------

// threads > 0: run with that many OpenMP threads (restored after).
void check_mla(const json& j, const std::string& what, uint64_t seed, int T = 7, int threads = 0) {
    struct thread_guard {
        int saved = omp_get_max_threads();
        explicit thread_guard(int n) { if (n > 0) omp_set_num_threads(n); }
        ~thread_guard() { omp_set_num_threads(saved); }
    } tg(threads);
    fixture fx(j, seed);
    const int d = fx.c.hidden_size;
    const layer_offsets& l = fx.L.layers[0];
    rope_tab rt(fx.c, 3, T);                                     // positions 3..9
    rng r(seed + 1);
    auto x = randn(r, size_t(T) * d), rr = randn(r, size_t(T) * d);
    std::vector<float> y(size_t(T) * d), gx(size_t(T) * d, 0.0f);
    arena a;
    mla_cache m;
    mla_forward(fx.c, l, fx.W.data(), m, y.data(), x.data(), T, rt.cos.data(), rt.sin.data(), a);
    mla_backward(fx.c, l, fx.W.data(), fx.G.data(), m, gx.data(), rr.data(), a);
    fx.expect_no_stray_gradient();
    auto slots = fx.slots([](const std::string& n) { return n.find(".self_attn.") != std::string::npos; });
    EXPECT_EQ(slots.size(), fx.c.q_lora_rank > 0 ? 7u : 5u);
    if (T <= 64) {
        slots.push_back({"x", x.data(), gx.data(), gx.size(), 1.0});
    } else {
        // x in slots that keep the rows at the causal blocks' edges apart (slots must not overlap), so that a term
        // a block boundary drops from one row's gradient is not diluted among all the rows of a direction.
        std::vector<int> cut{0};
        for (int t : {63, 64, 65, 127, 128, 129, T - 1})
            if (t > cut.back() && t < T) cut.push_back(t);
        cut.push_back(T);
        for (size_t i = 0; i + 1 < cut.size(); ++i)
            slots.push_back({"x rows " + std::to_string(cut[i]) + ".." + std::to_string(cut[i + 1] - 1),
                             x.data() + size_t(cut[i]) * d, gx.data() + size_t(cut[i]) * d,
                             size_t(cut[i + 1] - cut[i]) * d, 1.0});
    }
    loss_fn loss = [&](double* abs) {
        a.reset();
        mla_cache mc;
        mla_forward(fx.c, l, fx.W.data(), mc, y.data(), x.data(), T, rt.cos.data(), rt.sin.data(), a);
        return dot_loss(rr.data(), y.data(), y.size(), abs);
    };
    // ε: 5e-3 .. 1e-2 on dense paths, near the (c·u)^(1/3) ≈ 1e-2 (c = 16) .. 1.6e-2 (c = 66) balance of truncation
    // and rounding (fd_harness.h); 2e-3, below it, where routing must not flip (selection_margin). Measured worst
    // err/tol over every FD check of this file: 0.41 (GradModel).
    fd_verify(what, slots, loss, 1e-2, rounding_c(mla_depth), seed + 2, grad_plan());
}

TEST(GradMla, WithQLora) { check_mla(base_json(), "mla q_lora", 101); }
TEST(GradMla, WithoutQLora) { check_mla(without_q_lora(base_json()), "mla q_proj", 102); }
TEST(GradMla, WithQLoraAndYarn) { check_mla(with_yarn(base_json()), "mla q_lora yarn", 103); }
TEST(GradMla, WithoutQLoraAndYarn) { check_mla(with_yarn(without_q_lora(base_json())), "mla q_proj yarn", 104); }
// Longer than the attention core's causal blocks (64 rows): 150 = 64 + 64 + 22, so every product over blocks and
// the partial last block are checked.
// The fused core keeps no T x T probabilities: what the forward leaves in the arena grows linearly with T.
TEST(GradMla, ForwardMemoryIsLinearInTheSequence) {
    fixture fx(base_json(), 108);
    const layer_offsets& l = fx.L.layers[0];
    auto used_after = [&](int T) {
        rope_tab rt(fx.c, 0, T);
        rng r(109);
        auto x = randn(r, size_t(T) * fx.c.hidden_size);
        std::vector<float> y(x.size());
        arena a;
        a.min_block = size_t(1) << 24;                               // one block: `used` is the whole footprint
        mla_cache m;
        mla_forward(fx.c, l, fx.W.data(), m, y.data(), x.data(), T, rt.cos.data(), rt.sin.data(), a);
        EXPECT_EQ(a.mark().block, 0u);
        return double(a.mark().used);
    };
    const double u256 = used_after(256), u1024 = used_after(1024);
    // Linear: 4x the rows, 4x the floats (plus alignment). The T x T probabilities of the heads would make it ~13x
    // at these sizes (2 heads: 2·T² floats against ~100·T for the rows).
    EXPECT_LT(u1024, 4.5 * u256) << u256 << " floats at T=256, " << u1024 << " at T=1024";
}

// A NaN that reaches the attention scores only (a NaN query weight) must make the output NaN, as exp would: the
// vectorised softmax clamps NaN inside its exp, and a finite output here would hide a diverged run.
TEST(GradMla, NanScoresGiveNanOutput) {
    fixture fx(base_json(), 106);
    const int T = 9, d = fx.c.hidden_size;
    const layer_offsets& l = fx.L.layers[0];
    rope_tab rt(fx.c, 0, T);
    rng r(107);
    auto x = randn(r, size_t(T) * d);
    std::vector<float> y(size_t(T) * d);
    arena a;
    mla_cache m;
    mla_forward(fx.c, l, fx.W.data(), m, y.data(), x.data(), T, rt.cos.data(), rt.sin.data(), a);
    for (float v : y) ASSERT_TRUE(std::isfinite(v));
    fx.W[l.q_b] = NAN;                                               // one query weight: every query row's scores
    a.reset();
    mla_cache m2;
    mla_forward(fx.c, l, fx.W.data(), m2, y.data(), x.data(), T, rt.cos.data(), rt.sin.data(), a);
    for (int t = 0; t < T; ++t) EXPECT_TRUE(std::isnan(y[size_t(t) * d])) << "row " << t;
}

TEST(GradMla, SequenceOfSeveralCausalBlocks) { check_mla(base_json(), "mla q_lora T 150", 105, 150); }
// With two threads (and 64 rows or more) the q path and the kv path run at once, one thread each, and the q path's
// dL/dx is added after: checked with and without q_lora.
TEST(GradMla, TwoPathsAtOnceWithTwoThreads) {
    check_mla(base_json(), "mla q_lora T 96, 2 threads", 110, 96, 2);
    check_mla(without_q_lora(base_json()), "mla q_proj T 96, 2 threads", 111, 96, 2);
}

// ---------------------------------------------------------------------------------------------------------------
// SwiGLU
// ---------------------------------------------------------------------------------------------------------------

TEST(GradSwiglu, MatchesFiniteDifferences) {
    fixture fx(base_json(), 201);
    const int T = 6, d = fx.c.hidden_size;
    const swiglu_offsets& s = fx.L.layers[0].mlp;
    rng r(202);
    auto x = randn(r, size_t(T) * d), rr = randn(r, size_t(T) * d);
    std::vector<float> y(size_t(T) * d), gx(size_t(T) * d, 0.0f);
    arena a;
    swiglu_cache m;
    swiglu_forward(fx.W.data(), s, m, y.data(), x.data(), T, d, a);
    swiglu_backward(fx.W.data(), fx.G.data(), s, m, gx.data(), rr.data(), d, a);
    fx.expect_no_stray_gradient();
    auto slots = fx.slots([](const std::string& n) { return n.find(".mlp.") != std::string::npos; });
    EXPECT_EQ(slots.size(), 3u);
    slots.push_back({"x", x.data(), gx.data(), gx.size(), 1.0});
    loss_fn loss = [&](double* abs) {
        a.reset();
        swiglu_cache mc;
        swiglu_forward(fx.W.data(), s, mc, y.data(), x.data(), T, d, a);
        return dot_loss(rr.data(), y.data(), y.size(), abs);
    };
    fd_verify("swiglu", slots, loss, 1e-2, rounding_c(swiglu_depth), 203, grad_plan());

    // accumulate=true adds into y.
    auto y0 = randn(r, y.size()), ya = y0;
    a.reset();
    swiglu_cache mc;
    swiglu_forward(fx.W.data(), s, mc, y.data(), x.data(), T, d, a);
    swiglu_forward(fx.W.data(), s, mc, ya.data(), x.data(), T, d, a, /*accumulate=*/true);
    // the down GEMM adds its sum to y0 once (beta = 1): fl(y0 + s) vs y0 + fl(s), one rounding each side
    for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(ya[i], y0[i] + y[i], 2 * u32 * (std::fabs(y0[i]) + std::fabs(y[i])));
}

// ---------------------------------------------------------------------------------------------------------------
// MoE
// ---------------------------------------------------------------------------------------------------------------

// The router of one forward against the reference: scores from the logits, the selected set, the combine weights.
void expect_router_matches_reference(const model_config& c, const layer_offsets& l, const float* W, const moe_cache& m,
                                     const float* x, int T) {
    const int d = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
    const float* bias = l.router_bias != no_param ? W + l.router_bias : nullptr;
    for (int t = 0; t < T; ++t) {
        std::vector<double> z(E), sr(E);
        double zabs = 0;
        for (int e = 0; e < E; ++e) {
            double a = 0;
            for (int i = 0; i < d; ++i) {
                a += double(W[l.router + size_t(e) * d + i]) * x[size_t(t) * d + i];
                zabs = std::max(zabs, std::fabs(double(W[l.router + size_t(e) * d + i]) * x[size_t(t) * d + i]) * d);
            }
            z[e] = a;
        }
        if (c.scoring_sigmoid) {
            for (int e = 0; e < E; ++e) sr[e] = 1.0 / (1.0 + std::exp(-z[e]));
        } else {
            double mx = *std::max_element(z.begin(), z.end()), sum = 0;
            for (int e = 0; e < E; ++e) sum += (sr[e] = std::exp(z[e] - mx));
            for (int e = 0; e < E; ++e) sr[e] /= sum;
        }
        // Logit error ≤ d·u·Σ|w x| (≤ zabs); scores move by at most that (slopes ≤ 1), plus a few roundings:
        // 4·E·u absolute (scores ≤ 1) ≥ softmax's ≈ (E + 4)·u (z − max, exp, the E-term sum, the division) and
        // sigmoid's ≈ 4u, for E ≥ 2.
        const float* s = m.s + size_t(t) * E;
        for (int e = 0; e < E; ++e) EXPECT_NEAR(s[e], sr[e], d * u32 * zabs + 4 * E * u32) << "score t=" << t << " e=" << e;
        route_decision ref = reference_route(c, s, bias);
        std::vector<int> got(m.idx + size_t(t) * K, m.idx + size_t(t + 1) * K);
        std::sort(got.begin(), got.end());
        EXPECT_EQ(got, ref.selected) << "selection of token " << t;
        double sum = 0;
        for (int k = 0; k < K; ++k) sum += s[m.idx[t * K + k]];
        const bool norm = c.norm_topk_prob && K > 1;
        for (int k = 0; k < K; ++k) {
            double w = s[m.idx[t * K + k]] * (norm ? 1.0 / sum : 1.0) * c.routed_scaling_factor;
            // K-term sum, division, two products: (K + 3)·u ≤ 4·K·u for K ≥ 1
            EXPECT_NEAR(m.w[t * K + k], w, 4 * K * u32 * std::fabs(w)) << "combine weight t=" << t << " k=" << k;
        }
    }
}

// r_scale = 0 checks the balance-loss gradient alone.
void check_moe(const json& j, const std::string& what, uint64_t seed, float alpha, float bal_scale, double r_scale,
               double eps) {
    fixture fx(j, seed);
    const int T = 8, d = fx.c.hidden_size, K = fx.c.num_experts_per_tok;
    const layer_offsets& l = fx.L.layers[0];
    ASSERT_TRUE(l.moe);
    rng r(seed + 1);
    auto x = randn(r, size_t(T) * d), rr = randn(r, size_t(T) * d, r_scale);
    std::vector<float> y(size_t(T) * d), gx(size_t(T) * d, 0.0f);
    arena a;
    condition_inputs(
        T, selection_margin(eps),
        [&](int t) {
            a.reset();
            moe_cache mc;
            moe_forward(fx.c, l, fx.W.data(), mc, y.data(), x.data(), T, alpha, a);
            return routing_margin(fx.c, l, fx.W.data(), mc, t, t + 1);
        },
        [&](int t) { for (int i = 0; i < d; ++i) x[size_t(t) * d + i] = float(r.normal()); });
    a.reset();
    moe_cache m;
    moe_forward(fx.c, l, fx.W.data(), m, y.data(), x.data(), T, alpha, a);
    expect_router_matches_reference(fx.c, l, fx.W.data(), m, x.data(), T);
    if (alpha > 0) {
        EXPECT_GT(m.bal_loss, 0.0);
    } else {
        EXPECT_EQ(m.bal_loss, 0.0);
    }
    const std::vector<int> idx0 = selection_sets(m.idx, T, K);
    moe_backward(fx.c, l, fx.W.data(), fx.G.data(), m, gx.data(), rr.data(), alpha, bal_scale, a);
    fx.expect_no_stray_gradient();
    auto slots = fx.slots([](const std::string& n) { return n.find(".mlp.") != std::string::npos; });
    slots.push_back({"x", x.data(), gx.data(), gx.size(), 1.0});
    int flips = 0;
    loss_fn loss = [&](double* abs) {
        a.reset();
        moe_cache mc;
        moe_forward(fx.c, l, fx.W.data(), mc, y.data(), x.data(), T, alpha, a);
        if (selection_sets(mc.idx, T, K) != idx0) ++flips;
        double L = dot_loss(rr.data(), y.data(), y.size(), abs) + bal_scale * mc.bal_loss;
        if (abs) *abs += bal_scale * std::fabs(mc.bal_loss);
        return L;
    };
    // The balance loss alone runs through the router GEMM, the scores and their sum only.
    fd_verify(what, slots, loss, eps, rounding_c(r_scale > 0 ? moe_depth : 3), seed + 2, grad_plan());
    EXPECT_EQ(flips, 0) << what << ": expert selection changed under the perturbation; ε too large";
}

TEST(GradMoe, SigmoidBiasGroupsNormalised) {
    check_moe(moe_sigmoid_groups(base_json()), "moe sigmoid groups", 301, 0.0f, 1.0f, 1.0, 2e-3);
}
TEST(GradMoe, SoftmaxGreedyUnnormalised) {
    check_moe(moe_softmax_greedy(base_json()), "moe softmax greedy", 302, 0.0f, 1.0f, 1.0, 2e-3);
}
TEST(GradMoe, SoftmaxGroupsNormalised) {
    check_moe(moe_softmax_grouped(base_json()), "moe softmax groups", 303, 0.0f, 1.0f, 1.0, 2e-3);
}
TEST(GradMoe, SigmoidWithBalanceLoss) {
    check_moe(moe_sigmoid_groups(base_json()), "moe sigmoid + balance", 304, 0.5f, 0.7f, 1.0, 2e-3);
}
TEST(GradMoe, SoftmaxWithBalanceLoss) {
    check_moe(moe_softmax_greedy(base_json()), "moe softmax + balance", 305, 0.5f, 0.7f, 1.0, 2e-3);
}
TEST(GradMoe, BalanceLossAlone) {
    check_moe(moe_sigmoid_groups(base_json()), "balance loss only (sigmoid)", 306, 2.0f, 1.0f, 0.0, 2e-3);
    check_moe(moe_softmax_greedy(base_json()), "balance loss only (softmax)", 307, 2.0f, 1.0f, 0.0, 2e-3);
}

// ---------------------------------------------------------------------------------------------------------------
// Decoder layer
// ---------------------------------------------------------------------------------------------------------------

void check_layer(const json& j, const std::string& what, uint64_t seed, float alpha, double eps) {
    fixture fx(j, seed);
    const int T = 7, d = fx.c.hidden_size;
    const layer_offsets& l = fx.L.layers[0];
    const float bal_scale = 0.8f;
    rope_tab rt(fx.c, 0, T);
    rng r(seed + 1);
    auto x = randn(r, size_t(T) * d), rr = randn(r, size_t(T) * d);
    std::vector<float> y = x;
    arena a;
    if (l.moe)
        condition_inputs(
            T, selection_margin(eps),
            [&](int t) {
                a.reset();
                layer_cache mc;
                y = x;
                layer_forward(fx.c, l, fx.W.data(), mc, y.data(), T, rt.cos.data(), rt.sin.data(), alpha, a);
                return routing_margin(fx.c, l, fx.W.data(), mc.moe, t, t + 1);
            },
            [&](int t) { for (int i = 0; i < d; ++i) x[size_t(t) * d + i] = float(r.normal()); });
    a.reset();
    y = x;
    layer_cache m;
    layer_forward(fx.c, l, fx.W.data(), m, y.data(), T, rt.cos.data(), rt.sin.data(), alpha, a);
    std::vector<int> idx0;
    if (l.moe) idx0 = selection_sets(m.moe.idx, T, fx.c.num_experts_per_tok);
    std::vector<float> gx = rr;                                  // in: dL/d(output); out: dL/d(input)
    layer_backward(fx.c, l, fx.W.data(), fx.G.data(), m, gx.data(), alpha, bal_scale, a);
    fx.expect_no_stray_gradient();
    auto slots = fx.slots([](const std::string& n) { return starts_with(n, "model.layers.0."); });
    slots.push_back({"x", x.data(), gx.data(), gx.size(), 1.0});
    int flips = 0;
    loss_fn loss = [&](double* abs) {
        a.reset();
        layer_cache mc;
        y = x;
        double bal = layer_forward(fx.c, l, fx.W.data(), mc, y.data(), T, rt.cos.data(), rt.sin.data(), alpha, a);
        if (l.moe && selection_sets(mc.moe.idx, T, fx.c.num_experts_per_tok) != idx0) ++flips;
        double L = dot_loss(rr.data(), y.data(), y.size(), abs) + bal_scale * bal;
        if (abs) *abs += bal_scale * std::fabs(bal);
        return L;
    };
    fd_verify(what, slots, loss, eps, rounding_c(layer_depth(l)), seed + 2, grad_plan());
    EXPECT_EQ(flips, 0) << what << ": expert selection changed under the perturbation";
}

TEST(GradLayer, Dense) { check_layer(base_json(), "dense layer", 401, 0.0f, 1e-2); }
TEST(GradLayer, MoeWithBalanceLoss) {
    check_layer(with_yarn(moe_sigmoid_groups(base_json())), "moe layer", 402, 0.3f, 2e-3);
}

// ---------------------------------------------------------------------------------------------------------------
// MTP module
// ---------------------------------------------------------------------------------------------------------------

void check_mtp(const json& j0, const std::string& what, uint64_t seed, float alpha, double eps) {
    json j = j0;
    j["num_nextn_predict_layers"] = 1;
    fixture fx(j, seed);
    const int T = 6, d = fx.c.hidden_size, V = fx.c.vocab_size;
    const layer_offsets& l = fx.L.mtp[0];
    const float bal_scale = 0.6f;
    rope_tab rt(fx.c, 0, T);
    rng r(seed + 1);
    auto hprev = randn(r, size_t(T) * d), rr = randn(r, size_t(T) * d);
    std::vector<int> tok(T);
    for (auto& t : tok) t = int(r.below(V));
    tok[4] = tok[1];                                             // a repeated token: embedding rows accumulate
    arena a;
    if (l.moe)
        condition_inputs(
            T, selection_margin(eps),
            [&](int t) {
                a.reset();
                mtp_cache mc;
                mtp_forward(fx.c, fx.L, l, fx.W.data(), mc, hprev.data(), tok.data(), T, rt.cos.data(), rt.sin.data(),
                            alpha, a, a.alloc(size_t(T) * d));
                return routing_margin(fx.c, l, fx.W.data(), mc.layer.moe, t, t + 1);
            },
            [&](int t) { for (int i = 0; i < d; ++i) hprev[size_t(t) * d + i] = float(r.normal()); });
    a.reset();
    mtp_cache m;
    mtp_forward(fx.c, fx.L, l, fx.W.data(), m, hprev.data(), tok.data(), T, rt.cos.data(), rt.sin.data(), alpha, a,
                a.alloc(size_t(T) * d));
    std::vector<int> idx0;
    if (l.moe) idx0 = selection_sets(m.layer.moe.idx, T, fx.c.num_experts_per_tok);
    std::vector<float> dh = rr, dhprev(size_t(T) * d, 0.0f);
    mtp_backward(fx.c, fx.L, l, fx.W.data(), fx.G.data(), m, dh.data(), dhprev.data(), alpha, bal_scale, a);
    fx.expect_no_stray_gradient();
    const std::string pre = "model.layers." + std::to_string(fx.c.num_hidden_layers) + ".";
    auto slots = fx.slots([&](const std::string& n) { return starts_with(n, pre) || n == "model.embed_tokens.weight"; });
    slots.push_back({"hprev", hprev.data(), dhprev.data(), dhprev.size(), 1.0});
    int flips = 0;
    loss_fn loss = [&](double* abs) {
        a.reset();
        mtp_cache mc;
        mtp_forward(fx.c, fx.L, l, fx.W.data(), mc, hprev.data(), tok.data(), T, rt.cos.data(), rt.sin.data(), alpha, a,
                    a.alloc(size_t(T) * d));
        if (l.moe && selection_sets(mc.layer.moe.idx, T, fx.c.num_experts_per_tok) != idx0) ++flips;
        double L = dot_loss(rr.data(), mc.h, size_t(T) * d, abs) + bal_scale * mc.bal_loss;
        if (abs) *abs += bal_scale * std::fabs(mc.bal_loss);
        return L;
    };
    fd_verify(what, slots, loss, eps, rounding_c(mtp_depth(l)), seed + 2, grad_plan());
    EXPECT_EQ(flips, 0) << what << ": expert selection changed under the perturbation";
}

TEST(GradMtp, DenseModule) { check_mtp(base_json(), "mtp dense", 501, 0.0f, 1e-2); }
TEST(GradMtp, MoeModuleWithBalanceLoss) { check_mtp(moe_softmax_grouped(base_json()), "mtp moe", 502, 0.4f, 2e-3); }

// ---------------------------------------------------------------------------------------------------------------
// Whole model: model_forward + model_loss vs model_backward
// ---------------------------------------------------------------------------------------------------------------

// Expert selection sets of every MoE layer of the last forward.
std::vector<int> all_selections(const fixture& fx, const model_state& s) {
    std::vector<int> v;
    const int K = fx.c.num_experts_per_tok;
    auto add = [&](const std::vector<int>& x) { v.insert(v.end(), x.begin(), x.end()); };
    for (int i = 0; i < fx.c.num_hidden_layers; ++i)
        if (fx.L.layers[i].moe) add(selection_sets(s.layers[i].moe.idx, s.T, K));
    for (int k = 0; k < fx.c.n_mtp(); ++k)
        if (fx.L.mtp[k].moe && s.mtp[k].T > 0) add(selection_sets(s.mtp[k].layer.moe.idx, s.mtp[k].T, K));
    return v;
}

// Smallest routing margin among the decisions whose latest input token is t: trunk position t, depth k position t-k.
double model_margin_at(const fixture& fx, const model_state& s, int t) {
    double mg = std::numeric_limits<double>::infinity();
    for (int i = 0; i < fx.c.num_hidden_layers; ++i)
        if (fx.L.layers[i].moe)
            mg = std::min(mg, routing_margin(fx.c, fx.L.layers[i], fx.W.data(), s.layers[i].moe, t, t + 1));
    for (int k = 1; k <= fx.c.n_mtp(); ++k) {
        const int row = fx.c.mtp_parallel ? t : t - k;             // the module row token t enters last
        if (fx.L.mtp[k - 1].moe && row >= 0 && row < s.mtp[k - 1].T)
            mg = std::min(mg, routing_margin(fx.c, fx.L.mtp[k - 1], fx.W.data(), s.mtp[k - 1].layer.moe, row, row + 1));
    }
    return mg;
}

// The loss's first-order sensitivity to relative errors of its fp32 inputs: Σ|∂L/∂logit · logit| over every head
// (the cross-entropy itself runs in double) plus the balance loss (computed from fp32 scores).
double model_loss_abs(const fixture& fx, const model_state& s, float lambda) {
    const int T = s.T, V = fx.c.vocab_size, D = fx.c.n_mtp();
    double abs = std::fabs(s.bal_loss);
    auto head = [&](const float* logits, int rows, int k, double scale) {
        std::vector<int> tgt(rows);
        for (int i = 0; i < rows; ++i) tgt[i] = i + k + 1 < T ? s.tokens[i + k + 1] : -1;
        std::vector<float> g(size_t(rows) * V);
        cross_entropy(g.data(), logits, tgt.data(), rows, V, float(scale));
        for (size_t i = 0; i < g.size(); ++i) abs += std::fabs(double(g[i]) * logits[i]);
    };
    if (T >= 2) head(s.logits, T, 0, 1.0 / (T - 1));
    for (int k = 1; k <= D; ++k)
        if (T - k - 1 > 0) head(s.mtp[k - 1].logits, s.mtp[k - 1].T, k, lambda / D / (T - k - 1));
    return abs;
}

void check_model(const json& j, const std::string& what, uint64_t seed, float alpha, double eps, int T = 8) {
    fixture fx(j, seed);
    const float lambda = 0.3f;
    rng r(seed + 1);
    std::vector<int> tokens(T);
    for (auto& t : tokens) t = int(r.below(fx.c.vocab_size));
    arena a;
    condition_inputs(
        T, selection_margin(eps),
        [&](int t) {
            a.reset();
            model_state st;
            model_forward(fx.c, fx.L, fx.W.data(), st, tokens.data(), T, alpha, a);
            return model_margin_at(fx, st, t);
        },
        [&](int t) { tokens[t] = int(r.below(fx.c.vocab_size)); });
    a.reset();
    model_state s;
    model_forward(fx.c, fx.L, fx.W.data(), s, tokens.data(), T, alpha, a);
    const std::vector<int> sel0 = all_selections(fx, s);
    const loss_stats ls = model_loss(fx.c, s, lambda);
    const loss_stats lb = model_backward(fx.c, fx.L, fx.W.data(), fx.G.data(), s, lambda, alpha, 1.0f, a);
    EXPECT_EQ(lb.total, ls.total) << "model_backward reports the loss model_loss computes";
    if (alpha > 0) {
        EXPECT_GT(ls.bal, 0.0);
    }
    fx.expect_no_stray_gradient();
    auto slots = fx.slots([](const std::string&) { return true; });
    int flips = 0;
    loss_fn loss = [&](double* abs) {
        a.reset();
        model_state st;
        model_forward(fx.c, fx.L, fx.W.data(), st, tokens.data(), T, alpha, a);
        if (all_selections(fx, st) != sel0) ++flips;
        double L = model_loss(fx.c, st, lambda).total;
        if (abs) *abs = model_loss_abs(fx, st, lambda);
        return L;
    };
    int depth = 3;                                                // final norm, lm_head, cross-entropy
    for (const auto& l : fx.L.layers) depth += layer_depth(l);
    for (const auto& l : fx.L.mtp) depth += mtp_depth(l);
    fd_verify(what, slots, loss, eps, rounding_c(depth), seed + 2, grad_plan(3, 6));
    EXPECT_EQ(flips, 0) << what << ": expert selection changed under the perturbation";
}

TEST(GradModel, DenseD0) {
    json j = base_json();
    j["num_hidden_layers"] = 2;
    check_model(j, "model D=0", 601, 0.0f, 5e-3);
}

TEST(GradModel, MoeSigmoidYarnD1) {
    json j = with_yarn(moe_sigmoid_groups(base_json()));
    j["num_hidden_layers"] = 2;
    j["first_k_dense_replace"] = 1;
    j["n_routed_experts"] = 4;
    j["n_group"] = 2;
    j["topk_group"] = 1;
    j["num_nextn_predict_layers"] = 1;
    check_model(j, "model D=1", 602, 0.3f, 2e-3);
}

TEST(GradModel, MoeSoftmaxNoQLoraD2) {
    json j = without_q_lora(moe_softmax_greedy(base_json()));
    j["num_hidden_layers"] = 2;
    j["first_k_dense_replace"] = 1;
    j["n_routed_experts"] = 4;
    j["num_nextn_predict_layers"] = 2;
    check_model(j, "model D=2", 603, 0.3f, 2e-3);
}

// Parallel heads (spec §8): every head's input gradient flows to the trunk's h.
TEST(GradModel, ParallelHeadsMoeD2) {
    json j = moe_softmax_grouped(base_json());
    j["num_hidden_layers"] = 2;
    j["first_k_dense_replace"] = 1;
    j["num_nextn_predict_layers"] = 2;
    j["mtp_style"] = "parallel";
    check_model(j, "model parallel heads D=2", 605, 0.3f, 2e-3);
}

// Short sequences: depth 2 of D = 2 has one row and no target, depth 1 one target (T = 3).
TEST(GradModel, ShortSequenceD2) {
    json j = moe_softmax_grouped(base_json());
    j["num_nextn_predict_layers"] = 2;
    check_model(j, "model D=2, T=3", 604, 0.2f, 2e-3, 3);
}

// T = 1: no target anywhere; without the balance loss the loss is 0 and no gradient is written.
TEST(GradModel, SingleTokenHasNoLossAndNoGradient) {
    json j = moe_sigmoid_groups(base_json());
    j["num_nextn_predict_layers"] = 2;
    fixture fx(j, 605);
    arena a;
    model_state s;
    const int tok = 5;
    model_forward(fx.c, fx.L, fx.W.data(), s, &tok, 1, 0.0f, a);
    loss_stats ls = model_backward(fx.c, fx.L, fx.W.data(), fx.G.data(), s, 0.3f, 0.0f, 1.0f, a);
    EXPECT_EQ(ls.total, 0.0);
    for (float g : fx.G) ASSERT_EQ(g, 0.0f);
}

// G += weight · dL/dW: a power-of-two weight scales every gradient exactly, and a second backward accumulates.
TEST(GradModel, BackwardIsLinearInWeightAndAccumulates) {
    json j = moe_sigmoid_groups(base_json());
    j["num_nextn_predict_layers"] = 2;
    fixture fx(j, 701);
    const int T = 8;
    std::vector<int> tokens{3, 14, 15, 9, 26, 5, 35, 8};
    arena a;
    auto grad = [&](float weight, int times) {
        std::vector<float> G(fx.W.size(), 0.0f);
        for (int i = 0; i < times; ++i) {
            a.reset();
            model_state s;
            model_forward(fx.c, fx.L, fx.W.data(), s, tokens.data(), T, 0.1f, a);
            model_backward(fx.c, fx.L, fx.W.data(), G.data(), s, 0.3f, 0.1f, weight, a);
        }
        return G;
    };
    auto g1 = grad(1.0f, 1), gh = grad(0.5f, 1), g2 = grad(1.0f, 2);
    size_t nonzero = 0;
    for (const auto& p : fx.L.params) {
        double gmax = 0;
        for (size_t i = 0; i < p.size; ++i) gmax = std::max(gmax, double(std::fabs(g1[p.offset + i])));
        for (size_t i = p.offset; i < p.offset + p.size; ++i) {
            EXPECT_EQ(gh[i], 0.5f * g1[i]) << p.name;             // halving every input of a float op is exact
            // A second backward adds the same contributions again, in the same order, on top of the first sum:
            // each of the (few) accumulations into one entry rounds once, relative to the tensor's scale. 16u allows
            // 8 roundings of partial sums ≤ 2·gmax; measured worst 6.4u·gmax.
            EXPECT_NEAR(g2[i], 2.0f * g1[i], 16 * u32 * gmax) << p.name;
            nonzero += g1[i] != 0.0f;
        }
    }
    EXPECT_GT(nonzero, g1.size() / 2);   // a floor (unused embedding rows, unselected experts stay 0): measured 84%
}


// ---------------------------------------------------------------------------------------------------------------
// B sequences in one forward/backward (every product over all their rows) = the per-sequence path above
// ---------------------------------------------------------------------------------------------------------------

// Each sequence of a batched forward gives the losses, logits, expert selections and loads of a forward over it
// alone, and the batched backward's gradient is the sum of the per-sequence gradients — within the rounding of
// products summed in another order (tolerances: 1e-5 of each tensor's scale, the fp32 sums having ≤ ~100 terms
// each at u = 6e-8; measured worst 4e-7). Breaking the sequence boundaries (attention across sequences, one balance
// loss over the batch, the MTP inputs gathered without the per-sequence offset) fails it.
void check_batched(const json& j, uint64_t seed, float alpha, int T, int B) {
    SCOPED_TRACE("T " + std::to_string(T) + " B " + std::to_string(B));
    fixture fx(j, seed);
    const float lambda = 0.3f;
    rng r(seed + 1);
    std::vector<int> tokens(size_t(B) * T);
    for (auto& t : tokens) t = int(r.below(fx.c.vocab_size));
    const int V = fx.c.vocab_size, E = std::max(fx.c.n_routed_experts, 1);
    arena a;
    // per sequence
    std::vector<float> Gsum(fx.W.size(), 0.0f);
    loss_stats mean;
    mean.mtp.assign(fx.c.n_mtp(), 0.0);
    std::vector<std::vector<float>> logits(B);
    std::vector<std::vector<int>> sel(B);
    std::vector<double> load_single(size_t(fx.c.n_layers_total()) * E, 0.0);
    for (int b = 0; b < B; ++b) {
        a.reset();
        model_state s;
        model_forward(fx.c, fx.L, fx.W.data(), s, tokens.data() + size_t(b) * T, T, alpha, a, &load_single);
        logits[b].assign(s.logits, s.logits + size_t(s.rows) * V);
        sel[b] = all_selections(fx, s);
        const loss_stats l = model_backward(fx.c, fx.L, fx.W.data(), Gsum.data(), s, lambda, alpha, 1.0f, a);
        mean.total += l.total / B, mean.main += l.main / B, mean.bal += l.bal / B;
        for (int k = 0; k < fx.c.n_mtp(); ++k) mean.mtp[k] += l.mtp[k] / B;
    }
    // batched
    a.reset();
    model_state s;
    std::vector<double> load(size_t(fx.c.n_layers_total()) * E, 0.0);
    model_forward(fx.c, fx.L, fx.W.data(), s, tokens.data(), T, alpha, a, &load, -1, B);
    EXPECT_EQ(load, load_single) << "tokens routed per layer and expert";
    // logits: the rows of sequence b at depth k (0 = main head) are its own forward's rows of that depth
    const int D = fx.c.n_mtp();
    double lmax = 0;
    for (const auto& v : logits) for (float x : v) lmax = std::max(lmax, double(std::fabs(x)));
    size_t single_off = 0;
    for (int k = 0; k <= D; ++k) {
        const int Tk = T - k;
        if (Tk <= 0) break;
        const size_t batched_off = k == 0 ? 0 : s.mtp[k - 1].head_row;
        for (int b = 0; b < B; ++b)
            for (size_t i = 0; i < size_t(Tk) * V; ++i)
                ASSERT_NEAR(s.logits[(batched_off + size_t(b) * Tk) * V + i], logits[b][single_off * V + i], 1e-5 * lmax)
                    << "depth " << k << " sequence " << b << " element " << i;
        single_off += Tk;
    }
    // expert selections of every trunk MoE layer: per sequence, in order (all_selections lists the trunk first)
    const int K = fx.c.num_experts_per_tok;
    for (int i = 0, li = 0; i < fx.c.num_hidden_layers; ++i) {
        if (!fx.L.layers[i].moe) continue;
        const auto v = selection_sets(s.layers[i].moe.idx, B * T, K);
        for (int b = 0; b < B; ++b)
            EXPECT_TRUE(std::equal(v.begin() + long(b) * T * K, v.begin() + long(b + 1) * T * K,
                                   sel[b].begin() + long(li) * T * K))
                << "layer " << i << " sequence " << b;
        ++li;
    }
    const loss_stats lf = model_loss(fx.c, s, lambda);
    std::vector<float> G(fx.W.size(), 0.0f);
    const loss_stats lb = model_backward(fx.c, fx.L, fx.W.data(), G.data(), s, lambda, alpha, 1.0f, a);
    EXPECT_EQ(lf.total, lb.total);
    EXPECT_NEAR(lb.total, mean.total, 1e-6 * std::fabs(mean.total));
    EXPECT_NEAR(lb.main, mean.main, 1e-6 * std::fabs(mean.main));
    EXPECT_NEAR(lb.bal, mean.bal, 1e-6 * std::fabs(mean.bal) + 1e-12);
    if (alpha > 0 && fx.c.n_routed_experts > 0) { EXPECT_GT(lb.bal, 0.0); }
    for (int k = 0; k < D; ++k) EXPECT_NEAR(lb.mtp[k], mean.mtp[k], 1e-6 * std::fabs(mean.mtp[k]) + 1e-12) << k;
    size_t nonzero = 0;
    for (const auto& p : fx.L.params) {
        double gmax = 0;
        for (size_t i = 0; i < p.size; ++i) gmax = std::max(gmax, double(std::fabs(Gsum[p.offset + i])));
        for (size_t i = p.offset; i < p.offset + p.size; ++i) {
            ASSERT_NEAR(G[i], Gsum[i], 1e-5 * gmax + 1e-30) << p.name << " [" << i - p.offset << "]";
            nonzero += Gsum[i] != 0.0f;
        }
    }
    EXPECT_GT(nonzero, G.size() / 3);
}

TEST(GradModel, BatchedSequencesEqualPerSequence) {
    json moe = moe_sigmoid_groups(base_json());
    moe["num_hidden_layers"] = 2;
    moe["num_nextn_predict_layers"] = 2;
    check_batched(moe, 801, 0.3f, 9, 3);                       // MoE trunk and modules, balance loss, D = 2
    check_batched(moe, 802, 0.3f, 3, 4);                       // depth 2 has one row and no target
    json dense = without_q_lora(with_yarn(base_json()));
    dense["num_hidden_layers"] = 2;
    dense["num_nextn_predict_layers"] = 1;
    check_batched(dense, 803, 0.0f, 7, 2);
    json par = moe_softmax_grouped(base_json());
    par["num_hidden_layers"] = 2;
    par["first_k_dense_replace"] = 1;
    par["num_nextn_predict_layers"] = 2;
    par["mtp_style"] = "parallel";
    check_batched(par, 804, 0.3f, 8, 3);                       // parallel heads read the trunk's rows
    check_batched(moe, 805, 0.3f, 6, 1);                       // B = 1 is the per-sequence path itself
}


// bf16 mixed precision (core/gemm_bf16.h): the same backward with every matrix product in bf16 (fp32 accumulation)
// gives gradients within the error bf16 rounding explains. Each product rounds both inputs to 8 significant bits
// (relative error ≤ 2^-9 each, so ≤ 2^-8 per product); along a chain of n products the relative errors add, so a
// tensor's gradient is within n·2^-8 of the fp32 one in norm, n = the model's product depth (as check_model counts
// it, ×2 for the backward's products). Measured with every kernel (scalar, avx512bf16, amx): mean 0.0128 over the
// tensors, worst 0.121 (layer 0 expert 3, which few tokens reach: a near-cancelling sum) against the bound 0.664.
// The mean must also stay above 2^-12: bf16 rounding has to show (the precision switch reached the products).
// MTP_TEST_VERBOSE=1 prints every tensor's figure.
TEST(GradModel, Bf16GradientsWithinBf16Rounding) {
    json j = moe_sigmoid_groups(base_json());
    j["num_hidden_layers"] = 2;
    j["num_nextn_predict_layers"] = 2;
    fixture fx(j, 811);
    const int T = 9, B = 2;
    rng r(812);
    std::vector<int> tokens(size_t(B) * T);
    for (auto& t : tokens) t = int(r.below(fx.c.vocab_size));
    arena a;
    auto grad = [&](matmul_precision p, loss_stats* ls) {
        struct restore { ~restore() { set_matmul_precision(matmul_precision::fp32); } } guard;
        set_matmul_precision(p);
        std::vector<float> G(fx.W.size(), 0.0f);
        a.reset();
        model_state s;
        model_forward(fx.c, fx.L, fx.W.data(), s, tokens.data(), T, 0.1f, a, nullptr, -1, B);
        *ls = model_backward(fx.c, fx.L, fx.W.data(), G.data(), s, 0.3f, 0.1f, 1.0f, a);
        return G;
    };
    loss_stats l32, l16;
    const auto g32 = grad(matmul_precision::fp32, &l32), g16 = grad(matmul_precision::bf16, &l16);
    int depth = 3;
    for (const auto& l : fx.L.layers) depth += layer_depth(l);
    for (const auto& l : fx.L.mtp) depth += mtp_depth(l);
    const double bound = 2.0 * depth * 0x1p-8;
    EXPECT_NEAR(l16.total, l32.total, depth * 0x1p-8 * std::fabs(l32.total));
    double worst = 0, total_rel = 0;
    int n = 0;
    for (const auto& p : fx.L.params) {
        if (!p.trainable) continue;
        double num = 0, den = 0;
        for (size_t i = p.offset; i < p.offset + p.size; ++i) {
            num += double(g16[i] - g32[i]) * (g16[i] - g32[i]);
            den += double(g32[i]) * g32[i];
        }
        if (den == 0) continue;
        const double rel = std::sqrt(num / den);
        EXPECT_LE(rel, bound) << p.name;
        if (std::getenv("MTP_TEST_VERBOSE")) std::printf("  %-40s %.3g\n", p.name.c_str(), rel);
        worst = std::max(worst, rel);
        total_rel += rel, ++n;
    }
    EXPECT_GT(total_rel / n, 0x1p-12) << "bf16 rounding left no trace: did the products run in bf16?";
    std::printf("bf16 vs fp32 gradients: worst relative norm error %.3g, mean %.3g, bound %.3g (%s kernel)\n", worst,
                total_rel / n, bound, bf16_kernel_name(gemm_bf16_kernel()));
}

} // namespace
