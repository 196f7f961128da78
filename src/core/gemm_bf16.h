// bf16 matrix product with fp32 accumulation for mixed-precision training: C = beta·C + op(A)·op(B), where every
// element of A and B is rounded to bf16 (nearest even) and the products are summed in fp32 — AMX-BF16 tiles
// (gemm_bf16_amx.cpp) or AVX-512 BF16 `vdpbf16ps` (gemm_bf16_avx512.cpp) where the CPU has them, chosen at run time,
// and a scalar loop with the same definition otherwise.
//
// Definition (what the kernel computes, bit for bit, and what gemm_bf16_reference() spells out): with a_k, b_k the
// bf16 values of row m of op(A) and column n of op(B), and K padded with a zero to even length,
//   acc = beta·C[m,n] (beta ∈ {0, 1});  for each pair p: acc = (acc + a_{2p+1}·b_{2p+1}) + a_{2p}·b_{2p}
// (the AMX kernel adds the even term first) in fp32 with round-to-nearest-even (a product of two bf16 values is exact in fp32, so each step rounds once).
// That is one chain in k order per element, so the result does not depend on M, N, the tiling or the thread
// count: training in bf16 stays bitwise repeatable. (The hardware flushes denormal inputs and outputs to zero;
// the scalar path does not, so they can differ only where a value falls below 2^-126.)
#pragma once
#include <cstdint>

namespace mtp {

// The kernel families, widest first: AMX-BF16 tiles, AVX-512 BF16 `vdpbf16ps`, the scalar definition.
enum class bf16_kernel { scalar, avx512bf16, amx };
const char* bf16_kernel_name(bf16_kernel k);               // "scalar", "avx512bf16", "amx"
bool bf16_kernel_supported(bf16_kernel k);                 // by this CPU, OS and build
// The process's kernel: the widest supported, or the one MTP_BF16_KERNEL=scalar|avx512bf16|amx names (which may only
// narrow it; an unknown or unsupported value is an error naming MTP_BF16_KERNEL).
bf16_kernel gemm_bf16_kernel();
// True when that kernel is a hardware one (training in bf16 is worth it).
bool gemm_bf16_native();
// The order within a pair that kernel family uses (the definition's odd_first, below).
bool bf16_kernel_odd_first(bf16_kernel k);

// Row-major, as cblas_sgemm with alpha = 1: op(A) is [M, K] (A [M, lda] or, transposed, A [K, lda]),
// op(B) is [K, N] (B [K, ldb] or, transposed, B [N, ldb]), C [M, ldc]; beta is 0 (C not read) or 1.
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc);
// The same with a given kernel family (tests; it must be supported).
void gemm_bf16_with(bf16_kernel k, bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda,
                    const float* B, int ldb, float beta, float* C, int ldc);

// The definition above, one element at a time (tests). odd_first: the order within a pair, as `vdpbf16ps` adds
// them (odd k first); false: even first, as AMX's TDPBF16PS.
void gemm_bf16_reference(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B,
                         int ldb, float beta, float* C, int ldc, bool odd_first = true);

// The matrix-product precision of training (core/ops.h linear_forward / linear_backward): fp32 (OpenBLAS sgemm)
// or bf16 (gemm_bf16). Process-wide, as torch.set_float32_matmul_precision; set once before training.
enum class matmul_precision { fp32, bf16 };
void set_matmul_precision(matmul_precision p);
matmul_precision get_matmul_precision();
// A run's precision ("bf16" asks for bf16 products; anything else is fp32), set for the scope's lifetime and the one
// before restored after it. bf16 is true when bf16 products run: asked for, and a hardware kernel exists here.
struct matmul_precision_scope {
    explicit matmul_precision_scope(bool want_bf16);
    ~matmul_precision_scope();
    matmul_precision_scope(const matmul_precision_scope&) = delete;
    matmul_precision_scope& operator=(const matmul_precision_scope&) = delete;
    const bool bf16;
    const matmul_precision saved;
};

} // namespace mtp
