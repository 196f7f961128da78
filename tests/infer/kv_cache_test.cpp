// KV-cached decoding (src/infer: cpu_model over latent caches, absorbed MLA) reproduces the full forward
// (model_forward) at every position, for the trunk and every MTP depth, with the prompt fed in chunks of various
// sizes, and again after rolling caches back (truncate) and recomputing.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/arena.h"
#include "core/error.h"
#include "core/ops.h"
#include "infer/cpu_model.h"
#include "infer_test_util.h"
#include "model/model.h"

namespace {

using namespace mtp;
using namespace mtp::test;

struct checker {
    const model_files& m;
    double worst_ratio = 0;
    // got rows [r0, r1) vs ref rows, tolerance per row from the reference hidden rows href.
    void rows(const float* got, const float* ref, const float* href, int r0, int r1, int k, int T, const char* what) {
        const int V = m.config.vocab_size, d = m.config.hidden_size;
        for (int t = r0; t < r1; ++t) {
            const double tol = logit_tolerance(m, k, T, href + size_t(t) * d);
            ASSERT_LT(tol, 2e-3 * head_scale(m, href + size_t(t) * d)) << "tolerance must stay at rounding level";
            for (int v = 0; v < V; ++v) {
                const double e = std::fabs(double(got[size_t(t) * V + v]) - ref[size_t(t) * V + v]);
                worst_ratio = std::max(worst_ratio, e / tol);
                ASSERT_LE(e, tol) << what << " depth " << k << " position " << t << " token " << v << ": got "
                                  << got[size_t(t) * V + v] << " want " << ref[size_t(t) * V + v];
            }
        }
    }
};

// Feeds positions [from, to) of a stage in chunks cycling through `pattern`.
void feed(cpu_model& cm, int stage, int from, int to, const std::vector<int>& pattern, const int* tok,
          const float* hprev, float* h, float* logits, int d, int V) {
    int pos = from;
    for (size_t i = 0; pos < to; ++i) {
        const int cnt = std::min(pattern[i % pattern.size()], to - pos);
        cm.eval(stage, pos, cnt, tok + pos, hprev ? hprev + size_t(pos) * d : nullptr, h + size_t(pos) * d,
                logits + size_t(pos) * V, 0);
        pos += cnt;
    }
    ASSERT_EQ(cm.n_cached(stage), to);
}

void check_cached_vs_full(const nlohmann::json& j, uint64_t seed, int T) {
    const model_files m = random_model(j, seed);
    const model_config& c = m.config;
    const int d = c.hidden_size, V = c.vocab_size, D = c.n_mtp();
    rng r(seed);
    std::vector<int> tok(T);
    for (int& t : tok) t = int(r.below(V));
    arena a;
    model_state s;
    model_forward(c, m.layout, m.weights.data(), s, tok.data(), T, 0.0f, a);

    checker ck{m};
    const std::vector<std::vector<int>> patterns = {{1}, {T}, {5, 1, 3}, {2, 7}, {4}};
    for (const auto& pat : patterns) {
        SCOPED_TRACE("chunk pattern starting " + std::to_string(pat[0]) + " of " + std::to_string(pat.size()));
        cpu_model cm(m);
        std::vector<std::vector<float>> H(D + 1, std::vector<float>(size_t(T) * d)), LG(D + 1);
        LG[0].resize(size_t(T) * V);
        feed(cm, 0, 0, T, pat, tok.data(), nullptr, H[0].data(), LG[0].data(), d, V);
        ck.rows(LG[0].data(), s.logits, s.h, 0, T, 0, T, "trunk");
        for (int k = 1; k <= D; ++k) {
            const int Tk = T - k;
            LG[k].resize(size_t(Tk) * V);
            feed(cm, k, 0, Tk, pat, tok.data() + k, H[k - 1].data(), H[k].data(), LG[k].data(), d, V);
            ck.rows(LG[k].data(), s.mtp[k - 1].logits, s.mtp[k - 1].h, 0, Tk, k, T, "mtp");
        }
        // Roll back and recompute: trunk to 7 positions, module k to 5 - k + 1; results agree again.
        for (int stage = 0; stage <= D; ++stage) {
            const int keep = stage == 0 ? 7 : 6 - stage, end = stage == 0 ? T : T - stage;
            cm.truncate(stage, keep);
            ASSERT_EQ(cm.n_cached(stage), keep);
            cm.truncate(stage, keep + 3);                                   // never grows
            ASSERT_EQ(cm.n_cached(stage), keep);
            std::vector<float> h2(size_t(T) * d), lg2(size_t(T) * V);
            feed(cm, stage, keep, end, {3, 1}, tok.data() + stage, stage ? H[stage - 1].data() : nullptr, h2.data(),
                 lg2.data(), d, V);
            ck.rows(lg2.data(), stage == 0 ? s.logits : s.mtp[stage - 1].logits, stage == 0 ? s.h : s.mtp[stage - 1].h,
                    keep, end, stage, T, "after rollback");
        }
        // logits_from: only the last row computed, equal to the full computation's last row.
        cpu_model cm2(m);
        std::vector<float> h3(size_t(T) * d), last(V);
        cm2.eval(0, 0, T, tok.data(), nullptr, h3.data(), last.data(), T - 1);
        ck.rows(last.data() - size_t(T - 1) * V, s.logits, s.h, T - 1, T, 0, T, "logits_from");
    }
    if (std::getenv("MTP_FD_VERBOSE")) std::printf("    worst error / tolerance: %.3f\n", ck.worst_ratio);
}

// Single-threaded except the last (tiny forwards: OpenMP fork/join only adds stalls on a loaded machine; the last
// keeps the threaded paths covered).
TEST(KvCache, DenseQLoraD3) {
    single_thread_scope one_thread;
    check_cached_vs_full(small_config(3, false, true, false), 1, 29);
}
TEST(KvCache, MoeYarnD1) {
    single_thread_scope one_thread;
    check_cached_vs_full(small_config(1, true, false, true), 2, 31);
}
TEST(KvCache, MoeQLoraD2Threaded) { check_cached_vs_full(small_config(2, true, true, true), 3, 23); }

TEST(KvCache, DecodeLinearRowsIndependentOfBatch) {
    single_thread_scope one_thread;
    // The few-rows head kernel: equal to the BLAS product within rounding (in·u·Σ|terms|), and each row's result
    // bitwise the same whether it is computed alone or with up to 11 other rows.
    const int in = 67, out = 5000;                                  // in not a multiple of 8: the tail path too
    rng r(9);
    std::vector<float> w(size_t(out) * in), x(size_t(12) * in);
    for (auto& v : w) v = float(r.normal());
    for (auto& v : x) v = float(r.normal());
    std::vector<float> one(out), many(size_t(12) * out), ref(size_t(12) * out);
    linear_forward(ref.data(), x.data(), w.data(), 12, in, out);
    for (int T = 1; T <= 12; ++T) {
        decode_linear(many.data(), x.data(), w.data(), T, in, out);
        for (int t = 0; t < T; ++t) {
            decode_linear(one.data(), x.data() + size_t(t) * in, w.data(), 1, in, out);
            for (int o = 0; o < out; ++o) {
                ASSERT_EQ(one[o], many[size_t(t) * out + o]) << "T " << T << " row " << t;
                double abs_sum = 0;
                for (int i = 0; i < in; ++i) abs_sum += std::fabs(double(x[size_t(t) * in + i]) * w[size_t(o) * in + i]);
                ASSERT_NEAR(one[o], ref[size_t(t) * out + o], 2.0 * in * u32 * abs_sum);
            }
        }
    }
}

TEST(KvCache, ContractViolationsThrow) {
    const model_files m = random_model(small_config(1, false, true, false, 40, 16), 4);
    cpu_model cm(m);
    std::vector<float> h(32 * 40), lg(32 * 40);
    std::vector<int> tok(20, 1);
    EXPECT_THROW(cm.eval(0, 1, 1, tok.data(), nullptr, h.data(), lg.data()), mtp::error);   // not the cache end
    EXPECT_THROW(cm.eval(0, 0, 17, tok.data(), nullptr, h.data(), lg.data()), mtp::error);  // past the context
    EXPECT_THROW(cm.eval(1, 0, 1, tok.data(), nullptr, h.data(), lg.data()), mtp::error);   // MTP needs hprev
    EXPECT_THROW(cm.eval(2, 0, 1, tok.data(), h.data(), h.data(), lg.data()), mtp::error);  // no such stage
    tok[0] = 40;
    EXPECT_THROW(cm.eval(0, 0, 1, tok.data(), nullptr, h.data(), lg.data()), mtp::error);   // token out of range
}

} // namespace
