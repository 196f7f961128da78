// bf16 decode GEMV on AMX-BF16 tiles (kernel family amx, core/gemv.h): up to 16 rows per tile, their activations
// rounded to bf16; per panel of 32 outputs two accumulator tiles, one pass over the panel's weight tiles. A row's
// result is the same whatever the other rows of its tile (they are separate tile rows), so speculation stays lossless.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/amx_tiles.h"
#include "core/gemv_impl.h"

namespace mtp {

bool gemm_bf16_amx_permitted();                  // core/gemm_bf16_amx.cpp: the tile state, asked for once

namespace gemv_detail {
namespace {

// Panels [p0, p1) of 32 outputs for all rows: tiles 0, 1 accumulate outputs 0-15 / 16-31 of up to 16 rows (tile 2,
// [16 rows][32 inputs]) against the panel's weight tiles 3, 4.
void run_amx(const args& a, int p0, int p1) {
    const int KB = (a.in + 31) / 32;
    const unsigned char* w = static_cast<const unsigned char*>(a.w);
    amx::configure_tiles(5);                     // tile state is per thread
    alignas(64) float out[16 * 32];
    for (int r0 = 0; r0 < a.T; r0 += 16) {
        const int rows = std::min(16, a.T - r0);
        const uint16_t* xa = a.xt + size_t(r0 / 16) * KB * 512;            // packed once per call (gemv.cpp)
        for (int j = p0; j < p1; ++j) {
            const uint16_t* b = reinterpret_cast<const uint16_t*>(w + size_t(j) * a.pstride);
            _tile_zero(0);
            _tile_zero(1);
            for (int kb = 0; kb < KB; ++kb) {
                _tile_loadd(2, xa + size_t(kb) * 512, 64);
                _tile_loadd(3, b + size_t(kb) * 1024, 64);
                _tile_loadd(4, b + size_t(kb) * 1024 + 512, 64);
                _tile_dpbf16ps(0, 2, 3);
                _tile_dpbf16ps(1, 2, 4);
            }
            _tile_stored(0, out, 128);
            _tile_stored(1, out + 16, 128);
            const int o0 = j * amx_lanes, n = std::min(amx_lanes, a.out - o0);
            for (int r = 0; r < rows; ++r)
                std::memcpy(a.y + size_t(r0 + r) * a.ldy + o0, out + r * 32, sizeof(float) * size_t(n));
        }
    }
    _tile_release();
}

} // namespace

void amx_pack_rows(uint16_t* xt, const float* x, size_t ldx, int T, int in) {
    const int KB = (in + 31) / 32, chunks = (T + 15) / 16;
    for (int c = 0; c < chunks; ++c)
        for (int r = 0; r < 16; ++r) {
            const int t = c * 16 + r;
            uint16_t* base = xt + size_t(c) * KB * 512 + size_t(r) * 32;
            if (t >= T) {                                                 // padding rows
                for (int kb = 0; kb < KB; ++kb) _mm512_storeu_si512(base + size_t(kb) * 512, _mm512_setzero_si512());
                continue;
            }
            const float* xr = x + size_t(t) * ldx;
            for (int kb = 0; kb < KB; ++kb) {
                const int n = std::min(32, in - kb * 32);
                const __mmask16 lo = n >= 16 ? 0xFFFF : __mmask16((1u << n) - 1);
                const __mmask16 hi = n >= 32 ? 0xFFFF : n <= 16 ? 0 : __mmask16((1u << (n - 16)) - 1);
                const __m512 a = _mm512_maskz_loadu_ps(lo, xr + kb * 32), b = _mm512_maskz_loadu_ps(hi, xr + kb * 32 + 16);
                _mm512_storeu_si512(base + size_t(kb) * 512, (__m512i)_mm512_cvtne2ps_pbh(b, a));   // nearest even
            }
        }
}

plan plan_amx(const args&) {
    gemm_bf16_amx_permitted();
    return {1, run_amx};
}

} // namespace gemv_detail
} // namespace mtp
