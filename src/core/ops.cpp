// Dense fp32 kernels: GEMM through OpenBLAS, the rest as OpenMP loops over rows.
#include "core/ops.h"
#include "core/gemm_bf16.h"
#include "core/profile.h"
#include "core/vec_math.h"

#include <algorithm>
#include <atomic>
#include <cblas.h>
#include <cmath>
#include <cstring>
#include <omp.h>

namespace mtp {

namespace {
// Parallelise only when there is enough work to pay for the fork (and no serial_ops_scope is alive on this thread).
// Callers evaluate it once into a bool for the `if` clause: GCC may evaluate an if clause once per construct
// (parallel and simd), which would count a request twice.
constexpr size_t omp_min_work = 1 << 14;
thread_local bool serial_ops = false;
std::atomic<long long> fork_requests{0};
bool par_work(size_t n) {
    if (serial_ops || n <= omp_min_work) return false;
    fork_requests.fetch_add(1, std::memory_order_relaxed);
    return true;
}
} // namespace

long long ops_fork_requests() { return fork_requests.load(); }

serial_ops_scope::serial_ops_scope() : prev_(serial_ops) { serial_ops = true; }
serial_ops_scope::~serial_ops_scope() { serial_ops = prev_; }

void linear_forward(float* y, const float* x, const float* w, int T, int in, int out, bool accumulate) {
    if (T == 0 || out == 0) return;
    prof_add_flops(2.0 * T * in * out);
    if (get_matmul_precision() == matmul_precision::bf16)
        return gemm_bf16(false, true, T, out, in, x, in, w, in, accumulate ? 1.0f : 0.0f, y, out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1.0f, x, in, w, in,
                accumulate ? 1.0f : 0.0f, y, out);
}

void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int T, int in, int out) {
    if (T == 0) return;
    prof_add_flops(2.0 * T * in * out * ((dx ? 1 : 0) + (dw ? 1 : 0)));
    if (get_matmul_precision() == matmul_precision::bf16) {
        if (dx) gemm_bf16(false, false, T, in, out, dy, out, w, in, 1.0f, dx, in);
        if (dw) gemm_bf16(true, false, out, in, T, dy, out, x, in, 1.0f, dw, in);
        return;
    }
    if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
    if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, T, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

// Σ_i a_i * b[i] in double, a_i = a[i], or float(w[i] * a[i]) when w is given (rounded as the scalar product is),
// as 8 lane chains (two 4-lane double accumulators) combined in a fixed order, then the tail: the same value for
// the same row wherever it sits. Each a_i * b[i] is exact in double.
double dot_double(const float* a, const float* b, int n, const float* w) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 va = _mm256_loadu_ps(a + i);
        if (w) va = _mm256_mul_ps(_mm256_loadu_ps(w + i), va);
        const __m256 vb = _mm256_loadu_ps(b + i);
        s0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(va)), _mm256_cvtps_pd(_mm256_castps256_ps128(vb)), s0);
        s1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(va, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(vb, 1)), s1);
    }
    alignas(32) double l[8];
    _mm256_store_pd(l, s0);
    _mm256_store_pd(l + 4, s1);
    double s = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    for (; i < n; ++i) s += double(w ? w[i] * a[i] : a[i]) * b[i];
    return s;
}


void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int T, int n, float eps) {
    prof_scope ps(prof::norm);
    const bool fork = par_work(size_t(T) * n);
#pragma omp parallel for if (fork)
    for (int t = 0; t < T; ++t) {
        const float* xr = x + size_t(t) * n;
        float* yr = y + size_t(t) * n;
        const double ss = dot_double(xr, xr, n);
        float r = float(1.0 / std::sqrt(ss / n + eps));
        rstd[t] = r;
        for (int i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * r);
    }
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int T, int n) {
    prof_scope ps(prof::norm);
    if (dx) {
        const bool fork = par_work(size_t(T) * n);
#pragma omp parallel for if (fork)
        for (int t = 0; t < T; ++t) {
            const float* xr = x + size_t(t) * n;
            const float* gr = dy + size_t(t) * n;
            float* dxr = dx + size_t(t) * n;
            float r = rstd[t];
            const double dot = dot_double(gr, xr, n, w);      // sum_i (w_i dy_i) x_i
            float c = float(dot / n) * r * r * r;
            for (int i = 0; i < n; ++i) dxr[i] += w[i] * gr[i] * r - xr[i] * c;
        }
    }
    if (dw) {
        for (int t = 0; t < T; ++t) {                     // sequential over t: deterministic sums
            const float* xr = x + size_t(t) * n;
            const float* gr = dy + size_t(t) * n;
            float r = rstd[t];
            for (int i = 0; i < n; ++i) dw[i] += gr[i] * xr[i] * r;
        }
    }
}

static void rope_apply(float* x, int T, int ld, int n_heads, int head_stride, int offset, int rope,
                       const float* cos, const float* sin, float sign) {
    prof_scope ps(prof::rope);
    int half = rope / 2;
    const bool fork = par_work(size_t(T) * n_heads * rope);
#pragma omp parallel for if (fork)
    for (int t = 0; t < T; ++t) {
        const float* c = cos + size_t(t) * half;
        const float* s = sin + size_t(t) * half;
        for (int h = 0; h < n_heads; ++h) {
            float* v = x + size_t(t) * ld + size_t(h) * head_stride + offset;
            for (int i = 0; i < half; ++i) {
                float a = v[2 * i], b = v[2 * i + 1], si = sign * s[i];
                v[2 * i] = a * c[i] - b * si;
                v[2 * i + 1] = a * si + b * c[i];
            }
        }
    }
}

void rope_forward(float* x, int T, int ld, int n_heads, int head_stride, int offset, int rope,
                  const float* cos, const float* sin) {
    rope_apply(x, T, ld, n_heads, head_stride, offset, rope, cos, sin, 1.0f);
}

void rope_backward(float* dx, int T, int ld, int n_heads, int head_stride, int offset, int rope,
                   const float* cos, const float* sin) {
    rope_apply(dx, T, ld, n_heads, head_stride, offset, rope, cos, sin, -1.0f);
}

namespace {

// Blocks of 8 elements (the tail padded), so that every element takes the same instructions wherever it sits.
template <class F>
void by8(size_t n, F f) {
    const size_t nb = n / 8;
    const bool fork = par_work(n);
#pragma omp parallel for if (fork)
    for (size_t b = 0; b < nb; ++b) f(b * 8, 8);
    if (n % 8) f(nb * 8, int(n % 8));
}

__m256 load_n(const float* p, int k, float pad) {
    if (k == 8) return _mm256_loadu_ps(p);
    alignas(32) float t[8] = {pad, pad, pad, pad, pad, pad, pad, pad};
    std::memcpy(t, p, sizeof(float) * size_t(k));
    return _mm256_load_ps(t);
}

void store_n(float* p, __m256 v, int k) {
    if (k == 8) return _mm256_storeu_ps(p, v);
    alignas(32) float t[8];
    _mm256_store_ps(t, v);
    std::memcpy(p, t, sizeof(float) * size_t(k));
}

} // namespace

void silu_mul_forward(float* a, const float* g, const float* u, size_t n) {
    prof_scope ps(prof::act);
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    by8(n, [&](size_t i, int k) {                                        // a = g / (1 + exp(-g)) * u
        const __m256 gv = load_n(g + i, k, 0.0f);
        const __m256 e = exp8(_mm256_sub_ps(zero, gv));
        store_n(a + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), load_n(u + i, k, 0.0f)), k);
    });
}

void silu_mul_backward(float* dg, float* du, const float* da, const float* g, const float* u, size_t n) {
    prof_scope ps(prof::act);
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    by8(n, [&](size_t i, int k) {
        const __m256 gv = load_n(g + i, k, 0.0f), dav = load_n(da + i, k, 0.0f), uv = load_n(u + i, k, 0.0f);
        const __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, gv))));
        const __m256 silu = _mm256_mul_ps(gv, sg);
        store_n(du + i, _mm256_mul_ps(dav, silu), k);                    // du = da · silu(g)
        // dg = da · u · sg · (1 + g (1 - sg))
        const __m256 t = _mm256_add_ps(one, _mm256_mul_ps(gv, _mm256_sub_ps(one, sg)));
        store_n(dg + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dav, uv), sg), t), k);
    });
}

namespace {

// max_v x[v], as the loop `m = x[v] > m ? x[v] : m` from m = x[0] gives it (a NaN x[0] stays; later NaNs are
// skipped; which zero's sign wins can differ, which no caller sees: it is only subtracted and added back).
float max_of(const float* x, int n) {
    if (n < 16) {
        float m = x[0];
        for (int v = 1; v < n; ++v) m = x[v] > m ? x[v] : m;
        return m;
    }
    __m256 m0 = _mm256_set1_ps(x[0]), m1 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {                      // max_ps(v, m) keeps m when v is NaN, as the loop does
        m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
        m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
    }
    alignas(32) float l[16];
    _mm256_store_ps(l, m0);
    _mm256_store_ps(l + 8, m1);
    float m = l[0];
    for (int j = 1; j < 16; ++j) m = l[j] > m ? l[j] : m;
    for (; i < n; ++i) m = x[i] > m ? x[i] : m;
    return std::isnan(x[0]) ? x[0] : m;
}

// Σ_v exp(x[v] - sub) in double, in a fixed order (8 lanes, then lane by lane); e[v] gets the terms when given.
double sum_exp(const float* x, int n, float sub, float* e) {
    const __m256 s = _mm256_set1_ps(sub);
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    for (int i = 0; i < n; i += 8) {
        const int k = std::min(8, n - i);
        const __m256 v = exp8(_mm256_sub_ps(load_n(x + i, k, -INFINITY), s));   // padding: exp(-inf) = 0
        if (e) store_n(e + i, v, k);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    alignas(32) double l[8];
    _mm256_store_pd(l, acc0);
    _mm256_store_pd(l + 4, acc1);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

} // namespace

double cross_entropy(float* dlogits, const float* logits, const int* targets, int T, int V, float scale) {
    prof_scope ps(prof::cross_entropy);
    // Per-thread partial sums over a static schedule, added in thread order: bitwise repeatable for a given
    // thread count (an OpenMP reduction combines partials in arrival order).
    constexpr int max_threads = 256;
    double partial[max_threads] = {};
    const bool par = size_t(T) * V > omp_min_work;
#pragma omp parallel for schedule(static) if (par)
    for (int t = 0; t < T; ++t) {
        double& total = partial[omp_get_thread_num() % max_threads];
        const float* l = logits + size_t(t) * V;
        float* d = dlogits ? dlogits + size_t(t) * V : nullptr;
        int tgt = targets[t];
        if (tgt < 0) {
            if (d) std::memset(d, 0, sizeof(float) * V);
            continue;
        }
        const float lt = l[tgt];                         // read before d (which may alias l) is written
        const float mx = max_of(l, V);
        const double sum = sum_exp(l, V, mx, d);        // d (may alias l) receives the exp terms
        if (d) {
            const float inv = float(scale / sum);
            for (int v = 0; v < V; ++v) d[v] *= inv;
            d[tgt] -= scale;
        }
        total += double(mx) + std::log(sum) - lt;
    }
    double total = 0;
    for (double p : partial) total += p;
    return total;
}

void add_inplace(float* y, const float* x, size_t n) {
    const bool fork = par_work(n);
#pragma omp parallel for simd if (fork)
    for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

void gather_rows(float* out, const float* table, const int* idx, int T, int d) {
    const bool fork = par_work(size_t(T) * d);
#pragma omp parallel for if (fork)
    for (int t = 0; t < T; ++t) std::memcpy(out + size_t(t) * d, table + size_t(idx[t]) * d, sizeof(float) * d);
}

void scatter_add_rows(float* table, const float* x, const int* idx, int T, int d) {
    const bool fork = par_work(size_t(T) * d);
#pragma omp parallel if (fork)
    {
        const int n = omp_get_num_threads(), me = omp_get_thread_num();
        for (int t = 0; t < T; ++t) {
            if (idx[t] % n != me) continue;                              // this thread's table rows
            float* y = table + size_t(idx[t]) * d;
            const float* r = x + size_t(t) * d;
#pragma omp simd
            for (int i = 0; i < d; ++i) y[i] += r[i];
        }
    }
}

void scale_inplace(float* y, float s, size_t n) {
    const bool fork = par_work(n);
#pragma omp parallel for simd if (fork)
    for (size_t i = 0; i < n; ++i) y[i] *= s;
}

} // namespace mtp
