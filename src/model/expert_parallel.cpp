// The expert all-to-all of moe_forward / moe_backward over the expert-parallel group (see expert_parallel.h).
#include "model/expert_parallel.h"

#include <cstring>

#include "core/comm.h"
#include "core/error.h"

namespace mtp {

namespace {

bool g_on = false;

// Offsets of the received rows: source-major (as they arrive: source q, then its rows for local expert j) and
// expert-major (what the owner computes on: local expert j, then source q). counts [P][El] rows.
struct layout2 {
    std::vector<size_t> src, dst;   // [P][El] row offsets
    size_t rows = 0;
};

layout2 make_layout(const std::vector<size_t>& counts, int P, int El) {
    layout2 L;
    L.src.assign(counts.size(), 0);
    L.dst.assign(counts.size(), 0);
    size_t o = 0;
    for (int q = 0; q < P; ++q)
        for (int j = 0; j < El; ++j) { L.src[size_t(q) * El + j] = o; o += counts[size_t(q) * El + j]; }
    L.rows = o;
    o = 0;
    for (int j = 0; j < El; ++j)
        for (int q = 0; q < P; ++q) { L.dst[size_t(q) * El + j] = o; o += counts[size_t(q) * El + j]; }
    return L;
}

// to_expert_major: source-major `from` -> expert-major `to`; else the reverse.
void permute(const layout2& L, const std::vector<size_t>& counts, const float* from, float* to, int d,
             bool to_expert_major) {
    for (size_t i = 0; i < counts.size(); ++i) {
        if (!counts[i]) continue;
        const size_t a = to_expert_major ? L.src[i] : L.dst[i], b = to_expert_major ? L.dst[i] : L.src[i];
        std::memcpy(to + b * d, from + a * d, sizeof(float) * counts[i] * d);
    }
}

struct plan {
    int P, me, El;
    std::vector<size_t> send_rows, recv_rows;   // [P]
    std::vector<size_t> counts;                  // [P][El] rows received from source q for local expert j
    layout2 L;
};

// counts: [P][El] rows received from each group rank for each owned expert (the forward's all-to-all of sizes).
plan make_plan(const model_config& c, const moe_cache& m, std::vector<size_t> counts) {
    const comm_info g = comm_expert_group();
    plan p;
    p.P = g.size;
    p.me = g.rank;
    p.El = c.n_routed_experts / p.P;
    p.counts = std::move(counts);
    p.send_rows.assign(size_t(p.P), 0);
    p.recv_rows.assign(size_t(p.P), 0);
    for (int q = 0; q < p.P; ++q)
        for (int j = 0; j < p.El; ++j) {
            const int e = q * p.El + j;
            p.send_rows[size_t(q)] += size_t(m.start[size_t(e) + 1] - m.start[size_t(e)]);
            p.recv_rows[size_t(q)] += p.counts[size_t(q) * p.El + j];
        }
    p.L = make_layout(p.counts, p.P, p.El);
    return p;
}

// The forward's plan: every rank sends the El counts of owner q's experts to q.
plan exchange_plan(const model_config& c, const moe_cache& m) {
    const int E = c.n_routed_experts, P = comm_expert_group().size;
    if (E % P != 0)
        fail("--expert-parallel", std::to_string(E) + " routed experts do not split over " + std::to_string(P) + " ranks");
    std::vector<size_t> per(static_cast<size_t>(E), 0), counts;
    for (int e = 0; e < E; ++e) per[size_t(e)] = size_t(m.start[size_t(e) + 1] - m.start[size_t(e)]);
    comm_alltoall_sizes(per, counts);
    return make_plan(c, m, std::move(counts));
}

std::vector<size_t> times(const std::vector<size_t>& v, int d) {
    std::vector<size_t> r(v);
    for (auto& x : r) x *= size_t(d);
    return r;
}

} // namespace

void expert_parallel_enable(bool on) { g_on = on && comm_expert_group().size > 1; }
bool expert_parallel_active() { return g_on; }

void expert_parallel_forward(const model_config& c, const layer_offsets& l, const float* W, moe_cache& m, arena& a) {
    const int d = c.hidden_size;
    plan p = exchange_plan(c, m);
    m.ep_counts = p.counts;                                     // the backward sends along the same routes
    float* recv = a.alloc(p.L.rows * d + 1);
    comm_alltoallv(m.xe, times(p.send_rows, d), recv, times(p.recv_rows, d));
    float* xr = a.alloc(p.L.rows * d + 1);                      // [rows, d] expert-major; kept for backward
    permute(p.L, p.counts, recv, xr, d, true);
    float* yr = a.alloc(p.L.rows * d + 1);
    for (int e = 0; e < c.n_routed_experts; ++e) m.experts[size_t(e)] = swiglu_cache{};
    for (int j = 0; j < p.El; ++j) {
        const size_t o = p.L.dst[size_t(j)];                   // source 0's block of expert j starts the run
        size_t n = 0;
        for (int q = 0; q < p.P; ++q) n += p.counts[size_t(q) * p.El + j];
        const int e = p.me * p.El + j;
        swiglu_forward(W, l.experts[size_t(e)], m.experts[size_t(e)], yr + o * d, xr + o * d, int(n), d, a);
    }
    permute(p.L, p.counts, yr, recv, d, false);                 // back to source-major, reusing recv
    comm_alltoallv(recv, times(p.recv_rows, d), m.ye, times(p.send_rows, d));
}

void expert_parallel_backward(const model_config& c, const layer_offsets& l, const float* W, float* G,
                              const moe_cache& m, const float* dye, float* dxe, arena& a) {
    const int d = c.hidden_size;
    plan p = make_plan(c, m, m.ep_counts);
    auto mk = a.mark();
    float* recv = a.alloc(p.L.rows * d + 1);
    comm_alltoallv(dye, times(p.send_rows, d), recv, times(p.recv_rows, d));
    float* dyr = a.alloc(p.L.rows * d + 1);
    permute(p.L, p.counts, recv, dyr, d, true);
    float* dxr = a.alloc_zero(p.L.rows * d + 1);
    for (int j = 0; j < p.El; ++j) {
        const size_t o = p.L.dst[size_t(j)];
        const int e = p.me * p.El + j;
        swiglu_backward(W, G, l.experts[size_t(e)], m.experts[size_t(e)], dxr + o * d, dyr + o * d, d, a);
    }
    permute(p.L, p.counts, dxr, recv, d, false);
    comm_alltoallv(recv, times(p.recv_rows, d), dxe, times(p.send_rows, d));
    a.rewind(mk);
}

} // namespace mtp
