// AMX-BF16 kernel of gemm_bf16 (core/gemm_bf16.h): operands packed once into bf16 tiles (A: 16 rows x 32 k;
// B: 16 k pairs x 16 columns), 32 x 32 blocks of C in four tile registers, one k-ordered chain per element.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/amx_tiles.h"

namespace mtp {

namespace {

constexpr int TK = 32;                   // k per tile step (16 pairs)
constexpr int BM = 32, BN = 32;          // C block: 2 x 2 tiles of 16 x 16 fp32

inline uint16_t bf16_bits(float f) {    // round to nearest even; NaN stays a (quiet) NaN
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t r = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
    return uint16_t((x & 0x7FFFFFFFu) > 0x7F800000u ? (x >> 16) | 0x40u : r);
}

// 32 floats -> 32 bf16 in order (vcvtne2ps2bf16 rounds to nearest even; it treats denormals as zero, as the tile
// product does with its inputs anyway).
inline __m512i cvt32(const float* p) {
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + 16), _mm512_loadu_ps(p));
}
// Two rows of 16 floats -> 16 dwords, dword i = (bf16(lo[i]), bf16(hi[i])): a k pair per column.
inline __m512i cvt_pairs(const float* lo, const float* hi) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                         5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi), _mm512_loadu_ps(lo)));
}
// d[16][16] dwords = transpose of t[16][16].
inline void transpose16(uint32_t* d, const uint32_t* t) {
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) d[i * 16 + j] = t[j * 16 + i];
}

// op(A) [M, K] -> per 32-row panel and 32-k block two tiles [16 rows][32 k]; padding is zero.
void pack_a(uint16_t* pa, const float* A, int lda, bool tr, int M, int K, int KB) {
    const int P = (M + BM - 1) / BM;
#pragma omp parallel for schedule(static) if (size_t(M) * K > 32768)
    for (int i = 0; i < P; ++i)
        for (int kb = 0; kb < KB; ++kb)
            for (int h = 0; h < 2; ++h) {
                uint16_t* d = pa + ((size_t(i) * KB + kb) * 2 + h) * 512;
                const int m0 = i * BM + h * 16, k0 = kb * TK;
                const int mr = std::clamp(M - m0, 0, 16), kr = std::min(TK, K - k0);
                if (mr == 16 && kr == TK) {                           // full tile: vector conversion
                    if (!tr) {
                        for (int r = 0; r < 16; ++r) _mm512_storeu_si512(d + r * 32, cvt32(A + size_t(m0 + r) * lda + k0));
                    } else {
                        alignas(64) uint32_t t[256];
                        for (int p = 0; p < 16; ++p) {
                            const float* r0 = A + size_t(k0 + 2 * p) * lda + m0;
                            _mm512_store_si512(t + p * 16, cvt_pairs(r0, r0 + lda));
                        }
                        transpose16(reinterpret_cast<uint32_t*>(d), t);
                    }
                    continue;
                }
                std::memset(d, 0, 1024);
                if (!tr) {
                    for (int r = 0; r < mr; ++r) {
                        const float* src = A + size_t(m0 + r) * lda + k0;
                        for (int kk = 0; kk < kr; ++kk) d[r * 32 + kk] = bf16_bits(src[kk]);
                    }
                } else {
                    for (int kk = 0; kk < kr; ++kk) {
                        const float* src = A + size_t(k0 + kk) * lda + m0;
                        for (int r = 0; r < mr; ++r) d[r * 32 + kk] = bf16_bits(src[r]);
                    }
                }
            }
}

// op(B) [K, N] -> per 32-column panel and 32-k block two tiles [16 pairs][16 columns][2]; padding is zero.
void pack_b(uint16_t* pb, const float* B, int ldb, bool tr, int N, int K, int KB) {
    const int P = (N + BN - 1) / BN;
#pragma omp parallel for schedule(static) if (size_t(N) * K > 32768)
    for (int j = 0; j < P; ++j)
        for (int kb = 0; kb < KB; ++kb)
            for (int h = 0; h < 2; ++h) {
                uint16_t* d = pb + ((size_t(j) * KB + kb) * 2 + h) * 512;
                const int n0 = j * BN + h * 16, k0 = kb * TK;
                const int nr = std::clamp(N - n0, 0, 16), kr = std::min(TK, K - k0);
                if (nr == 16 && kr == TK) {                           // full tile: vector conversion
                    if (!tr) {
                        for (int p = 0; p < 16; ++p) {
                            const float* r0 = B + size_t(k0 + 2 * p) * ldb + n0;
                            _mm512_storeu_si512(d + p * 32, cvt_pairs(r0, r0 + ldb));
                        }
                    } else {
                        alignas(64) uint32_t t[256];
                        for (int c = 0; c < 16; ++c) _mm512_store_si512(t + c * 16, cvt32(B + size_t(n0 + c) * ldb + k0));
                        transpose16(reinterpret_cast<uint32_t*>(d), t);
                    }
                    continue;
                }
                std::memset(d, 0, 1024);
                if (!tr) {
                    for (int kk = 0; kk < kr; ++kk) {
                        const float* src = B + size_t(k0 + kk) * ldb + n0;
                        uint16_t* o = d + (kk >> 1) * 32 + (kk & 1);
                        for (int c = 0; c < nr; ++c) o[2 * c] = bf16_bits(src[c]);
                    }
                } else {
                    for (int c = 0; c < nr; ++c) {
                        const float* src = B + size_t(n0 + c) * ldb + k0;
                        for (int kk = 0; kk < kr; ++kk) d[(kk >> 1) * 32 + 2 * c + (kk & 1)] = bf16_bits(src[kk]);
                    }
                }
            }
}

// c [32, 32] (row stride ldc floats) = (load ? c : 0) + A panel · B panel over KB blocks.
inline void block(const uint16_t* a, const uint16_t* b, int KB, float* c, int ldc, bool load) {
    const size_t s = size_t(ldc) * sizeof(float);
    if (load) {
        _tile_loadd(0, c, s);
        _tile_loadd(1, c + 16, s);
        _tile_loadd(2, c + size_t(16) * ldc, s);
        _tile_loadd(3, c + size_t(16) * ldc + 16, s);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int kb = 0; kb < KB; ++kb) {
        const uint16_t* ak = a + size_t(kb) * 1024;
        const uint16_t* bk = b + size_t(kb) * 1024;
        _tile_loadd(4, ak, 64);
        _tile_loadd(5, ak + 512, 64);
        _tile_loadd(6, bk, 64);
        _tile_loadd(7, bk + 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, s);
    _tile_stored(1, c + 16, s);
    _tile_stored(2, c + size_t(16) * ldc, s);
    _tile_stored(3, c + size_t(16) * ldc + 16, s);
}

} // namespace

// Linux grants AMX tile data per process on request (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
bool gemm_bf16_amx_permitted() {
    static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return ok;
}

void gemm_bf16_amx(bool trans_a, bool trans_b, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                   float beta, float* C, int ldc) {
    gemm_bf16_amx_permitted();                             // once per process, before any tile instruction
    const int KB = (K + TK - 1) / TK, PA = (M + BM - 1) / BM, PB = (N + BN - 1) / BN;
    thread_local std::vector<uint16_t> buf_a, buf_b;     // grown once, reused (no allocation per training step)
    if (buf_a.size() < size_t(PA) * KB * 1024) buf_a.resize(size_t(PA) * KB * 1024);
    if (buf_b.size() < size_t(PB) * KB * 1024) buf_b.resize(size_t(PB) * KB * 1024);
    uint16_t* pa = buf_a.data();
    uint16_t* pb = buf_b.data();
    pack_a(pa, A, lda, trans_a, M, K, KB);
    pack_b(pb, B, ldb, trans_b, N, K, KB);
    const bool load = beta != 0.0f;
    // A panels in blocks of ~1 MiB, so that one block stays in L2 while every B panel passes over it.
    const int AB_max = std::max(1, int((size_t(1) << 20) / (size_t(KB) * 2048)));
    const int NB = (PA + AB_max - 1) / AB_max, AB = (PA + NB - 1) / NB;          // blocks of equal size
#pragma omp parallel if (PA * PB > 1 && double(M) * N * K > 262144.0)
    {
        amx::configure_tiles(8);                           // tile state is per thread
#pragma omp for collapse(2) schedule(static)
        for (int ib = 0; ib < NB; ++ib)
            for (int j = 0; j < PB; ++j)
                for (int i = ib * AB; i < std::min(PA, (ib + 1) * AB); ++i) {
                    const uint16_t* a = pa + size_t(i) * KB * 1024;
                    const uint16_t* b = pb + size_t(j) * KB * 1024;
                    const int m0 = i * BM, n0 = j * BN, mr = std::min(BM, M - m0), nr = std::min(BN, N - n0);
                    float* c = C + size_t(m0) * ldc + n0;
                    if (mr == BM && nr == BN) {
                        block(a, b, KB, c, ldc, load);
                        continue;
                    }
                    alignas(64) float tmp[BM * BN] = {};
                    if (load)
                        for (int r = 0; r < mr; ++r) std::memcpy(tmp + r * BN, c + size_t(r) * ldc, sizeof(float) * nr);
                    block(a, b, KB, tmp, BN, load);
                    for (int r = 0; r < mr; ++r) std::memcpy(c + size_t(r) * ldc, tmp + r * BN, sizeof(float) * nr);
                }
        _tile_release();
    }
}

} // namespace mtp
