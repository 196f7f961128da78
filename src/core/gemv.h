// Multi-row decode kernels: y[T,out] = x[T,in] · W[out,in]^T for a few rows T (1 to a few dozen) against a weight
// packed once into panels of L outputs (L = 8 for AVX2, 16 for AVX-512), so that one call reads each weight element
// once for all T rows and the weight streams linearly through memory.
//
// Weight types (what decoding reads; the model's master copy stays fp32):
//   f32   panel [in][L] floats;
//   bf16  panel [in][L] bf16 (the fp32 value rounded to nearest even), widened to fp32 exactly in the kernel;
//         with the amx kernels instead panels of 32 outputs in AMX tile order, and the activations are rounded to
//         bf16 too: the products of the tiles (bf16 x bf16, fp32 sums in the tile's own order); with the avx512bf16
//         kernels panels of 16 outputs as input pairs [in/2][16][2], the activations rounded to bf16 too, one chain
//         of vdpbf16ps pair products per output (bitwise the bf16 GEMM's definition, gemm_bf16_reference);
//   q8_0  ggml's Q8_0: blocks of 32 inputs with one fp16 scale per output (in padded with zeros to a multiple of
//         32); panel [in/32 blocks]{ [L] fp16 scales | [8 groups of 4 inputs][L][4] int8 }. The activations are
//         quantised to Q8_0 too (core/quant.h, per row), and a block's dot product is computed in exact integers.
//
// Register blocking: a tile is RB rows x PB panels; per input step it loads PB weight vectors and RB broadcasts of x.
// Row blocks of one output tile run back to back, so the tile's weights come from L1/L2 for every block after the
// first; with two or more rows each tile prefetches the next one into L2 while it computes.
//
// Determinism: every y element is ONE chain in input order starting from 0 —
//   f32 / bf16: acc = fma(w[o,i], x[t,i], acc) over i;
//   q8_0:       acc = fma(float(Σ_{i in block b} qw[o,i] qx[t,i]), d_w[o,b] * d_x[t,b], acc) over blocks b
// — with no horizontal sums or split accumulators. Its value therefore does not depend on T, on the tile shapes, on
// the lane width L, on the ISA (the integer block sums are exact on every path), or on the number of threads: a row
// computed alone and the same row computed with others are bitwise equal, and equal to gemv_reference*() below.
// bf16 under avx512bf16 is its own definition too (the pair products above), still independent of T, the tiles and
// the threads. The one looser case is bf16 under the amx kernels: each row is computed by the same tile instructions whatever the
// other rows (so a row alone still equals the row in a batch, bitwise, and speculation stays lossless), but the tile
// sums in an order of its own, so the result is within fp32 summation error of gemv_reference_bf16_both(), not
// bitwise equal to it, and differs from the avx2/avx512 bf16 result.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/cpu_features.h"

namespace mtp {

enum class wtype { f32, bf16, q8_0 };
const char* wtype_name(wtype t);                           // "f32", "bf16", "q8_0"
bool wtype_from_name(const std::string& s, wtype& out);    // false if unknown
double wtype_bytes_per_weight(wtype t);                    // 4, 2, 34/32

struct packed_weight {
    struct free_deleter { void operator()(void* p) const; };
    wtype type = wtype::f32;
    isa kernel = isa::avx2;                        // the kernel family it is packed for (decides L)
    int out = 0, in = 0, lanes = 8, panels = 0;    // panels = ceil(out / lanes)
    int blocks = 0;                                // q8_0: ceil(in / 32)
    size_t panel_bytes = 0;
    std::unique_ptr<unsigned char[], free_deleter> data;   // [panels][panel_bytes], 64-byte aligned
    size_t bytes() const { return size_t(panels) * panel_bytes; }
    bool empty() const { return out == 0; }
};

// Packs w[out, in] (row-major, torch [out, in]) as type t for kernel family k (default: the process's).
void pack_weight(packed_weight& p, const float* w, int out, int in, wtype t = wtype::f32, isa k = isa_active());
// Packs rows[0..n) of w (each of length in) as the outputs 0..n-1: a sub-matrix (e.g. a restricted lm_head).
void pack_weight_rows(packed_weight& p, const float* w, const int* rows, int n, int in, wtype t = wtype::f32,
                      isa k = isa_active());
// Packs the transpose of a [rows, cols] row-major matrix m: out = cols, in = rows (W[o, i] = m[i, o]).
void pack_weight_transposed(packed_weight& p, const float* m, int rows, int cols, wtype t = wtype::f32,
                            isa k = isa_active());
// Several matrices with the same `in` stacked along out into one packed weight (fused projections).
void pack_weight_stacked(packed_weight& p, const std::vector<const float*>& ws, const std::vector<int>& outs, int in,
                         wtype t = wtype::f32, isa k = isa_active());
// The weight as the kernel sees it, back to fp32 row-major [out, in] (tests: bf16 rounding, q8_0 codes).
std::vector<float> unpack_weight(const packed_weight& p);

// y[t * ldy + o] = Σ_i x[t * ldx + i] * W[o, i] for t < T, o < p.out (y rows need not be contiguous). With
// omp_get_max_threads() > 1 and enough work, chunks of output tiles are shared with omp_get_max_threads() - 1 helper
// threads by work stealing (not an OpenMP team: a descheduled helper does not stall the caller); each output is still
// computed by one thread with the same chain, so results do not change.
void gemv_packed(float* y, size_t ldy, const float* x, size_t ldx, int T, const packed_weight& p);

// The f32 kernel on any layout of panels of L = 8 or 16 outputs: W[o, i] = w[(o / L) * pstride + i * istride + o % L]
// (the packed layout is pstride = in * L, istride = L; a row-major [in, out] matrix with out % L == 0 is pstride = L,
// istride = out, i.e. y = x · M without packing). Lanes of a partial last panel are read (they must be readable) but
// not stored. L = 16 runs the avx512 tiles, or pairs of AVX2 registers (avx2x2) where the process runs avx2; the
// results are the same for either L (one chain per output).
void gemv_panels(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out, int in,
                 size_t pstride, size_t istride, int lanes = 8);

// The definitions the kernels must match bitwise, from the fp32 weights w[out, in] (row-major):
// f32: the std::fma chain; bf16: the chain over bf16-rounded weights; q8_0: weights quantised per row as Q8_0
// (zero-padded to a multiple of 32), activations by q8_act_quantize, the block chain above.
void gemv_reference(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out, int in);
void gemv_reference_typed(wtype t, float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out,
                          int in);
// bf16 under the amx kernels: weights AND activations rounded to bf16, products summed in fp32 in input order.
void gemv_reference_bf16_both(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out,
                              int in);

} // namespace mtp
