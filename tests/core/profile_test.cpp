// The phase profile (core/profile.h): GEMM FLOPs land in the innermost open phase, nested phases are exclusive,
// and nothing is recorded while it is off.
#include <gtest/gtest.h>

#include <chrono>
#include <vector>

#include "core/ops.h"
#include "core/profile.h"

using namespace mtp;

TEST(Profile, FlopsGoToTheInnermostPhaseAndTimesAreExclusive) {
    const int T = 5, in = 7, out = 3;
    std::vector<float> x(size_t(T) * in, 0.5f), w(size_t(out) * in, 0.25f), y(size_t(T) * out), dx(x.size(), 0.0f),
        dw(w.size(), 0.0f);
    prof_take();
    linear_forward(y.data(), x.data(), w.data(), T, in, out);      // off: nothing recorded
    for (const auto& r : prof_take()) EXPECT_EQ(r.calls, 0);
    prof_enable(true);
    const auto t0 = std::chrono::steady_clock::now();
    {
        prof_scope outer(prof::attn_proj);
        linear_forward(y.data(), x.data(), w.data(), T, in, out);  // 2·T·in·out into attn_proj
        {
            prof_scope inner(prof::lm_head);
            linear_backward(dx.data(), dw.data(), y.data(), x.data(), w.data(), T, in, out);   // 2 products
        }
        prof_seq seq(prof::router);
        linear_forward(y.data(), x.data(), w.data(), T, in, out);
        seq.set(prof::experts);
        linear_backward(nullptr, dw.data(), y.data(), x.data(), w.data(), T, in, out);       // dw only
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    prof_enable(false);
    const double f = 2.0 * T * in * out;
    double total = 0;
    for (const auto& r : prof_take()) {
        total += r.seconds;
        switch (r.phase) {
            case prof::attn_proj: EXPECT_EQ(r.flops, f); EXPECT_EQ(r.calls, 1); break;
            case prof::lm_head: EXPECT_EQ(r.flops, 2 * f); EXPECT_EQ(r.calls, 1); break;
            case prof::router: EXPECT_EQ(r.flops, f); EXPECT_EQ(r.calls, 1); break;
            case prof::experts: EXPECT_EQ(r.flops, f); EXPECT_EQ(r.calls, 1); break;
            default: EXPECT_EQ(r.calls, 0) << prof_name(r.phase); break;
        }
    }
    EXPECT_LE(total, wall);                                        // exclusive: no time counted twice
    for (const auto& r : prof_take()) EXPECT_EQ(r.calls, 0);       // take resets
}
