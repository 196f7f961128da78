// Multi-row decode kernels: y[T,out] = x[T,in] · W[out,in]^T for a few rows T (1 to a few dozen) against a weight
// that was packed once into panels of 8 outputs (layout [ceil(out/8)][in][8], zero-padded), so that one call reads
// each weight element once for all T rows and the weight streams linearly through memory.
//
// Register blocking: a tile is RB rows x PB panels (RB*PB accumulators of 8 outputs, at most 12 live ymm
// registers): per input index i it loads PB weight vectors and RB broadcasts of x and issues RB*PB FMAs. Row blocks
// of one output tile run back to back, so the tile's weights come from L1/L2 for every block after the first; with
// two or more rows, each tile prefetches the next one into L2 while it computes (from DRAM, 3-4 rows then cost about
// what one row does instead of twice as much).
//
// Determinism: every y element is ONE fp32 fused-multiply-add chain acc = fma(w[o,i], x[t,i], acc) over
// i = 0..in-1 starting from 0 (no horizontal sums, no split accumulators). Its value therefore does not depend on T,
// on the tile shapes, on which panels or rows are computed together, or on the number of threads: a row computed
// alone and the same row computed with others are bitwise equal, and equal to gemv_reference() (std::fma chain).
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

namespace mtp {

struct packed_weight {
    struct free_deleter { void operator()(float* p) const; };
    int out = 0, in = 0, panels = 0;               // panels = ceil(out / 8)
    std::unique_ptr<float[], free_deleter> data;   // [panels][in][8], 64-byte aligned
    size_t bytes() const { return size_t(panels) * in * 8 * sizeof(float); }
    bool empty() const { return out == 0; }
};

// Packs w[out, in] (row-major, torch [out, in]).
void pack_weight(packed_weight& p, const float* w, int out, int in);
// Packs rows[0..n) of w (each of length in) as the outputs 0..n-1: a sub-matrix (e.g. a restricted lm_head).
void pack_weight_rows(packed_weight& p, const float* w, const int* rows, int n, int in);
// Packs the transpose of a [rows, cols] row-major matrix m: out = cols, in = rows (W[o, i] = m[i, o]).
void pack_weight_transposed(packed_weight& p, const float* m, int rows, int cols);
// Several matrices with the same `in` stacked along out into one packed weight (fused projections).
void pack_weight_stacked(packed_weight& p, const std::vector<const float*>& ws, const std::vector<int>& outs, int in);

// y[t * ldy + o] = Σ_i x[t * ldx + i] * W[o, i] for t < T, o < p.out (y rows need not be contiguous). With
// omp_get_max_threads() > 1 and enough work (out * in * T >= 2^17), chunks of output tiles are shared with
// omp_get_max_threads() - 1 helper threads by work stealing (not an OpenMP team: a descheduled helper does not stall
// the caller); each output is still computed by one thread with the same chain, so results do not change.
void gemv_packed(float* y, size_t ldy, const float* x, size_t ldx, int T, const packed_weight& p);

// The same kernel on any panel-of-8 layout: W[o, i] = w[(o / 8) * pstride + i * istride + o % 8] (the packed layout is
// pstride = in * 8, istride = 8; a row-major [in, out] matrix with out % 8 == 0 is pstride = 8, istride = out, i.e.
// y = x · M without packing). Lanes of a partial last panel are read (they must be readable) but not stored.
void gemv_panels(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out, int in,
                 size_t pstride, size_t istride);

// The definition the kernel must match bitwise: the std::fma chain over i for every element.
void gemv_reference(float* y, size_t ldy, const float* x, size_t ldx, int T, const float* w, int out, int in);

} // namespace mtp
