// Decoder layer forward/backward (residual stream kept in place).
#include "model/layer.h"

#include <cstring>

#include "core/ops.h"
#include "core/profile.h"

namespace mtp {

double layer_forward(const model_config& c, const layer_offsets& l, const float* W, layer_cache& m, float* x, int T,
                     const float* cos, const float* sin, float alpha, arena& a, double* load, int B) {
    const int d = c.hidden_size, R = B * T;
    const size_t n = size_t(R) * d;
    const float eps = float(c.rms_norm_eps);
    m.T = T;
    m.B = B;
    m.x_in = a.alloc(n);
    std::memcpy(m.x_in, x, n * sizeof(float));
    m.xn1 = a.alloc(n);
    m.rstd1 = a.alloc(R);
    rmsnorm_forward(m.xn1, m.rstd1, x, W + l.input_norm, R, d, eps);
    float* tmp = a.alloc(n);
    mla_forward(c, l, W, m.attn, tmp, m.xn1, T, cos, sin, a, B);
    add_inplace(x, tmp, n);
    m.x_mid = a.alloc(n);
    std::memcpy(m.x_mid, x, n * sizeof(float));
    m.xn2 = a.alloc(n);
    m.rstd2 = a.alloc(R);
    rmsnorm_forward(m.xn2, m.rstd2, x, W + l.post_norm, R, d, eps);
    double bal = 0;
    if (l.moe) {
        moe_forward(c, l, W, m.moe, tmp, m.xn2, T, alpha, a, load, B);
        bal = m.moe.bal_loss;
    } else {
        prof_scope ps(prof::mlp_dense);
        swiglu_forward(W, l.mlp, m.mlp, tmp, m.xn2, R, d, a);
    }
    add_inplace(x, tmp, n);
    return bal;
}

void layer_backward(const model_config& c, const layer_offsets& l, const float* W, float* G, const layer_cache& m,
                    float* dx, float alpha, float bal_scale, arena& a) {
    const int d = c.hidden_size, R = m.B * m.T;
    const size_t n = size_t(R) * d;
    auto mk = a.mark();
    float* dn = a.alloc_zero(n);                                          // grad of the normed FFN input
    if (l.moe) moe_backward(c, l, W, G, m.moe, dn, dx, alpha, bal_scale, a);
    else {
        prof_scope ps(prof::mlp_dense);
        swiglu_backward(W, G, l.mlp, m.mlp, dn, dx, d, a);
    }
    rmsnorm_backward(dx, G + l.post_norm, dn, m.x_mid, W + l.post_norm, m.rstd2, R, d);
    std::memset(dn, 0, n * sizeof(float));
    mla_backward(c, l, W, G, m.attn, dn, dx, a);
    rmsnorm_backward(dx, G + l.input_norm, dn, m.x_in, W + l.input_norm, m.rstd1, R, d);
    a.rewind(mk);
}

} // namespace mtp
