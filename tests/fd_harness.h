// The one finite-difference harness of the gradient tests (tests/core/ops_test.cpp, tests/model/grad_test.cpp):
// directional central differences with a tolerance derived from the truncation and rounding errors.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <omp.h>

#include "core/rng.h"

namespace mtp::fd {

// ---------------------------------------------------------------------------------------------------------------
// Tolerance.
//
// The loss is a scalar L(p) = Σ_i r_i y_i(p) (+ any extra loss term), r fixed random, accumulated in double. For a
// direction v the central difference D(ε) = (L(p+εv) − L(p−εv)) / 2ε expands (Taylor) as
//        D(ε) = L'(p;v) + ε²/6 · L'''(p;v) + O(ε⁴)                                    (truncation)
// and L'''(p;v) is estimated by Richardson from the same evaluations at 2ε: D(2ε) − D(ε) = ε²/2 · L''' + O(ε⁴).
// Each fp32 evaluation of L carries an absolute rounding error of about c·u·Σ|r_i y_i| (every y_i has a relative
// error of ~c·u after c rounding stages; the double sum of r_i y_i adds nothing at this level), so the
// difference of two evaluations divided by 2ε contributes up to c·u·Σ|r_i y_i| / ε. The analytic side g·v,
// accumulated from an fp32 backward of similar depth, is off by about c·u·Σ|g_j v_j|. Hence
//        |g·v − D(ε)| ≤ 2 · ( ε²/6 · |L'''| + c·u·Σ|r_i y_i| / ε + c·u·Σ|g_j v_j| )
// with u = 2^-24 and the factor 2 covering the O(ε⁴) terms and the noise of the L''' estimate itself.
// c = 2 × depth: about two unit roundoffs per dependent fp32 stage (a GEMM, a norm, a softmax, an activation, a
// residual add) on the longest path; the evaluations at p ± εv run the same operation sequence, so their errors
// are strongly correlated and this is a generous budget in practice. The perturbed parameters are rounded to
// fp32, so g·v is taken over the perturbation actually applied.
// ---------------------------------------------------------------------------------------------------------------
constexpr double u32 = 0x1p-24;

inline double rounding_c(int depth) { return 2.0 * depth; }

inline double fd_tolerance(double eps, double third_derivative, double loss_abs, double analytic_abs, double c) {
    const double truncation = eps * eps / 6.0 * std::fabs(third_derivative);
    const double rounding_fd = c * u32 * loss_abs / eps;
    const double rounding_an = c * u32 * analytic_abs;
    return 2.0 * (truncation + rounding_fd + rounding_an);
}

// Resolving power: a directional check only counts if its tolerance is below this fraction of the typical
// directional derivative, i.e. the test would notice a gradient that is off by that fraction. 5% is a policy choice,
// not derived; the bugs it targets (a sign flip, a factor of 2, a dropped term) change g·v by far more (a flipped
// sign in OpsFiniteDifference.DetectsAWrongGradient: err/tol ≈ 6e5).
constexpr double fd_power = 0.05;

// FD evaluations run single-threaded: they are thousands of tiny forwards, where OpenMP fork/join would dominate and
// stall whenever the machine is loaded. The analytic forward/backward under test run with the default thread count.
struct single_thread_scope {
    int saved = omp_get_max_threads();
    single_thread_scope() { omp_set_num_threads(1); }
    ~single_thread_scope() { omp_set_num_threads(saved); }
};

struct fd_slot {
    std::string name;
    float* p;          // values the loss reads
    const float* g;    // analytic gradient of the loss w.r.t. p
    size_t n;
    double scale = 1;  // typical magnitude of p: directions are scale·N(0,1)
};

struct fd_outcome { double analytic = 0, numeric = 0, err = 0, tol = 0; };

// loss(abs) evaluates L at the current slot values; abs (when non-null) receives Σ|r_i y_i|.
using loss_fn = std::function<double(double* abs)>;

inline fd_outcome fd_check(std::vector<fd_slot>& slots, const std::vector<std::vector<double>>& dir,
                           const loss_fn& loss, double eps, double c) {
    std::vector<std::vector<float>> base(slots.size());
    for (size_t j = 0; j < slots.size(); ++j) base[j].assign(slots[j].p, slots[j].p + slots[j].n);
    double loss_abs = 0;
    loss(&loss_abs);
    double an_abs = 0;
    for (size_t j = 0; j < slots.size(); ++j)
        for (size_t i = 0; i < slots[j].n; ++i) an_abs += std::fabs(double(slots[j].g[i]) * dir[j][i]);
    auto at = [&](double t, double& applied) {                 // L(p + t·v); applied = g·(actual perturbation)
        applied = 0;
        for (size_t j = 0; j < slots.size(); ++j)
            for (size_t i = 0; i < slots[j].n; ++i) {
                if (dir[j][i] == 0.0) { slots[j].p[i] = base[j][i]; continue; }
                float v = float(double(base[j][i]) + t * dir[j][i]);
                slots[j].p[i] = v;
                applied += double(slots[j].g[i]) * (double(v) - double(base[j][i]));
            }
        return loss(nullptr);
    };
    double a1p, a1m, a2p, a2m;
    double l1p = at(eps, a1p), l1m = at(-eps, a1m), l2p = at(2 * eps, a2p), l2m = at(-2 * eps, a2m);
    for (size_t j = 0; j < slots.size(); ++j) std::copy(base[j].begin(), base[j].end(), slots[j].p);
    fd_outcome o;
    o.numeric = (l1p - l1m) / (2 * eps);
    o.analytic = (a1p - a1m) / (2 * eps);
    const double e1 = o.numeric - o.analytic;
    const double e2 = (l2p - l2m) / (4 * eps) - (a2p - a2m) / (4 * eps);
    o.err = std::fabs(e1);
    o.tol = fd_tolerance(eps, 2.0 * (e2 - e1) / (eps * eps), loss_abs, an_abs, c);
    if (std::getenv("MTP_FD_VERBOSE"))
        std::printf("    an=% .6e fd=% .6e err=%.2e tol=%.2e err/tol=%.3f tol/|an|=%.4f\n", o.analytic, o.numeric,
                    o.err, o.tol, o.err / o.tol, o.tol / std::fabs(o.analytic));
    return o;
}

// Which directions fd_verify checks: `directions` random ones over all slots (each must have resolving power),
// optionally one random direction inside every slot (so every gradient tensor is compared), `coords_per_slot`
// single coordinates of every slot and `coords_any` single coordinates of random slots.
struct fd_plan {
    int directions = 3;
    bool per_slot_direction = false;
    int coords_per_slot = 3;
    int coords_any = 0;
};

inline void fd_verify(const std::string& what, std::vector<fd_slot>& slots, const loss_fn& loss, double eps, double c,
                      uint64_t seed, const fd_plan& plan = {}) {
    single_thread_scope one_thread;
    rng r(seed);
    auto zero_dir = [&] {
        std::vector<std::vector<double>> d(slots.size());
        for (size_t j = 0; j < slots.size(); ++j) d[j].assign(slots[j].n, 0.0);
        return d;
    };
    // The typical size of g·v over random directions, sqrt(Σ (g_i·scale_i)²) (one draw may be small by chance).
    double typical = 0;
    for (const auto& s : slots)
        for (size_t i = 0; i < s.n; ++i) typical += std::pow(double(s.g[i]) * s.scale, 2);
    typical = std::sqrt(typical);
    for (int k = 0; k < plan.directions; ++k) {
        auto d = zero_dir();
        for (size_t j = 0; j < slots.size(); ++j)
            for (auto& x : d[j]) x = slots[j].scale * r.normal();
        fd_outcome o = fd_check(slots, d, loss, eps, c);
        EXPECT_LE(o.err, o.tol) << what << ": direction " << k << " analytic " << o.analytic << " vs FD " << o.numeric;
        EXPECT_LT(o.tol, fd_power * typical) << what << ": direction " << k << " has no resolving power";
    }
    for (size_t j = 0; plan.per_slot_direction && j < slots.size(); ++j) {
        auto d = zero_dir();
        for (auto& x : d[j]) x = slots[j].scale * r.normal();
        fd_outcome o = fd_check(slots, d, loss, eps, c);
        EXPECT_LE(o.err, o.tol) << what << ": tensor " << slots[j].name << " analytic " << o.analytic << " vs FD "
                                << o.numeric;
    }
    auto coord = [&](size_t j) {
        auto d = zero_dir();
        size_t i = r.below(slots[j].n);
        d[j][i] = slots[j].scale;
        fd_outcome o = fd_check(slots, d, loss, eps, c);
        EXPECT_LE(o.err, o.tol) << what << ": " << slots[j].name << "[" << i << "] analytic " << o.analytic
                                << " vs FD " << o.numeric;
    };
    for (size_t j = 0; j < slots.size(); ++j)
        for (int k = 0; k < plan.coords_per_slot; ++k) coord(j);
    for (int k = 0; k < plan.coords_any; ++k) coord(r.below(slots.size()));
}

inline std::vector<float> randn(rng& r, size_t n, double s = 1.0) {
    std::vector<float> v(n);
    for (auto& x : v) x = float(s * r.normal());
    return v;
}

// L = Σ r_i y_i in double, and Σ|r_i y_i|.
inline double dot_loss(const float* r, const float* y, size_t n, double* abs) {
    double l = 0, a = 0;
    for (size_t i = 0; i < n; ++i) { l += double(r[i]) * y[i]; a += std::fabs(double(r[i]) * y[i]); }
    if (abs) *abs = a;
    return l;
}

} // namespace mtp::fd
