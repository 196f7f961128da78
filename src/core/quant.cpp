// Q8_0 block codec for weights (GGUF layout) and the activation quantiser of the q8_0 decode kernels.
#include "core/quant.h"

#include <algorithm>
#include <cmath>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/dtype.h"

namespace mtp {

void q8_0_quantize_row(const float* x, int64_t n, uint8_t* out) {
    for (int64_t b = 0; b < n / q8_block; ++b) {
        const float* xb = x + b * q8_block;
        float amax = 0.0f;
        for (int i = 0; i < q8_block; ++i) amax = std::max(amax, std::fabs(xb[i]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint8_t* ob = out + b * 34;
        const uint16_t h = f32_to_f16(d);
        ob[0] = uint8_t(h & 0xff);
        ob[1] = uint8_t(h >> 8);
        for (int i = 0; i < q8_block; ++i) {
            float v = std::round(xb[i] * id);
            v = std::clamp(v, -127.0f, 127.0f);
            ob[2 + i] = uint8_t(int8_t(v));
        }
    }
}

void q8_0_dequantize_row(const uint8_t* in, int64_t n, float* y) {
    for (int64_t b = 0; b < n / q8_block; ++b) {
        const uint8_t* ib = in + b * 34;
        const float d = f16_to_f32(uint16_t(ib[0] | (uint16_t(ib[1]) << 8)));
        for (int i = 0; i < q8_block; ++i) y[b * q8_block + i] = d * float(int8_t(ib[2 + i]));
    }
}

namespace {

#if defined(__AVX2__)
// One full block of 32 as the scalar loop below computes it: the same max (vmaxps(|x|, m) keeps m when |x| is NaN,
// as std::max(m, |x|) does), the same scale, the same product and round-to-nearest-even (std::nearbyint below in
// the default rounding mode, which nothing here changes), NaN to 0, then the clamp.
// Returns the block's scale.
float q8_act_block_avx2(const float* x, int8_t* q) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(_mm256_and_ps(v[k], abs_mask), m);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));   // the lanes hold no NaN
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float db = amax / 127.0f;
    const float id = db != 0.0f ? 1.0f / db : 0.0f;
    const __m256 vid = _mm256_set1_ps(id), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    __m256i c[4];
    for (int k = 0; k < 4; ++k) {
        __m256 r = _mm256_round_ps(_mm256_mul_ps(v[k], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));                     // NaN -> 0
        c[k] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
    }
    // 32 int32 -> 32 int8 in order: the packs interleave 128-bit lanes, the permute puts the dwords back.
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return db;
}
#endif

} // namespace

void q8_act_quantize(const float* x, int n, int8_t* q, float* d) {
    const int nb = (n + q8_block - 1) / q8_block;
    int b = 0;
#if defined(__AVX2__)
    for (; b < n / q8_block; ++b) d[b] = q8_act_block_avx2(x + b * q8_block, q + b * q8_block);
#endif
    for (; b < nb; ++b) {
        const int i0 = b * q8_block, i1 = std::min(n, i0 + q8_block);
        float amax = 0.0f;
        for (int i = i0; i < i1; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float db = amax / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        for (int i = i0; i < i0 + q8_block; ++i) {
            float v = i < i1 ? std::nearbyint(x[i] * id) : 0.0f;
            if (!(v == v)) v = 0.0f;
            q[i] = int8_t(std::clamp(v, -127.0f, 127.0f));
        }
    }
}

} // namespace mtp
