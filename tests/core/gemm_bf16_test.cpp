// bf16 GEMM (src/core/gemm_bf16.h): the AVX-512 BF16 kernel is bitwise equal to its scalar definition for every
// transposition, odd and blocked sizes, beta 0/1 and thread count; the definition is within bf16 rounding of the
// fp32 product; linear_forward / linear_backward follow the process's matmul precision.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <tuple>
#include <vector>

#include <omp.h>

#include "core/gemm_bf16.h"
#include "core/ops.h"
#include "core/rng.h"
#include "random_inputs.h"

namespace {

using namespace mtp;

using test::randn;

struct operands {
    int M, N, K, lda, ldb, ldc;
    std::vector<float> A, B, C0;
};

operands make(bool ta, bool tb, int M, int N, int K, uint64_t seed) {
    operands o{M, N, K, (ta ? M : K) + 3, (tb ? K : N) + 1, N + 5, {}, {}, {}};
    o.A = randn(size_t(ta ? K : M) * o.lda, seed);
    o.B = randn(size_t(tb ? N : K) * o.ldb, seed + 1);
    o.C0 = randn(size_t(M) * o.ldc, seed + 2);
    return o;
}

// Σ_k |a_k b_k| of element (m, n) (fp32 inputs): the scale of its rounding error.
double abs_terms(const operands& o, bool ta, bool tb, int m, int n) {
    double s = 0;
    for (int k = 0; k < o.K; ++k) {
        const double a = ta ? o.A[size_t(k) * o.lda + m] : o.A[size_t(m) * o.lda + k];
        const double b = tb ? o.B[size_t(n) * o.ldb + k] : o.B[size_t(k) * o.ldb + n];
        s += std::fabs(a * b);
    }
    return s;
}

// The kernel against the definition. avx512bf16 computes it bit for bit. AMX sums a tile's pairs in an order of
// its own (probed: no two-step fp32 order matches), so it is held to the error bound of any fp32 summation of the
// same exact products: both it and the definition are within γ_K·Σ|a b| ≈ K·2^-24·Σ|a b| (×1.01 for the bf16
// rounding of the inputs, which enters Σ|a b|) of the exact sum — and to determinism, checked separately.
void check_kernel(bf16_kernel kern, bool ta, bool tb, int M, int N, int K, int threads) {
    SCOPED_TRACE(std::string(bf16_kernel_name(kern)) + " ta " + std::to_string(ta) + " tb " + std::to_string(tb) +
                 " M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K) + " threads " +
                 std::to_string(threads));
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    operands o = make(ta, tb, M, N, K, uint64_t(M * 131 + N * 7 + K));
    const bool exact = kern != bf16_kernel::amx;
    for (float beta : {0.0f, 1.0f}) {
        std::vector<float> got = o.C0, ref = o.C0;
        if (beta == 0.0f)                                                  // beta 0 must not read C
            for (int m = 0; m < M; ++m)
                for (int n = 0; n < N; ++n) got[size_t(m) * o.ldc + n] = std::nanf("");
        gemm_bf16_with(kern, ta, tb, M, N, K, o.A.data(), o.lda, o.B.data(), o.ldb, beta, got.data(), o.ldc);
        gemm_bf16_reference(ta, tb, M, N, K, o.A.data(), o.lda, o.B.data(), o.ldb, beta, ref.data(), o.ldc,
                            bf16_kernel_odd_first(kern));
        for (int m = 0; m < M; ++m) {
            for (int n = 0; n < N; ++n) {
                const float g = got[size_t(m) * o.ldc + n], r = ref[size_t(m) * o.ldc + n];
                if (exact) {
                    ASSERT_EQ(g, r) << "beta " << beta << " at " << m << "," << n;
                } else {
                    const double scale = abs_terms(o, ta, tb, m, n) * 1.01 + beta * std::fabs(o.C0[size_t(m) * o.ldc + n]);
                    ASSERT_NEAR(g, r, 2.0 * (K + 1) * 0x1p-24 * scale) << "beta " << beta << " at " << m << "," << n;
                }
            }
            for (int n = N; n < o.ldc; ++n)
                ASSERT_EQ(got[size_t(m) * o.ldc + n], o.C0[size_t(m) * o.ldc + n]) << "wrote past N";
        }
    }
    omp_set_num_threads(saved);
}

// Determinism: one row (and one column) computed alone equals the same row (column) inside the whole product,
// bitwise, so results do not depend on M, N or the tiling — what bitwise-repeatable bf16 training needs.
void check_rows_alone(bf16_kernel kern, bool ta, bool tb, int M, int N, int K) {
    SCOPED_TRACE(std::string(bf16_kernel_name(kern)) + " ta " + std::to_string(ta) + " tb " + std::to_string(tb));
    operands o = make(ta, tb, M, N, K, uint64_t(M + N + K));
    std::vector<float> all = o.C0, one(size_t(N) + 5);
    gemm_bf16_with(kern, ta, tb, M, N, K, o.A.data(), o.lda, o.B.data(), o.ldb, 1.0f, all.data(), o.ldc);
    for (int m : {0, 1, M / 2, M - 1}) {
        std::copy(o.C0.begin() + long(m) * o.ldc, o.C0.begin() + long(m) * o.ldc + N, one.begin());
        const float* a = ta ? o.A.data() + m : o.A.data() + size_t(m) * o.lda;
        gemm_bf16_with(kern, ta, tb, 1, N, K, a, o.lda, o.B.data(), o.ldb, 1.0f, one.data(), N + 5);
        for (int n = 0; n < N; ++n) ASSERT_EQ(one[n], all[size_t(m) * o.ldc + n]) << "row " << m << " col " << n;
    }
    for (int n : {0, 17, N - 1}) {
        std::vector<float> col(M);
        for (int m = 0; m < M; ++m) col[m] = o.C0[size_t(m) * o.ldc + n];
        const float* b = tb ? o.B.data() + size_t(n) * o.ldb : o.B.data() + n;
        gemm_bf16_with(kern, ta, tb, M, 1, K, o.A.data(), o.lda, b, o.ldb, 1.0f, col.data(), 1);
        for (int m = 0; m < M; ++m) ASSERT_EQ(col[m], all[size_t(m) * o.ldc + n]) << "col " << n << " row " << m;
    }
}

// The hardware kernel families this CPU and build have.
std::vector<bf16_kernel> hardware_kernels() {
    std::vector<bf16_kernel> v;
    for (bf16_kernel k : {bf16_kernel::avx512bf16, bf16_kernel::amx})
        if (bf16_kernel_supported(k)) v.push_back(k);
    return v;
}

TEST(GemmBf16, KernelMatchesItsDefinitionForEveryLayoutAndShape) {
    if (hardware_kernels().empty()) GTEST_SKIP() << "no AVX-512 BF16 or AMX here: gemm_bf16 is the definition itself";
    for (bf16_kernel kern : hardware_kernels())
        for (bool ta : {false, true})
            for (bool tb : {false, true}) {
                for (int M = 1; M <= 13; ++M) check_kernel(kern, ta, tb, M, 37, 9, 1);   // row counts, odd K
                check_kernel(kern, ta, tb, 12, 32, 2, 1);                               // one full avx512 tile
                check_kernel(kern, ta, tb, 32, 32, 32, 1);                              // one full AMX block
                check_kernel(kern, ta, tb, 100, 70, 333, 1);                            // partial tiles both ways
                check_kernel(kern, ta, tb, 97, 300, 1100, 1);                           // k blocks, thread tiles
            }
}

// Inputs whose rounding to bf16 is a tie (low 16 bits exactly 0x8000, even and odd upper halves, either sign) or
// carries into the exponent: the packing must round them as the definition does, bit for bit.
TEST(GemmBf16, RoundingTiesAndCarriesAsTheDefinition) {
    if (hardware_kernels().empty()) GTEST_SKIP() << "no AVX-512 BF16 or AMX here";
    const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0xbf808000u, 0xbf818000u, 0x3f7fffffu, 0xbf7fffffu,
                                0x40ff8000u, 0x3e7f8000u, 0x00000000u, 0x80000000u, 0x3f800001u, 0x3f807fffu};
    for (bf16_kernel kern : hardware_kernels()) {
        if (kern == bf16_kernel::amx) continue;                          // not bitwise by definition
        for (bool ta : {false, true})
            for (bool tb : {false, true}) {
                SCOPED_TRACE(std::string("ta ") + std::to_string(ta) + " tb " + std::to_string(tb));
                const int M = 29, N = 45, K = 67;
                operands o = make(ta, tb, M, N, K, 99);
                for (size_t i = 0; i < o.A.size(); ++i)
                    if (i % 3 != 1) std::memcpy(&o.A[i], &special[(i * 7) % 12], 4);
                for (size_t i = 0; i < o.B.size(); ++i)
                    if (i % 2 == 0) std::memcpy(&o.B[i], &special[(i * 5) % 12], 4);
                std::vector<float> got = o.C0, ref = o.C0;
                gemm_bf16_with(kern, ta, tb, M, N, K, o.A.data(), o.lda, o.B.data(), o.ldb, 1.0f, got.data(), o.ldc);
                gemm_bf16_reference(ta, tb, M, N, K, o.A.data(), o.lda, o.B.data(), o.ldb, 1.0f, ref.data(), o.ldc,
                                    bf16_kernel_odd_first(kern));
                for (int m = 0; m < M; ++m)
                    for (int n = 0; n < N; ++n)
                        ASSERT_EQ(got[size_t(m) * o.ldc + n], ref[size_t(m) * o.ldc + n]) << m << "," << n;
            }
    }
}

TEST(GemmBf16, ResultsDoNotDependOnShapeOrThreads) {
    if (hardware_kernels().empty()) GTEST_SKIP() << "no AVX-512 BF16 or AMX here";
    for (bf16_kernel kern : hardware_kernels()) {
        for (bool ta : {false, true})
            for (bool tb : {false, true}) check_rows_alone(kern, ta, tb, 77, 90, 301);
        // threaded = single-threaded, bitwise
        for (auto [ta, tb, M, N, K] : {std::tuple{false, true, 250, 520, 130}, std::tuple{true, false, 300, 130, 777}}) {
            operands o = make(ta, tb, M, N, K, 5);
            std::vector<float> c1 = o.C0, c3 = o.C0;
            const int saved = omp_get_max_threads();
            omp_set_num_threads(1);
            gemm_bf16_with(kern, ta, tb, M, N, K, o.A.data(), o.lda, o.B.data(), o.ldb, 1.0f, c1.data(), o.ldc);
            omp_set_num_threads(3);
            gemm_bf16_with(kern, ta, tb, M, N, K, o.A.data(), o.lda, o.B.data(), o.ldb, 1.0f, c3.data(), o.ldc);
            omp_set_num_threads(saved);
            EXPECT_EQ(c1, c3) << bf16_kernel_name(kern);
        }
    }
}

// The process picks the widest family the CPU, the OS and the build allow.
TEST(GemmBf16, PicksTheWidestSupportedKernel) {
    if (const char* env = std::getenv("MTP_BF16_KERNEL"); env && *env) {
        EXPECT_STREQ(bf16_kernel_name(gemm_bf16_kernel()), env) << "MTP_BF16_KERNEL names the kernel";
        return;
    }
    const bf16_kernel want = bf16_kernel_supported(bf16_kernel::amx)          ? bf16_kernel::amx
                             : bf16_kernel_supported(bf16_kernel::avx512bf16) ? bf16_kernel::avx512bf16
                                                                              : bf16_kernel::scalar;
    EXPECT_EQ(gemm_bf16_kernel(), want) << bf16_kernel_name(gemm_bf16_kernel());
    EXPECT_EQ(gemm_bf16_native(), want != bf16_kernel::scalar);
}

// The definition against the fp32 product: each input rounds by at most 2^-9 relative, so each product by
// (1+2^-9)^2 - 1 < 2^-8 + 2^-18, and the fp32 sums add at most K·2^-24 of Σ|a b| (Higham's γ_K, both sides).
TEST(GemmBf16, DefinitionIsWithinBf16RoundingOfTheFp32Product) {
    for (bool ta : {false, true})
        for (bool tb : {false, true}) {
            const int M = 9, N = 11, K = 301;
            operands o = make(ta, tb, M, N, K, 99);
            std::vector<float> got(size_t(M) * o.ldc);
            gemm_bf16_reference(ta, tb, M, N, K, o.A.data(), o.lda, o.B.data(), o.ldb, 0.0f, got.data(), o.ldc);
            double worst = 0;
            for (int m = 0; m < M; ++m)
                for (int n = 0; n < N; ++n) {
                    double exact = 0, abs = 0;
                    for (int k = 0; k < K; ++k) {
                        const double a = ta ? o.A[size_t(k) * o.lda + m] : o.A[size_t(m) * o.lda + k];
                        const double b = tb ? o.B[size_t(n) * o.ldb + k] : o.B[size_t(k) * o.ldb + n];
                        exact += a * b;
                        abs += std::fabs(a * b);
                    }
                    const double bound = (0x1p-8 + 0x1p-18 + 2.0 * K * 0x1p-24) * abs;
                    const double err = std::fabs(got[size_t(m) * o.ldc + n] - exact);
                    ASSERT_LE(err, bound) << m << "," << n;
                    worst = std::max(worst, err / abs);
                }
            EXPECT_GT(worst, 1e-5) << "rounded to bf16 at all?";   // fp32 alone would stay near K·2^-24·... ≈ 1e-6
        }
}

// linear_forward / linear_backward in bf16 precision are the three gemm_bf16 products.
TEST(GemmBf16, LinearOpsFollowTheMatmulPrecision) {
    const int T = 7, in = 19, out = 13;
    const auto x = randn(size_t(T) * in, 1), w = randn(size_t(out) * in, 2), dy = randn(size_t(T) * out, 3);
    set_matmul_precision(matmul_precision::bf16);
    std::vector<float> y(size_t(T) * out), dx(size_t(T) * in, 0.5f), dw(size_t(out) * in, 0.25f);
    linear_forward(y.data(), x.data(), w.data(), T, in, out);
    linear_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), T, in, out);
    set_matmul_precision(matmul_precision::fp32);
    std::vector<float> ry(y.size()), rdx(dx.size(), 0.5f), rdw(dw.size(), 0.25f);
    const bool odd = bf16_kernel_odd_first(gemm_bf16_kernel());
    gemm_bf16_reference(false, true, T, out, in, x.data(), in, w.data(), in, 0.0f, ry.data(), out, odd);
    gemm_bf16_reference(false, false, T, in, out, dy.data(), out, w.data(), in, 1.0f, rdx.data(), in, odd);
    gemm_bf16_reference(true, false, out, in, T, dy.data(), out, x.data(), in, 1.0f, rdw.data(), in, odd);
    // Bitwise for the scalar and avx512bf16 kernels; AMX within its bound (check_kernel): 2(K+1)·2^-24·Σ|a b|,
    // with Σ|a b| ≤ K·max|a|·max|b| ≤ K·25 for these normal draws (|x| < 5).
    auto near = [](const std::vector<float>& g, const std::vector<float>& r, int K) {
        const bool exact = gemm_bf16_kernel() != bf16_kernel::amx;
        for (size_t i = 0; i < g.size(); ++i)
            if (exact ? g[i] != r[i] : std::fabs(g[i] - r[i]) > 2.0 * (K + 1) * 0x1p-24 * K * 25) return false;
        return true;
    };
    EXPECT_TRUE(near(y, ry, in));
    EXPECT_TRUE(near(dx, rdx, out));
    EXPECT_TRUE(near(dw, rdw, T));
    std::vector<float> y32(y.size());
    linear_forward(y32.data(), x.data(), w.data(), T, in, out);
    EXPECT_NE(y32, y) << "fp32 precision is back after the switch";
}

} // namespace
