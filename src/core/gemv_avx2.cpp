// The packed-GEMV tiles on AVX2/FMA/F16C (the build's baseline): 8 lanes, and the 16-lane layout on pairs of AVX2
// registers (avx2x2), which runs the AVX-512 kernels' packing and tiling on any CPU.
#include <immintrin.h>

#include <cstring>

#define MTP_GEMV_IMPL_TEMPLATES 1
#include "core/gemv_impl.h"

namespace mtp::gemv_detail {
namespace {

struct avx2_v {
    static constexpr int L = 8;
    using vf = __m256;
    using vi = __m256i;
    static vf zero() { return _mm256_setzero_ps(); }
    static vf load(const float* p) { return _mm256_loadu_ps(p); }
    static vf load_bf16(const uint16_t* p) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    static vf load_f16(const unsigned char* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static vf bcast(const float* p) { return _mm256_broadcast_ss(p); }
    static vf fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
    static vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
    static void store(float* p, vf v) { _mm256_storeu_ps(p, v); }
    static vi izero() { return _mm256_setzero_si256(); }
    static vi iload(const unsigned char* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
    static vi bcast4(const int8_t* p) {
        int32_t v;
        std::memcpy(&v, p, 4);
        return _mm256_set1_epi32(v);
    }
    // acc[o] += Σ_{j<4} w[o][j] x[j], exactly: |w| (u8) times x with w's sign (s8), pairs summed in int16 (at most
    // 2 * 128 * 127 < 2^15, no saturation), then in int32.
    static vi dot4(vi acc, vi w, vi x) {
        const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
    }
    static vf cvt(vi v) { return _mm256_cvtepi32_ps(v); }       // exact: |block sums| < 2^24
    static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }
};

// 16 lanes as (lo, hi) halves of 8.
struct avx2x2_v {
    static constexpr int L = 16;
    static constexpr bool wide = true;       // the AVX-512 tile shapes too, so that they are tested on any CPU
    struct vf { __m256 lo, hi; };
    struct vi { __m256i lo, hi; };
    static vf zero() { return {avx2_v::zero(), avx2_v::zero()}; }
    static vf load(const float* p) { return {avx2_v::load(p), avx2_v::load(p + 8)}; }
    static vf load_bf16(const uint16_t* p) { return {avx2_v::load_bf16(p), avx2_v::load_bf16(p + 8)}; }
    static vf load_f16(const unsigned char* p) { return {avx2_v::load_f16(p), avx2_v::load_f16(p + 16)}; }
    static vf bcast(const float* p) { const __m256 b = avx2_v::bcast(p); return {b, b}; }
    static vf fma(vf a, vf b, vf c) { return {avx2_v::fma(a.lo, b.lo, c.lo), avx2_v::fma(a.hi, b.hi, c.hi)}; }
    static vf mul(vf a, vf b) { return {avx2_v::mul(a.lo, b.lo), avx2_v::mul(a.hi, b.hi)}; }
    static void store(float* p, vf v) { avx2_v::store(p, v.lo); avx2_v::store(p + 8, v.hi); }
    static vi izero() { return {avx2_v::izero(), avx2_v::izero()}; }
    static vi iload(const unsigned char* p) { return {avx2_v::iload(p), avx2_v::iload(p + 32)}; }
    static vi bcast4(const int8_t* p) { const __m256i b = avx2_v::bcast4(p); return {b, b}; }
    static vi dot4(vi acc, vi w, vi x) { return {avx2_v::dot4(acc.lo, w.lo, x.lo), avx2_v::dot4(acc.hi, w.hi, x.hi)}; }
    static vf cvt(vi v) { return {avx2_v::cvt(v.lo), avx2_v::cvt(v.hi)}; }
    static void prefetch(const void* p) { avx2_v::prefetch(p); }
};

} // namespace

plan plan_avx2(const args& a) { return impl<avx2_v>::make(a); }
plan plan_avx2x2(const args& a) { return impl<avx2x2_v>::make(a); }

} // namespace mtp::gemv_detail
