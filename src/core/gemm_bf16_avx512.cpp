// AVX-512 BF16 kernel of gemm_bf16 (core/gemm_bf16.h): both operands packed once into bf16 pairs (rounded 16 lanes
// at a time), then 12 x 32
// register tiles of `vdpbf16ps`; each C element is one chain in k order (a k block resumes from the stored partial).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace mtp {

namespace {

constexpr int MR = 12, NR = 32;          // register tile: 12 rows x 2 zmm of 16 fp32 accumulators
constexpr int KCP = 256;                 // k pairs per block: the B panel slice (32 KiB) stays in L1
constexpr int MCP = 8, NCP = 8;          // panels per thread tile: 96 rows x 256 columns (A slices in L2)

// Shifts of 16 lanes by 16 bits. The maskz forms are used here and for the narrowing below, because GCC 12's
// unmasked ones start from an "undefined" vector that -Wmaybe-uninitialized reports.
inline __m512i shr16(__m512i x) { return _mm512_maskz_srli_epi32(__mmask16(0xFFFF), x, 16); }
inline __m512i shl16(__m512i x) { return _mm512_maskz_slli_epi32(__mmask16(0xFFFF), x, 16); }

// The bf16 bits of 16 floats (as core/dtype's f32_to_bf16: round to nearest even, a NaN stays a quiet NaN), in the
// low half of each lane.
inline __m512i bf16_bits16(__m512 v) {
    const __m512i x = _mm512_castps_si512(v);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7FFFFFFF)),
                                                  _mm512_set1_epi32(0x7F800000));
    const __m512i odd = _mm512_and_si512(shr16(x), _mm512_set1_epi32(1));
    const __m512i rne = shr16(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF)), odd));
    const __m512i quiet = _mm512_or_si512(shr16(x), _mm512_set1_epi32(0x40));
    return _mm512_mask_blend_epi32(nan, rne, quiet);
}

// Pairs of two rows of n <= 16 floats: out[c] = bf16(lo[c]) | bf16(hi[c]) << 16 (hi null: 0).
inline void pairs_of_rows(uint32_t* out, const float* lo, const float* hi, int n) {
    const __mmask16 m = __mmask16((1u << n) - 1u);
    const __m512i l = bf16_bits16(_mm512_maskz_loadu_ps(m, lo));
    const __m512i h = hi ? bf16_bits16(_mm512_maskz_loadu_ps(m, hi)) : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(out, m, _mm512_or_si512(l, shl16(h)));
}

// Pairs along one row of K floats: out[p * stride] = bf16(row[2p]) | bf16(row[2p + 1]) << 16 for p < Kp (past K: 0).
inline void pairs_along_row(uint32_t* out, size_t stride, const float* row, int K, int Kp) {
    alignas(64) uint32_t t[8];
    for (int p0 = 0; p0 < Kp; p0 += 8) {
        const int k0 = 2 * p0, n = std::min(16, K - k0);             // floats left in this chunk (> 0)
        const __m512i b = bf16_bits16(_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1u), row + k0));
        _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm512_maskz_cvtepi32_epi16(__mmask16(0xFFFF), b));   // [b0 | b1 << 16, ...]
        const int np = std::min(8, Kp - p0);
        for (int j = 0; j < np; ++j) out[size_t(p0 + j) * stride] = t[j];
    }
}

// op(A) [M, K] -> panels of MR rows, each [Kp][MR] pairs (k even in the low half); rows past M are zero.
void pack_a(uint32_t* pa, const float* A, int lda, bool tr, int M, int K, int Kp) {
    const int P = (M + MR - 1) / MR;
#pragma omp parallel for schedule(static) if (size_t(M) * K > 32768)
    for (int i = 0; i < P; ++i) {
        uint32_t* d = pa + size_t(i) * Kp * MR;
        const int m0 = i * MR, mr = std::min(MR, M - m0);
        if (!tr) {
            for (int r = 0; r < MR; ++r) {
                if (r >= mr) { for (int p = 0; p < Kp; ++p) d[size_t(p) * MR + r] = 0; continue; }
                pairs_along_row(d + r, MR, A + size_t(m0 + r) * lda, K, Kp);
            }
        } else {
            for (int p = 0; p < Kp; ++p) {
                const int k = 2 * p;
                const float* r0 = A + size_t(k) * lda + m0;
                uint32_t* o = d + size_t(p) * MR;
                pairs_of_rows(o, r0, k + 1 < K ? r0 + lda : nullptr, mr);
                for (int r = mr; r < MR; ++r) o[r] = 0u;
            }
        }
    }
}

// op(B) [K, N] -> panels of NR columns, each [Kp][NR] pairs; columns past N are zero.
void pack_b(uint32_t* pb, const float* B, int ldb, bool tr, int N, int K, int Kp) {
    const int P = (N + NR - 1) / NR;
#pragma omp parallel for schedule(static) if (size_t(N) * K > 32768)
    for (int j = 0; j < P; ++j) {
        uint32_t* d = pb + size_t(j) * Kp * NR;
        const int n0 = j * NR, nr = std::min(NR, N - n0);
        if (!tr) {
            for (int p = 0; p < Kp; ++p) {
                const int k = 2 * p;
                const float* r0 = B + size_t(k) * ldb + n0;
                const float* r1 = k + 1 < K ? r0 + ldb : nullptr;
                uint32_t* o = d + size_t(p) * NR;
                for (int c0 = 0; c0 < NR; c0 += 16) {
                    const int n = std::max(0, std::min(16, nr - c0));
                    if (n > 0) pairs_of_rows(o + c0, r0 + c0, r1 ? r1 + c0 : nullptr, n);
                    for (int c = c0 + n; c < c0 + 16; ++c) o[c] = 0u;
                }
            }
        } else {
            for (int c = 0; c < NR; ++c) {
                if (c >= nr) { for (int p = 0; p < Kp; ++p) d[size_t(p) * NR + c] = 0; continue; }
                pairs_along_row(d + c, NR, B + size_t(n0 + c) * ldb, K, Kp);
            }
        }
    }
}

// c[MR, NR] (row stride ldc) = (load ? c : 0) + a-panel slice · b-panel slice over kp pairs.
inline void micro(const uint32_t* a, const uint32_t* b, int kp, float* c, int ldc, bool load) {
    __m512 acc[MR][2];
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
        acc[r][0] = load ? _mm512_loadu_ps(c + size_t(r) * ldc) : _mm512_setzero_ps();
        acc[r][1] = load ? _mm512_loadu_ps(c + size_t(r) * ldc + 16) : _mm512_setzero_ps();
    }
    for (int p = 0; p < kp; ++p) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + size_t(p) * NR);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + size_t(p) * NR + 16);
        const uint32_t* ap = a + size_t(p) * MR;
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            const __m512bh ar = (__m512bh)_mm512_set1_epi32(int(ap[r]));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
        _mm512_storeu_ps(c + size_t(r) * ldc, acc[r][0]);
        _mm512_storeu_ps(c + size_t(r) * ldc + 16, acc[r][1]);
    }
}

} // namespace

void gemm_bf16_avx512(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B,
                      int ldb, float beta, float* C, int ldc) {
    const int Kp = (K + 1) / 2, PA = (M + MR - 1) / MR, PB = (N + NR - 1) / NR;
    thread_local std::vector<uint32_t> buf_a, buf_b;     // grown once, reused (no allocation per training step)
    if (buf_a.size() < size_t(PA) * Kp * MR) buf_a.resize(size_t(PA) * Kp * MR);
    if (buf_b.size() < size_t(PB) * Kp * NR) buf_b.resize(size_t(PB) * Kp * NR);
    uint32_t* pa = buf_a.data();
    uint32_t* pb = buf_b.data();
    pack_a(pa, A, lda, trans_a, M, K, Kp);
    pack_b(pb, B, ldb, trans_b, N, K, Kp);
    const int TM = (PA + MCP - 1) / MCP, TN = (PB + NCP - 1) / NCP;
#pragma omp parallel for collapse(2) schedule(static) if (TM * TN > 1 && double(M) * N * K > 262144.0)
    for (int tm = 0; tm < TM; ++tm)
        for (int tn = 0; tn < TN; ++tn)
            for (int p0 = 0; p0 < Kp; p0 += KCP) {
                const int kp = std::min(KCP, Kp - p0);
                const bool load = p0 > 0 || beta != 0.0f;
                for (int j = tn * NCP; j < std::min(PB, (tn + 1) * NCP); ++j)
                    for (int i = tm * MCP; i < std::min(PA, (tm + 1) * MCP); ++i) {
                        const uint32_t* a = pa + (size_t(i) * Kp + p0) * MR;
                        const uint32_t* b = pb + (size_t(j) * Kp + p0) * NR;
                        const int m0 = i * MR, n0 = j * NR, mr = std::min(MR, M - m0), nr = std::min(NR, N - n0);
                        float* c = C + size_t(m0) * ldc + n0;
                        if (mr == MR && nr == NR) {
                            micro(a, b, kp, c, ldc, load);
                            continue;
                        }
                        alignas(64) float tmp[MR * NR] = {};
                        if (load)
                            for (int r = 0; r < mr; ++r) std::memcpy(tmp + r * NR, c + size_t(r) * ldc, sizeof(float) * nr);
                        micro(a, b, kp, tmp, NR, load);
                        for (int r = 0; r < mr; ++r) std::memcpy(c + size_t(r) * ldc, tmp + r * NR, sizeof(float) * nr);
                    }
            }
}

} // namespace mtp
