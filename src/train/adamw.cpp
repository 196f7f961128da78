// AdamW update, elementwise and OpenMP-parallel; bitwise deterministic for a given thread count.
#include "train/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mtp {

void adamw_step_range(const adamw_config& cfg, adamw_state& st, const model_layout& L, float* W, const float* G,
                      float lr, size_t lo, size_t hi) {
    if (st.m.size() != hi - lo) {
        st.m.assign(hi - lo, 0.0f);
        st.v.assign(hi - lo, 0.0f);
    }
    st.step++;
    const float bc1 = 1.0f - std::pow(cfg.beta1, float(st.step));
    const float bc2 = 1.0f - std::pow(cfg.beta2, float(st.step));
    const float b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps;
    // As torch.optim.AdamW: w -= (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps), with the scalar divisions done once:
    // one division and one square root per element (the per-element m / bc1 and v / bc2 made the update
    // division-bound, about 3x the time of its memory traffic with AVX2).
    const float step_size = lr / bc1, inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
    // The trainable part of [lo, hi) in chunks, so that one parallel loop covers every tensor, small ones included
    // (each element's update is independent: the result does not depend on the chunking or the thread count).
    struct chunk { size_t a, b; float decay; };
    constexpr size_t chunk_len = 16384;
    std::vector<chunk> chunks;
    size_t total = 0;
    for (const auto& p : L.params) {
        if (!p.trainable) continue;
        const size_t a = std::max(p.offset, lo), b = std::min(p.offset + p.size, hi);
        const float decay = p.decay ? 1.0f - lr * cfg.weight_decay : 1.0f;
        for (size_t x = a; x < b; x += chunk_len) chunks.push_back({x, std::min(b, x + chunk_len), decay});
        if (a < b) total += b - a;
    }
    float* mv = st.m.data();
    float* vv = st.v.data();
#pragma omp parallel for schedule(static) if (total > 2 * chunk_len)
    for (size_t c = 0; c < chunks.size(); ++c) {
        const chunk k = chunks[c];
        float* w = W + k.a;
        const float* g = G + k.a;
        float* m = mv + (k.a - lo);
        float* v = vv + (k.a - lo);
        const long n = long(k.b - k.a);
        const float decay = k.decay;
#pragma omp simd
        for (long i = 0; i < n; ++i) {
            m[i] = b1 * m[i] + (1.0f - b1) * g[i];
            v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
            w[i] = w[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
        }
    }
}

void adamw_step(const adamw_config& cfg, adamw_state& st, const model_layout& L, float* W, const float* G, float lr) {
    adamw_step_range(cfg, st, L, W, G, lr, 0, L.n_floats);
}

} // namespace mtp
