// bf16 decode GEMV on AVX-512 BF16 `vdpbf16ps` (kernel family avx512bf16, core/gemv.h): weights in panels of 16
// outputs as input pairs [in/2][16][2], the activations rounded to bf16 pairs once per call; RB rows x PB panels of
// dword-pair dot products per tile. Each output is one chain over the input pairs in order (odd input first, as the
// instruction adds them), so it equals gemm_bf16_reference() bit for bit and does not depend on T or the threads.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "core/gemv_impl.h"

namespace mtp::gemv_detail {

namespace {

// Rows [r0, r0 + RB) x panels [q0, q0 + PB) of output tile, all input pairs. With `next`, the tile after it is
// prefetched into L2 as this one computes (one line per panel per input pair: the same bytes this tile reads).
template <int RB, int PB>
void tile(const args& a, int r0, int q0, const uint32_t* next) {
    const int Kp = (a.in + 1) / 2;
    const uint32_t* w = static_cast<const uint32_t*>(a.w);
    const uint32_t* x = reinterpret_cast<const uint32_t*>(a.xt);
    __m512 acc[RB][PB];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
        for (int q = 0; q < PB; ++q) acc[r][q] = _mm512_setzero_ps();
    const size_t pstride = size_t(Kp) * 16;      // dwords per panel
    const uint32_t* wq = w + size_t(q0) * pstride;
    const uint32_t* xr = x + size_t(r0) * Kp;
    for (int p = 0; p < Kp; ++p) {
        if (next)
#pragma GCC unroll 8
            for (int q = 0; q < PB; ++q) _mm_prefetch(reinterpret_cast<const char*>(next + q * pstride + size_t(p) * 16), _MM_HINT_T1);
        __m512bh wv[PB];
#pragma GCC unroll 8
        for (int q = 0; q < PB; ++q) wv[q] = (__m512bh)_mm512_loadu_si512(wq + q * pstride + size_t(p) * 16);
#pragma GCC unroll 8
        for (int r = 0; r < RB; ++r) {
            const __m512bh xb = (__m512bh)_mm512_set1_epi32(int(xr[size_t(r) * Kp + p]));
#pragma GCC unroll 8
            for (int q = 0; q < PB; ++q) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], xb, wv[q]);
        }
    }
    for (int r = 0; r < RB; ++r)
        for (int q = 0; q < PB; ++q) {
            const int o0 = (q0 + q) * 16, n = std::min(16, a.out - o0);
            float* yr = a.y + size_t(r0 + r) * a.ldy + o0;
            if (n == 16) _mm512_storeu_ps(yr, acc[r][q]);
            else _mm512_mask_storeu_ps(yr, __mmask16((1u << n) - 1), acc[r][q]);
        }
}

using tile_fn = void (*)(const args&, int, int, const uint32_t*);
template <int RB, int... P>
tile_fn pick_n(int pb, std::integer_sequence<int, P...>) {
    static constexpr tile_fn fns[] = {&tile<RB, P + 1>...};
    return fns[pb - 1];
}
// Tile shapes of 8-24 accumulators (32 registers), as the wide f32 kernels (gemv_impl.h): 1 x 8, 2 x 6, 3-6 rows x 4;
// 7 rows or more in balanced blocks of at most 8 rows x 3 panels.
tile_fn pick(int rb, int pb) {
    switch (rb) {
        case 1: return pick_n<1>(pb, std::make_integer_sequence<int, 8>{});
        case 2: return pick_n<2>(pb, std::make_integer_sequence<int, 6>{});
        case 3: return pick_n<3>(pb, std::make_integer_sequence<int, 4>{});
        case 4: return pick_n<4>(pb, std::make_integer_sequence<int, 4>{});
        case 5: return pick_n<5>(pb, std::make_integer_sequence<int, 4>{});
        case 6: return pick_n<6>(pb, std::make_integer_sequence<int, 4>{});
        case 7: return pick_n<7>(pb, std::make_integer_sequence<int, 3>{});
        default: return pick_n<8>(pb, std::make_integer_sequence<int, 3>{});
    }
}
int pb_for(int T) { return T == 1 ? 8 : T == 2 ? 6 : T <= 6 ? 4 : 3; }

// Output tiles [t0, t1) of a.pb panels (pb_for when 0) for all rows: one row block of up to 6 rows, or balanced
// blocks of at most 8.
void run(const args& a, int t0, int t1) {
    const int PB = a.pb > 0 ? a.pb : pb_for(a.T);
    const int panels = (a.out + 15) / 16, Kp = (a.in + 1) / 2;
    const int nb = a.T <= 6 ? 1 : (a.T + 7) / 8;
    for (int t = t0; t < t1; ++t) {
        const int q0 = t * PB, np = std::min(PB, panels - q0);
        const uint32_t* next = a.T >= 2 && t + 1 < t1 ? static_cast<const uint32_t*>(a.w) + size_t(q0 + PB) * Kp * 16
                                                      : nullptr;
        for (int b = 0, r0 = 0; b < nb; ++b) {
            const int rb = a.T / nb + (b < a.T % nb ? 1 : 0);
            pick(rb, np)(a, r0, q0, b == 0 ? next : nullptr);
            r0 += rb;
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

plan plan_avx512bf16(const args& a) { return {pb_for(a.T), run, true}; }

} // namespace mtp::gemv_detail
