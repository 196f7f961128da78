// MTP module forward/backward; the module shares embed_tokens and lm_head with the trunk.
#include "model/mtp.h"

#include <cstring>
#include <optional>

#include "core/ops.h"
#include "core/profile.h"
#include "model/parallel_head.h"

namespace mtp {

void mtp_forward(const model_config& c, const model_layout& L, const layer_offsets& l, const float* W, mtp_cache& m,
                 const float* hprev, const int* tok, int T, const float* cos, const float* sin, float alpha, arena& a,
                 float* h_out, double* load, int B) {
    if (c.mtp_parallel) return parallel_head_forward(c, l, W, m, hprev, T, cos, sin, alpha, a, h_out, load, B);
    const int d = c.hidden_size, Tp = T;                                 // Tp positions per sequence
    const float eps = float(c.rms_norm_eps);
    m.T = T;
    m.B = B;
    T *= B;                                                               // rows from here on
    m.tok = tok;
    m.hprev = hprev;
    m.e = a.alloc(size_t(T) * d);
    std::optional<prof_scope> ph(std::in_place, prof::embed);
    gather_rows(m.e, W + L.embed, tok, T, d);
    ph.reset();
    ph.emplace(prof::mtp_proj);
    float* en = a.alloc(size_t(T) * d);
    float* hn = a.alloc(size_t(T) * d);
    m.e_rstd = a.alloc(T);
    m.hn_rstd = a.alloc(T);
    rmsnorm_forward(en, m.e_rstd, m.e, W + l.enorm, T, d, eps);
    rmsnorm_forward(hn, m.hn_rstd, hprev, W + l.hnorm, T, d, eps);
    m.cat = a.alloc(size_t(T) * 2 * d);                                   // embedding FIRST
    for (int t = 0; t < T; ++t) {
        std::memcpy(m.cat + size_t(t) * 2 * d, en + size_t(t) * d, sizeof(float) * d);
        std::memcpy(m.cat + size_t(t) * 2 * d + d, hn + size_t(t) * d, sizeof(float) * d);
    }
    m.y = a.alloc(size_t(T) * d);
    linear_forward(m.y, m.cat, W + l.eh_proj, T, 2 * d, d);
    ph.reset();                                                           // the layer opens its own phases
    m.bal_loss = layer_forward(c, l, W, m.layer, m.y, Tp, cos, sin, alpha, a, load, B);
    m.h = h_out;
    m.h_rstd = a.alloc(T);
    rmsnorm_forward(m.h, m.h_rstd, m.y, W + l.shared_head_norm, T, d, eps);
    m.logits = nullptr;                                                    // set by model_forward
}

float* mtp_layer_backward(const model_config& c, const layer_offsets& l, const float* W, float* G, const mtp_cache& m,
                          const float* dh, float alpha, float bal_scale, arena& a) {
    const int d = c.hidden_size, T = m.B * m.T;                           // rows
    float* dy = a.alloc_zero(size_t(T) * d);
    rmsnorm_backward(dy, G + l.shared_head_norm, dh, m.y, W + l.shared_head_norm, m.h_rstd, T, d);
    layer_backward(c, l, W, G, m.layer, dy, alpha, bal_scale, a);         // dy is now dL/du
    return dy;
}

void mtp_backward(const model_config& c, const model_layout& L, const layer_offsets& l, const float* W, float* G,
                  const mtp_cache& m, float* dh, float* dhprev, float alpha, float bal_scale, arena& a) {
    if (c.mtp_parallel) return parallel_head_backward(c, l, W, G, m, dh, dhprev, alpha, bal_scale, a);
    const int d = c.hidden_size, T = m.B * m.T;                           // rows
    auto mk = a.mark();
    float* dy = mtp_layer_backward(c, l, W, G, m, dh, alpha, bal_scale, a);
    prof_seq ph(prof::mtp_proj);
    float* dcat = a.alloc_zero(size_t(T) * 2 * d);
    linear_backward(dcat, G + l.eh_proj, dy, m.cat, W + l.eh_proj, T, 2 * d, d);
    float* den = a.alloc(size_t(T) * d);
    float* dhn = a.alloc(size_t(T) * d);
    for (int t = 0; t < T; ++t) {
        std::memcpy(den + size_t(t) * d, dcat + size_t(t) * 2 * d, sizeof(float) * d);
        std::memcpy(dhn + size_t(t) * d, dcat + size_t(t) * 2 * d + d, sizeof(float) * d);
    }
    float* de = dy;                                                       // reuse: [T, d]
    std::memset(de, 0, sizeof(float) * size_t(T) * d);
    rmsnorm_backward(de, G + l.enorm, den, m.e, W + l.enorm, m.e_rstd, T, d);
    ph.set(prof::embed);
    scatter_add_rows(G + L.embed, de, m.tok, T, d);
    ph.set(prof::mtp_proj);
    rmsnorm_backward(dhprev, G + l.hnorm, dhn, m.hprev, W + l.hnorm, m.hn_rstd, T, d);
    a.rewind(mk);
}

} // namespace mtp
