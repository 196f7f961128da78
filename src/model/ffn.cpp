// SwiGLU and DeepSeekMoE forward/backward: router in fp32, experts as gathered GEMMs.
#include "model/ffn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/ops.h"
#include "core/profile.h"
#include "model/expert_group.h"
#include "model/expert_parallel.h"

namespace mtp {

size_t swiglu_floats(int T, int f) { return size_t(T) * 3 * size_t(f); }

void swiglu_forward_in(const float* W, const swiglu_offsets& s, swiglu_cache& m, float* y, const float* x, int T,
                       int d, float* cache, bool accumulate) {
    const int f = s.inner;
    m.T = T;
    m.x = x;
    m.g = cache;
    m.u = cache + size_t(T) * f;
    m.act = cache + size_t(T) * 2 * f;
    linear_forward(m.g, x, W + s.gate, T, d, f);
    linear_forward(m.u, x, W + s.up, T, d, f);
    silu_mul_forward(m.act, m.g, m.u, size_t(T) * f);
    linear_forward(y, m.act, W + s.down, T, f, d, accumulate);
}

void swiglu_backward_in(const float* W, float* G, const swiglu_offsets& s, const swiglu_cache& m, float* dx,
                        const float* dy, int d, float* scratch) {
    const int f = s.inner, T = m.T;
    if (T == 0) return;
    float* dact = scratch;                                               // [T, f] each
    float* dg = scratch + size_t(T) * f;
    float* du = scratch + size_t(T) * 2 * f;
    std::memset(dact, 0, sizeof(float) * size_t(T) * f);
    linear_backward(dact, G + s.down, dy, m.act, W + s.down, T, f, d);
    silu_mul_backward(dg, du, dact, m.g, m.u, size_t(T) * f);
    linear_backward(dx, G + s.gate, dg, m.x, W + s.gate, T, d, f);
    linear_backward(dx, G + s.up, du, m.x, W + s.up, T, d, f);
}

void swiglu_forward(const float* W, const swiglu_offsets& s, swiglu_cache& m, float* y, const float* x, int T, int d,
                    arena& a, bool accumulate) {
    swiglu_forward_in(W, s, m, y, x, T, d, a.alloc(swiglu_floats(T, s.inner)), accumulate);
}

void swiglu_backward(const float* W, float* G, const swiglu_offsets& s, const swiglu_cache& m, float* dx,
                     const float* dy, int d, arena& a) {
    if (m.T == 0) return;
    auto mk = a.mark();
    swiglu_backward_in(W, G, s, m, dx, dy, d, a.alloc(swiglu_floats(m.T, s.inner)));
    a.rewind(mk);
}

void moe_route(const model_config& c, const float* s, const float* bias, int* idx, float* w) {
    const int E = c.n_routed_experts, K = c.num_experts_per_tok;
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    float b[1024];
    std::vector<float> big;
    float* bp = b;
    if (E > 1024) { big.resize(E); bp = big.data(); }
    for (int e = 0; e < E; ++e) bp[e] = s[e] + (bias ? bias[e] : 0.0f);
    if (c.n_group > 1) {
        const int G = c.n_group, per = E / G;
        float gs[256];
        for (int g = 0; g < G; ++g) {
            const float* bg = bp + g * per;
            if (bias) {                                   // sum of the top-2 selection scores in the group
                float m1 = neg_inf, m2 = neg_inf;
                for (int i = 0; i < per; ++i) {
                    if (bg[i] > m1) { m2 = m1; m1 = bg[i]; } else if (bg[i] > m2) m2 = bg[i];
                }
                gs[g] = m1 + m2;
            } else {
                gs[g] = *std::max_element(bg, bg + per);
            }
        }
        bool keep[256] = {};
        for (int r = 0; r < c.topk_group; ++r) {          // best topk_group groups, lower index wins ties
            int best = -1;
            for (int g = 0; g < G; ++g)
                if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
            keep[best] = true;
        }
        for (int g = 0; g < G; ++g)
            if (!keep[g]) for (int i = 0; i < per; ++i) bp[g * per + i] = neg_inf;
    }
    for (int k = 0; k < K; ++k) {                         // top-K by selection score, best first
        int best = -1;
        for (int e = 0; e < E; ++e) {
            bool taken = false;
            for (int j = 0; j < k; ++j) taken |= idx[j] == e;
            if (!taken && (best < 0 || bp[e] > bp[best])) best = e;
        }
        idx[k] = best;
    }
    float sum = 0;
    for (int k = 0; k < K; ++k) { w[k] = s[idx[k]]; sum += w[k]; }
    const bool norm = c.norm_topk_prob && K > 1;
    if (norm) sum += 1e-20f;                              // as Hugging Face: guards an all-zero softmax tail
    for (int k = 0; k < K; ++k) w[k] = float((norm ? w[k] / sum : w[k]) * c.routed_scaling_factor);
}

void moe_forward(const model_config& c, const layer_offsets& l, const float* W, moe_cache& m, float* y, const float* x,
                 int T, float alpha, arena& a, double* load, int B) {
    const int d = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
    const int R = B * T;                                                 // rows
    m.T = T;
    m.B = B;
    m.x = x;
    m.s = a.alloc(size_t(R) * E);
    prof_seq ph(prof::router);
    linear_forward(m.s, x, W + l.router, R, d, E);                       // router logits, then scores in place
    for (int t = 0; t < R; ++t) {
        float* r = m.s + size_t(t) * E;
        if (c.scoring_sigmoid) {
            for (int e = 0; e < E; ++e) r[e] = 1.0f / (1.0f + std::exp(-r[e]));
        } else {
            float mx = *std::max_element(r, r + E), sum = 0;
            for (int e = 0; e < E; ++e) { r[e] = std::exp(r[e] - mx); sum += r[e]; }
            for (int e = 0; e < E; ++e) r[e] /= sum;
        }
    }
    m.idx = a.alloc_int(size_t(R) * K);
    m.w = a.alloc(size_t(R) * K);
    const float* bias = l.router_bias != no_param ? W + l.router_bias : nullptr;
#pragma omp parallel for if (R * E > 4096)
    for (int t = 0; t < R; ++t) moe_route(c, m.s + size_t(t) * E, bias, m.idx + size_t(t) * K, m.w + size_t(t) * K);

    // Gather rows by expert (counting sort keeps token order inside each expert: deterministic).
    ph.set(prof::moe_gather);
    m.start.assign(E + 1, 0);
    for (int i = 0; i < R * K; ++i) m.start[m.idx[i] + 1]++;
    for (int e = 0; e < E; ++e) m.start[e + 1] += m.start[e];
    if (load) for (int e = 0; e < E; ++e) load[e] += m.start[e + 1] - m.start[e];
    m.tok = a.alloc_int(size_t(R) * K);
    m.slot = a.alloc_int(size_t(R) * K);
    if (int(m.experts.size()) != E) m.experts.resize(E);
    int pos[4096];
    std::vector<int> pos_big;
    int* pp = pos;
    if (E > 4096) { pos_big.resize(E); pp = pos_big.data(); }
    for (int e = 0; e < E; ++e) pp[e] = m.start[e];
    for (int t = 0; t < R; ++t)
        for (int k = 0; k < K; ++k) {
            int r = pp[m.idx[t * K + k]]++;
            m.tok[r] = t;
            m.slot[r] = k;
        }
    m.xe = a.alloc(size_t(R) * K * d);
    m.ye = a.alloc(size_t(R) * K * d);
    m.where = a.alloc_int(size_t(R) * K);
    for (int r = 0; r < R * K; ++r) m.where[m.tok[r] * K + m.slot[r]] = r;
#pragma omp parallel for if (size_t(R) * K * d > 65536)
    for (int r = 0; r < R * K; ++r) std::memcpy(m.xe + size_t(r) * d, x + size_t(m.tok[r]) * d, sizeof(float) * d);
    // y = shared(x) + Σ_k w_k y_k   (summed in fixed k order per token)
    ph.set(prof::experts);
    if (expert_parallel_active()) {
        expert_parallel_forward(c, l, W, m, a);                          // owners compute, rows travel
        ph.set(prof::mlp_shared);
        if (l.shared.inner > 0) swiglu_forward(W, l.shared, m.shared, y, x, R, d, a);
        else std::memset(y, 0, sizeof(float) * size_t(R) * d);
    } else {
        expert_group_forward(W, l, m, y, d, a);                          // each expert (shared too) on one thread
    }
    ph.set(prof::moe_gather);
#pragma omp parallel for if (size_t(R) * d > 16384)
    for (int t = 0; t < R; ++t)
        for (int k = 0; k < K; ++k) {
            const float* yr = m.ye + size_t(m.where[t * K + k]) * d;
            float wk = m.w[t * K + k];
            float* out = y + size_t(t) * d;
            for (int i = 0; i < d; ++i) out[i] += wk * yr[i];
        }

    ph.set(prof::router);
    m.bal_loss = 0;
    if (alpha > 0) {                                                      // per sequence: L_bal = α Σ_e f_e P_e
        m.f.assign(size_t(B) * E, 0.0f);
        double total = 0;
        std::vector<int> count(E);
        for (int b = 0; b < B; ++b) {
            std::fill(count.begin(), count.end(), 0);
            for (int i = b * T * K; i < (b + 1) * T * K; ++i) count[m.idx[i]]++;
            float* f = m.f.data() + size_t(b) * E;
            for (int e = 0; e < E; ++e) f[e] = float(double(E) / (double(K) * T) * count[e]);
            double bal = 0;
            for (int t = b * T; t < (b + 1) * T; ++t) {
                const float* r = m.s + size_t(t) * E;
                double S = 0;
                for (int e = 0; e < E; ++e) S += r[e];
                for (int e = 0; e < E; ++e) bal += f[e] * r[e] / S;
            }
            total += alpha * bal / T;
        }
        m.bal_loss = total / B;
    }
}

void moe_backward(const model_config& c, const layer_offsets& l, const float* W, float* G, const moe_cache& m,
                  float* dx, const float* dy, float alpha, float bal_scale, arena& a) {
    const int d = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok, T = m.T, R = m.B * m.T;
    auto mk = a.mark();
    const bool ep = expert_parallel_active();
    prof_seq ph(prof::mlp_shared);
    if (ep && l.shared.inner > 0) swiglu_backward(W, G, l.shared, m.shared, dx, dy, d, a);

    ph.set(prof::moe_gather);
    float* dw = a.alloc(size_t(R) * K);                                  // dL/dw[t,k]
    float* dye = a.alloc(size_t(R) * K * d);                             // dL/dy_e rows
#pragma omp parallel for if (size_t(R) * K * d > 65536)
    for (int r = 0; r < R * K; ++r) {
        const int t = m.tok[r], k = m.slot[r];
        const float* g = dy + size_t(t) * d;
        const float wk = m.w[t * K + k];
        float* o = dye + size_t(r) * d;
        for (int i = 0; i < d; ++i) o[i] = wk * g[i];
        dw[t * K + k] = float(dot_double(g, m.ye + size_t(r) * d, d));
    }
    float* dxe = ep ? a.alloc_zero(size_t(R) * K * d) : a.alloc(size_t(R) * K * d);
    ph.set(prof::experts);
    if (ep)
        expert_parallel_backward(c, l, W, G, m, dye, dxe, a);
    else
        expert_group_backward(W, G, l, m, dye, dxe, dy, dx, d, a);   // the shared expert adds into dx
    ph.set(prof::moe_gather);
#pragma omp parallel for if (size_t(R) * d > 16384)
    for (int t = 0; t < R; ++t)                                          // in k order per token
        for (int k = 0; k < K; ++k) add_inplace(dx + size_t(t) * d, dxe + size_t(m.where[t * K + k]) * d, d);

    ph.set(prof::router);
    // dw -> ds (through selection weights) and the balance loss -> dlogits of the router.
    float* dl = a.alloc_zero(size_t(R) * E);                             // [R, E]
    const bool norm = c.norm_topk_prob && K > 1;
    const float sf = float(c.routed_scaling_factor);
    for (int t = 0; t < R; ++t) {
        const float* s = m.s + size_t(t) * E;
        float* ds = dl + size_t(t) * E;
        const int* id = m.idx + size_t(t) * K;
        const float* g = dw + size_t(t) * K;
        if (norm) {
            double S = 1e-20, gs = 0;
            for (int k = 0; k < K; ++k) { S += s[id[k]]; gs += double(g[k]) * s[id[k]]; }
            for (int k = 0; k < K; ++k) ds[id[k]] += float(sf * (g[k] / S - gs / (S * S)));
        } else {
            for (int k = 0; k < K; ++k) ds[id[k]] += sf * g[k];
        }
        if (alpha > 0) {
            const float* f = m.f.data() + size_t(t / T) * E;               // this row's sequence
            double S = 0, fs = 0;
            for (int e = 0; e < E; ++e) { S += s[e]; fs += double(f[e]) * s[e]; }
            double cst = double(alpha) * bal_scale / T;
            for (int e = 0; e < E; ++e) ds[e] += float(cst * (f[e] / S - fs / (S * S)));
        }
        if (c.scoring_sigmoid) {
            for (int e = 0; e < E; ++e) ds[e] *= s[e] * (1.0f - s[e]);
        } else {
            double dot = 0;
            for (int e = 0; e < E; ++e) dot += double(ds[e]) * s[e];
            for (int e = 0; e < E; ++e) ds[e] = float(s[e] * (ds[e] - dot));
        }
    }
    linear_backward(dx, G + l.router, dl, m.x, W + l.router, R, d, E);
    a.rewind(mk);
}

} // namespace mtp
