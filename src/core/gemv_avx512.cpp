// The packed-GEMV tiles on AVX-512 F/BW/VL + VNNI (16 lanes, vpdpbusd for the q8_0 block sums). Compiled with those
// flags only in this file (CMakeLists.txt) and run only when cpu_features says the CPU has them.
#include <immintrin.h>

#include <cstring>

#define MTP_GEMV_IMPL_TEMPLATES 1
#include "core/gemv_impl.h"

namespace mtp::gemv_detail {
namespace {

struct avx512_v {
    static constexpr int L = 16;
    static constexpr bool wide = true;       // 32 vector registers: the wider tiles of gemv_impl.h
    using vf = __m512;
    using vi = __m512i;
    static vf zero() { return _mm512_setzero_ps(); }
    static vf load(const float* p) { return _mm512_loadu_ps(p); }
    static vf load_bf16(const uint16_t* p) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static vf load_f16(const unsigned char* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
    static vf bcast(const float* p) { return _mm512_set1_ps(*p); }
    static vf fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
    static vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
    static void store(float* p, vf v) { _mm512_storeu_ps(p, v); }
    static vi izero() { return _mm512_setzero_si512(); }
    static vi iload(const unsigned char* p) { return _mm512_loadu_si512(p); }
    static vi bcast4(const int8_t* p) {
        int32_t v;
        std::memcpy(&v, p, 4);
        return _mm512_set1_epi32(v);
    }
    // acc[o] += Σ_{j<4} w[o][j] x[j], exactly: vpdpbusd(|w| as u8, x negated where w < 0) — the same integers as the
    // AVX2 path (x is in [-127, 127], so negating it cannot overflow).
    static vi dot4(vi acc, vi w, vi x) {
        const __mmask64 neg = _mm512_movepi8_mask(w);
        const __m512i xs = _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x);
        return _mm512_dpbusd_epi32(acc, _mm512_abs_epi8(w), xs);
    }
    static vf cvt(vi v) { return _mm512_cvtepi32_ps(v); }
    static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }
};

} // namespace

plan plan_avx512(const args& a) { return impl<avx512_v>::make(a); }

} // namespace mtp::gemv_detail
