// Sampler processing (penalty, temperature, top-k, top-p, min-p) and the losslessness of speculative sampling:
// the next tokens drawn with MTP speculation follow the exact target distribution (computed by enumeration over a
// small vocabulary), by a chi-square test at significance 0.001; deliberately broken acceptance rules (accept
// every draft; on rejection resample from p instead of the residual; adaptive drafting judged against the
// unrestricted q; drafts from a restricted draft vocabulary judged against the full-vocabulary q) fail the same test.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <vector>

#include "core/arena.h"
#include "core/error.h"
#include "infer/cpu_model.h"
#include "infer/sampler.h"
#include "infer/speculative.h"
#include "infer_test_util.h"
#include "model/model.h"

namespace {

using namespace mtp;
using namespace mtp::test;

// ---------------------------------------------------------------------------------------------------------------
// Sampler unit tests on hand-made logits.

TEST(Sampler, ProcessingSteps) {
    const std::vector<float> lg = {2.0f, 1.0f, 0.5f, -1.0f, 3.0f};
    std::vector<double> p;
    sampler_params sp;
    sampler g(sp);                                                  // greedy: one-hot at the argmax
    g.dist(lg.data(), 5, nullptr, 0, p);
    EXPECT_EQ(p, (std::vector<double>{0, 0, 0, 0, 1}));
    EXPECT_EQ(g.argmax(lg.data(), 5, nullptr, 0), 4);

    sp.temperature = 0.5f;                                          // softmax(l / T)
    sampler t(sp);
    t.dist(lg.data(), 5, nullptr, 0, p);
    double z = 0;
    for (float v : lg) z += std::exp(v / 0.5);
    // 1e-12 here and below: probabilities ≤ 1 computed in double over ≤ 7 terms (sampler.cpp's exp4 is within 2e-17
    // relative) carry a few 1e-16 of rounding; 1e-12 leaves ~10^3.
    for (int i = 0; i < 5; ++i) EXPECT_NEAR(p[i], std::exp(lg[i] / 0.5) / z, 1e-12);

    sp.top_k = 2;                                                   // only tokens 4 and 0, renormalised
    sampler k(sp);
    k.dist(lg.data(), 5, nullptr, 0, p);
    const double e4 = std::exp(3.0 / 0.5), e0 = std::exp(2.0 / 0.5);
    EXPECT_NEAR(p[4], e4 / (e4 + e0), 1e-12);
    EXPECT_NEAR(p[0], e0 / (e4 + e0), 1e-12);
    EXPECT_EQ(p[1] + p[2] + p[3], 0.0);

    sp.top_k = 0;                                                   // top-p: smallest set with mass >= 0.9
    sp.temperature = 1.0f;
    sp.top_p = 0.9f;
    sampler tp(sp);
    tp.dist(lg.data(), 5, nullptr, 0, p);
    std::vector<double> full;
    sampler_params sp1;
    sp1.temperature = 1.0f;
    sampler(sp1).dist(lg.data(), 5, nullptr, 0, full);              // 4: .61, 0: .22, 1: .08, 2: .05, 3: .01
    EXPECT_GT(p[1], 0.0);
    EXPECT_EQ(p[2], 0.0);
    EXPECT_NEAR(p[4] / p[0], full[4] / full[0], 1e-12);
    EXPECT_LT(full[4] + full[0], 0.9);                              // 0.9 = sp.top_p
    EXPECT_GE(full[4] + full[0] + full[1], 0.9);

    sp.top_p = 1.0f;                                                // min-p: drop p < 0.1 * p_max
    sp.min_p = 0.1f;
    sampler mp(sp);
    mp.dist(lg.data(), 5, nullptr, 0, p);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(p[i] > 0, full[i] >= 0.1 * full[4]) << i;   // 0.1 = sp.min_p

    sp.min_p = 0.0f;                                                // repetition penalty on tokens seen
    sp.temperature = 0.0f;
    sp.repeat_penalty = 2.0f;
    sampler rp(sp);
    const std::vector<int> hist = {4, 4, 3};
    std::vector<float> pen;
    rp.penalize(lg.data(), 5, hist.data(), 3, pen);
    EXPECT_EQ(pen, (std::vector<float>{2.0f, 1.0f, 0.5f, -2.0f, 1.5f}));
    EXPECT_EQ(rp.argmax(lg.data(), 5, hist.data(), 3), 0);
    sp.repeat_last_n = 1;                                           // only the last token (3) counts
    EXPECT_EQ(sampler(sp).argmax(lg.data(), 5, hist.data(), 3), 4);
}

// Restricted vocabulary (ids): the distribution over the ids is the full processing with every other token at
// -inf, renormalised; the penalty maps history tokens through ids; argmax/draw return positions.
TEST(Sampler, RestrictedVocabulary) {
    const std::vector<float> full = {2.0f, 1.0f, 0.5f, -1.0f, 3.0f, 0.25f, 1.5f};
    const std::vector<int> ids = {0, 2, 3, 6};
    std::vector<float> sub;
    for (int i : ids) sub.push_back(full[i]);
    const std::vector<int> hist = {6, 4, 6, 2};
    for (int variant = 0; variant < 4; ++variant) {
        sampler_params sp;
        sp.temperature = 0.7f;
        if (variant == 1) sp.top_k = 2;
        if (variant == 2) { sp.top_p = 0.8f; sp.repeat_penalty = 1.5f; }
        if (variant == 3) { sp.min_p = 0.2f; sp.repeat_penalty = 0.7f; }
        sampler s(sp);
        std::vector<float> masked(full.size(), -INFINITY);
        for (int i : ids) masked[i] = full[i];
        std::vector<double> want, got;
        s.dist(masked.data(), int(masked.size()), hist.data(), int(hist.size()), want);
        s.dist(sub.data(), int(sub.size()), hist.data(), int(hist.size()), got, ids.data());
        ASSERT_EQ(got.size(), ids.size());
        double tot = 0;
        for (size_t i = 0; i < ids.size(); ++i) {
            EXPECT_NEAR(got[i], want[ids[i]], 1e-12) << "variant " << variant << " id " << ids[i];
            tot += got[i];
        }
        EXPECT_NEAR(tot, 1.0, 1e-12);
        const int am = s.argmax(sub.data(), int(sub.size()), hist.data(), int(hist.size()), ids.data());
        EXPECT_EQ(ids[am], s.argmax(masked.data(), int(masked.size()), hist.data(), int(hist.size())));
        const double p1 = s.prob_t1(sub.data(), int(sub.size()), hist.data(), int(hist.size()), am, ids.data());
        EXPECT_NEAR(p1, s.prob_t1(masked.data(), int(masked.size()), hist.data(), int(hist.size()), ids[am]), 1e-12);
    }
    // With the penalty, token 6 (seen) drops below token 2 in the restricted set: argmax position 1 (id 2).
    sampler_params sp;
    sp.repeat_penalty = 4.0f;
    const std::vector<int> h6 = {6};
    EXPECT_EQ(sampler(sp).argmax(sub.data(), int(sub.size()), h6.data(), 1, ids.data()), 0);
    const std::vector<float> sub2 = {0.1f, 0.5f, -1.0f, 1.5f};
    EXPECT_EQ(sampler(sp).argmax(sub2.data(), 4, h6.data(), 1, ids.data()), 1);
}

TEST(Sampler, LargeVocabularyPaths) {
    // The vectorised exp / argmax paths (long rows, lengths not a multiple of the vector width) against std::exp.
    rng r(3);
    for (int V : {17, 1000, 8001}) {
        std::vector<float> lg(V);
        for (auto& v : lg) v = float(3.0 * r.normal());
        lg[V / 3] = 30.0f;
        lg[V / 2] = 30.0f;                                           // tie: the lower id wins
        sampler_params sp;
        sp.temperature = 0.9f;
        sampler s(sp);
        std::vector<double> p;
        s.dist(lg.data(), V, nullptr, 0, p);
        const double T = double(0.9f);
        double z = 0;
        for (float v : lg) z += std::exp((double(v) - 30.0) / T);
        // double sums of V ≤ 8001 terms in different orders: ~sqrt(V)·2^-53 ≈ 1e-14 typical (V·2^-53 = 9e-13 worst);
        // 1e-13 is ~10× the typical, for p ≤ 0.5 here (two tied maxima)
        for (int i = 0; i < V; ++i) ASSERT_NEAR(p[i], std::exp((double(lg[i]) - 30.0) / T) / z, 1e-13) << i;
        EXPECT_EQ(s.argmax(lg.data(), V, nullptr, 0), V / 3);
    }
}

double gamma_q(double a, double x);

// draw() over a long distribution (several blocks, zeros, unnormalised): frequencies match by chi-square, zero-mass
// entries are never drawn.
TEST(Sampler, DrawLongDistribution) {
    const int V = 203;
    std::vector<double> p(V);
    rng r(5);
    double tot = 0;
    for (int i = 0; i < V; ++i) tot += p[i] = (i % 7 == 3 || i == V - 1) ? 0.0 : 0.2 + r.uniform();
    sampler_params sp;
    sp.temperature = 1.0f;
    sp.seed = 9;
    sampler s(sp);
    const int N = 200000;
    std::vector<int64_t> cnt(V, 0);
    for (int k = 0; k < N; ++k) cnt[s.draw(p)]++;
    double chi2 = 0;
    int bins = 0;
    for (int i = 0; i < V; ++i) {
        if (p[i] == 0) {
            EXPECT_EQ(cnt[i], 0) << i;
            continue;
        }
        const double e = N * p[i] / tot;
        chi2 += (cnt[i] - e) * (cnt[i] - e) / e;
        ++bins;
    }
    // significance 0.001: a correct draw() fails with probability 1e-3 (per seed; the seed is fixed). 200,000 draws
    // over 173 bins: ≥ 190 expected per bin (p_i ≥ 0.2, total ≤ 173·1.2), far above the usual 5
    EXPECT_GT(gamma_q((bins - 1) / 2.0, chi2 / 2.0), 1e-3) << "chi2 " << chi2 << " over " << bins << " bins";
}

TEST(Sampler, SeededAndChecked) {
    const std::vector<float> lg = {0.1f, 0.2f, 0.3f, 0.4f};
    sampler_params sp;
    sp.temperature = 1.0f;
    sp.seed = 42;
    sampler a(sp), b(sp);
    for (int i = 0; i < 50; ++i) EXPECT_EQ(a.sample(lg.data(), 4, nullptr, 0), b.sample(lg.data(), 4, nullptr, 0));
    auto bad = [](auto set) { sampler_params p; set(p); EXPECT_THROW(sampler_params_check(p), mtp::error); };
    bad([](sampler_params& p) { p.temperature = -1; });
    bad([](sampler_params& p) { p.top_k = -2; });
    bad([](sampler_params& p) { p.top_p = 0; });
    bad([](sampler_params& p) { p.top_p = 1.5f; });
    bad([](sampler_params& p) { p.min_p = 1; });
    bad([](sampler_params& p) { p.repeat_penalty = 0; });
    bad([](sampler_params& p) { p.temperature = NAN; });
}

// ---------------------------------------------------------------------------------------------------------------
// Chi-square machinery.

// Regularised upper incomplete gamma Q(a, x): series for x < a + 1, else the continued fraction (modified Lentz).
double gamma_q(double a, double x) {
    if (x <= 0) return 1.0;
    const double lg = std::lgamma(a);
    if (x < a + 1) {
        double sum = 1.0 / a, term = sum;
        for (int n = 1; n < 100000; ++n) {
            term *= x / (a + n);
            sum += term;
            if (std::fabs(term) < std::fabs(sum) * 1e-15) break;
        }
        return 1.0 - sum * std::exp(-x + a * std::log(x) - lg);
    }
    const double tiny = 1e-300;
    double b = x + 1 - a, c = 1 / tiny, d = 1 / b, h = d;
    for (int i = 1; i < 100000; ++i) {
        const double an = -i * (i - a);
        b += 2;
        d = an * d + b;
        if (std::fabs(d) < tiny) d = tiny;
        c = b + an / c;
        if (std::fabs(c) < tiny) c = tiny;
        d = 1 / d;
        const double del = d * c;
        h *= del;
        if (std::fabs(del - 1) < 1e-15) break;
    }
    return std::exp(-x + a * std::log(x) - lg) * h;
}

// The quantiles are the standard chi-square 95% points (checked: Q = 0.05 to 1e-15 by the closed forms erfc and
// e^-y Σ y^i/i! in Python). gamma_q iterates to 1e-15 relative; exp(-x + a ln x - lnΓ(a)) with |terms| ~ 200 (a = 50)
// loses ~1e-14: the tolerances leave > 10^4.
TEST(ChiSquare, SurvivalFunction) {
    EXPECT_NEAR(gamma_q(0.5, 3.841458820694124 / 2), 0.05, 1e-9);   // chi2(1) 95% quantile
    EXPECT_NEAR(gamma_q(5.0, 18.307038053275146 / 2), 0.05, 1e-9);  // chi2(10)
    EXPECT_NEAR(gamma_q(50.0, 124.34211340400407 / 2), 0.05, 1e-8); // chi2(100)
    EXPECT_NEAR(gamma_q(1.0, 2.0), std::exp(-2.0), 1e-12);
}

using seq_t = std::vector<int>;

// Exact distribution of the next L tokens under the sampler's processing (history = prompt + prefix), by
// enumeration with full forwards.
// With a narrowed weight type the target is the model served at that type: its logits come from a cpu_model of that
// type over the whole context (plain decoding's next-token distribution; rows do not depend on how they are batched).
void enumerate(const model_files& m, const sampler& s, const seq_t& prompt, int L, seq_t& prefix, double prob,
               std::map<seq_t, double>& out, wtype type = wtype::f32) {
    if (int(prefix.size()) == L) {
        out[prefix] += prob;
        return;
    }
    seq_t ctx = prompt;
    ctx.insert(ctx.end(), prefix.begin(), prefix.end());
    const int V = m.config.vocab_size, n = int(ctx.size());
    std::vector<float> logits(size_t(n) * V);
    if (type == wtype::f32) {
        arena a;
        model_state st;
        model_forward(m.config, m.layout, m.weights.data(), st, ctx.data(), n, 0.0f, a, nullptr, 0);
        std::copy(st.logits, st.logits + size_t(n) * V, logits.begin());
    } else {
        cpu_model cm(m, 0, type);
        std::vector<float> h(size_t(n) * m.config.hidden_size);
        cm.eval(0, 0, n, ctx.data(), nullptr, h.data(), logits.data());
    }
    std::vector<double> p;
    s.dist(logits.data() + size_t(n - 1) * V, V, ctx.data(), n, p);
    for (int v = 0; v < V; ++v)
        if (p[v] > 0) {
            prefix.push_back(v);
            enumerate(m, s, prompt, L, prefix, prob * p[v], out, type);
            prefix.pop_back();
        }
}

struct chi2_result {
    double stat = 0, p_value = 0;
    int df = 0;
};

// Pearson chi-square of observed sequence counts against exact probabilities; cells with expected count < 5 are
// pooled into one bin (together with any sequence of probability 0).
chi2_result chi_square(const std::map<seq_t, double>& exact, const std::map<seq_t, int64_t>& seen, int64_t N) {
    chi2_result r;
    double pooled_e = 0;
    int64_t pooled_o = 0, covered = 0;
    int bins = 0;
    for (const auto& [s, p] : exact) {
        const double e = p * double(N);
        auto it = seen.find(s);
        const int64_t o = it == seen.end() ? 0 : it->second;
        covered += o;
        if (e >= 5) {
            r.stat += (o - e) * (o - e) / e;
            ++bins;
        } else {
            pooled_e += e;
            pooled_o += o;
        }
    }
    pooled_o += N - covered;                       // sequences outside the exact support
    if (pooled_e > 0) {
        r.stat += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
        ++bins;
    } else if (pooled_o > 0) {
        r.stat = INFINITY;
    }
    r.df = bins - 1;
    r.p_value = std::isinf(r.stat) ? 0.0 : gamma_q(r.df / 2.0, r.stat / 2.0);
    return r;
}

// N draws of the next L tokens after `prompt` (one sampler, fixed seed, carried across draws).
std::map<seq_t, int64_t> draw(const model_files& m, const sampler_params& sp, const spec_params& p, const seq_t& prompt,
                              int L, int64_t N, gen_stats& tot, wtype type = wtype::f32) {
    cpu_model cm(m, 0, type);
    sampler s(sp);
    std::map<seq_t, int64_t> seen;
    for (int64_t i = 0; i < N; ++i) {
        gen_stats st;
        seen[generate(cm, s, p, prompt, L, -1, {}, &st)]++;
        tot.add(st);
    }
    return seen;
}

struct case_spec {
    const char* name;
    nlohmann::json cfg;
    uint64_t seed;
    sampler_params sp;
    spec_params p;
    bool expect_pass;
    wtype type = wtype::f32;
};

void run_case(const case_spec& c, const std::map<seq_t, double>& exact, const model_files& m, const seq_t& prompt,
              int L, int64_t N) {
    gen_stats tot;
    const auto seen = draw(m, c.sp, c.p, prompt, L, N, tot, c.type);
    const chi2_result r = chi_square(exact, seen, N);
    std::printf("    %-44s chi2 %9.1f df %3d p %.3g | drafts %lld, accepted %lld of %lld\n", c.name, r.stat, r.df,
                r.p_value, (long long)tot.n_drafts, (long long)tot.n_accepted, (long long)tot.n_draft_tokens);
    if (c.expect_pass) {
        // significance 0.001 per case (10 passing cases: ≤ 1% family-wise; seeds fixed). Measured p: 0.04 .. 0.94.
        EXPECT_GT(r.p_value, 1e-3) << c.name << ": the samples do not follow the target distribution";
        if (c.p.enabled) {
            // a chosen floor, N/20 = 600: measured 937 (D=1 adaptive p-min 0.3) .. 10,699 accepted drafts
            EXPECT_GT(tot.n_accepted, N / 20) << c.name << ": too few acceptances for the test to mean much";
            EXPECT_LT(tot.n_accepted, tot.n_draft_tokens) << c.name << ": no rejection exercised";
        }
    } else {
        EXPECT_LT(r.p_value, 1e-3) << c.name << ": the broken rule must fail the test";   // measured p ≤ 5.2e-220
    }
}

TEST(SpecSampling, KeepsTheTargetDistribution) {
    single_thread_scope one_thread;
    const int L = 4;              // the first token comes from the prompt pass, the next 3 from speculative rounds
    const int64_t N = 12000;
    const seq_t prompt = {1, 5, 2, 7, 3};
    struct model_case {
        nlohmann::json cfg;
        uint64_t seed;
        sampler_params sp;
        std::vector<std::pair<const char*, spec_params>> runs;
        wtype type = wtype::f32;
    };
    sampler_params a;                                                // temperature 0.8, top-p 0.9
    a.temperature = 0.8f;
    a.top_p = 0.9f;
    a.seed = 7;
    sampler_params b;                                                // temperature 1, top-k 5, min-p, penalty
    b.temperature = 1.0f;
    b.top_k = 5;
    b.min_p = 0.05f;
    b.repeat_penalty = 1.3f;
    b.seed = 8;
    spec_params plain;
    plain.enabled = false;
    spec_params d2;                                                  // D = 2, two drafts per round
    spec_params d3reuse;                                             // D = 1 reused: three drafts per round
    d3reuse.n_draft = 3;
    d3reuse.reuse = true;
    spec_params adaptive = d3reuse;
    adaptive.p_min = 0.3f;
    spec_params broken = d2;
    broken.test_broken_rule = 1;
    spec_params broken1 = d3reuse;
    broken1.test_broken_rule = 1;
    spec_params broken4 = adaptive;
    broken4.test_broken_rule = 3;
    spec_params broken2 = d2;
    broken2.test_broken_rule = 2;
    spec_params broken3 = d3reuse;
    broken3.test_broken_rule = 2;
    // FR-Spec draft vocabulary: drafts only from 4 of the 8 tokens; q restricted and renormalised.
    spec_params dv2 = d2;
    dv2.draft_vocab = {0, 2, 3, 6};
    spec_params dv3 = d3reuse;
    dv3.draft_vocab = {1, 2, 4, 5, 7};
    spec_params dv3a = dv3;
    dv3a.p_min = 0.3f;
    spec_params broken5 = dv2;                                       // q of the full head instead of the restricted one
    broken5.test_broken_rule = 4;
    spec_params broken6 = dv3;
    broken6.test_broken_rule = 4;
    const std::vector<model_case> cases = {
        {small_config(2, false, true, false, 8), 31, a,
         {{"D=2 plain sampling", plain}, {"D=2 speculative", d2}, {"D=2 broken rule (accept all)", broken},
          {"D=2 broken rule (resample from p)", broken2}, {"D=2 draft vocab 4 of 8", dv2},
          {"D=2 draft vocab broken rule (full-vocab q)", broken5}}},
        {small_config(1, true, false, true, 8), 32, b,
         {{"D=1 reuse x3 speculative", d3reuse}, {"D=1 reuse x3 adaptive p-min 0.3", adaptive},
          {"D=1 reuse x3 broken rule (accept all)", broken1},
          {"D=1 reuse x3 broken rule (resample from p)", broken3},
          {"D=1 adaptive broken rule (unrestricted q)", broken4}, {"D=1 reuse x3 draft vocab 5 of 8", dv3},
          {"D=1 reuse x3 draft vocab, adaptive p-min 0.3", dv3a},
          {"D=1 reuse x3 draft vocab broken rule (full-vocab q)", broken6}}},
        // The same rule on the model served at q8_0 (and bf16): the target is that model's distribution.
        {small_config(2, true, true, false, 8), 33, a,
         {{"q8_0 D=2 speculative", d2}, {"q8_0 D=2 draft vocab 4 of 8", dv2},
          {"q8_0 D=2 broken rule (resample from p)", broken2}}, wtype::q8_0},
        // Parallel heads (spec §8): the same rule with drafts that do not see the tokens before them.
        {with_parallel_heads(small_config(2, false, true, false, 8)), 35, a,
         {{"parallel heads D=2 speculative", d2}, {"parallel heads D=2 broken rule (accept all)", broken}}},
        {small_config(1, false, true, true, 8), 34, b,
         {{"bf16 D=1 reuse x3 adaptive p-min 0.3", adaptive}, {"bf16 D=1 reuse x3 broken rule (accept all)", broken1}},
         wtype::bf16},
    };
    for (const auto& mc : cases) {
        const model_files m = random_model(mc.cfg, mc.seed);
        std::map<seq_t, double> exact;
        seq_t prefix;
        enumerate(m, sampler(mc.sp), prompt, L, prefix, 1.0, exact, mc.type);
        double total = 0;
        for (const auto& [s, p] : exact) total += p;
        ASSERT_NEAR(total, 1.0, 1e-9);   // ≤ 8^4 products of 4 doubles each: rounding ≲ 4096·5·2^-53 ≈ 2e-12
        std::printf("    model D=%d at %s: %zu sequences of %d tokens in the exact support\n", m.config.n_mtp(),
                    wtype_name(mc.type), exact.size(), L);
        for (const auto& [name, p] : mc.runs)
            run_case({name, mc.cfg, mc.seed, mc.sp, p, p.test_broken_rule == 0, mc.type}, exact, m, prompt, L, N);
    }
}

} // namespace
