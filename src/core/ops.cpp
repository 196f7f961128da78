// Dense fp32 kernels: GEMM through OpenBLAS, the rest as OpenMP loops over rows.
#include "core/ops.h"
#include "core/profile.h"

#include <cblas.h>
#include <cmath>
#include <cstring>
#include <omp.h>

namespace mtp {

namespace {
// Parallelise only when there is enough work to pay for the fork.
constexpr size_t omp_min_work = 1 << 14;
}

void linear_forward(float* y, const float* x, const float* w, int T, int in, int out, bool accumulate) {
    if (T == 0 || out == 0) return;
    prof_add_flops(2.0 * T * in * out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1.0f, x, in, w, in,
                accumulate ? 1.0f : 0.0f, y, out);
}

void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int T, int in, int out) {
    if (T == 0) return;
    prof_add_flops(2.0 * T * in * out * ((dx ? 1 : 0) + (dw ? 1 : 0)));
    if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
    if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, T, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int T, int n, float eps) {
    prof_scope ps(prof::norm);
#pragma omp parallel for if (size_t(T) * n > omp_min_work)
    for (int t = 0; t < T; ++t) {
        const float* xr = x + size_t(t) * n;
        float* yr = y + size_t(t) * n;
        double ss = 0;
        for (int i = 0; i < n; ++i) ss += double(xr[i]) * xr[i];
        float r = float(1.0 / std::sqrt(ss / n + eps));
        rstd[t] = r;
        for (int i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * r);
    }
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int T, int n) {
    prof_scope ps(prof::norm);
    if (dx) {
#pragma omp parallel for if (size_t(T) * n > omp_min_work)
        for (int t = 0; t < T; ++t) {
            const float* xr = x + size_t(t) * n;
            const float* gr = dy + size_t(t) * n;
            float* dxr = dx + size_t(t) * n;
            float r = rstd[t];
            double dot = 0;                                   // sum_i (w_i dy_i) x_i
            for (int i = 0; i < n; ++i) dot += double(w[i] * gr[i]) * xr[i];
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
#pragma omp parallel for if (size_t(T) * n_heads * rope > omp_min_work)
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

void silu_mul_forward(float* a, const float* g, const float* u, size_t n) {
    prof_scope ps(prof::act);
#pragma omp parallel for simd if (n > omp_min_work)
    for (size_t i = 0; i < n; ++i) a[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void silu_mul_backward(float* dg, float* du, const float* da, const float* g, const float* u, size_t n) {
    prof_scope ps(prof::act);
#pragma omp parallel for simd if (n > omp_min_work)
    for (size_t i = 0; i < n; ++i) {
        float sg = 1.0f / (1.0f + std::exp(-g[i]));
        float silu = g[i] * sg;
        du[i] = da[i] * silu;
        dg[i] = da[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
    }
}

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
        float mx = l[0];
        for (int v = 1; v < V; ++v) mx = l[v] > mx ? l[v] : mx;
        double sum = 0;
        if (d) {
            for (int v = 0; v < V; ++v) { float e = std::exp(l[v] - mx); d[v] = e; sum += e; }
            const float inv = float(scale / sum);
            for (int v = 0; v < V; ++v) d[v] *= inv;
            d[tgt] -= scale;
        } else {
            for (int v = 0; v < V; ++v) sum += std::exp(l[v] - mx);
        }
        total += double(mx) + std::log(sum) - lt;
    }
    double total = 0;
    for (double p : partial) total += p;
    return total;
}

void add_inplace(float* y, const float* x, size_t n) {
#pragma omp parallel for simd if (n > omp_min_work)
    for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

void scale_inplace(float* y, float s, size_t n) {
#pragma omp parallel for simd if (n > omp_min_work)
    for (size_t i = 0; i < n; ++i) y[i] *= s;
}

} // namespace mtp
