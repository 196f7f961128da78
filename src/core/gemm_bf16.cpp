// bf16 GEMM: the scalar definition, the run-time choice of kernel family, and the training precision.
#include "core/gemm_bf16.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/error.h"

namespace mtp {

#ifdef MTP_HAVE_AVX512BF16_KERNELS
void gemm_bf16_avx512(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B,
                      int ldb, float beta, float* C, int ldc);
#endif
#ifdef MTP_HAVE_AMX_KERNELS
bool gemm_bf16_amx_permitted();
void gemm_bf16_amx(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                   float beta, float* C, int ldc);
#endif

namespace {

std::atomic<matmul_precision> g_precision{matmul_precision::fp32};

float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

bf16_kernel choose() {
    if (const char* env = std::getenv("MTP_BF16_KERNEL"); env && *env) {
        const std::string v = env;
        for (bf16_kernel k : {bf16_kernel::scalar, bf16_kernel::avx512bf16, bf16_kernel::amx})
            if (v == bf16_kernel_name(k)) {
                if (!bf16_kernel_supported(k)) fail("MTP_BF16_KERNEL", v + " is not supported by this CPU or build");
                return k;
            }
        fail("MTP_BF16_KERNEL", "expected scalar, avx512bf16 or amx, got " + quoted(v));
    }
    if (bf16_kernel_supported(bf16_kernel::amx)) return bf16_kernel::amx;
    if (bf16_kernel_supported(bf16_kernel::avx512bf16)) return bf16_kernel::avx512bf16;
    return bf16_kernel::scalar;
}

} // namespace

const char* bf16_kernel_name(bf16_kernel k) {
    switch (k) {
        case bf16_kernel::scalar: return "scalar";
        case bf16_kernel::avx512bf16: return "avx512bf16";
        case bf16_kernel::amx: return "amx";
    }
    return "?";
}

bool bf16_kernel_supported(bf16_kernel k) {
    const cpu_features& f = cpu_detect();
    switch (k) {
        case bf16_kernel::scalar: return true;
        case bf16_kernel::avx512bf16:
#ifdef MTP_HAVE_AVX512BF16_KERNELS
            return f.avx512f && f.avx512bw && f.avx512vl && f.avx512bf16;
#else
            return false;
#endif
        case bf16_kernel::amx:
#ifdef MTP_HAVE_AMX_KERNELS
            return f.amx_bf16 && f.avx512bw && f.avx512bf16 && gemm_bf16_amx_permitted();
#else
            return false;
#endif
    }
    return false;
}

bf16_kernel gemm_bf16_kernel() {
    static const bf16_kernel k = choose();
    return k;
}

bool gemm_bf16_native() { return gemm_bf16_kernel() != bf16_kernel::scalar; }

bool bf16_kernel_odd_first(bf16_kernel k) { return k != bf16_kernel::amx; }

void gemm_bf16_reference(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B,
                         int ldb, float beta, float* C, int ldc, bool odd_first) {
    auto a = [&](int m, int k) { return k < K ? round_bf16(trans_a ? A[size_t(k) * lda + m] : A[size_t(m) * lda + k]) : 0.0f; };
    auto b = [&](int k, int n) { return k < K ? round_bf16(trans_b ? B[size_t(n) * ldb + k] : B[size_t(k) * ldb + n]) : 0.0f; };
    const int first = odd_first ? 1 : 0, second = 1 - first;
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            float acc = beta != 0.0f ? C[size_t(m) * ldc + n] : 0.0f;
            for (int k = 0; k < K; k += 2) {
                // each product is exact (8-bit x 8-bit significands), so a contracted fma rounds the same
                acc = acc + a(m, k + first) * b(k + first, n);
                acc = acc + a(m, k + second) * b(k + second, n);
            }
            C[size_t(m) * ldc + n] = acc;
        }
}

void gemm_bf16_with(bf16_kernel kern, bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda,
                    const float* B, int ldb, float beta, float* C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (beta == 0.0f)
            for (int m = 0; m < M; ++m) std::memset(C + size_t(m) * ldc, 0, sizeof(float) * N);
        return;
    }
    switch (kern) {
#ifdef MTP_HAVE_AMX_KERNELS
        case bf16_kernel::amx: return gemm_bf16_amx(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
#endif
#ifdef MTP_HAVE_AVX512BF16_KERNELS
        case bf16_kernel::avx512bf16:
            return gemm_bf16_avx512(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
#endif
        default:
            return gemm_bf16_reference(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc, bf16_kernel_odd_first(kern));
    }
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc) {
    gemm_bf16_with(gemm_bf16_kernel(), trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

void set_matmul_precision(matmul_precision p) { g_precision.store(p, std::memory_order_relaxed); }
matmul_precision get_matmul_precision() { return g_precision.load(std::memory_order_relaxed); }

matmul_precision_scope::matmul_precision_scope(bool want_bf16)
    : bf16(want_bf16 && gemm_bf16_native()), saved(get_matmul_precision()) {
    set_matmul_precision(bf16 ? matmul_precision::bf16 : matmul_precision::fp32);
}
matmul_precision_scope::~matmul_precision_scope() { set_matmul_precision(saved); }

} // namespace mtp
