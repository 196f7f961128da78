// Tests absorbed MLA on the latent cache (chunked, truncated) against naive MLA, and the RoPE/YaRN tables.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/arena.h"
#include "core/rng.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/rope.h"
#include "model/weights.h"

namespace {

using nlohmann::json;
using namespace mtp;

constexpr double u32 = 0x1p-24;

json base_json() {
    return json{{"vocab_size", 37},        {"hidden_size", 24},       {"num_hidden_layers", 1},
                {"num_attention_heads", 2}, {"intermediate_size", 40}, {"q_lora_rank", 16},
                {"kv_lora_rank", 12},       {"qk_nope_head_dim", 8},   {"qk_rope_head_dim", 4},
                {"v_head_dim", 8},          {"rms_norm_eps", 1e-6},    {"initializer_range", 0.2},
                {"rope_theta", 10000.0}};
}

json with_yarn(json j) {
    j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 16},
                         {"beta_fast", 32.0}, {"beta_slow", 1.0}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
    return j;
}

json without_q_lora(json j) {
    j.erase("q_lora_rank");
    return j;
}

struct mla_setup {
    static constexpr int T = 11;                 // positions 0..10
    model_config c;
    model_layout L;
    std::vector<float> W, x, cos, sin;
    int half = 0;

    mla_setup(const json& j, uint64_t seed) {
        c = config_from_json(j, "attention_test config");
        L = layout_build(c);
        weights_init(c, L, W, seed);
        rng r(seed + 17);
        for (const auto& p : L.params)                               // norms away from 1
            if (p.trainable && !p.decay)
                for (size_t i = 0; i < p.size; ++i) W[p.offset + i] = float(1.0 + 0.3 * r.normal());
        x.resize(size_t(T) * c.hidden_size);
        for (auto& v : x) v = float(r.normal());
        half = c.qk_rope_head_dim / 2;
        std::vector<int> pos(T);
        std::iota(pos.begin(), pos.end(), 0);
        cos.resize(size_t(T) * half);
        sin.resize(size_t(T) * half);
        rope_table(rope_frequencies(c), pos.data(), T, cos.data(), sin.data());
    }
    const layer_offsets& l() const { return L.layers[0]; }
    int d() const { return c.hidden_size; }

    std::vector<float> naive(arena& a) const {
        std::vector<float> y(size_t(T) * d());
        mla_cache m;
        mla_forward(c, l(), W.data(), m, y.data(), x.data(), T, cos.data(), sin.data(), a);
        return y;
    }
    // Feeds rows [t0, t0+n) of `in` (positions t0..) to the absorbed form, writing rows of y.
    void absorbed(mla_latent_cache& lc, const float* in, int t0, int n, float* y, arena& a) const {
        ASSERT_EQ(lc.n, t0);
        mla_absorbed_forward(c, l(), W.data(), lc, y + size_t(t0) * d(), in + size_t(t0) * d(), n,
                             cos.data() + size_t(t0) * half, sin.data() + size_t(t0) * half, a);
        ASSERT_EQ(lc.n, t0 + n);
    }
    // The chunks in order, starting at position 0.
    std::vector<float> absorbed_chunks(mla_latent_cache& lc, const std::vector<int>& chunks, arena& a) const {
        std::vector<float> y(size_t(T) * d(), std::nanf(""));
        int t = 0;
        for (int n : chunks) {
            absorbed(lc, x.data(), t, n, y.data(), a);
            t += n;
        }
        return y;
    }

    // Agreement tolerance between the two forms. They differ only in how the products are associated:
    // naive   k_nope = W_UK·c_kv (kvl terms), score = q·k (nope+rope terms), v = W_UV·c_kv (kvl), o = P·v (T terms);
    // absorbed q_abs = q_nope·W_UK (nope terms), score = q_abs·c_kv + q_pe·k_pe (kvl+rope), o_lat = P·c_kv (T),
    //          o = W_UV·o_lat (kvl);
    // then both run o_proj (H·v terms). Each reduction of n terms is within n·u of its absolute-value sum; a score
    // error δ moves the output by at most ~δ·max|v|. Summing the reduction lengths of both paths gives the budget
    // n_total·u relative to the output's absolute scale, doubled for the score→softmax→output amplification.
    double tolerance(const std::vector<float>& y_ref) const {
        const int nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, kvl = c.kv_lora_rank;
        const int n_total = (kvl + nope + rope + T + kvl) * 2 + c.num_attention_heads * c.v_head_dim;
        double ymax = 0;
        for (float v : y_ref) ymax = std::max(ymax, double(std::fabs(v)));
        return 2.0 * n_total * u32 * ymax;
    }
};

void expect_close(const std::vector<float>& got, const std::vector<float>& ref, int row0, int row1, int d, double tol,
                  const char* what) {
    double worst = 0;
    for (int t = row0; t < row1; ++t)
        for (int i = 0; i < d; ++i) {
            double e = std::fabs(double(got[size_t(t) * d + i]) - ref[size_t(t) * d + i]);
            EXPECT_LE(e, tol) << what << ": row " << t << " col " << i << " got " << got[size_t(t) * d + i] << " want "
                              << ref[size_t(t) * d + i];
            worst = std::max(worst, e);
        }
    if (std::getenv("MTP_FD_VERBOSE"))
        std::printf("    %s: worst %.3e, tol %.3e, worst/tol %.3f\n", what, worst, tol, worst / tol);
}

void check_absorbed(const json& j, uint64_t seed) {
    mla_setup st(j, seed);
    const int T = mla_setup::T, d = st.d();
    arena a;
    const std::vector<float> y_ref = st.naive(a);
    const double tol = st.tolerance(y_ref);

    // Prefill 4, then 1, then 3, then 3 at a time.
    mla_latent_cache lc;
    std::vector<float> y = st.absorbed_chunks(lc, {4, 1, 3, 3}, a);
    ASSERT_EQ(lc.n, T);
    expect_close(y, y_ref, 0, T, d, tol, "chunks 4,1,3,3");
    // tol = 2·n_total·u·max|y| = 2·110·2^-24·max|y| ≈ 1.3e-5·max|y| for these shapes (measured worst error: 0.018 of
    // tol); 1e-3 of the largest output is 50-75× that here, a ceiling against a budget formula that has blown up.
    EXPECT_LT(tol, 1e-3 * *std::max_element(y_ref.begin(), y_ref.end())) << "tolerance must stay at rounding level";

    // The cache holds exactly c_kv and the rotated k_pe per position (spec §3): check it against the naive cache.
    mla_cache m;
    std::vector<float> tmp(size_t(T) * d);
    mla_forward(st.c, st.l(), st.W.data(), m, tmp.data(), st.x.data(), T, st.cos.data(), st.sin.data(), a);
    const int kvl = st.c.kv_lora_rank, rope = st.c.qk_rope_head_dim;
    // Same code (project_kv_latent) on other row counts: only the BLAS blocking over T differs. 8u·(1 + |v|) is an
    // allowance over the measured worst, 2.8u·(1 + |v|) (c_kv) and 6.2u·(1 + |v|) (k_pe, seed 11).
    for (int i = 0; i < T * kvl; ++i) EXPECT_NEAR(lc.ckv[i], m.ckv[i], 8 * u32 * (1 + std::fabs(m.ckv[i])));
    for (int i = 0; i < T * rope; ++i) EXPECT_NEAR(lc.kpe[i], m.kpe[i], 8 * u32 * (1 + std::fabs(m.kpe[i])));

    // Truncate to 6 and re-feed positions 6..10: the result agrees with the naive form again.
    lc.truncate(6);
    EXPECT_EQ(lc.n, 6);
    lc.truncate(9);                                                 // never grows
    EXPECT_EQ(lc.n, 6);
    std::vector<float> y2(size_t(T) * d, std::nanf(""));
    st.absorbed(lc, st.x.data(), 6, 5, y2.data(), a);
    expect_close(y2, y_ref, 6, T, d, tol, "after truncate(6)");

    // Rollback leaves no trace: feed positions 0..5 in chunks 4,1,1, then 5 junk tokens (a rejected draft),
    // truncate(6), then the real 6..10 in chunks 2,3. Bit for bit what the same chunks give without the junk.
    mla_latent_cache clean, rolled;
    std::vector<float> yc(size_t(T) * d), yr(size_t(T) * d);
    std::vector<float> junk(st.x.size());
    rng r(seed + 99);
    for (auto& v : junk) v = float(3.0 * r.normal());
    int t = 0;
    for (int n : {4, 1, 1}) {
        st.absorbed(clean, st.x.data(), t, n, yc.data(), a);
        st.absorbed(rolled, st.x.data(), t, n, yr.data(), a);
        t += n;
    }
    std::vector<float> yj(size_t(T) * d);
    st.absorbed(rolled, junk.data(), 6, 5, yj.data(), a);
    rolled.truncate(6);
    for (int n : {2, 3}) {
        st.absorbed(clean, st.x.data(), t, n, yc.data(), a);
        st.absorbed(rolled, st.x.data(), t, n, yr.data(), a);
        t += n;
    }
    EXPECT_EQ(0, std::memcmp(yc.data(), yr.data(), sizeof(float) * yc.size())) << "outputs after rollback differ";
    EXPECT_EQ(0, std::memcmp(clean.ckv.data(), rolled.ckv.data(), sizeof(float) * T * kvl));
    EXPECT_EQ(0, std::memcmp(clean.kpe.data(), rolled.kpe.data(), sizeof(float) * T * rope));
    expect_close(yr, y_ref, 0, T, d, tol, "chunks 4,1,1,(junk),2,3");
}

TEST(AttentionAbsorbed, MatchesNaiveWithQLora) { check_absorbed(base_json(), 11); }
TEST(AttentionAbsorbed, MatchesNaiveWithYarn) { check_absorbed(with_yarn(base_json()), 12); }
TEST(AttentionAbsorbed, MatchesNaiveWithoutQLora) { check_absorbed(without_q_lora(base_json()), 13); }
TEST(AttentionAbsorbed, MatchesNaiveWithoutQLoraWithYarn) { check_absorbed(with_yarn(without_q_lora(base_json())), 14); }

// The check above can fail: a naive reference where one token sits one position off is rejected. (Shifting ALL
// positions would not be: MLA scores depend on relative positions only.)
TEST(AttentionAbsorbed, ToleranceRejectsAWrongPosition) {
    mla_setup st(with_yarn(base_json()), 15);
    arena a;
    mla_setup shifted = st;
    std::vector<int> pos(mla_setup::T);
    std::iota(pos.begin(), pos.end(), 0);
    pos[7] = 8;                                                     // token 7 at position 8
    rope_table(rope_frequencies(st.c), pos.data(), mla_setup::T, shifted.cos.data(), shifted.sin.data());
    const std::vector<float> y_ref = st.naive(a), y_bad = shifted.naive(a);
    mla_latent_cache lc;
    std::vector<float> y = st.absorbed_chunks(lc, {4, 1, 3, 3}, a);
    double worst = 0;
    for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::fabs(double(y[i]) - y_bad[i]));
    EXPECT_GT(worst, 10 * st.tolerance(y_ref));                     // chosen margin: the budget sits ≥ 10× below it
}

// spec §3.3: f_i = theta^(-2i/rope), YaRN blend with cd(b), low/high clamps; §3.6 scale with m².
TEST(AttentionRope, FrequenciesAndScaleFollowTheSpec) {
    json j = base_json();
    j["qk_rope_head_dim"] = 16;
    j["rope_theta"] = 500.0;
    for (bool yarn : {false, true}) {
        json jj = j;
        if (yarn)
            jj["rope_scaling"] = {{"type", "yarn"}, {"factor", 8.0}, {"original_max_position_embeddings", 64},
                                  {"beta_fast", 8.0}, {"beta_slow", 1.0}, {"mscale", 1.0}, {"mscale_all_dim", 0.7}};
        model_config c = config_from_json(jj, "rope");
        const int rope = 16;
        std::vector<double> f = rope_frequencies(c);
        ASSERT_EQ(f.size(), size_t(rope / 2));
        const double pi = std::acos(-1.0);
        auto cd = [&](double b) { return rope * std::log(64.0 / (b * 2 * pi)) / (2 * std::log(500.0)); };
        double low = std::max(std::floor(cd(8.0)), 0.0), high = std::min(std::ceil(cd(1.0)), double(rope - 1));
        if (low == high) high += 0.001;
        int blended = 0;
        for (int i = 0; i < rope / 2; ++i) {
            double fi = std::pow(500.0, -2.0 * i / rope);
            if (yarn) {
                double r = std::clamp((i - low) / (high - low), 0.0, 1.0);
                blended += r > 0 && r < 1;
                fi = fi / 8.0 * r + fi * (1 - r);
            }
            // The same double formula as rope.cpp (pow, then the blend): a few ulp (2.2e-16) at most; 1e-14 = 45 ulp.
            EXPECT_NEAR(f[i], fi, 1e-14 * fi) << "f_" << i << (yarn ? " yarn" : "");
        }
        if (yarn) {
            EXPECT_GT(blended, 0) << "the test should cover the blended band";
        }
        double m = yarn ? 0.1 * 0.7 * std::log(8.0) + 1.0 : 1.0;
        EXPECT_NEAR(c.attn_scale(), m * m / std::sqrt(8.0 + 16.0), 1e-15);   // value ≈ 0.27: 1e-15 ≈ 18 ulp of double
        // Tables: cos/sin of pos·f_i, rounded once to fp32: ≤ half an ulp of [0.5, 1) = 2^-25; u = 2^-24 leaves ×2.
        std::vector<int> pos{0, 1, 7, 4095};
        std::vector<float> cs(pos.size() * rope / 2), sn(cs.size());
        rope_table(f, pos.data(), int(pos.size()), cs.data(), sn.data());
        for (size_t t = 0; t < pos.size(); ++t)
            for (int i = 0; i < rope / 2; ++i) {
                EXPECT_NEAR(cs[t * rope / 2 + i], std::cos(pos[t] * f[i]), u32);
                EXPECT_NEAR(sn[t * rope / 2 + i], std::sin(pos[t] * f[i]), u32);
            }
    }
}

} // namespace
