// MLA forward/backward (the training form: projections, then a causal core fused per block of queries) and the
// absorbed latent-cache form.
#include "model/attention.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/ops.h"
#include "core/profile.h"
#include "core/vec_math.h"

namespace mtp {

namespace {

constexpr int causal_block = 64;         // rows per causal block of the attention core's products

// In-place causal softmax of the rows of s[T, n_ctx]: row i may see columns 0..limit(i); the rest become 0.
// 8 lanes at a time: the maximum (exact in any order), exp(s - max) (core/vec_math.h's exp8), the sum as 8 lane
// partials combined in a fixed order, so a row's result depends only on the row. A NaN score, or a maximum of ±inf,
// makes the row NaN.
template <class Limit>
void causal_softmax(float* s, int T, int n_ctx, Limit limit, float* lse = nullptr) {
    for (int i = 0; i < T; ++i) {
        float* r = s + size_t(i) * n_ctx;
        const int n = limit(i) + 1;                                      // columns seen
        __m256 m8 = _mm256_set1_ps(r[0]);
        int j = 0;
        for (; j + 8 <= n; j += 8) m8 = _mm256_max_ps(_mm256_loadu_ps(r + j), m8);
        alignas(32) float l[8];
        _mm256_store_ps(l, m8);
        float mx = l[0];
        for (int k = 1; k < 8; ++k) mx = l[k] > mx ? l[k] : mx;
        for (; j < n; ++j) mx = r[j] > mx ? r[j] : mx;
        const __m256 sub = _mm256_set1_ps(mx);
        __m256 s8 = _mm256_setzero_ps(), nan8 = _mm256_setzero_ps();
        for (j = 0; j + 8 <= n; j += 8) {
            const __m256 v = _mm256_loadu_ps(r + j);
            nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            const __m256 e = exp8(_mm256_sub_ps(v, sub));
            s8 = _mm256_add_ps(s8, e);
            _mm256_storeu_ps(r + j, e);
        }
        if (j < n) {                                                     // the tail, padded with exp(-inf) = 0
            const int k = n - j;
            alignas(32) float t[8];
            for (int q = 0; q < 8; ++q) t[q] = q < k ? r[j + q] : -INFINITY;
            const __m256 v = _mm256_load_ps(t);
            nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            const __m256 e = exp8(_mm256_sub_ps(v, sub));
            s8 = _mm256_add_ps(s8, e);
            _mm256_store_ps(t, e);
            for (int q = 0; q < k; ++q) r[j + q] = t[q];
        }
        if (!std::isfinite(mx) || _mm256_movemask_ps(nan8) != 0) {
            // A NaN score, or a maximum of ±inf: the row is NaN, as exp would make it (exp8 clamps NaN), so that a
            // diverging run shows in its loss.
            for (j = 0; j < n; ++j) r[j] = NAN;
            for (j = n; j < n_ctx; ++j) r[j] = 0.0f;
            if (lse) lse[i] = NAN;
            continue;
        }
        _mm256_store_ps(l, s8);
        const float sum = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
        if (lse) lse[i] = mx + std::log(sum);
        const __m256 inv = _mm256_set1_ps(1.0f / sum);
        for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(r + j, _mm256_mul_ps(_mm256_loadu_ps(r + j), inv));
        for (; j < n; ++j) r[j] *= 1.0f / sum;
        for (j = n; j < n_ctx; ++j) r[j] = 0.0f;
    }
}

// p[j] = exp(p[j] - lse) for j < n (the scores of a row back to its probabilities), 8 lanes at a time.
void probs_from_lse(float* p, int n, float lse) {
    const __m256 sub = _mm256_set1_ps(lse);
    int j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(p + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), sub)));
    if (j < n) {
        alignas(32) float t[8];
        for (int q = 0; q < 8; ++q) t[q] = j + q < n ? p[j + q] : 0.0f;
        _mm256_store_ps(t, exp8(_mm256_sub_ps(_mm256_load_ps(t), sub)));
        for (int q = 0; j + q < n; ++q) p[j + q] = t[q];
    }
}

// Σ_j a[j] b[j] for j < n as 8 lane chains combined in a fixed order, then the tail.
float dot8(const float* a, const float* b, int n) {
    __m256 s8 = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) s8 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s8);
    alignas(32) float l[8];
    _mm256_store_ps(l, s8);
    float s = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    for (; j < n; ++j) s += a[j] * b[j];
    return s;
}

// The buffers of the q path, from the arena (which is not thread-safe: allocated before the paths run).
void alloc_q(const model_config& c, mla_cache& m, int R, arena& a) {
    m.q = a.alloc(size_t(R) * c.num_attention_heads * c.qk_head_dim());
    if (c.q_lora_rank > 0) {
        m.qa = a.alloc(size_t(R) * c.q_lora_rank);
        m.qa_rstd = a.alloc(R);
        m.qan = a.alloc(size_t(R) * c.q_lora_rank);
    }
}

// q = q_b(norm(q_a(x))) or q_proj(x); then RoPE on each head's q_pe.
// x is [B·T, d] (B sequences of the positions in m.cos / m.sin); the buffers from alloc_q.
void project_q(const model_config& c, const layer_offsets& l, const float* W, mla_cache& m, const float* x, int T,
               int B = 1) {
    const int d = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim();
    const int Tp = T;                                                   // positions per sequence
    T *= B;                                                             // rows
    if (c.q_lora_rank > 0) {
        const int ql = c.q_lora_rank;
        linear_forward(m.qa, x, W + l.q_a, T, d, ql);
        rmsnorm_forward(m.qan, m.qa_rstd, m.qa, W + l.q_a_norm, T, ql, float(c.rms_norm_eps));
        linear_forward(m.q, m.qan, W + l.q_b, T, ql, H * dq);
    } else {
        linear_forward(m.q, x, W + l.q_proj, T, d, H * dq);
    }
    for (int b = 0; b < B; ++b)
        rope_forward(m.q + size_t(b) * Tp * H * dq, Tp, H * dq, H, dq, c.qk_nope_head_dim, c.qk_rope_head_dim, m.cos,
                     m.sin);
}

// The buffers of the kv latent path; kva [R, kvl+rope] is its scratch.
float* alloc_kv_latent(const model_config& c, mla_cache& m, int R, arena& a) {
    const int kvl = c.kv_lora_rank, rope = c.qk_rope_head_dim;
    float* kva = a.alloc(size_t(R) * (kvl + rope));
    m.c = a.alloc(size_t(R) * kvl);
    m.kpe = a.alloc(size_t(R) * rope);
    m.c_rstd = a.alloc(R);
    m.ckv = a.alloc(size_t(R) * kvl);
    return kva;
}

// [c | k_pe] = kv_a(x); ckv = norm(c); k_pe rotated. The buffers from alloc_kv_latent.
void project_kv_latent(const model_config& c, const layer_offsets& l, const float* W, mla_cache& m, const float* x,
                       int T, float* kva, int B = 1) {
    const int d = c.hidden_size, kvl = c.kv_lora_rank, rope = c.qk_rope_head_dim;
    const int Tp = T;
    T *= B;
    linear_forward(kva, x, W + l.kv_a, T, d, kvl + rope);
    for (int t = 0; t < T; ++t) {
        std::memcpy(m.c + size_t(t) * kvl, kva + size_t(t) * (kvl + rope), sizeof(float) * kvl);
        std::memcpy(m.kpe + size_t(t) * rope, kva + size_t(t) * (kvl + rope) + kvl, sizeof(float) * rope);
    }
    rmsnorm_forward(m.ckv, m.c_rstd, m.c, W + l.kv_a_norm, T, kvl, float(c.rms_norm_eps));
    for (int b = 0; b < B; ++b)
        rope_forward(m.kpe + size_t(b) * Tp * rope, Tp, rope, 1, rope, 0, rope, m.cos, m.sin);
}

// With exactly two threads, the q path and the kv path of a layer run at once, one thread each: their products are
// thin (N = 80..256 columns, K = 64..256) and lose more splitting each one across two threads than running one per
// thread (each GEMM then single-threaded, OpenBLAS inside an OpenMP region). Otherwise one after the other.
bool two_paths(int R) { return omp_get_max_threads() == 2 && !omp_in_parallel() && R >= 64; }

// FLOPs of one pass of both paths' products over R rows (forward; the backward is twice this). Inside the
// two-path region the profile does not count them itself.
double two_path_flops(const model_config& c, int R) {
    const double d = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim(), ql = c.q_lora_rank;
    const double kvl = c.kv_lora_rank, rope = c.qk_rope_head_dim, dkv = c.qk_nope_head_dim + c.v_head_dim;
    return 2.0 * R * ((ql > 0 ? d * ql + ql * H * dq : d * H * dq) + d * (kvl + rope) + kvl * H * dkv);
}

} // namespace

void mla_forward(const model_config& c, const layer_offsets& l, const float* W, mla_cache& m, float* y,
                 const float* x, int T, const float* cos, const float* sin, arena& a, int B) {
    const int H = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
    const int dq = nope + rope, dv = c.v_head_dim, kvl = c.kv_lora_rank, dkv = nope + dv;
    const float scale = float(c.attn_scale());
    const int R = B * T;                                                 // rows
    prof_scope ps(prof::attn_proj);
    m.T = T;
    m.B = B;
    m.x = x;
    m.cos = cos;
    m.sin = sin;
    alloc_q(c, m, R, a);
    float* kva = alloc_kv_latent(c, m, R, a);
    m.kv = a.alloc(size_t(R) * H * dkv);
    auto kv_path = [&] {
        project_kv_latent(c, l, W, m, x, T, kva, B);
        linear_forward(m.kv, m.ckv, W + l.kv_b, R, kvl, H * dkv);
    };
    if (two_paths(R)) {
        prof_add_flops(two_path_flops(c, R));
#pragma omp parallel num_threads(2)
        {
            if (omp_get_thread_num() == 0) project_q(c, l, W, m, x, T, B);
            else kv_path();
        }
    } else {
        project_q(c, l, W, m, x, T, B);
        kv_path();
    }

    m.k = a.alloc(size_t(B) * H * T * dq);
    m.lse = a.alloc(size_t(B) * H * T);
    m.o = a.alloc(size_t(R) * H * dv);
    {
    prof_scope core(prof::attn_core);
    prof_add_flops(2.0 * B * H * T * T * (dq + dv));
    // Fused per block of causal_block queries: the block's scores [ni, nc] (it sees keys 0..nc-1) live in a
    // per-thread scratch, are turned into probabilities and multiplied by V at once; only each row's log-sum-exp
    // is kept for the backward, so memory is O(T) per head rather than the T x T probabilities.
    auto mk = a.mark();
    const int n_threads = omp_get_max_threads();
    float* scratch = a.alloc(size_t(n_threads) * causal_block * T);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; ++bh) {
        const int b = bh / H, h = bh % H;
        const size_t r0 = size_t(b) * T;                                 // the sequence's first row
        float* kh = m.k + size_t(bh) * T * dq;                           // [T, dq]
        for (int t = 0; t < T; ++t) {
            std::memcpy(kh + size_t(t) * dq, m.kv + (r0 + t) * H * dkv + size_t(h) * dkv, sizeof(float) * nope);
            std::memcpy(kh + size_t(t) * dq + nope, m.kpe + (r0 + t) * rope, sizeof(float) * rope);
        }
        float* pb = scratch + size_t(omp_get_thread_num()) * causal_block * T;   // [ni, nc], row stride nc
        for (int i0 = 0; i0 < T; i0 += causal_block) {
            const int ni = std::min(causal_block, T - i0), nc = i0 + ni;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, nc, dq, scale,
                        m.q + (r0 + i0) * H * dq + size_t(h) * dq, H * dq, kh, dq, 0.0f, pb, nc);
            causal_softmax(pb, ni, nc, [i0](int i) { return i0 + i; }, m.lse + size_t(bh) * T + i0);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, dv, nc, 1.0f, pb, nc,
                        m.kv + r0 * H * dkv + size_t(h) * dkv + nope, H * dkv, 0.0f,
                        m.o + (r0 + i0) * H * dv + size_t(h) * dv, H * dv);
        }
    }
    a.rewind(mk);
    }   // attention core
    linear_forward(y, m.o, W + l.o_proj, R, H * dv, c.hidden_size);
}

void mla_backward(const model_config& c, const layer_offsets& l, const float* W, float* G, const mla_cache& m,
                  float* dx, const float* dy, arena& a) {
    const int T = m.T, B = m.B, R = B * T, d = c.hidden_size, H = c.num_attention_heads, nope = c.qk_nope_head_dim;
    const int rope = c.qk_rope_head_dim, dq = nope + rope, dv = c.v_head_dim, kvl = c.kv_lora_rank, dkv = nope + dv;
    const float scale = float(c.attn_scale());
    prof_scope ps(prof::attn_proj);
    auto mk = a.mark();

    float* d_o = a.alloc_zero(size_t(R) * H * dv);                       // [R, H*dv]
    linear_backward(d_o, G + l.o_proj, dy, m.o, W + l.o_proj, R, H * dv, d);

    float* dkv_ = a.alloc_zero(size_t(R) * H * dkv);                     // [R, H*(nope+v)]
    float* dq_ = a.alloc_zero(size_t(R) * H * dq);                       // [R, H*dq]
    float* dk = a.alloc_zero(size_t(B) * H * T * dq);                    // [B, H, T, dq]
    float* dkpe = a.alloc_zero(size_t(R) * rope);                        // [R, rope]
    {
    prof_scope core(prof::attn_core);
    prof_add_flops(2.0 * B * H * T * T * (2 * dv + 2 * dq));
    // Per block of causal_block queries, as the forward: the probabilities are recomputed from the scores and the
    // row's log-sum-exp, P = exp(S - lse) (0 above the diagonal), then dP = dO V^T, dS = scale P (dP - D) with
    // D_i = Σ_j P_ij dP_ij (over the same P, so each row of dS sums to 0 up to rounding; flash attention's dO_i . O_i
    // is equal in exact arithmetic, but not in rounding where the scores' gradient is a small difference),
    // dQ = dS K, and dK += dS^T Q, dV += P^T dO over the blocks in order.
    auto mk2 = a.mark();
    const int n_threads = omp_get_max_threads();
    float* scratch = a.alloc(size_t(n_threads) * 2 * causal_block * T);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; ++bh) {
        const int b = bh / H, h = bh % H;
        const size_t r0 = size_t(b) * T;
        float* pb = scratch + size_t(omp_get_thread_num()) * 2 * causal_block * T;
        float* db = pb + size_t(causal_block) * T;                       // [ni, nc] each, row stride nc
        const float* vh = m.kv + r0 * H * dkv + size_t(h) * dkv + nope;
        const float* doh = d_o + r0 * H * dv + size_t(h) * dv;
        const float* kh = m.k + size_t(bh) * T * dq;
        const float* qh = m.q + r0 * H * dq + size_t(h) * dq;
        const float* lse = m.lse + size_t(bh) * T;
        for (int i0 = 0; i0 < T; i0 += causal_block) {
            const int ni = std::min(causal_block, T - i0), nc = i0 + ni;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, nc, dq, scale, qh + size_t(i0) * H * dq, H * dq,
                        kh, dq, 0.0f, pb, nc);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, nc, dv, 1.0f, doh + size_t(i0) * H * dv, H * dv,
                        vh, H * dkv, 0.0f, db, nc);
            for (int r = 0; r < ni; ++r) {
                const int i = i0 + r;
                float* pr = pb + size_t(r) * nc;
                float* dr = db + size_t(r) * nc;
                probs_from_lse(pr, i + 1, lse[i]);
                const float D = dot8(pr, dr, i + 1);                     // Σ_j P_ij dP_ij over the row's own P
                for (int j = 0; j <= i; ++j) dr[j] = scale * pr[j] * (dr[j] - D);
                for (int j = i + 1; j < nc; ++j) pr[j] = dr[j] = 0.0f;
            }
            // dQ_h = dS K_h ; dK_h += dS^T Q_h ; dV_h += P^T dO_h
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, dq, nc, 1.0f, db, nc, kh, dq, 0.0f,
                        dq_ + (r0 + i0) * H * dq + size_t(h) * dq, H * dq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, dq, ni, 1.0f, db, nc, qh + size_t(i0) * H * dq,
                        H * dq, 1.0f, dk + size_t(bh) * T * dq, dq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, dv, ni, 1.0f, pb, nc, doh + size_t(i0) * H * dv,
                        H * dv, 1.0f, dkv_ + r0 * H * dkv + size_t(h) * dkv + nope, H * dkv);
        }
    }
    a.rewind(mk2);
    // Split dK into k_nope (-> dkv) and the shared k_pe (summed over heads, fixed order).
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int t = 0; t < T; ++t) {
                const size_t row = size_t(b) * T + t;
                const float* src = dk + ((size_t(b) * H + h) * T + t) * dq;
                float* dn = dkv_ + row * H * dkv + size_t(h) * dkv;
                for (int i = 0; i < nope; ++i) dn[i] += src[i];
                float* dp = dkpe + row * rope;
                for (int i = 0; i < rope; ++i) dp[i] += src[nope + i];
            }
    }   // attention core
    for (int b = 0; b < B; ++b) {
        rope_backward(dq_ + size_t(b) * T * H * dq, T, H * dq, H, dq, nope, rope, m.cos, m.sin);
        rope_backward(dkpe + size_t(b) * T * rope, T, rope, 1, rope, 0, rope, m.cos, m.sin);
    }

    // kv path: kv = kv_b(ckv), ckv = norm(c), [c | k_pe] = kv_a(x); q path: q = q_b(norm(q_a(x))) or q_proj(x).
    // With two threads they run at once (as in the forward); the q path's dL/dx then goes to a buffer of its own,
    // added after.
    const int ql = c.q_lora_rank;
    float* dckv = a.alloc_zero(size_t(R) * kvl);
    float* dkva = a.alloc_zero(size_t(R) * (kvl + rope));                // [R, kvl+rope]
    float* dc = a.alloc_zero(size_t(R) * kvl);
    float* dqan = ql > 0 ? a.alloc_zero(size_t(R) * ql) : nullptr;
    float* dqa = ql > 0 ? a.alloc_zero(size_t(R) * ql) : nullptr;
    const bool both = two_paths(R);
    float* dxq = both ? a.alloc_zero(size_t(R) * d) : dx;
    auto kv_path = [&] {
        linear_backward(dckv, G + l.kv_b, dkv_, m.ckv, W + l.kv_b, R, kvl, H * dkv);
        rmsnorm_backward(dc, G + l.kv_a_norm, dckv, m.c, W + l.kv_a_norm, m.c_rstd, R, kvl);
        for (int t = 0; t < R; ++t) {
            std::memcpy(dkva + size_t(t) * (kvl + rope), dc + size_t(t) * kvl, sizeof(float) * kvl);
            std::memcpy(dkva + size_t(t) * (kvl + rope) + kvl, dkpe + size_t(t) * rope, sizeof(float) * rope);
        }
        linear_backward(dx, G + l.kv_a, dkva, m.x, W + l.kv_a, R, d, kvl + rope);
    };
    auto q_path = [&] {
        if (ql > 0) {
            linear_backward(dqan, G + l.q_b, dq_, m.qan, W + l.q_b, R, ql, H * dq);
            rmsnorm_backward(dqa, G + l.q_a_norm, dqan, m.qa, W + l.q_a_norm, m.qa_rstd, R, ql);
            linear_backward(dxq, G + l.q_a, dqa, m.x, W + l.q_a, R, d, ql);
        } else {
            linear_backward(dxq, G + l.q_proj, dq_, m.x, W + l.q_proj, R, d, H * dq);
        }
    };
    if (both) {
        prof_add_flops(2.0 * two_path_flops(c, R));
#pragma omp parallel num_threads(2)
        {
            if (omp_get_thread_num() == 0) q_path();
            else kv_path();
        }
        add_inplace(dx, dxq, size_t(R) * d);
    } else {
        kv_path();
        q_path();
    }
    a.rewind(mk);
}

void mla_absorbed_forward(const model_config& c, const layer_offsets& l, const float* W, mla_latent_cache& lc,
                          float* y, const float* x, int T, const float* cos, const float* sin, arena& a) {
    const int H = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
    const int dq = nope + rope, dv = c.v_head_dim, kvl = c.kv_lora_rank, dkv = nope + dv;
    const float scale = float(c.attn_scale());
    auto mk = a.mark();
    mla_cache m;
    m.cos = cos;
    m.sin = sin;
    alloc_q(c, m, T, a);
    float* kva = alloc_kv_latent(c, m, T, a);
    project_q(c, l, W, m, x, T);
    project_kv_latent(c, l, W, m, x, T, kva);

    const int n0 = lc.n, n = n0 + T;                                      // cache entries after appending
    if (lc.ckv.size() < size_t(n) * kvl) {
        lc.ckv.resize(size_t(n) * kvl * 2);
        lc.kpe.resize(size_t(n) * rope * 2);
    }
    std::memcpy(lc.ckv.data() + size_t(n0) * kvl, m.ckv, sizeof(float) * T * kvl);
    std::memcpy(lc.kpe.data() + size_t(n0) * rope, m.kpe, sizeof(float) * T * rope);
    lc.n = n;

    const float* wkvb = W + l.kv_b;                                      // [H, nope+v, kvl]
    float* o = a.alloc(size_t(T) * H * dv);                              // [T, H*dv]
    float* qabs = a.alloc(size_t(H) * T * kvl);                          // [H, T, kvl]
    float* s = a.alloc(size_t(H) * T * n);                               // [H, T, n]
    float* olat = a.alloc(size_t(H) * T * kvl);                          // [H, T, kvl]
#pragma omp parallel for schedule(static)
    for (int h = 0; h < H; ++h) {
        const float* wuk = wkvb + size_t(h) * dkv * kvl;                 // [nope, kvl]
        const float* wuv = wuk + size_t(nope) * kvl;                     // [dv, kvl]
        float* qa = qabs + size_t(h) * T * kvl;
        float* sh = s + size_t(h) * T * n;
        float* ol = olat + size_t(h) * T * kvl;
        // q_abs = q_nope · W_UK   ([T,nope]·[nope,kvl])
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, kvl, nope, 1.0f, m.q + size_t(h) * dq, H * dq, wuk,
                    kvl, 0.0f, qa, kvl);
        // s = scale * (q_abs · ckv^T + q_pe · kpe^T)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, kvl, scale, qa, kvl, lc.ckv.data(), kvl, 0.0f, sh, n);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, rope, scale, m.q + size_t(h) * dq + nope, H * dq,
                    lc.kpe.data(), rope, 1.0f, sh, n);
        causal_softmax(sh, T, n, [n0](int i) { return n0 + i; });
        // o_lat = P · ckv ; o_h = o_lat · W_UV^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, kvl, n, 1.0f, sh, n, lc.ckv.data(), kvl, 0.0f, ol, kvl);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, dv, kvl, 1.0f, ol, kvl, wuv, kvl, 0.0f,
                    o + size_t(h) * dv, H * dv);
    }
    linear_forward(y, o, W + l.o_proj, T, H * dv, c.hidden_size);
    a.rewind(mk);
}

} // namespace mtp
