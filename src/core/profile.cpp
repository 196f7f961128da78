// Phase profile: a stack of open phases on the recording thread, exclusive wall time and FLOPs per phase.
#include "core/profile.h"

#include <chrono>

#include <omp.h>

namespace mtp {

namespace {

using clk = std::chrono::steady_clock;
constexpr int n_phases = int(prof::count);

bool g_on = false;
prof_row g_acc[n_phases];
int g_stack[64];
int g_depth = 0;
clk::time_point g_last;

double since(clk::time_point now) { return std::chrono::duration<double>(now - g_last).count(); }

} // namespace

const char* prof_name(prof p) {
    static const char* names[n_phases] = {"attention projections", "attention core",  "dense MLP",
                                          "shared experts (apart)", "MoE experts",    "SiLU x up",
                                          "router",                "MoE gather/scatter", "RMSNorm",
                                          "RoPE",                  "MTP concat + eh_proj", "lm_head",
                                          "cross-entropy",         "embedding",       "optimizer (norm, clip, AdamW)"};
    return names[int(p)];
}

void prof_enable(bool on) {
    g_on = on;
    g_depth = 0;
}

bool prof_enabled() { return g_on; }

void prof_add_flops(double flops) {
    if (!g_on || g_depth == 0 || omp_in_parallel()) return;
    g_acc[g_stack[g_depth - 1]].flops += flops;
}

prof_scope::prof_scope(prof p) : active_(g_on && !omp_in_parallel() && g_depth < 64) {
    if (!active_) return;
    const auto now = clk::now();
    if (g_depth > 0) g_acc[g_stack[g_depth - 1]].seconds += since(now);
    g_stack[g_depth++] = int(p);
    g_acc[int(p)].calls++;
    g_last = now;
}

prof_scope::~prof_scope() {
    if (!active_) return;
    const auto now = clk::now();
    g_acc[g_stack[g_depth - 1]].seconds += since(now);
    --g_depth;
    g_last = now;
}

void prof_seq::set(prof p) {
    if (!scope_.active_) return;
    const auto now = clk::now();
    g_acc[g_stack[g_depth - 1]].seconds += since(now);
    g_stack[g_depth - 1] = int(p);
    g_acc[int(p)].calls++;
    g_last = now;
}

std::vector<prof_row> prof_take() {
    std::vector<prof_row> r;
    for (int i = 0; i < n_phases; ++i) {
        g_acc[i].phase = prof(i);
        r.push_back(g_acc[i]);
        g_acc[i] = prof_row{};
    }
    return r;
}

} // namespace mtp
