// Trunk and MTP-module decode forwards: pre-norm decoder layers with absorbed MLA over the latent cache, on packed
// multi-row kernels (few rows) or the training forward's BLAS kernels (long prompt chunks).
#include "infer/decode.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MTP_DECODE_AVX2 1
#include "core/vec_math.h"
#endif

#include "core/ops.h"
#include "core/task_pool.h"

namespace mtp {

size_t kv_cache::bytes() const {
    size_t b = 0;
    for (const auto& l : layers) b += (l.ckv.capacity() + l.kpe.capacity()) * sizeof(float);
    for (const auto& l : panels) b += (l.ckv.capacity() + l.kpe.capacity()) * sizeof(float);
    return b;
}

// ---------------------------------------------------------------------------------------------------------------
// Packed weights.

namespace {

size_t ffn_bytes(const decode_ffn& f) { return f.gate_up.bytes() + f.down.bytes(); }

size_t layer_bytes(const decode_layer_weights& l) {
    size_t b = l.in_proj.bytes() + l.q_b.bytes() + l.o_proj.bytes() + l.router.bytes() + ffn_bytes(l.mlp) +
               ffn_bytes(l.shared);
    for (const auto& p : l.uk) b += p.bytes();
    for (const auto& p : l.uv) b += p.bytes();
    for (const auto& e : l.experts) b += ffn_bytes(e);
    return b;
}

void build_ffn(decode_ffn& f, const swiglu_offsets& s, const float* W, int d, wtype t) {
    f.inner = s.inner;
    if (s.inner <= 0) return;
    pack_weight_stacked(f.gate_up, {W + s.gate, W + s.up}, {s.inner, s.inner}, d, t);
    pack_weight(f.down, W + s.down, d, s.inner, t);
}

void build_layer(decode_layer_weights& lw, const model_config& c, const layer_offsets& l, const float* W, wtype t) {
    const int d = c.hidden_size, H = c.num_attention_heads, nope = c.qk_nope_head_dim, dv = c.v_head_dim;
    const int kvl = c.kv_lora_rank, rope = c.qk_rope_head_dim, dq = nope + c.qk_rope_head_dim, dkv = nope + dv;
    if (c.q_lora_rank > 0) {
        pack_weight_stacked(lw.in_proj, {W + l.q_a, W + l.kv_a}, {c.q_lora_rank, kvl + rope}, d, t);
        pack_weight(lw.q_b, W + l.q_b, H * dq, c.q_lora_rank, t);
    } else {
        pack_weight_stacked(lw.in_proj, {W + l.q_proj, W + l.kv_a}, {H * dq, kvl + rope}, d, t);
    }
    lw.uk.resize(H);
    lw.uv.resize(H);
    for (int h = 0; h < H; ++h) {
        const float* wuk = W + l.kv_b + size_t(h) * dkv * kvl;           // [nope, kvl]
        pack_weight_transposed(lw.uk[h], wuk, nope, kvl, t);
        pack_weight(lw.uv[h], wuk + size_t(nope) * kvl, dv, kvl, t);       // [dv, kvl]
    }
    pack_weight(lw.o_proj, W + l.o_proj, d, H * dv, t);
    lw.moe = l.moe;
    if (l.moe) {
        pack_weight(lw.router, W + l.router, c.n_routed_experts, d);   // f32 at every type
        lw.experts.resize(l.experts.size());
        for (size_t e = 0; e < l.experts.size(); ++e) build_ffn(lw.experts[e], l.experts[e], W, d, t);
        build_ffn(lw.shared, l.shared, W, d, t);
    } else {
        build_ffn(lw.mlp, l.mlp, W, d, t);
    }
}

} // namespace

size_t decode_weights::bytes() const {
    size_t b = lm_head.bytes() + draft_head.bytes();
    for (const auto& l : layers) b += layer_bytes(l);
    for (const auto& l : mtp) b += layer_bytes(l);
    for (const auto& p : eh_proj) b += p.bytes();
    return b;
}

size_t decode_weights::main_bytes() const {
    size_t b = lm_head.bytes();
    for (const auto& l : layers) b += layer_bytes(l);
    return b;
}

void decode_weights_build(decode_weights& dw, const model_config& c, const model_layout& L, const float* W,
                          wtype t) {
    const int d = c.hidden_size;
    dw.type = t;
    dw.layers.resize(c.num_hidden_layers);
    for (int i = 0; i < c.num_hidden_layers; ++i) build_layer(dw.layers[i], c, L.layers[i], W, t);
    const int D = c.n_mtp();
    dw.mtp.resize(D);
    dw.eh_proj.resize(D);
    for (int k = 0; k < D; ++k) {
        build_layer(dw.mtp[k], c, L.mtp[k], W, t);
        if (!c.mtp_parallel) pack_weight(dw.eh_proj[k], W + L.mtp[k].eh_proj, d, 2 * d, t);   // heads have none
    }
    pack_weight(dw.lm_head, W + L.lm_head, c.vocab_size, d, t);
}

void decode_weights_set_draft_vocab(decode_weights& dw, const model_config& c, const model_layout& L, const float* W,
                                    const std::vector<int>& ids) {
    dw.draft_ids = ids;
    if (ids.empty()) {
        dw.draft_head = packed_weight{};
        return;
    }
    pack_weight_rows(dw.draft_head, W + L.lm_head, ids.data(), int(ids.size()), c.hidden_size, dw.type);
}

// ---------------------------------------------------------------------------------------------------------------
// Row-wise pieces with a fixed evaluation order.

namespace {


// x[i] = exp(x[i] - sub), elementwise (the same function for every element, wherever it sits).
inline void exp_sub(float* x, int n, float sub) {
#ifdef MTP_DECODE_AVX2
    const __m256 s = _mm256_set1_ps(sub);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
    if (i < n) {
        alignas(32) float t[8] = {};
        std::memcpy(t, x + i, sizeof(float) * size_t(n - i));
        _mm256_store_ps(t, exp8(_mm256_sub_ps(_mm256_load_ps(t), s)));
        std::memcpy(x + i, t, sizeof(float) * size_t(n - i));
    }
#else
    for (int i = 0; i < n; ++i) x[i] = std::exp(x[i] - sub);
#endif
}

// Σ x[0..n): 8 lane sums over the multiples of 8, a fixed pairwise lane sum, then the tail in order.
inline float sum_fixed(const float* x, int n) {
    int i = 0;
    float r = 0.0f;
#ifdef MTP_DECODE_AVX2
    if (n >= 8) {
        __m256 acc = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        r = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
    }
#endif
    for (; i < n; ++i) r += x[i];
    return r;
}

// acc[0..n) = fma(p, row[0..n), acc) elementwise.
inline void axpy_fixed(float* acc, float p, const float* row, int n) {
    int i = 0;
#ifdef MTP_DECODE_AVX2
    const __m256 pv = _mm256_set1_ps(p);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(row + i), _mm256_loadu_ps(acc + i)));
#endif
    for (; i < n; ++i) acc[i] = std::fma(p, row[i], acc[i]);
}

// a[f] = silu(g) * u = g / (1 + exp(-g)) * u.
inline void silu_mul_row(float* a, const float* g, const float* u, int f) {
    int i = 0;
#ifdef MTP_DECODE_AVX2
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= f; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = exp8(_mm256_sub_ps(zero, gv));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    if (i < f) {
        alignas(32) float tg[8] = {}, tu[8] = {}, ta[8];
        std::memcpy(tg, g + i, sizeof(float) * size_t(f - i));
        std::memcpy(tu, u + i, sizeof(float) * size_t(f - i));
        const __m256 gv = _mm256_load_ps(tg);
        const __m256 e = exp8(_mm256_sub_ps(zero, gv));
        _mm256_store_ps(ta, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_load_ps(tu)));
        std::memcpy(a + i, ta, sizeof(float) * size_t(f - i));
    }
#else
    for (; i < f; ++i) a[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
#endif
}

// f(r0, r1) over blocks of the rows [0, M): one block per thread (this one and the task_pool helpers) when the rows
// hold at least row_split_min elements of work, else f(0, M) here. For the row-wise steps between the products
// (norms, residual adds, activations), which would otherwise keep the helpers waiting; every row's result is the
// same however the rows are split. A block on a helper must not fork OpenMP either (serial_ops_scope).
std::atomic<size_t> row_split_min{4096};

template <class F>
void row_blocks(int M, size_t work_per_row, F&& f) {
    const int threads = task_helpers() + 1;
    if (threads < 2 || M < 2 || size_t(M) * work_per_row < row_split_min.load(std::memory_order_relaxed))
        return f(0, M);
    const int nb = std::min(M, threads);
    for_tasks(nb, [&](int b) {
        serial_ops_scope serial;
        f(int(int64_t(M) * b / nb), int(int64_t(M) * (b + 1) / nb));
    });
}

// Copies cache entries [n0, n) of a layer into its position panels (grown as needed, whole panels).
void fill_panels(latent_panels& lp, const mla_latent_cache& lc, int n0, int n, int kvl, int rope) {
    constexpr int P = latent_panel_width;
    const size_t need_k = size_t((n + P - 1) / P) * P * kvl, need_r = size_t((n + P - 1) / P) * P * rope;
    if (lp.ckv.size() < need_k) lp.ckv.resize(std::max(need_k, 2 * lp.ckv.size()));
    if (lp.kpe.size() < need_r) lp.kpe.resize(std::max(need_r, 2 * lp.kpe.size()));
    for (int j = n0; j < n; ++j) {
        float* pk = lp.ckv.data() + size_t(j / P) * kvl * P + (j % P);
        const float* sk = lc.ckv.data() + size_t(j) * kvl;
        for (int c = 0; c < kvl; ++c) pk[size_t(c) * P] = sk[c];
        float* pr = lp.kpe.data() + size_t(j / P) * rope * P + (j % P);
        const float* sr = lc.kpe.data() + size_t(j) * rope;
        for (int c = 0; c < rope; ++c) pr[size_t(c) * P] = sr[c];
    }
}

// y[T, n] (contiguous) = rows of x with stride ldx, columns [off, off + n).
void gather_cols(float* y, const float* x, size_t ldx, int T, int off, int n) {
    for (int t = 0; t < T; ++t) std::memcpy(y + size_t(t) * n, x + size_t(t) * ldx + off, sizeof(float) * n);
}

// a[T, f] = silu(g) * u from gu[T, 2f] = [g | u] per row.
void silu_rows(float* a, const float* gu, int T, int f) {
    for (int t = 0; t < T; ++t) silu_mul_row(a + size_t(t) * f, gu + size_t(t) * 2 * f, gu + size_t(t) * 2 * f + f, f);
}

// y[T, d] = down(silu(gate x) * up x), packed; gu[T, 2*inner] and act[T, inner] are scratch.
void ffn_packed(const decode_ffn& f, float* y, const float* x, int T, int d, float* gu, float* act) {
    gemv_packed(gu, 2 * f.inner, x, d, T, f.gate_up);
    const int fi = f.inner;
    row_blocks(T, size_t(4) * fi, [&](int r0, int r1) {                // exp costs a few elements' work
        silu_rows(act + size_t(r0) * fi, gu + size_t(r0) * 2 * fi, r1 - r0, fi);
    });
    gemv_packed(y, d, act, f.inner, T, f.down);
}

void ffn_packed(const decode_ffn& f, float* y, const float* x, int T, int d, arena& a) {
    auto mk = a.mark();
    float* gu = a.alloc(size_t(T) * 2 * f.inner);
    float* act = a.alloc(size_t(T) * f.inner);
    ffn_packed(f, y, x, T, d, gu, act);
    a.rewind(mk);
}

// Absorbed MLA (spec §3) for the rows of several sequences at once, each over its own latent cache; y[M, d]
// written for x[M, d], the rows of seqs[0], then seqs[1], ... (cos/sin: [M, rope/2], the same order). The
// projections and absorptions of all rows go through the multi-row kernel together; the attention of a sequence's
// rows reads only its cache: scores = [q_abs | q_pe] against the cache's position panels, P·c_kv against the cache
// itself. A chain row t of a sequence attends to its positions 0..n0+t; its scores past that are computed but get
// probability exactly 0, which adds exact zeros to its P·c_kv chain, so every row's result is the same as with the
// row alone (nothing depends on the other rows of the pass, of its sequence or of the others).
void mla_packed(const model_config& c, const layer_offsets& l, const decode_layer_weights& lw, const float* W, int li,
                const seq_pass* seqs, int ns, float* y, const float* x, int M, const float* cos, const float* sin,
                arena& a) {
    const int H = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, half = rope / 2;
    const int dq = nope + rope, dv = c.v_head_dim, kvl = c.kv_lora_rank, d = c.hidden_size;
    const int ql = c.q_lora_rank, qw = ql > 0 ? ql : H * dq, nin = qw + kvl + rope;
    const float scale = float(c.attn_scale()), eps = float(c.rms_norm_eps);
    auto mk = a.mark();
    float* proj = a.alloc(size_t(M) * nin);                              // [M, qw + kvl + rope]
    gemv_packed(proj, nin, x, d, M, lw.in_proj);
    float* q = a.alloc(size_t(M) * H * dq);                              // [M, H*dq]
    float* rstd = a.alloc(M);
    if (ql > 0) {
        float* qa = a.alloc(size_t(M) * ql);
        row_blocks(M, ql, [&](int r0, int r1) {
            gather_cols(qa + size_t(r0) * ql, proj + size_t(r0) * nin, nin, r1 - r0, 0, ql);
            rmsnorm_forward(qa + size_t(r0) * ql, rstd + r0, qa + size_t(r0) * ql, W + l.q_a_norm, r1 - r0, ql, eps);
        });
        gemv_packed(q, H * dq, qa, ql, M, lw.q_b);
    } else {
        gather_cols(q, proj, nin, M, 0, H * dq);
    }
    row_blocks(M, size_t(H) * rope, [&](int r0, int r1) {
        rope_forward(q + size_t(r0) * H * dq, r1 - r0, H * dq, H, dq, nope, rope, cos + size_t(r0) * half,
                     sin + size_t(r0) * half);
    });
    const int R = M * H;                                                 // rows (t, h) at t*H + h
    float* qabs = a.alloc(size_t(R) * kvl);                              // [M, H, kvl]
    float* olat = a.alloc(size_t(R) * kvl);                              // [M, H, kvl] = P · c_kv
    const int helpers = task_helpers();
    // The per-head products are small at a few rows: each head is a task of its own (the heads run side by side)
    // unless the products are large enough to share out their own tiles and the heads would not divide evenly.
    const bool heads_as_tasks = helpers > 0 && H >= 2 &&
        (H % (helpers + 1) == 0 || size_t(M) * kvl * std::max(nope, dv) < (size_t(1) << 17));

    // Append every sequence's new latents to its cache (done first, so that no cache moves while the attention below
    // reads them; one task per sequence, beside the heads' absorptions of q), then the attention of each block of up
    // to TB rows of a sequence as one task (core/task_pool) when there are at least as many blocks as threads: blocks
    // read only their own sequence's cache and write only their own rows of olat. With fewer, the blocks run one
    // after the other on this thread and their products share out their own work, as a single sequence's long
    // context needs.
    constexpr int TB = 16;
    int* tk = a.alloc_int(size_t(M) * 6 + 6);                            // tasks: {si, row0, nb, b0, n0, n}
    int* r0s = a.alloc_int(size_t(ns) + 1);                              // first row of each sequence
    int n_tasks = 0, n_max = 0, tb_max = 1;
    for (int si = 0, r0 = 0; si < ns; r0 += seqs[si].m, ++si) {
        const seq_pass& sp = seqs[si];
        const int T = sp.m;
        mla_latent_cache& lc = sp.kv->layers[size_t(li)];
        const int n0 = lc.n, n = n0 + T;
        if (lc.ckv.size() < size_t(n) * kvl + 8) {                       // + slack: gemv_panels reads whole panels
            lc.ckv.resize(size_t(n) * kvl * 2 + 8);
            lc.kpe.resize(size_t(n) * rope * 2 + 8);
        }
        r0s[si] = r0;
        n_max = std::max(n_max, n);
        tb_max = std::max(tb_max, std::min(TB, T));
        for (int b0 = 0; b0 < T; b0 += TB, ++n_tasks) {
            int* t = tk + size_t(n_tasks) * 6;
            t[0] = si, t[1] = r0 + b0, t[2] = std::min(TB, T - b0), t[3] = b0, t[4] = n0, t[5] = n;
        }
    }
    auto append = [&](int si) {                                          // the latents of sequence si's rows
        const seq_pass& sp = seqs[si];
        const int T = sp.m, r0 = r0s[si];
        mla_latent_cache& lc = sp.kv->layers[size_t(li)];
        const int n0 = lc.n, n = n0 + T;
        float* ckv_new = lc.ckv.data() + size_t(n0) * kvl;
        float* kpe_new = lc.kpe.data() + size_t(n0) * rope;
        gather_cols(ckv_new, proj + size_t(r0) * nin, nin, T, qw, kvl);
        rmsnorm_forward(ckv_new, rstd + r0, ckv_new, W + l.kv_a_norm, T, kvl, eps);
        gather_cols(kpe_new, proj + size_t(r0) * nin, nin, T, qw + kvl, rope);
        rope_forward(kpe_new, T, rope, 1, rope, 0, rope, cos + size_t(r0) * half, sin + size_t(r0) * half);
        lc.n = n;
        fill_panels(sp.kv->panels[size_t(li)], lc, n0, n, kvl, rope);
    };
    auto absorb = [&](int h) {
        gemv_packed(qabs + size_t(h) * kvl, size_t(H) * kvl, q + size_t(h) * dq, H * dq, M, lw.uk[h]);
    };
    const int nh = heads_as_tasks ? H : 0;                               // heads among the tasks
    for (int h = nh; h < H; ++h) absorb(h);                              // large: they share out their own tiles
    for_tasks(nh + ns, [&](int i) {                                      // inline in order without helpers
        serial_ops_scope serial;
        if (i < nh) absorb(i);
        else append(i - nh);
    });
    // Per-thread scratch: two score blocks [tb_max*H, np] and the gathered tree row.
    const int np_max = (n_max + 7) / 8 * 8;
    const bool as_tasks = helpers > 0 && n_tasks >= helpers + 1;
    const int n_workers = as_tasks ? helpers + 1 : 1;
    const size_t sblock = size_t(tb_max) * H * np_max;
    const size_t per_worker = (2 * sblock + size_t(n_max) + 8 + 15) / 16 * 16;
    float* scratch = a.alloc(per_worker * size_t(n_workers));
    auto attend = [&](int task, int worker) {
        const int* t = tk + size_t(task) * 6;
        const seq_pass& sp = seqs[t[0]];
        const int row0 = t[1], nb = t[2], b0 = t[3], n0 = t[4], n = t[5], RB = nb * H;
        const mla_latent_cache& lc = sp.kv->layers[size_t(li)];
        const latent_panels& lp = sp.kv->panels[size_t(li)];
        const int np = (n + 7) / 8 * 8;                                  // score row stride
        float* sa = scratch + per_worker * size_t(worker);
        float* sb = sa + sblock;
        float* g = sb + sblock;
        const size_t q0 = size_t(row0) * H;                              // first (t, h) row of the block
        constexpr int P = latent_panel_width;
        gemv_panels(sa, np, qabs + q0 * kvl, kvl, RB, lp.ckv.data(), n, kvl, size_t(kvl) * P, P, P);
        gemv_panels(sb, np, q + size_t(row0) * H * dq + nope, dq, RB, lp.kpe.data(), n, rope, size_t(rope) * P, P, P);
        for (int tb = 0; tb < nb; ++tb) {
            const int tr = b0 + tb;                                      // row within the sequence's pass
            for (int h = 0; h < H; ++h) {
                float* sh = sa + size_t(tb * H + h) * np;
                const float* bh = sb + size_t(tb * H + h) * np;
                if (sp.rows) {
                    // Tree rows: the same operations on the attended scores gathered in ascending order, so a
                    // row gives bitwise what it gives in a chain whose entries are its ancestors.
                    const int* sl = sp.rows->slots + sp.rows->off[tr];
                    const int cnt = sp.rows->off[tr + 1] - sp.rows->off[tr];
                    float mx = -INFINITY;
                    for (int j = 0; j < cnt; ++j) {
                        g[j] = scale * (sh[sl[j]] + bh[sl[j]]);
                        mx = g[j] > mx ? g[j] : mx;
                    }
                    exp_sub(g, cnt, mx);
                    const float inv = 1.0f / sum_fixed(g, cnt);
                    std::memset(sh, 0, sizeof(float) * size_t(n));
                    for (int j = 0; j < cnt; ++j) sh[sl[j]] = g[j] * inv;
                } else {
                    const int lim = n0 + tr;                             // attends to 0..lim
                    float mx = -INFINITY;
                    for (int j = 0; j <= lim; ++j) {
                        sh[j] = scale * (sh[j] + bh[j]);
                        mx = sh[j] > mx ? sh[j] : mx;
                    }
                    exp_sub(sh, lim + 1, mx);
                    const float inv = 1.0f / sum_fixed(sh, lim + 1);
                    for (int j = 0; j <= lim; ++j) sh[j] *= inv;
                    for (int j = lim + 1; j < n; ++j) sh[j] = 0.0f;
                }
            }
        }
        if (kvl % 16 == 0) gemv_panels(olat + q0 * kvl, kvl, sa, np, RB, lc.ckv.data(), kvl, n, 16, kvl, 16);
        else gemv_panels(olat + q0 * kvl, kvl, sa, np, RB, lc.ckv.data(), kvl, n, 8, kvl);
    };
    if (as_tasks) for_tasks(n_tasks, [&](int task) { attend(task, task_worker()); });
    else for (int task = 0; task < n_tasks; ++task) attend(task, 0);
    float* o = a.alloc(size_t(M) * H * dv);                              // [M, H*dv]
    auto value = [&](int h) {
        gemv_packed(o + size_t(h) * dv, size_t(H) * dv, olat + size_t(h) * kvl, size_t(H) * kvl, M, lw.uv[h]);
    };
    if (heads_as_tasks) for_tasks(H, [&](int h) { serial_ops_scope serial; value(h); });
    else for (int h = 0; h < H; ++h) value(h);
    gemv_packed(y, d, o, H * dv, M, lw.o_proj);
    a.rewind(mk);
}

// DeepSeekMoE for T rows (spec §4): router and routing per row, experts over the rows routed to them.
// Returns how many distinct routed experts the T rows used (the expert weights this pass reads).
int moe_packed(const model_config& c, const layer_offsets& l, const decode_layer_weights& lw, const float* W,
               float* y, const float* x, int T, arena& a) {
    const int d = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
    auto mk = a.mark();
    float* sc = a.alloc(size_t(T) * E);
    gemv_packed(sc, E, x, d, T, lw.router);
    for (int t = 0; t < T; ++t) {                                        // scores, as moe_forward
        float* r = sc + size_t(t) * E;
        if (c.scoring_sigmoid) {
            for (int e = 0; e < E; ++e) r[e] = 1.0f / (1.0f + std::exp(-r[e]));
        } else {
            float mx = r[0], sum = 0;
            for (int e = 1; e < E; ++e) mx = r[e] > mx ? r[e] : mx;
            for (int e = 0; e < E; ++e) { r[e] = std::exp(r[e] - mx); sum += r[e]; }
            for (int e = 0; e < E; ++e) r[e] /= sum;
        }
    }
    int* idx = a.alloc_int(size_t(T) * K);
    float* w = a.alloc(size_t(T) * K);
    const float* bias = l.router_bias != no_param ? W + l.router_bias : nullptr;
    for (int t = 0; t < T; ++t) moe_route(c, sc + size_t(t) * E, bias, idx + size_t(t) * K, w + size_t(t) * K);

    // Rows of each expert, in token order.
    int* cnt = a.alloc_int(E + 1);
    std::memset(cnt, 0, sizeof(int) * (E + 1));
    for (int i = 0; i < T * K; ++i) cnt[idx[i] + 1]++;
    for (int e = 0; e < E; ++e) cnt[e + 1] += cnt[e];
    int* fill = a.alloc_int(E);
    std::memcpy(fill, cnt, sizeof(int) * E);
    int* where = a.alloc_int(size_t(T) * K);                             // gathered row of (t, k)
    int* rows = a.alloc_int(size_t(T) * K);                              // token of each gathered row
    for (int t = 0; t < T; ++t)
        for (int k = 0; k < K; ++k) {
            const int r = fill[idx[t * K + k]]++;
            rows[r] = t;
            where[t * K + k] = r;
        }
    float* xe = a.alloc(size_t(T) * K * d);
    float* ye = a.alloc(size_t(T) * K * d);
    for (int r = 0; r < T * K; ++r) std::memcpy(xe + size_t(r) * d, x + size_t(rows[r]) * d, sizeof(float) * d);
    int used = 0;
    int* act_e = a.alloc_int(E);                                         // the experts with rows
    for (int e = 0; e < E; ++e)
        if (cnt[e + 1] > cnt[e]) act_e[used++] = e;
    // A few rows per expert make GEMVs too small to share among threads, so with enough experts each expert is a
    // task of its own (core/task_pool) and the experts run side by side; the results are the same either way.
    // The shared expert is the first task (the largest: every row).
    const int workers = task_helpers() + 1;
    const bool shared = lw.shared.inner > 0;
    if (!shared) std::memset(y, 0, sizeof(float) * size_t(T) * d);
    if (workers > 1 && used >= 2 * workers) {
        const int inner = lw.experts[size_t(act_e[0])].inner, si = lw.shared.inner;
        float* gu = a.alloc(size_t(T) * K * 2 * inner);                  // scratch at each expert's first row
        float* act = a.alloc(size_t(T) * K * inner);
        float* sgu = a.alloc(size_t(T) * 2 * si);
        float* sact = a.alloc(size_t(T) * si);
        for_tasks(used + shared, [&](int i) {
            if (shared && i == 0) return ffn_packed(lw.shared, y, x, T, d, sgu, sact);
            const int e = act_e[i - shared];
            const size_t r = size_t(cnt[e]);
            ffn_packed(lw.experts[size_t(e)], ye + r * d, xe + r * d, cnt[e + 1] - cnt[e], d, gu + r * 2 * inner,
                       act + r * inner);
        });
    } else {
        for (int i = 0; i < used; ++i) {
            const int e = act_e[i];
            ffn_packed(lw.experts[size_t(e)], ye + size_t(cnt[e]) * d, xe + size_t(cnt[e]) * d, cnt[e + 1] - cnt[e],
                       d, a);
        }
        if (shared) ffn_packed(lw.shared, y, x, T, d, a);
    }
    row_blocks(T, size_t(K) * d, [&](int t0, int t1) {                 // y += Σ_k w_k y_k, fixed k order
        for (int t = t0; t < t1; ++t)
            for (int k = 0; k < K; ++k) axpy_fixed(y + size_t(t) * d, w[t * K + k], ye + size_t(where[t * K + k]) * d, d);
    });
    a.rewind(mk);
    return used;
}

// x[M,d] += MLA(norm(x)); x += FFN(norm(x)) for the rows of every sequence of the pass.
void decode_layer(const model_config& c, const layer_offsets& l, const decode_layer_weights& lw, const float* W,
                  int li, const seq_pass* seqs, int ns, float* x, int M, const float* cos, const float* sin,
                  int64_t& experts, arena& a) {
    const int d = c.hidden_size;
    const size_t n = size_t(M) * d;
    const float eps = float(c.rms_norm_eps);
    auto mk = a.mark();
    float* xn = a.alloc(n);
    float* rstd = a.alloc(M);
    float* tmp = a.alloc(n);
    row_blocks(M, d, [&](int r0, int r1) {
        const size_t o = size_t(r0) * d;
        rmsnorm_forward(xn + o, rstd + r0, x + o, W + l.input_norm, r1 - r0, d, eps);
    });
    mla_packed(c, l, lw, W, li, seqs, ns, tmp, xn, M, cos, sin, a);
    row_blocks(M, 2 * size_t(d), [&](int r0, int r1) {                  // x += attention; xn = norm(x)
        const size_t o = size_t(r0) * d;
        add_inplace(x + o, tmp + o, size_t(r1 - r0) * d);
        rmsnorm_forward(xn + o, rstd + r0, x + o, W + l.post_norm, r1 - r0, d, eps);
    });
    if (l.moe) experts += moe_packed(c, l, lw, W, tmp, xn, M, a);
    else ffn_packed(lw.mlp, tmp, xn, M, d, a);
    row_blocks(M, d, [&](int r0, int r1) {
        add_inplace(x + size_t(r0) * d, tmp + size_t(r0) * d, size_t(r1 - r0) * d);
    });
    a.rewind(mk);
}

// Logits of the rows logits_from..m-1 of each sequence (h: [M, d], the sequences' rows in order): one product per
// head kind over the rows of every sequence that asks for it, then copied out.
void heads(const decode_weights& dw, const seq_pass* seqs, int ns, const float* h, int d, arena& a) {
    for (int kind = 0; kind < 2; ++kind) {
        const head_kind hk = kind ? head_kind::draft : head_kind::full;
        const packed_weight& w = hk == head_kind::draft ? dw.draft_head : dw.lm_head;
        int rows = 0, users = 0;
        for (int si = 0; si < ns; ++si)
            if (seqs[si].logits && seqs[si].head == hk && seqs[si].logits_from < seqs[si].m) {
                rows += seqs[si].m - seqs[si].logits_from;
                ++users;
            }
        if (rows == 0) continue;
        if (users == 1 && ns == 1) {                                     // one sequence: straight into its buffer
            const seq_pass& sp = seqs[0];
            gemv_packed(sp.logits, w.out, h + size_t(sp.logits_from) * d, d, sp.m - sp.logits_from, w);
            continue;
        }
        auto mk = a.mark();
        float* hx = a.alloc(size_t(rows) * d);
        float* lg = a.alloc(size_t(rows) * w.out);
        int r = 0;
        for (int si = 0, r0 = 0; si < ns; r0 += seqs[si].m, ++si) {
            const seq_pass& sp = seqs[si];
            if (!sp.logits || sp.head != hk || sp.logits_from >= sp.m) continue;
            const int k = sp.m - sp.logits_from;
            std::memcpy(hx + size_t(r) * d, h + size_t(r0 + sp.logits_from) * d, sizeof(float) * size_t(k) * d);
            r += k;
        }
        gemv_packed(lg, w.out, hx, d, rows, w);
        r = 0;
        for (int si = 0; si < ns; ++si) {
            const seq_pass& sp = seqs[si];
            if (!sp.logits || sp.head != hk || sp.logits_from >= sp.m) continue;
            const int k = sp.m - sp.logits_from;
            std::memcpy(sp.logits, lg + size_t(r) * w.out, sizeof(float) * size_t(k) * w.out);
            r += k;
        }
        a.rewind(mk);
    }
}

// Rows of all sequences: total count, embeddings x[M, d], and cos/sin [M, rope/2] concatenated.
int gather_rows(const model_config& c, const model_layout& L, const float* W, const seq_pass* seqs, int ns,
                float*& x, float*& cos, float*& sin, arena& a) {
    const int d = c.hidden_size, half = c.qk_rope_head_dim / 2;
    int M = 0;
    for (int si = 0; si < ns; ++si) M += seqs[si].m;
    x = a.alloc(size_t(M) * d);
    cos = a.alloc(size_t(M) * half + 1);
    sin = a.alloc(size_t(M) * half + 1);
    for (int si = 0, r0 = 0; si < ns; r0 += seqs[si].m, ++si) {
        const seq_pass& sp = seqs[si];
        for (int t = 0; t < sp.m && sp.tokens; ++t)     // no tokens (parallel heads): x is left for the caller
            std::memcpy(x + size_t(r0 + t) * d, W + L.embed + size_t(sp.tokens[t]) * d, sizeof(float) * d);
        std::memcpy(cos + size_t(r0) * half, sp.cos, sizeof(float) * size_t(sp.m) * half);
        std::memcpy(sin + size_t(r0) * half, sp.sin, sizeof(float) * size_t(sp.m) * half);
    }
    return M;
}

} // namespace

size_t decode_set_row_split_min(size_t elements) { return row_split_min.exchange(elements); }

void decode_trunk_batch(const model_config& c, const model_layout& L, const float* W, const decode_weights& dw,
                        const seq_pass* seqs, int ns, decode_scratch& s, arena& a) {
    const int d = c.hidden_size;
    auto mk = a.mark();
    float *x, *cos, *sin;
    const int M = gather_rows(c, L, W, seqs, ns, x, cos, sin, a);
    s.experts = 0;
    if (M == 0) return a.rewind(mk);
    for (int i = 0; i < c.num_hidden_layers; ++i)
        decode_layer(c, L.layers[i], dw.layers[i], W, i, seqs, ns, x, M, cos, sin, s.experts, a);
    float* rstd = a.alloc(M);
    float* h = a.alloc(size_t(M) * d);
    rmsnorm_forward(h, rstd, x, W + L.final_norm, M, d, float(c.rms_norm_eps));
    heads(dw, seqs, ns, h, d, a);
    for (int si = 0, r0 = 0; si < ns; r0 += seqs[si].m, ++si) {
        std::memcpy(seqs[si].h, h + size_t(r0) * d, sizeof(float) * size_t(seqs[si].m) * d);
        seqs[si].kv->n += seqs[si].m;
    }
    a.rewind(mk);
}

void decode_mtp_batch(const model_config& c, const model_layout& L, const float* W, const decode_weights& dw, int k,
                      const seq_pass* seqs, int ns, decode_scratch& s, arena& a) {
    const int d = c.hidden_size;
    const float eps = float(c.rms_norm_eps);
    const layer_offsets& l = L.mtp[k - 1];
    auto mk = a.mark();
    float *e, *cos, *sin;
    const int M = gather_rows(c, L, W, seqs, ns, e, cos, sin, a);
    s.experts = 0;
    if (M == 0) return a.rewind(mk);
    float* rstd = a.alloc(M);
    float* y = e;                                                        // [M, d]: the decoder layer's input
    if (c.mtp_parallel) {                                                // spec §8: u = hnorm(h), no token
        for (int si = 0, r0 = 0; si < ns; r0 += seqs[si].m, ++si)
            std::memcpy(y + size_t(r0) * d, seqs[si].hprev, sizeof(float) * size_t(seqs[si].m) * d);
        rmsnorm_forward(y, rstd, y, W + l.hnorm, M, d, eps);
    } else {                                                             // spec §5: eh_proj([enorm(e) | hnorm(h)])
        float* cat = a.alloc(size_t(M) * 2 * d);
        float* tmp = a.alloc(size_t(M) * d);
        rmsnorm_forward(tmp, rstd, e, W + l.enorm, M, d, eps);
        for (int t = 0; t < M; ++t) std::memcpy(cat + size_t(t) * 2 * d, tmp + size_t(t) * d, sizeof(float) * d);
        for (int si = 0, r0 = 0; si < ns; r0 += seqs[si].m, ++si)
            std::memcpy(tmp + size_t(r0) * d, seqs[si].hprev, sizeof(float) * size_t(seqs[si].m) * d);
        rmsnorm_forward(tmp, rstd, tmp, W + l.hnorm, M, d, eps);
        for (int t = 0; t < M; ++t) std::memcpy(cat + size_t(t) * 2 * d + d, tmp + size_t(t) * d, sizeof(float) * d);
        gemv_packed(y, d, cat, 2 * d, M, dw.eh_proj[k - 1]);
    }
    decode_layer(c, l, dw.mtp[k - 1], W, 0, seqs, ns, y, M, cos, sin, s.experts, a);
    float* h = a.alloc(size_t(M) * d);
    rmsnorm_forward(h, rstd, y, W + l.shared_head_norm, M, d, eps);
    heads(dw, seqs, ns, h, d, a);
    for (int si = 0, r0 = 0; si < ns; r0 += seqs[si].m, ++si) {
        std::memcpy(seqs[si].h, h + size_t(r0) * d, sizeof(float) * size_t(seqs[si].m) * d);
        seqs[si].kv->n += seqs[si].m;
    }
    a.rewind(mk);
}

void decode_trunk(const model_config& c, const model_layout& L, const float* W, const decode_weights& dw, kv_cache& kv,
                  decode_scratch& s, const int* tokens, int m, const float* cos, const float* sin, float* h,
                  float* logits, int logits_from, head_kind head_k, arena& a, const attn_rows* tree) {
    if (m <= 0) return;
    const seq_pass sp{&kv, m, tokens, nullptr, cos, sin, tree, h, logits, logits_from, head_k};
    decode_trunk_batch(c, L, W, dw, &sp, 1, s, a);
}

void decode_mtp(const model_config& c, const model_layout& L, const float* W, const decode_weights& dw, int k,
                kv_cache& kv, decode_scratch& s, const float* hprev, const int* tokens, int m, const float* cos,
                const float* sin, float* h, float* logits, int logits_from, head_kind head_k, arena& a,
                const attn_rows* tree) {
    if (m <= 0) return;
    const seq_pass sp{&kv, m, tokens, hprev, cos, sin, tree, h, logits, logits_from, head_k};
    decode_mtp_batch(c, L, W, dw, k, &sp, 1, s, a);
}

void kv_cache::keep(int from, const std::vector<int>& slots, int kvl, int rope) {
    for (size_t li = 0; li < layers.size(); ++li) {
        mla_latent_cache& lc = layers[li];
        for (size_t j = 0; j < slots.size(); ++j) {
            const int src = slots[j], dst = from + int(j);          // dst <= src: ascending copies never clobber
            if (src == dst) continue;
            std::memmove(lc.ckv.data() + size_t(dst) * kvl, lc.ckv.data() + size_t(src) * kvl, sizeof(float) * kvl);
            std::memmove(lc.kpe.data() + size_t(dst) * rope, lc.kpe.data() + size_t(src) * rope, sizeof(float) * rope);
        }
        lc.n = from + int(slots.size());
        fill_panels(panels[li], lc, from, lc.n, kvl, rope);
    }
    n = from + int(slots.size());
}

} // namespace mtp
