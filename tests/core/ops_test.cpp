// Tests every kernel in core/ops.h: forward vs scalar double references, backward vs central finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <omp.h>

#include "core/ops.h"
#include "core/rng.h"
#include "random_inputs.h"
#include "../fd_harness.h"

namespace {

using mtp::rng;

using namespace mtp::fd;

// ----------------------------------------------------------------- linear

TEST(OpsLinear, ForwardMatchesTripleLoop) {
    rng r(1);
    const int T = 5, in = 7, out = 6;
    auto x = randn(r, T * in), w = randn(r, out * in), y0 = randn(r, T * out);
    std::vector<float> y(T * out), ya = y0;
    mtp::linear_forward(y.data(), x.data(), w.data(), T, in, out);
    mtp::linear_forward(ya.data(), x.data(), w.data(), T, in, out, /*accumulate=*/true);
    for (int t = 0; t < T; ++t)
        for (int o = 0; o < out; ++o) {
            double ref = 0, mag = 0;
            for (int i = 0; i < in; ++i) {
                ref += double(x[t * in + i]) * w[o * in + i];
                mag += std::fabs(double(x[t * in + i]) * w[o * in + i]);
            }
            // A length-n fp32 dot product is within γ_n·Σ|x_i w_i| of the exact value (γ_n ≈ n·u).
            EXPECT_NEAR(y[t * out + o], ref, in * u32 * mag) << t << "," << o;
            // accumulate: y0 is one more term of the sum, so γ_{n+1}.
            EXPECT_NEAR(ya[t * out + o], ref + y0[t * out + o], (in + 1) * u32 * (mag + std::fabs(y0[t * out + o])));
        }
}

TEST(OpsLinear, BackwardAccumulatesAndSkipsNull) {
    rng r(2);
    const int T = 4, in = 5, out = 3;
    auto x = randn(r, T * in), w = randn(r, out * in), dy = randn(r, T * out);
    auto dx0 = randn(r, T * in), dw0 = randn(r, out * in);
    std::vector<float> dx = dx0, dw = dw0;
    mtp::linear_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), T, in, out);
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < in; ++i) {
            double ref = dx0[t * in + i], mag = std::fabs(ref);
            for (int o = 0; o < out; ++o) {
                ref += double(dy[t * out + o]) * w[o * in + i];
                mag += std::fabs(double(dy[t * out + o]) * w[o * in + i]);
            }
            EXPECT_NEAR(dx[t * in + i], ref, (out + 1) * u32 * mag);   // γ_{out+1}: out products + the initial dx0
        }
    for (int o = 0; o < out; ++o)
        for (int i = 0; i < in; ++i) {
            double ref = dw0[o * in + i], mag = std::fabs(ref);
            for (int t = 0; t < T; ++t) {
                ref += double(dy[t * out + o]) * x[t * in + i];
                mag += std::fabs(double(dy[t * out + o]) * x[t * in + i]);
            }
            EXPECT_NEAR(dw[o * in + i], ref, (T + 1) * u32 * mag);     // γ_{T+1}: T products + the initial dw0
        }
    std::vector<float> dw2 = dw0;                           // null dx: only dw touched
    mtp::linear_backward(nullptr, dw2.data(), dy.data(), x.data(), w.data(), T, in, out);
    EXPECT_EQ(dw2, dw);
    std::vector<float> dx2 = dx0;                           // null dw: only dx touched
    mtp::linear_backward(dx2.data(), nullptr, dy.data(), x.data(), w.data(), T, in, out);
    EXPECT_EQ(dx2, dx);
}

TEST(OpsLinear, GradientMatchesFiniteDifferences) {
    rng r(3);
    const int T = 6, in = 9, out = 7;
    auto x = randn(r, T * in), w = randn(r, out * in), rr = randn(r, T * out);
    std::vector<float> y(T * out), gx(T * in, 0.0f), gw(out * in, 0.0f);
    mtp::linear_backward(gx.data(), gw.data(), rr.data(), x.data(), w.data(), T, in, out);
    std::vector<fd_slot> slots{{"x", x.data(), gx.data(), gx.size()}, {"w", w.data(), gw.data(), gw.size()}};
    loss_fn loss = [&](double* abs) {
        mtp::linear_forward(y.data(), x.data(), w.data(), T, in, out);
        return dot_loss(rr.data(), y.data(), y.size(), abs);
    };
    // Bilinear, so no truncation error and ε can be large; one GEMM stage.
    fd_verify("linear", slots, loss, 0.1, rounding_c(1), 31);
}

// ----------------------------------------------------------------- rmsnorm

double ref_rmsnorm(const float* x, const float* w, int n, float eps, int i) {
    double ss = 0;
    for (int k = 0; k < n; ++k) ss += double(x[k]) * x[k];
    return w[i] * x[i] / std::sqrt(ss / n + eps);
}

// The embedding rows: the lookup copies each indexed row; the gradient adds every row into its index's table row in
// ascending t, bit for bit as the serial loop, at any thread count, with indices repeated (and 3 threads, so that
// the threads' share of the table is uneven).
TEST(OpsRows, GatherAndScatterAddAsTheSerialLoops) {
    const int V = 37, T = 300, d = 72;
    rng r(41);
    std::vector<float> table(size_t(V) * d), x(size_t(T) * d);
    for (auto& v : table) v = float(r.normal());
    for (auto& v : x) v = float(r.normal());
    std::vector<int> idx(T);
    for (int t = 0; t < T; ++t) idx[size_t(t)] = int((t * 7 + t * t) % V);
    std::vector<float> out(size_t(T) * d);
    mtp::gather_rows(out.data(), table.data(), idx.data(), T, d);
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < d; ++i) ASSERT_EQ(out[size_t(t) * d + i], table[size_t(idx[size_t(t)]) * d + i]);
    std::vector<float> ref = table;
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < d; ++i) ref[size_t(idx[size_t(t)]) * d + i] += x[size_t(t) * d + i];
    const int saved = omp_get_max_threads();
    for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        std::vector<float> got = table;
        mtp::scatter_add_rows(got.data(), x.data(), idx.data(), T, d);
        for (size_t i = 0; i < got.size(); ++i)
            ASSERT_EQ(std::memcmp(&got[i], &ref[i], sizeof(float)), 0) << "threads " << threads << " at " << i;
    }
    omp_set_num_threads(saved);
}

TEST(OpsRmsnorm, ForwardMatchesReferenceAndMayAlias) {
    rng r(4);
    const int T = 4, n = 13;
    const float eps = 1e-6f;
    auto x = randn(r, T * n, 3.0), w = randn(r, n);
    std::vector<float> y(T * n), rstd(T), rstd2(T);
    mtp::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), T, n, eps);
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < n; ++i) {
            double ref = ref_rmsnorm(x.data() + t * n, w.data(), n, eps, i);
            // rstd rounded once, then two products: ≤ 3 roundings relative to |y|.
            EXPECT_NEAR(y[t * n + i], ref, 4 * u32 * std::fabs(ref)) << t << "," << i;
        }
    std::vector<float> z = x;                                // y aliasing x gives the same bits
    mtp::rmsnorm_forward(z.data(), rstd2.data(), z.data(), w.data(), T, n, eps);
    EXPECT_EQ(z, y);
    EXPECT_EQ(rstd2, rstd);
}

// Rows long enough for the 8-lane sums (256 + 5: vector body and tail), forward against the reference and the
// gradient against finite differences.
TEST(OpsRmsnorm, LongRowsForwardAndGradient) {
    rng r(7);
    const int T = 3, n = 261;
    const float eps = 1e-6f;
    auto x = randn(r, T * n, 2.0), w = randn(r, n, 1.0), rr = randn(r, T * n);
    for (auto& v : w) v += 1.0f;
    std::vector<float> y(T * n), rstd(T), gx(T * n, 0.0f), gw(n, 0.0f);
    mtp::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), T, n, eps);
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < n; ++i) {
            const double ref = ref_rmsnorm(x.data() + t * n, w.data(), n, eps, i);
            ASSERT_NEAR(y[t * n + i], ref, 4 * u32 * std::fabs(ref)) << t << "," << i;
        }
    mtp::rmsnorm_backward(gx.data(), gw.data(), rr.data(), x.data(), w.data(), rstd.data(), T, n);
    std::vector<fd_slot> slots{{"x", x.data(), gx.data(), gx.size()}, {"w", w.data(), gw.data(), gw.size()}};
    loss_fn loss = [&](double* abs) {
        mtp::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), T, n, eps);
        return dot_loss(rr.data(), y.data(), y.size(), abs);
    };
    fd_verify("rmsnorm long rows", slots, loss, 3e-3, rounding_c(4), 62);
}

TEST(OpsRmsnorm, BackwardAccumulates) {
    rng r(5);
    const int T = 3, n = 8;
    auto x = randn(r, T * n), w = randn(r, n), dy = randn(r, T * n);
    std::vector<float> y(T * n), rstd(T);
    mtp::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), T, n, 1e-6f);
    std::vector<float> dx0(T * n, 0.0f), dw0(n, 0.0f), dx1 = randn(r, T * n), dw1 = randn(r, n);
    std::vector<float> dxa = dx1, dwa = dw1;
    mtp::rmsnorm_backward(dx0.data(), dw0.data(), dy.data(), x.data(), w.data(), rstd.data(), T, n);
    mtp::rmsnorm_backward(dxa.data(), dwa.data(), dy.data(), x.data(), w.data(), rstd.data(), T, n);
    // dx: one extra rounding of the sum. dw: T sequential additions, each within u of the running magnitude.
    for (int i = 0; i < T * n; ++i) EXPECT_NEAR(dxa[i], dx1[i] + dx0[i], 2 * u32 * (std::fabs(dx1[i]) + std::fabs(dx0[i])));
    for (int i = 0; i < n; ++i) {
        double mag = std::fabs(dw1[i]);
        for (int t = 0; t < T; ++t) mag += std::fabs(double(dy[t * n + i]) * x[t * n + i] * rstd[t]);
        EXPECT_NEAR(dwa[i], dw1[i] + dw0[i], 2 * (T + 1) * u32 * mag);
    }
}

TEST(OpsRmsnorm, GradientMatchesFiniteDifferences) {
    rng r(6);
    const int T = 5, n = 11;
    auto x = randn(r, T * n), w = randn(r, n, 1.0), rr = randn(r, T * n);
    for (auto& v : w) v += 1.0f;
    std::vector<float> y(T * n), rstd(T), gx(T * n, 0.0f), gw(n, 0.0f);
    mtp::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), T, n, 1e-6f);
    mtp::rmsnorm_backward(gx.data(), gw.data(), rr.data(), x.data(), w.data(), rstd.data(), T, n);
    std::vector<fd_slot> slots{{"x", x.data(), gx.data(), gx.size()}, {"w", w.data(), gw.data(), gw.size()}};
    loss_fn loss = [&](double* abs) {
        mtp::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), T, n, 1e-6f);
        return dot_loss(rr.data(), y.data(), y.size(), abs);
    };
    // Depth: sum of squares, rsqrt, two products. ε here and below: near (c·u)^(1/3) ≈ 6e-3 (c = 4) .. 8e-3 (c = 8),
    // where truncation ε²/6·|L'''| and rounding c·u·Σ|r y|/ε balance for O(1) inputs (fd_harness.h). Measured worst
    // err/tol over every FD check of this file: 0.33 (cross_entropy).
    fd_verify("rmsnorm", slots, loss, 3e-3, rounding_c(4), 61);
}

// ----------------------------------------------------------------- rope

// Layout under test: T rows of ld floats, n_heads heads of head_stride floats, rope slice at `offset`.
struct rope_case {
    int T = 3, n_heads = 2, head_stride = 7, offset = 3, rope = 4, ld = 15;
    std::vector<float> cos, sin;
    explicit rope_case(const std::vector<int>& pos, double theta = 10000.0) {
        const int half = rope / 2;
        T = int(pos.size());
        cos.resize(T * half);
        sin.resize(T * half);
        for (int t = 0; t < T; ++t)
            for (int i = 0; i < half; ++i) {
                double th = pos[t] * std::pow(theta, -2.0 * i / rope);   // spec §3.3: θ = pos · f_i
                cos[t * half + i] = float(std::cos(th));
                sin[t * half + i] = float(std::sin(th));
            }
    }
    bool in_slice(int col) const {
        int h = col / head_stride, k = col % head_stride;
        return h < n_heads && k >= offset && k < offset + rope;
    }
    void fwd(float* x) const { mtp::rope_forward(x, T, ld, n_heads, head_stride, offset, rope, cos.data(), sin.data()); }
    void bwd(float* x) const { mtp::rope_backward(x, T, ld, n_heads, head_stride, offset, rope, cos.data(), sin.data()); }
};

TEST(OpsRope, ForwardMatchesSpecFormulaAndTouchesOnlyTheSlice) {
    rng r(7);
    rope_case rc({0, 5, 1000});
    auto x = randn(r, rc.T * rc.ld), y = x;
    rc.fwd(y.data());
    const int half = rc.rope / 2;
    for (int t = 0; t < rc.T; ++t) {
        for (int col = 0; col < rc.ld; ++col)
            if (!rc.in_slice(col)) {
                EXPECT_EQ(y[t * rc.ld + col], x[t * rc.ld + col]) << "outside the slice";
            }
        for (int h = 0; h < rc.n_heads; ++h)
            for (int i = 0; i < half; ++i) {
                int b = t * rc.ld + h * rc.head_stride + rc.offset + 2 * i;
                double c = rc.cos[t * half + i], s = rc.sin[t * half + i], a0 = x[b], a1 = x[b + 1];
                // (y[2i], y[2i+1]) = (x[2i]cosθ − x[2i+1]sinθ, x[2i]sinθ + x[2i+1]cosθ): 2 products and a sum.
                EXPECT_NEAR(y[b], a0 * c - a1 * s, 2 * u32 * (std::fabs(a0 * c) + std::fabs(a1 * s)));
                EXPECT_NEAR(y[b + 1], a0 * s + a1 * c, 2 * u32 * (std::fabs(a0 * s) + std::fabs(a1 * c)));
            }
    }
}

TEST(OpsRope, IsARotationAndBackwardIsItsInverse) {
    rng r(8);
    rope_case rc({0, 3, 17, 4000});
    auto x = randn(r, rc.T * rc.ld), y = x, yt = randn(r, rc.T * rc.ld);
    rc.fwd(y.data());
    const int half = rc.rope / 2;
    for (int t = 0; t < rc.T; ++t)
        for (int h = 0; h < rc.n_heads; ++h)
            for (int i = 0; i < half; ++i) {
                int b = t * rc.ld + h * rc.head_stride + rc.offset + 2 * i;
                double n0 = double(x[b]) * x[b] + double(x[b + 1]) * x[b + 1];
                double n1 = double(y[b]) * y[b] + double(y[b + 1]) * y[b + 1];
                // |cos²+sin²−1| ≤ 2u after rounding each to fp32, plus the rotation's own ≤ 2u per component.
                EXPECT_NEAR(n1, n0, 8 * u32 * n0) << "norm of a pair";
            }
    auto z = y;                                              // R^T R x == x
    rc.bwd(z.data());
    double xmax = 0;
    for (float v : x) xmax = std::max(xmax, double(std::fabs(v)));
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(z[i], x[i], 8 * u32 * xmax);   // two rotations, ≤ 4u each
    // <R x, y> == <x, R^T y>: backward is the transpose.
    auto ryt = yt;
    rc.bwd(ryt.data());
    double lhs = 0, rhs = 0, mag = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        lhs += double(y[i]) * yt[i];
        rhs += double(x[i]) * ryt[i];
        mag += std::fabs(double(y[i]) * yt[i]);
    }
    // y = R x and R^T yt each carry ≤ 2u·(|a0 c| + |a1 s|) per component (above): 4u for the pair, ×2 for components
    // where cancellation makes |y| smaller than |a0 c| + |a1 s|.
    EXPECT_NEAR(lhs, rhs, 8 * u32 * mag);
}

TEST(OpsRope, GradientMatchesFiniteDifferences) {
    rng r(9);
    rope_case rc({2, 9, 30});
    auto x = randn(r, rc.T * rc.ld), rr = randn(r, rc.T * rc.ld);
    auto g = rr;
    rc.bwd(g.data());                                         // dL/dx = R^T r
    std::vector<float> y(x.size());
    std::vector<fd_slot> slots{{"x", x.data(), g.data(), g.size()}};
    loss_fn loss = [&](double* abs) {
        y = x;
        rc.fwd(y.data());
        return dot_loss(rr.data(), y.data(), y.size(), abs);
    };
    fd_verify("rope", slots, loss, 1e-2, rounding_c(2), 91);   // depth: the products, then their sum
}

// ----------------------------------------------------------------- silu_mul

TEST(OpsSiluMul, ForwardMatchesReferenceAndIsStable) {
    rng r(10);
    const size_t n = 40;
    auto g = randn(r, n, 4.0), u = randn(r, n);
    g[0] = -100.0f;
    g[1] = 100.0f;
    g[2] = 0.0f;
    std::vector<float> a(n);
    mtp::silu_mul_forward(a.data(), g.data(), u.data(), n);
    for (size_t i = 0; i < n; ++i) {
        double ref = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
        // exp (≤ 2 ulp in libm), an add, a division and a product. + 1e-37 absolute: g = -100 gives |a| ≈ 4e-42·|u|, an
        // fp32 subnormal (below FLT_MIN = 1.2e-38) where a relative bound cannot hold.
        EXPECT_NEAR(a[i], ref, 8 * u32 * std::fabs(ref) + 1e-37) << "g=" << g[i];
    }
    std::vector<float> dg(n, 1e30f), du(n, 1e30f), da = randn(r, n);
    mtp::silu_mul_backward(dg.data(), du.data(), da.data(), g.data(), u.data(), n);
    for (size_t i = 0; i < n; ++i) {
        EXPECT_TRUE(std::isfinite(dg[i]) && std::isfinite(du[i])) << "overwritten, finite at g=" << g[i];
        double s = 1.0 / (1.0 + std::exp(-double(g[i])));
        double rdu = da[i] * g[i] * s, rdg = da[i] * u[i] * s * (1 + g[i] * (1 - s));
        // du: the forward's chain (exp, add, division, g·s, da·silu): 8u as above. dg: the sigmoid (≤ 6u), 1 - s,
        // g·(1 - s), 1 + ... and three products, ≈ 12u; taken relative to |da u s|·(1 + |g|) because s's absolute
        // error passes through g·(1 - s) with gain |g| (and 1 + g(1 - s) may cancel).
        EXPECT_NEAR(du[i], rdu, 8 * u32 * std::fabs(rdu) + 1e-37);
        EXPECT_NEAR(dg[i], rdg, 16 * u32 * (std::fabs(da[i] * u[i] * s) * (1 + std::fabs(g[i]))) + 1e-37);
    }
}

TEST(OpsSiluMul, GradientMatchesFiniteDifferences) {
    rng r(11);
    const size_t n = 50;
    auto g = randn(r, n, 2.0), u = randn(r, n), rr = randn(r, n);
    std::vector<float> a(n), dg(n), du(n);
    mtp::silu_mul_backward(dg.data(), du.data(), rr.data(), g.data(), u.data(), n);
    std::vector<fd_slot> slots{{"g", g.data(), dg.data(), n, 2.0}, {"u", u.data(), du.data(), n}};
    loss_fn loss = [&](double* abs) {
        mtp::silu_mul_forward(a.data(), g.data(), u.data(), n);
        return dot_loss(rr.data(), a.data(), n, abs);
    };
    fd_verify("silu_mul", slots, loss, 3e-3, rounding_c(4), 111);   // depth: exp, add, division, product
}

// ----------------------------------------------------------------- cross_entropy

double ref_ce_row(const float* l, int V, int tgt) {
    double mx = l[0];
    for (int v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
    double s = 0;
    for (int v = 0; v < V; ++v) s += std::exp(double(l[v]) - mx);
    return mx + std::log(s) - l[tgt];
}

TEST(OpsCrossEntropy, ForwardGradientIgnoredRowsAliasAndStability) {
    rng r(12);
    const int T = 5, V = 11;
    auto logits = randn(r, T * V, 3.0);
    for (int v = 0; v < V; ++v) logits[3 * V + v] += 1000.0f;        // huge logits: still finite
    std::vector<int> tgt{3, -1, 0, 10, 7};
    const float scale = 0.37f;
    std::vector<float> d(T * V, 123.0f);
    double L = mtp::cross_entropy(d.data(), logits.data(), tgt.data(), T, V, scale);
    double ref = 0;
    for (int t = 0; t < T; ++t)
        if (tgt[t] >= 0) ref += ref_ce_row(logits.data() + t * V, V, tgt[t]);
    ASSERT_TRUE(std::isfinite(L));
    // exp/log run in double; the only fp32 rounding is l_v − max, relative u, which moves each row's
    // log-sum-exp by at most u·(max − min of the row). (With a gradient pointer the exps are fp32 (expf, ≤ 1 ulp
    // each); the factor 2 covers that while max − min ≥ 2: the rows here span 4.6 .. 12.6. Measured err/tol 0.004.)
    double tol = 0;
    for (int t = 0; t < T; ++t) {
        const float* l = logits.data() + t * V;
        tol += 2 * u32 * (*std::max_element(l, l + V) - *std::min_element(l, l + V));
    }
    EXPECT_NEAR(L, ref, tol);
    for (int t = 0; t < T; ++t)
        for (int v = 0; v < V; ++v) {
            if (tgt[t] < 0) { EXPECT_EQ(d[t * V + v], 0.0f) << "ignored row"; continue; }
            const float* l = logits.data() + t * V;
            double mx = l[0];
            for (int k = 1; k < V; ++k) mx = std::max(mx, double(l[k]));
            double s = 0;
            for (int k = 0; k < V; ++k) s += std::exp(double(l[k]) - mx);
            double p = std::exp(double(l[v]) - mx) / s;
            double rd = scale * (p - (v == tgt[t] ? 1.0 : 0.0));
            // d = fp32 exp · fl(scale/Σ) − scale·[v = tgt]: ~6 roundings relative to scale (expf, l − max whose effect
            // p·|l − max|·u ≤ u/e, the sum, the division, the product, the subtraction); measured max 0.66·u·scale.
            EXPECT_NEAR(d[t * V + v], rd, 8 * u32 * scale + 1e-37) << t << "," << v;
        }
    EXPECT_EQ(mtp::cross_entropy(nullptr, logits.data(), tgt.data(), T, V, 0.0f), L);   // no gradient pointer
    auto alias = logits;                                                            // dlogits may alias logits
    double La = mtp::cross_entropy(alias.data(), alias.data(), tgt.data(), T, V, scale);
    EXPECT_EQ(La, L);
    EXPECT_EQ(alias, d);
}

// The row maximum (vectorised for rows of 16 or more) must see every position: a logit 200 above the rest that it
// missed would overflow the exps (exp(200) > FLT_MAX) and make the loss infinite.
TEST(OpsCrossEntropy, RowMaximumSeesEveryPosition) {
    rng r(13);
    for (int V : {15, 16, 17, 31, 32, 33, 100, 1000}) {
        for (int p : {0, 1, 7, 8, 15, 16, 17, V / 2, V - 2, V - 1}) {
            if (p < 0 || p >= V) continue;
            auto logits = randn(r, V, 1.0);
            logits[size_t(p)] += 200.0f;
            const int tgt = (p + 3) % V;
            std::vector<float> d(static_cast<size_t>(V));
            const double L = mtp::cross_entropy(d.data(), logits.data(), &tgt, 1, V, 1.0f);
            const double ref = ref_ce_row(logits.data(), V, tgt);
            ASSERT_TRUE(std::isfinite(L)) << "V " << V << ", peak at " << p;
            EXPECT_NEAR(L, ref, 4 * u32 * 210.0) << "V " << V << ", peak at " << p;
            EXPECT_NEAR(d[size_t(p)], 1.0, 1e-5) << "V " << V << ", peak at " << p;   // all the mass on the peak
        }
    }
}

TEST(OpsCrossEntropy, GradientMatchesFiniteDifferences) {
    rng r(13);
    const int T = 4, V = 9;
    auto logits = randn(r, T * V, 2.0);
    std::vector<int> tgt{1, 8, -1, 4};
    std::vector<float> g(T * V);
    mtp::cross_entropy(g.data(), logits.data(), tgt.data(), T, V, 1.0f);
    std::vector<fd_slot> slots{{"logits", logits.data(), g.data(), g.size(), 2.0}};
    loss_fn loss = [&](double* abs) {
        double L = mtp::cross_entropy(nullptr, logits.data(), tgt.data(), T, V, 0.0f);
        if (abs) {                                   // first-order sensitivity to relative errors of the logits
            *abs = std::fabs(L);
            for (int i = 0; i < T * V; ++i) *abs += std::fabs(double(g[i]) * logits[i]);
        }
        return L;
    };
    // Depth: max, one fp32 subtraction per logit, then double arithmetic.
    fd_verify("cross_entropy", slots, loss, 1e-2, rounding_c(2), 131);
}

// ----------------------------------------------------------------- add / scale

TEST(OpsAddScale, ForwardIsCorrectlyRounded) {
    rng r(14);
    const size_t n = 33;
    auto x = randn(r, n), y = randn(r, n), y0 = y;
    mtp::add_inplace(y.data(), x.data(), n);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(y[i], float(double(y0[i]) + double(x[i])));
    auto z = y0;
    mtp::scale_inplace(z.data(), -0.3f, n);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(z[i], float(double(y0[i]) * double(-0.3f)));
}

TEST(OpsAddScale, GradientMatchesFiniteDifferences) {
    rng r(15);
    const size_t n = 21;
    auto x = randn(r, n), y = randn(r, n), rr = randn(r, n);
    float s = 0.7f;
    // y' = s·(y + x): dL/dy = dL/dx = s·r, dL/ds = Σ r (y + x).
    std::vector<float> gxy(n), gs(1), out(n);
    double gsd = 0;
    for (size_t i = 0; i < n; ++i) { gxy[i] = s * rr[i]; gsd += double(rr[i]) * (double(y[i]) + x[i]); }
    gs[0] = float(gsd);
    std::vector<fd_slot> slots{{"x", x.data(), gxy.data(), n}, {"y", y.data(), gxy.data(), n}, {"s", &s, gs.data(), 1}};
    loss_fn loss = [&](double* abs) {
        out = y;
        mtp::add_inplace(out.data(), x.data(), n);
        mtp::scale_inplace(out.data(), s, n);
        return dot_loss(rr.data(), out.data(), n, abs);
    };
    fd_verify("add/scale", slots, loss, 1e-2, rounding_c(2), 151);   // depth: the add, the scale
}

// The FD machinery must be able to fail: a reference gradient with one sign flipped is rejected.
TEST(OpsFiniteDifference, DetectsAWrongGradient) {
    rng r(16);
    const int T = 3, in = 5, out = 4;
    auto x = randn(r, T * in), w = randn(r, out * in), rr = randn(r, T * out);
    std::vector<float> y(T * out), gx(T * in, 0.0f), gw(out * in, 0.0f);
    mtp::linear_backward(gx.data(), gw.data(), rr.data(), x.data(), w.data(), T, in, out);
    for (auto& v : gw) v = -v;                                       // the flipped sign
    std::vector<fd_slot> slots{{"x", x.data(), gx.data(), gx.size()}, {"w", w.data(), gw.data(), gw.size()}};
    loss_fn loss = [&](double* abs) {
        mtp::linear_forward(y.data(), x.data(), w.data(), T, in, out);
        return dot_loss(rr.data(), y.data(), y.size(), abs);
    };
    std::vector<std::vector<double>> d{std::vector<double>(gx.size(), 0.0), std::vector<double>(gw.size())};
    for (auto& v : d[1]) v = r.normal();
    fd_outcome o = fd_check(slots, d, loss, 0.1, rounding_c(1));
    EXPECT_GT(o.err, o.tol);                                 // measured: err/tol ≈ 6e5 (err = 2|g·v|)
}

} // namespace

// serial_ops_scope: the elementwise ops ask for no OpenMP team while one is alive on the calling thread (nested
// scopes restore the outer state; other threads are unaffected), and give the same bits either way.
TEST(OpsSerialScope, NoForkRequestsInsideAndSameResults) {
    const int T = 256, n = 256;                     // T * n above the fork threshold
    const auto x = mtp::test::randn(size_t(T) * n, 3), w = mtp::test::randn(size_t(n), 4);
    std::vector<float> y1(x.size()), y2(x.size());
    std::vector<float> r1(static_cast<size_t>(T)), r2(static_cast<size_t>(T));
    const long long f0 = mtp::ops_fork_requests();
    mtp::rmsnorm_forward(y1.data(), r1.data(), x.data(), w.data(), T, n, 1e-5f);
    const long long f1 = mtp::ops_fork_requests();
    EXPECT_GT(f1, f0);
    {
        mtp::serial_ops_scope outer;
        {
            mtp::serial_ops_scope inner;
        }
        mtp::rmsnorm_forward(y2.data(), r2.data(), x.data(), w.data(), T, n, 1e-5f);
        mtp::add_inplace(y2.data(), x.data(), x.size());
        long long other = 0;
        std::thread([&] {
            const long long g0 = mtp::ops_fork_requests();
            std::vector<float> z(x.size(), 0.0f);
            mtp::add_inplace(z.data(), x.data(), x.size());
            other = mtp::ops_fork_requests() - g0;
        }).join();
        EXPECT_EQ(other, 1);                        // another thread still forks
        EXPECT_EQ(mtp::ops_fork_requests(), f1 + 1);     // only that thread's request
    }
    mtp::add_inplace(y1.data(), x.data(), x.size());     // after the scope: forks again
    EXPECT_EQ(mtp::ops_fork_requests(), f1 + 2);
    EXPECT_EQ(y1, y2);
    EXPECT_EQ(r1, r2);
}
