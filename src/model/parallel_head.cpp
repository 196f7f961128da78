// Parallel head forward/backward (spec §8); shares lm_head with the trunk (the caller's stacked head product).
#include "model/parallel_head.h"

#include "core/ops.h"
#include "core/profile.h"

namespace mtp {

void parallel_head_forward(const model_config& c, const layer_offsets& l, const float* W, mtp_cache& m,
                           const float* h, int T, const float* cos, const float* sin, float alpha, arena& a,
                           float* h_out, double* load, int B) {
    const int d = c.hidden_size, Tp = T;                                  // Tp positions per sequence
    const float eps = float(c.rms_norm_eps);
    m.T = T;
    m.B = B;
    T *= B;                                                               // rows from here on
    m.tok = nullptr;
    m.hprev = h;
    m.e = m.e_rstd = m.cat = nullptr;
    m.hn_rstd = a.alloc(T);
    m.y = a.alloc(size_t(T) * d);                                          // [T, d] u = hnorm(h), then y
    {
        prof_scope ps(prof::mtp_proj);
        rmsnorm_forward(m.y, m.hn_rstd, h, W + l.hnorm, T, d, eps);
    }
    m.bal_loss = layer_forward(c, l, W, m.layer, m.y, Tp, cos, sin, alpha, a, load, B);
    m.h = h_out;
    m.h_rstd = a.alloc(T);
    rmsnorm_forward(m.h, m.h_rstd, m.y, W + l.shared_head_norm, T, d, eps);
    m.logits = nullptr;
}

void parallel_head_backward(const model_config& c, const layer_offsets& l, const float* W, float* G,
                            const mtp_cache& m, float* dh, float* dh_trunk, float alpha, float bal_scale, arena& a) {
    const int d = c.hidden_size, T = m.B * m.T;                           // rows
    auto mk = a.mark();
    const float* du = mtp_layer_backward(c, l, W, G, m, dh, alpha, bal_scale, a);
    prof_seq ph(prof::mtp_proj);
    rmsnorm_backward(dh_trunk, G + l.hnorm, du, m.hprev, W + l.hnorm, m.hn_rstd, T, d);
    a.rewind(mk);
}

} // namespace mtp
