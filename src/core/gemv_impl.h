// The packed-GEMV tiles as templates over a vector-traits type V (lane width V::L and the handful of intrinsics the
// tiles use), included by one file per ISA (gemv_avx2.cpp, gemv_avx512.cpp) that is compiled with that ISA's flags.
// Everything here has internal linkage, so no code built for a wider ISA can be picked by the linker for another.
// Internal to src/core: use core/gemv.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "core/gemv.h"

namespace mtp::gemv_detail {

// One call's operands, as the driver in gemv.cpp prepares them.
struct args {
    float* y;
    size_t ldy;
    const float* x;            // f32 / bf16: rows of x
    size_t ldx;
    const int8_t* xq;          // q8_0: quantised rows [T][blocks * 32] and their scales [T][blocks]
    const float* xd;
    int blocks;
    const uint16_t* xt;        // bf16 on amx: the rows as A tiles [ceil(T/16)][ceil(in/32)][16 rows][32 inputs];
                               // on avx512bf16: the rows as bf16 pairs [T][ceil(in/2) * 2]
    int T;
    wtype type;
    const void* w;             // panel data
    int out, in, lanes;
    size_t pstride, istride;   // f32 / bf16: elements between panels / inputs; q8_0: pstride = bytes per panel
    int pb;                    // panels per output tile; 0: the kernel's own choice (plan.pb). The driver asks for
                               // fewer (never more) when a call has too few tiles to share out among the threads
};

// How a call is split: output tiles of `pb` panels; run(a, t0, t1) computes tiles [t0, t1) for all rows. With
// `narrows`, run honours any args::pb from 1 to pb (the tile shapes of fewer panels exist), so the driver may ask for
// narrower tiles; the results do not change (each output is the same chain whatever the tile).
struct plan {
    int pb;
    void (*run)(const args&, int, int);
    bool narrows = false;
};

plan plan_avx2(const args& a);     // 8 lanes
plan plan_avx2x2(const args& a);   // 16 lanes on pairs of AVX2 registers
plan plan_avx512(const args& a);   // 16 lanes (defined only when built with the AVX-512 kernels)
plan plan_amx(const args& a);      // bf16 on AMX tiles (defined only when built with the AMX kernels)
plan plan_avx512bf16(const args& a);   // bf16 on vdpbf16ps (only when built with the AVX-512 BF16 kernels)
// The rows x[T][in] rounded to bf16 pairs, xp [T][ceil(in/2) * 2] (an odd length padded with a zero).
void avx512bf16_pack_rows(uint16_t* xp, const float* x, size_t ldx, int T, int in);
// Its weight layout: panels of 16 outputs, [ceil(in/2) pairs][16 outputs][2] bf16.
inline size_t pairs_panel_bytes(int in) { return size_t((in + 1) / 2) * 64; }
inline size_t pairs_index(int lane, int i) { return size_t(i >> 1) * 32 + size_t(lane) * 2 + size_t(i & 1); }
// The rows x[T][in] (row stride ldx) rounded to bf16 as AMX A tiles into xt [ceil(T/16)][ceil(in/32)][16][32], padding
// rows and inputs with zeros (gemv_amx.cpp, vector conversion).
void amx_pack_rows(uint16_t* xt, const float* x, size_t ldx, int T, int in);

// The AMX bf16 layout: panels of 32 outputs; per block of 32 inputs two tiles (outputs 0-15, 16-31) of
// [16 input pairs][16 outputs][2] bf16, so output `lane` (0-31) and input i sit at this index (in bf16 units).
constexpr int amx_lanes = 32;
inline size_t amx_panel_bytes(int in) { return size_t((in + 31) / 32) * 2048; }
inline size_t amx_index(int lane, int i) {
    return (size_t(i >> 5) * 2 + size_t(lane >> 4)) * 512 + size_t((i & 31) >> 1) * 32 + size_t(lane & 15) * 2 +
           size_t(i & 1);
}

} // namespace mtp::gemv_detail

#ifdef MTP_GEMV_IMPL_TEMPLATES
namespace mtp::gemv_detail {
namespace {

template <class V>
struct impl {
    static constexpr int L = V::L;
    using vf = typename V::vf;
    using vi = typename V::vi;
    using fp_fn = void (*)(float*, size_t, const float*, size_t, const void*, int, size_t, size_t, int, int,
                           const void*);
    using q8_fn = void (*)(float*, size_t, const int8_t*, const float*, int, const unsigned char*, size_t, int, int,
                           const unsigned char*);

    template <int RB, int PB>
    static inline void store_tile(float* y, size_t ldy, vf (&acc)[RB][PB], int o0, int valid) {
        alignas(64) float res[RB][PB][L];
#pragma GCC unroll 8
        for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
            for (int q = 0; q < PB; ++q) V::store(res[r][q], acc[r][q]);
        for (int r = 0; r < RB; ++r) {
            float* yr = y + size_t(r) * ldy + o0;
            for (int q = 0; q < PB; ++q) {
                const int n = valid - q * L;
                if (n >= L) std::memcpy(yr + q * L, res[r][q], sizeof(float) * L);
                else if (n > 0) std::memcpy(yr + q * L, res[r][q], sizeof(float) * size_t(n));
            }
        }
    }

    template <class WT>
    static inline vf loadw(const WT* p) {
        if constexpr (std::is_same_v<WT, float>) return V::load(p);
        else return V::load_bf16(p);
    }

    // f32 / bf16: RB rows x PB panels. x rows at x + r*ldx, panel q at w + q*pstride, input i at + i*istride.
    // The accumulators are written out once after the loop, so the compiler keeps them in registers.
    template <int RB, int PB, class WT>
    static void tile_fp(float* y, size_t ldy, const float* x, size_t ldx, const void* wv, int in, size_t pstride,
                        size_t istride, int o0, int valid, const void* nextv) {
        const WT* w = static_cast<const WT*>(wv);
        const WT* next = static_cast<const WT*>(nextv);
        // Prefetch the next tile one cache line per panel per line of input steps.
        const size_t step_bytes = istride * sizeof(WT);
        const int pf_mask = step_bytes >= 64 ? 0 : int(64 / step_bytes) - 1;   // step_bytes is a power of two
        vf acc[RB][PB];
#pragma GCC unroll 8
        for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
            for (int q = 0; q < PB; ++q) acc[r][q] = V::zero();
        for (int i = 0; i < in; ++i) {
            if (next && (i & pf_mask) == 0)
#pragma GCC unroll 8
                for (int q = 0; q < PB; ++q) V::prefetch(next + q * pstride + size_t(i) * istride);
            if constexpr (RB <= PB) {
                vf xb[RB];
#pragma GCC unroll 8
                for (int r = 0; r < RB; ++r) xb[r] = V::bcast(x + size_t(r) * ldx + i);
#pragma GCC unroll 8
                for (int q = 0; q < PB; ++q) {
                    const vf wq = loadw(w + q * pstride + size_t(i) * istride);
#pragma GCC unroll 8
                    for (int r = 0; r < RB; ++r) acc[r][q] = V::fma(wq, xb[r], acc[r][q]);
                }
            } else {
                vf wq[PB];
#pragma GCC unroll 8
                for (int q = 0; q < PB; ++q) wq[q] = loadw(w + q * pstride + size_t(i) * istride);
#pragma GCC unroll 8
                for (int r = 0; r < RB; ++r) {
                    const vf xb = V::bcast(x + size_t(r) * ldx + i);
#pragma GCC unroll 8
                    for (int q = 0; q < PB; ++q) acc[r][q] = V::fma(wq[q], xb, acc[r][q]);
                }
            }
        }
        store_tile<RB, PB>(y, ldy, acc, o0, valid);
    }

    // q8_0: RB rows x PB panels. Row r's codes at xq + r*blocks*32, scales at xd + r*blocks; panel q at w + q*pbytes,
    // block b of a panel at + b*34L: L fp16 scales, then 8 groups of [L outputs][4 inputs] int8.
    template <int RB, int PB>
    static void tile_q8(float* y, size_t ldy, const int8_t* xq, const float* xd, int blocks, const unsigned char* w,
                        size_t pbytes, int o0, int valid, const unsigned char* next) {
        constexpr size_t blk = size_t(34) * L;
        vf acc[RB][PB];
#pragma GCC unroll 8
        for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
            for (int q = 0; q < PB; ++q) acc[r][q] = V::zero();
        for (int b = 0; b < blocks; ++b) {
            const unsigned char* wb = w + size_t(b) * blk;
            if (next)
#pragma GCC unroll 8
                for (int q = 0; q < PB; ++q)
                    for (size_t off = 0; off < blk; off += 64) V::prefetch(next + q * pbytes + size_t(b) * blk + off);
            vi ia[RB][PB];
#pragma GCC unroll 8
            for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
                for (int q = 0; q < PB; ++q) ia[r][q] = V::izero();
#pragma GCC unroll 8
            for (int g = 0; g < 8; ++g) {
                vi xb[RB];
#pragma GCC unroll 8
                for (int r = 0; r < RB; ++r) xb[r] = V::bcast4(xq + (size_t(r) * blocks + b) * 32 + g * 4);
#pragma GCC unroll 8
                for (int q = 0; q < PB; ++q) {
                    const vi wq = V::iload(wb + q * pbytes + 2 * L + g * 4 * L);
#pragma GCC unroll 8
                    for (int r = 0; r < RB; ++r) ia[r][q] = V::dot4(ia[r][q], wq, xb[r]);
                }
            }
#pragma GCC unroll 8
            for (int q = 0; q < PB; ++q) {
                const vf dw = V::load_f16(wb + q * pbytes);
#pragma GCC unroll 8
                for (int r = 0; r < RB; ++r) {
                    const vf s = V::mul(dw, V::bcast(xd + size_t(r) * blocks + b));
                    acc[r][q] = V::fma(V::cvt(ia[r][q]), s, acc[r][q]);
                }
            }
        }
        store_tile<RB, PB>(y, ldy, acc, o0, valid);
    }

    template <class WT, int RB, int... P>
    static fp_fn pick_fp_n(int pb, std::integer_sequence<int, P...>) {
        static constexpr fp_fn fns[] = {&tile_fp<RB, P + 1, WT>...};
        return fns[pb - 1];
    }
    template <int RB, int... P>
    static q8_fn pick_q8_n(int pb, std::integer_sequence<int, P...>) {
        static constexpr q8_fn fns[] = {&tile_q8<RB, P + 1>...};
        return fns[pb - 1];
    }

    // Tile shapes, 8-12 accumulators each. f32 / bf16: T = 1: 1 x 8; 2: 2 x 6; 3: 3 x 4; 4: 4 x 3; more rows: blocks
    // of 3 (and 2) rows x 4 panels, never a lone row (too few independent FMA chains). q8_0 (an int32 and an fp32
    // accumulator each): 1 x 4, 2 x 2, 3 x 2, more rows: blocks of 3 (and 2) x 2.
    // With 32 vector registers (V::wide, AVX-512), f32 / bf16 calls of 4 to 6 rows use 4 panels and one row block
    // (16-24 accumulators; 6 x 4 has half the weight loads per FMA of 3 x 4); of 7 rows or more, 3 panels and row
    // blocks of up to 8 (8 x 3: 24 accumulators, 3 weight registers, 1 broadcast). Any tile shape computes each output
    // with the same in-order chain, so results do not depend on the shape.
    static constexpr bool wide = requires { requires V::wide; };
    template <class WT>
    static fp_fn pick_fp(int rb, int pb) {
        switch (rb) {
            case 1: return pick_fp_n<WT, 1>(pb, std::make_integer_sequence<int, 8>{});
            case 2: return pick_fp_n<WT, 2>(pb, std::make_integer_sequence<int, 6>{});
            case 3: return pick_fp_n<WT, 3>(pb, std::make_integer_sequence<int, 4>{});
            case 4: return pick_fp_n<WT, 4>(pb, std::make_integer_sequence<int, wide ? 4 : 3>{});
            default:                                   // 5 to 8 rows: wide only (row_blocks)
                if constexpr (wide) {
                    if (rb == 5) return pick_fp_n<WT, 5>(pb, std::make_integer_sequence<int, 4>{});
                    if (rb == 6) return pick_fp_n<WT, 6>(pb, std::make_integer_sequence<int, 4>{});
                    if (rb == 7) return pick_fp_n<WT, 7>(pb, std::make_integer_sequence<int, 3>{});
                    return pick_fp_n<WT, 8>(pb, std::make_integer_sequence<int, 3>{});
                } else {
                    return nullptr;
                }
        }
    }
    static q8_fn pick_q8(int rb, int pb) {
        switch (rb) {
            case 1: return pick_q8_n<1>(pb, std::make_integer_sequence<int, 4>{});
            case 2: return pick_q8_n<2>(pb, std::make_integer_sequence<int, 2>{});
            default: return pick_q8_n<3>(pb, std::make_integer_sequence<int, 2>{});
        }
    }
    static int pb_for(wtype t, int T) {
        if (t == wtype::q8_0) return T == 1 ? 4 : 2;
        if (wide && T >= 7) return 3;
        if (wide && T >= 4) return 4;
        return T == 1 ? 8 : T == 2 ? 6 : T == 4 ? 3 : 4;
    }
    // Row blocks: T rows as one block when the shape allows it, else 3s with a tail of 2 (or 2 + 2); wide: blocks
    // of at most 6 rows, as even as possible.
    static int row_blocks(wtype t, int T, int* blocks) {
        int nb = 0;
        if (wide && t != wtype::q8_0 && T >= 5) {
            // 5-6 rows: one block (4 panels). 7 rows or more: as few blocks as 8 rows allow, balanced (16 = 8 + 8,
            // 12 = 6 + 6), on 3 panels. One block streams the weights from memory once for all its rows; every
            // further block of a tile re-reads them from L2, so 8 rows as 4 + 4 cost a memory pass plus a second
            // pass of FMAs, 8 rows as one block a memory pass with twice the FMAs per weight loaded.
            const int n = T <= 6 ? 1 : (T + 7) / 8;
            for (int b = 0; b < n; ++b) blocks[nb++] = T / n + (b < T % n ? 1 : 0);
            return nb;
        }
        const int single = t == wtype::q8_0 ? 3 : 4;
        if (T <= single) {
            blocks[nb++] = T;
            return nb;
        }
        int left = T;
        while (left > 4) { blocks[nb++] = 3; left -= 3; }
        if (left == 4) { blocks[nb++] = 2; blocks[nb++] = 2; }
        else blocks[nb++] = left;
        return nb;
    }

    static void run(const args& a, int t0, int t1) {
        const int PB = a.pb > 0 ? a.pb : pb_for(a.type, a.T);
        const int panels = (a.out + L - 1) / L;
        int blocks[64];
        const int nb = row_blocks(a.type, a.T, blocks);
        for (int tI = t0; tI < t1; ++tI) {
            const int q0 = tI * PB, pb = q0 + PB <= panels ? PB : panels - q0;
            const int o0 = q0 * L, valid = a.out - o0;
            const bool pf = a.T >= 2 && tI + 1 < t1;
            int t = 0;
            if (a.type == wtype::q8_0) {
                const unsigned char* wt = static_cast<const unsigned char*>(a.w) + size_t(q0) * a.pstride;
                const unsigned char* next = pf ? wt + size_t(PB) * a.pstride : nullptr;
                for (int b = 0; b < nb; ++b) {
                    pick_q8(blocks[b], pb)(a.y + size_t(t) * a.ldy, a.ldy, a.xq + size_t(t) * a.blocks * 32,
                                           a.xd + size_t(t) * a.blocks, a.blocks, wt, a.pstride, o0, valid,
                                           b == 0 ? next : nullptr);
                    t += blocks[b];
                }
            } else {
                const size_t esz = a.type == wtype::f32 ? sizeof(float) : sizeof(uint16_t);
                const unsigned char* wt = static_cast<const unsigned char*>(a.w) + size_t(q0) * a.pstride * esz;
                const unsigned char* next = pf ? wt + size_t(PB) * a.pstride * esz : nullptr;
                for (int b = 0; b < nb; ++b) {
                    const fp_fn f = a.type == wtype::f32 ? pick_fp<float>(blocks[b], pb) : pick_fp<uint16_t>(blocks[b], pb);
                    f(a.y + size_t(t) * a.ldy, a.ldy, a.x + size_t(t) * a.ldx, a.ldx, wt, a.in, a.pstride, a.istride,
                      o0, valid, b == 0 ? next : nullptr);
                    t += blocks[b];
                }
            }
        }
    }

    static plan make(const args& a) { return plan{pb_for(a.type, a.T), &run, true}; }
};

} // namespace
} // namespace mtp::gemv_detail
#endif
