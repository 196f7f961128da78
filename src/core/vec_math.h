// Vector math shared by the training kernels (core/ops) and the decode path (infer/decode): an AVX2 + FMA exp of 8
// floats. The whole build targets x86-64-v3, so these are always available; every element goes through the same
// instructions whatever its position (tails are padded), so results do not depend on lengths or alignment.
#pragma once
#if !(defined(__AVX2__) && defined(__FMA__))
#error "core/vec_math.h needs AVX2 + FMA (the x86-64-v3 baseline of CMakeLists.txt)"
#endif
#include <immintrin.h>

namespace mtp {

// exp of 8 floats: Cody-Waite range reduction and a degree-6 polynomial (a few ulp); x < -87.3 gives 0 and
// x > 88.376 (where 2^n would leave the exponent range) +inf, as the true exp overflows there; -inf gives 0.
inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3762626647949f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    const __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_huge_valf()), over);
    return _mm256_andnot_ps(under, y);
}

} // namespace mtp
