// AdamW update, elementwise and OpenMP-parallel; bitwise deterministic for a given thread count.
#include "train/adamw.h"

#include <algorithm>
#include <cmath>

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
    for (const auto& p : L.params) {
        if (!p.trainable) continue;
        const size_t a = std::max(p.offset, lo), b = std::min(p.offset + p.size, hi);
        if (a >= b) continue;
        const float decay = p.decay ? 1.0f - lr * cfg.weight_decay : 1.0f;
        float* w = W + a;
        const float* g = G + a;
        float* m = st.m.data() + (a - lo);
        float* v = st.v.data() + (a - lo);
        const long n = long(b - a);
#pragma omp parallel for simd if (n > 32768)
        for (long i = 0; i < n; ++i) {
            m[i] = b1 * m[i] + (1.0f - b1) * g[i];
            v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
            float mh = m[i] / bc1, vh = v[i] / bc2;
            w[i] = w[i] * decay - lr * mh / (std::sqrt(vh) + eps);
        }
    }
}

void adamw_step(const adamw_config& cfg, adamw_state& st, const model_layout& L, float* W, const float* G, float lr) {
    adamw_step_range(cfg, st, L, W, G, lr, 0, L.n_floats);
}

} // namespace mtp
