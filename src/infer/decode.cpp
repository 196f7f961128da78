// Trunk and MTP-module decode forwards: pre-norm decoder layers with absorbed MLA over the latent cache.
#include "infer/decode.h"

#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "core/ops.h"

namespace mtp {

size_t kv_cache::bytes() const {
    size_t b = 0;
    for (const auto& l : layers) b += (l.ckv.capacity() + l.kpe.capacity()) * sizeof(float);
    return b;
}

namespace {

// y[t*ldy] = x_t · wr for NT rows x_t (stride in); 8 fixed lanes, then a fixed pairwise lane sum and the tail.
template <int NT>
inline void rows_dot(float* y, size_t ldy, const float* x, int in, const float* wr) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (; i + 8 <= in; i += 8) {
        const __m256 wv = _mm256_loadu_ps(wr + i);
        for (int t = 0; t < NT; ++t) acc[t] = _mm256_fmadd_ps(_mm256_loadu_ps(x + size_t(t) * in + i), wv, acc[t]);
    }
    alignas(32) float l[NT][8];
    for (int t = 0; t < NT; ++t) _mm256_store_ps(l[t], acc[t]);
#else
    float l[NT][8] = {};
    for (; i + 8 <= in; i += 8)
        for (int t = 0; t < NT; ++t)
            for (int k = 0; k < 8; ++k) l[t][k] += x[size_t(t) * in + i + k] * wr[i + k];
#endif
    for (int t = 0; t < NT; ++t) {
        float tail = 0;
        for (int j = i; j < in; ++j) tail += x[size_t(t) * in + j] * wr[j];
        const float* a = l[t];
        y[size_t(t) * ldy] = (((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))) + tail;
    }
}

} // namespace

void decode_linear(float* y, const float* x, const float* w, int T, int in, int out) {
    if (T <= 0 || out <= 0) return;
    if (T > 12 || size_t(out) * in < (size_t(1) << 18)) {
        linear_forward(y, x, w, T, in, out);
        return;
    }
#pragma omp parallel for schedule(static) if (size_t(out) * in >= (size_t(1) << 20))
    for (int o = 0; o < out; ++o) {
        const float* wr = w + size_t(o) * in;
        int t = 0;
        for (; t + 4 <= T; t += 4) rows_dot<4>(y + size_t(t) * out + o, out, x + size_t(t) * in, in, wr);
        switch (T - t) {
            case 3: rows_dot<3>(y + size_t(t) * out + o, out, x + size_t(t) * in, in, wr); break;
            case 2: rows_dot<2>(y + size_t(t) * out + o, out, x + size_t(t) * in, in, wr); break;
            case 1: rows_dot<1>(y + size_t(t) * out + o, out, x + size_t(t) * in, in, wr); break;
            default: break;
        }
    }
}

namespace {

// x[T,d] += MLA(norm(x)); x += FFN(norm(x)), the attention reading/appending the layer's latent cache.
void decode_layer(const model_config& c, const layer_offsets& l, const float* W, mla_latent_cache& lc,
                  moe_cache& moe, swiglu_cache& mlp, float* x, int T, const float* cos, const float* sin, arena& a) {
    const int d = c.hidden_size;
    const size_t n = size_t(T) * d;
    const float eps = float(c.rms_norm_eps);
    auto mk = a.mark();
    float* xn = a.alloc(n);
    float* rstd = a.alloc(T);
    float* tmp = a.alloc(n);
    rmsnorm_forward(xn, rstd, x, W + l.input_norm, T, d, eps);
    mla_absorbed_forward(c, l, W, lc, tmp, xn, T, cos, sin, a);
    add_inplace(x, tmp, n);
    rmsnorm_forward(xn, rstd, x, W + l.post_norm, T, d, eps);
    if (l.moe) moe_forward(c, l, W, moe, tmp, xn, T, 0.0f, a);
    else swiglu_forward(W, l.mlp, mlp, tmp, xn, T, d, a);
    add_inplace(x, tmp, n);
    a.rewind(mk);
}

void head(const model_config& c, const model_layout& L, const float* W, const float* h, int m, float* logits,
          int logits_from) {
    if (!logits || logits_from >= m) return;
    const int d = c.hidden_size;
    decode_linear(logits, h + size_t(logits_from) * d, W + L.lm_head, m - logits_from, d, c.vocab_size);
}

void ensure_scratch(decode_scratch& s, size_t n) {
    if (s.moe.size() < n) s.moe.resize(n);
    if (s.mlp.size() < n) s.mlp.resize(n);
}

} // namespace

void decode_trunk(const model_config& c, const model_layout& L, const float* W, kv_cache& kv, decode_scratch& s,
                  const int* tokens, int m, const float* cos, const float* sin, float* h, float* logits,
                  int logits_from, arena& a) {
    if (m <= 0) return;
    const int d = c.hidden_size;
    ensure_scratch(s, kv.layers.size());
    auto mk = a.mark();
    float* x = a.alloc(size_t(m) * d);
    for (int t = 0; t < m; ++t) std::memcpy(x + size_t(t) * d, W + L.embed + size_t(tokens[t]) * d, sizeof(float) * d);
    for (int i = 0; i < c.num_hidden_layers; ++i)
        decode_layer(c, L.layers[i], W, kv.layers[i], s.moe[i], s.mlp[i], x, m, cos, sin, a);
    float* rstd = a.alloc(m);
    rmsnorm_forward(h, rstd, x, W + L.final_norm, m, d, float(c.rms_norm_eps));
    head(c, L, W, h, m, logits, logits_from);
    kv.n += m;
    a.rewind(mk);
}

void decode_mtp(const model_config& c, const model_layout& L, const float* W, int k, kv_cache& kv, decode_scratch& s,
                const float* hprev, const int* tokens, int m, const float* cos, const float* sin, float* h,
                float* logits, int logits_from, arena& a) {
    if (m <= 0) return;
    const int d = c.hidden_size;
    const float eps = float(c.rms_norm_eps);
    const layer_offsets& l = L.mtp[k - 1];
    ensure_scratch(s, 1);
    auto mk = a.mark();
    float* e = a.alloc(size_t(m) * d);
    for (int t = 0; t < m; ++t) std::memcpy(e + size_t(t) * d, W + L.embed + size_t(tokens[t]) * d, sizeof(float) * d);
    float* rstd = a.alloc(m);
    float* cat = a.alloc(size_t(m) * 2 * d);                             // [enorm(e) | hnorm(h^{k-1})]
    float* tmp = a.alloc(size_t(m) * d);
    rmsnorm_forward(tmp, rstd, e, W + l.enorm, m, d, eps);
    for (int t = 0; t < m; ++t) std::memcpy(cat + size_t(t) * 2 * d, tmp + size_t(t) * d, sizeof(float) * d);
    rmsnorm_forward(tmp, rstd, hprev, W + l.hnorm, m, d, eps);
    for (int t = 0; t < m; ++t) std::memcpy(cat + size_t(t) * 2 * d + d, tmp + size_t(t) * d, sizeof(float) * d);
    float* y = e;                                                        // reuse: [m, d]
    linear_forward(y, cat, W + l.eh_proj, m, 2 * d, d);
    decode_layer(c, l, W, kv.layers[0], s.moe[0], s.mlp[0], y, m, cos, sin, a);
    rmsnorm_forward(h, rstd, y, W + l.shared_head_norm, m, d, eps);
    head(c, L, W, h, m, logits, logits_from);
    kv.n += m;
    a.rewind(mk);
}

} // namespace mtp
