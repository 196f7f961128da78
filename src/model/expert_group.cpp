// The experts of an MoE layer as one job over the threads (see expert_group.h).
#include "model/expert_group.h"

#include <algorithm>
#include <cstring>
#include <omp.h>

#include "core/profile.h"

namespace mtp {

namespace {

// Experts 0..E-1 are the routed ones, E the shared one (when the layer has it).
struct group_plan {
    int E = 0;
    bool shared = false;
    std::vector<int> rows;        // [E+1] rows of each expert (the shared one: all rows)
    std::vector<int> alone;       // experts with more than 1/threads of all the rows: one at a time, on every thread
    std::vector<int> grouped;     // the rest, largest first: one thread each
    std::vector<size_t> off;      // [E+2] floats of each expert's cache (and backward scratch) in one buffer
};

const swiglu_offsets& offsets_of(const layer_offsets& l, const group_plan& p, int e) {
    return e < p.E ? l.experts[size_t(e)] : l.shared;
}

group_plan plan_group(const layer_offsets& l, const moe_cache& m) {
    group_plan p;
    p.E = int(m.start.size()) - 1;
    p.shared = l.shared.inner > 0;
    const int threads = omp_get_max_threads();
    p.rows.assign(size_t(p.E) + 1, 0);
    for (int e = 0; e < p.E; ++e) p.rows[size_t(e)] = m.start[size_t(e) + 1] - m.start[size_t(e)];
    if (p.shared) p.rows[size_t(p.E)] = m.B * m.T;
    size_t total = 0;
    p.off.assign(size_t(p.E) + 2, 0);
    std::vector<int> order;
    for (int e = 0; e <= p.E; ++e) {
        const int inner = e < p.E || p.shared ? offsets_of(l, p, e).inner : 0;
        p.off[size_t(e) + 1] = p.off[size_t(e)] + swiglu_floats(p.rows[size_t(e)], inner);
        total += size_t(p.rows[size_t(e)]);
        if (p.rows[size_t(e)] > 0) order.push_back(e);
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p.rows[size_t(a)] > p.rows[size_t(b)]; });
    for (int e : order)
        (threads == 1 || size_t(p.rows[size_t(e)]) * threads > total ? p.alone : p.grouped).push_back(e);
    if (p.grouped.size() == 1) p.alone.push_back(p.grouped[0]), p.grouped.clear();
    return p;
}

// The GEMM FLOPs of the grouped experts' SwiGLUs (their products run inside the job, where the profile does not
// count them): 3 products of 2·n·d·f forward, twice that backward.
double grouped_flops(const layer_offsets& l, const group_plan& p, int d, int passes) {
    double f = 0;
    for (int e : p.grouped) f += 6.0 * p.rows[size_t(e)] * d * offsets_of(l, p, e).inner * passes;
    return f;
}

// Every expert of the plan through run(e): the alone ones in turn (their products on every thread), then the
// grouped ones one per thread, largest first.
template <class F>
void run_plan(const group_plan& p, F run) {
    for (int e : p.alone) run(e);
    const int n = int(p.grouped.size());
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int i = 0; i < n; ++i) run(p.grouped[size_t(i)]);
}

} // namespace

void expert_group_forward(const float* W, const layer_offsets& l, moe_cache& m, float* y, int d, arena& a) {
    const group_plan p = plan_group(l, m);
    float* cache = a.alloc(p.off[size_t(p.E) + 1]);
    for (int e = 0; e < p.E; ++e) m.experts[size_t(e)] = swiglu_cache{};
    m.shared = swiglu_cache{};
    if (!p.shared) std::memset(y, 0, sizeof(float) * size_t(m.B) * m.T * d);
    run_plan(p, [&](int e) {
        float* c = cache + p.off[size_t(e)];
        if (e == p.E) return swiglu_forward_in(W, l.shared, m.shared, y, m.x, p.rows[size_t(e)], d, c);
        const size_t r0 = size_t(m.start[size_t(e)]) * d;
        swiglu_forward_in(W, l.experts[size_t(e)], m.experts[size_t(e)], m.ye + r0, m.xe + r0, p.rows[size_t(e)], d, c);
    });
    prof_add_flops(grouped_flops(l, p, d, 1));
}

void expert_group_backward(const float* W, float* G, const layer_offsets& l, const moe_cache& m, const float* dye,
                           float* dxe, const float* dy, float* dx, int d, arena& a) {
    const group_plan p = plan_group(l, m);
    auto mk = a.mark();
    float* scratch = a.alloc(p.off[size_t(p.E) + 1]);
    run_plan(p, [&](int e) {
        float* s = scratch + p.off[size_t(e)];
        if (e == p.E) return swiglu_backward_in(W, G, l.shared, m.shared, dx, dy, d, s);
        const size_t r0 = size_t(m.start[size_t(e)]) * d;
        std::memset(dxe + r0, 0, sizeof(float) * size_t(p.rows[size_t(e)]) * d);
        swiglu_backward_in(W, G, l.experts[size_t(e)], m.experts[size_t(e)], dxe + r0, dye + r0, d, s);
    });
    prof_add_flops(grouped_flops(l, p, d, 2));
    a.rewind(mk);
}

} // namespace mtp
