// The routed experts as one job over the threads (see expert_group.h).
#include "model/expert_group.h"

#include <algorithm>
#include <cstring>
#include <omp.h>

#include "core/profile.h"

namespace mtp {

namespace {

struct group_plan {
    std::vector<int> alone;       // experts with more than 1/threads of the rows: one at a time, on every thread
    std::vector<int> grouped;     // the rest, largest first: one thread each
    std::vector<size_t> off;      // [E+1] floats of each expert's cache (and backward scratch) in one buffer
};

int rows_of(const moe_cache& m, int e) { return m.start[size_t(e) + 1] - m.start[size_t(e)]; }

group_plan plan_group(const layer_offsets& l, const moe_cache& m) {
    const int E = int(m.start.size()) - 1, total = m.start[size_t(E)];
    const int threads = omp_get_max_threads();
    group_plan p;
    p.off.assign(size_t(E) + 1, 0);
    std::vector<int> order;
    for (int e = 0; e < E; ++e) {
        p.off[size_t(e) + 1] = p.off[size_t(e)] + swiglu_floats(rows_of(m, e), l.experts[size_t(e)].inner);
        if (rows_of(m, e) > 0) order.push_back(e);
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return rows_of(m, a) > rows_of(m, b); });
    for (int e : order)
        (threads == 1 || size_t(rows_of(m, e)) * threads > size_t(total) ? p.alone : p.grouped).push_back(e);
    if (p.grouped.size() == 1) p.alone.push_back(p.grouped[0]), p.grouped.clear();
    return p;
}

// The GEMM FLOPs of the grouped experts' SwiGLUs (their products run inside the job, where the profile does not
// count them): 3 products of 2·n·d·f forward, twice that backward.
double grouped_flops(const layer_offsets& l, const moe_cache& m, const group_plan& p, int d, int passes) {
    double f = 0;
    for (int e : p.grouped) f += 6.0 * rows_of(m, e) * d * l.experts[size_t(e)].inner * passes;
    return f;
}

} // namespace

void expert_group_forward(const float* W, const layer_offsets& l, moe_cache& m, int d, arena& a) {
    const group_plan p = plan_group(l, m);
    const int E = int(m.start.size()) - 1;
    float* cache = a.alloc(p.off[size_t(E)]);
    for (int e = 0; e < E; ++e) m.experts[size_t(e)] = swiglu_cache{};
    auto run = [&](int e) {
        const size_t r0 = size_t(m.start[size_t(e)]) * d;
        swiglu_forward_in(W, l.experts[size_t(e)], m.experts[size_t(e)], m.ye + r0, m.xe + r0, rows_of(m, e), d,
                          cache + p.off[size_t(e)]);
    };
    for (int e : p.alone) run(e);
    const int n = int(p.grouped.size());
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int i = 0; i < n; ++i) run(p.grouped[size_t(i)]);
    prof_add_flops(grouped_flops(l, m, p, d, 1));
}

void expert_group_backward(const float* W, float* G, const layer_offsets& l, const moe_cache& m, const float* dye,
                           float* dxe, int d, arena& a) {
    const group_plan p = plan_group(l, m);
    const int E = int(m.start.size()) - 1;
    auto mk = a.mark();
    float* scratch = a.alloc(p.off[size_t(E)]);
    auto run = [&](int e) {
        const size_t r0 = size_t(m.start[size_t(e)]) * d;
        std::memset(dxe + r0, 0, sizeof(float) * size_t(rows_of(m, e)) * d);
        swiglu_backward_in(W, G, l.experts[size_t(e)], m.experts[size_t(e)], dxe + r0, dye + r0, d,
                           scratch + p.off[size_t(e)]);
    };
    for (int e : p.alone) run(e);
    const int n = int(p.grouped.size());
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int i = 0; i < n; ++i) run(p.grouped[size_t(i)]);
    prof_add_flops(grouped_flops(l, m, p, d, 2));
    a.rewind(mk);
}

} // namespace mtp
