// bf16 decode GEMV on AVX-512 BF16 `vdpbf16ps` (kernel family avx512bf16, core/gemv.h): weights in panels of 16
// outputs as input pairs [in/2][16][2], the activations rounded to bf16 pairs once per call; RB rows x PB panels of
// dword-pair dot products per tile. Each output is one chain over the input pairs in order (odd input first, as the
// instruction adds them), so it equals gemm_bf16_reference() bit for bit and does not depend on T or the threads.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/gemv_impl.h"

namespace mtp::gemv_detail {

namespace {

constexpr int PB = 4;                            // panels per tile: 64 outputs

// Rows [r0, r0 + RB) x panels [q0, q0 + PB) (fewer at the end: np), all input pairs.
template <int RB>
void tile(const args& a, int r0, int q0, int np) {
    const int Kp = (a.in + 1) / 2;
    const uint32_t* w = static_cast<const uint32_t*>(a.w);
    const uint32_t* x = reinterpret_cast<const uint32_t*>(a.xt);
    __m512 acc[RB][PB];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
        for (int q = 0; q < PB; ++q) acc[r][q] = _mm512_setzero_ps();
    const size_t pstride = size_t(Kp) * 16;      // dwords per panel
    const uint32_t* wq = w + size_t(q0) * pstride;
    if (np == PB) {
        for (int p = 0; p < Kp; ++p) {
            __m512bh wv[PB];
#pragma GCC unroll 4
            for (int q = 0; q < PB; ++q) wv[q] = (__m512bh)_mm512_loadu_si512(wq + q * pstride + size_t(p) * 16);
#pragma GCC unroll 4
            for (int r = 0; r < RB; ++r) {
                const __m512bh xb = (__m512bh)_mm512_set1_epi32(int(x[size_t(r0 + r) * Kp + p]));
#pragma GCC unroll 4
                for (int q = 0; q < PB; ++q) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], xb, wv[q]);
            }
        }
    } else {
        for (int p = 0; p < Kp; ++p)
            for (int q = 0; q < np; ++q) {
                const __m512bh wv = (__m512bh)_mm512_loadu_si512(wq + q * pstride + size_t(p) * 16);
                for (int r = 0; r < RB; ++r) {
                    const __m512bh xb = (__m512bh)_mm512_set1_epi32(int(x[size_t(r0 + r) * Kp + p]));
                    acc[r][q] = _mm512_dpbf16_ps(acc[r][q], xb, wv);
                }
            }
    }
    for (int r = 0; r < RB; ++r)
        for (int q = 0; q < np; ++q) {
            const int o0 = (q0 + q) * 16, n = std::min(16, a.out - o0);
            float* yr = a.y + size_t(r0 + r) * a.ldy + o0;
            if (n == 16) _mm512_storeu_ps(yr, acc[r][q]);
            else _mm512_mask_storeu_ps(yr, __mmask16((1u << n) - 1), acc[r][q]);
        }
}

// Output tiles [t0, t1) of PB panels for all rows, in row blocks of 4.
void run(const args& a, int t0, int t1) {
    const int panels = (a.out + 15) / 16;
    for (int t = t0; t < t1; ++t) {
        const int q0 = t * PB, np = std::min(PB, panels - q0);
        int r0 = 0;
        for (; r0 + 4 <= a.T; r0 += 4) tile<4>(a, r0, q0, np);
        switch (a.T - r0) {
            case 3: tile<3>(a, r0, q0, np); break;
            case 2: tile<2>(a, r0, q0, np); break;
            case 1: tile<1>(a, r0, q0, np); break;
            default: break;
        }
    }
}

} // namespace

void avx512bf16_pack_rows(uint16_t* xp, const float* x, size_t ldx, int T, int in) {
    const int Kp = (in + 1) / 2;
    for (int t = 0; t < T; ++t) {
        const float* xr = x + size_t(t) * ldx;
        uint16_t* o = xp + size_t(t) * Kp * 2;
        int i = 0;
        for (; i + 32 <= in; i += 32)            // 32 floats -> 32 bf16 in order = 16 pairs, nearest even
            _mm512_storeu_si512(o + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xr + i + 16), _mm512_loadu_ps(xr + i)));
        for (; i < Kp * 2; ++i) {                // the tail (and the zero that pads an odd length)
            const __m512 v = _mm512_maskz_loadu_ps(i < in ? 1 : 0, xr + std::min(i, in - 1));
            o[i] = uint16_t(_mm512_cvtsi512_si32((__m512i)_mm512_cvtne2ps_pbh(v, v)) & 0xFFFF);
        }
    }
}

plan plan_avx512bf16(const args&) { return {PB, run}; }

} // namespace mtp::gemv_detail
