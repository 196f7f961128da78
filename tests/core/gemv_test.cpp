// Packed multi-row GEMV (src/core/gemv.h): bitwise equal to the std::fma-chain definition for every row count, tile
// shape, odd sizes (tails in outputs and inputs), strided rows and thread count; a row's result does not depend on
// how many rows are computed with it; within rounding of the BLAS product; the packing helpers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <omp.h>

#include "core/gemv.h"
#include "core/ops.h"
#include "core/rng.h"
#include "random_inputs.h"

namespace {

using namespace mtp;

using test::randn;

void check_shape(int out, int in, int T_max, int threads) {
    SCOPED_TRACE("out " + std::to_string(out) + " in " + std::to_string(in) + " threads " + std::to_string(threads));
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    const auto w = randn(size_t(out) * in, 1 + out + in);
    const size_t ldx = size_t(in) + 3, ldy = size_t(out) + 5;      // strided rows
    const auto x = randn(size_t(T_max) * ldx, 7 + in);
    packed_weight p;
    pack_weight(p, w.data(), out, in);
    ASSERT_EQ(p.lanes, isa_active() == isa::avx2 ? 8 : 16);     // the process's kernel family
    ASSERT_EQ(p.panels, (out + p.lanes - 1) / p.lanes);
    std::vector<float> ref(size_t(T_max) * ldy, -1.0f), got(size_t(T_max) * ldy), one(ldy), blas(size_t(T_max) * out);
    gemv_reference(ref.data(), ldy, x.data(), ldx, T_max, w.data(), out, in);
    for (int T = 1; T <= T_max; ++T) {
        std::fill(got.begin(), got.end(), 1234.5f);
        gemv_packed(got.data(), ldy, x.data(), ldx, T, p);
        for (int t = 0; t < T; ++t)
            for (int o = 0; o < out; ++o)
                ASSERT_EQ(got[size_t(t) * ldy + o], ref[size_t(t) * ldy + o]) << "T " << T << " row " << t << " out " << o;
        for (int o = out; o < int(ldy); ++o) ASSERT_EQ(got[o], 1234.5f) << "wrote past the outputs";
        if (T < T_max) {
            ASSERT_EQ(got[size_t(T) * ldy], 1234.5f) << "wrote past the rows";
        }
    }
    // A row alone (each row start) equals the same row inside any batch.
    for (int t = 0; t < T_max; ++t) {
        gemv_packed(one.data(), ldy, x.data() + size_t(t) * ldx, ldx, 1, p);
        for (int o = 0; o < out; ++o) ASSERT_EQ(one[o], ref[size_t(t) * ldy + o]);
    }
    // Within rounding of the BLAS product: |err| <= 2 in u Σ|terms| (each of the two sums is within
    // γ_in ≈ in·u·Σ|terms| of the exact dot product, Higham's bound, u = 2^-24).
    std::vector<float> xc(size_t(T_max) * in);
    for (int t = 0; t < T_max; ++t)
        for (int i = 0; i < in; ++i) xc[size_t(t) * in + i] = x[size_t(t) * ldx + i];
    linear_forward(blas.data(), xc.data(), w.data(), T_max, in, out);
    for (int t = 0; t < T_max; ++t)
        for (int o = 0; o < out; ++o) {
            double abs_sum = 0;
            for (int i = 0; i < in; ++i) abs_sum += std::fabs(double(xc[size_t(t) * in + i]) * w[size_t(o) * in + i]);
            ASSERT_NEAR(ref[size_t(t) * ldy + o], blas[size_t(t) * out + o], 2.0 * in * 0x1p-24 * abs_sum);
        }
    omp_set_num_threads(saved);
}

TEST(Gemv, MatchesFmaChainForAllRowCountsAndShapes) {
    check_shape(1, 1, 3, 1);
    check_shape(7, 5, 9, 1);                   // one partial panel, input tail
    check_shape(8, 16, 9, 1);
    check_shape(77, 67, 13, 1);                // several tiles with a partial last tile and panel
    check_shape(200, 192, 10, 1);
    check_shape(1000, 64, 6, 1);
}

TEST(Gemv, ThreadedEqualsSingleThreaded) {
    check_shape(3001, 96, 9, 2);               // above the OpenMP threshold: tiles split over threads
    check_shape(2100, 128, 5, 4);
}

TEST(Gemv, PackingHelpers) {
    const int out = 11, in = 6;
    const auto w = randn(size_t(out) * in, 3);
    const auto x = randn(size_t(2) * in, 4);
    std::vector<float> ref(size_t(2) * out), got(size_t(2) * out);
    gemv_reference(ref.data(), out, x.data(), in, 2, w.data(), out, in);
    // rows subset, in a chosen order
    const std::vector<int> rows = {10, 0, 3, 7};
    packed_weight pr;
    pack_weight_rows(pr, w.data(), rows.data(), int(rows.size()), in);
    std::vector<float> sub(2 * rows.size());
    gemv_packed(sub.data(), rows.size(), x.data(), in, 2, pr);
    for (int t = 0; t < 2; ++t)
        for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(sub[t * rows.size() + i], ref[size_t(t) * out + rows[i]]);
    // transposed: m[in, out] holds W^T
    std::vector<float> m(size_t(in) * out);
    for (int o = 0; o < out; ++o)
        for (int i = 0; i < in; ++i) m[size_t(i) * out + o] = w[size_t(o) * in + i];
    packed_weight pt;
    pack_weight_transposed(pt, m.data(), in, out);
    gemv_packed(got.data(), out, x.data(), in, 2, pt);
    EXPECT_EQ(got, ref);
    // stacked: [w rows 0..4; w rows 5..10] == w
    packed_weight ps;
    pack_weight_stacked(ps, {w.data(), w.data() + 5 * in}, {5, 6}, in);
    gemv_packed(got.data(), out, x.data(), in, 2, ps);
    EXPECT_EQ(got, ref);
}

TEST(Gemv, PanelsOverRowMajorMatrix) {
    // y = x · M for a row-major M[in, out] read in place (pstride L, istride out): the attention's P · c_kv. L = 8
    // (avx2) and L = 16 (avx512, or avx2x2 under MTP_ISA=avx2) give the same chains.
    for (int out : {16, 64, 13}) {
        for (int in : {1, 9, 130}) {
            const auto m = randn(size_t(in) * out + 16, 11 + out + in);          // + slack: whole panels are read
            const auto x = randn(size_t(7) * in, 12);
            std::vector<float> w(size_t(out) * in);                              // W[o, i] = M[i, o]
            for (int o = 0; o < out; ++o)
                for (int i = 0; i < in; ++i) w[size_t(o) * in + i] = m[size_t(i) * out + o];
            std::vector<float> ref(size_t(7) * out), got(size_t(7) * out);
            gemv_reference(ref.data(), out, x.data(), in, 7, w.data(), out, in);
            for (int T = 1; T <= 7; ++T) {
                gemv_panels(got.data(), out, x.data(), in, T, m.data(), out, in, 8, out);
                for (int i = 0; i < T * out; ++i) ASSERT_EQ(got[i], ref[i]) << "out " << out << " in " << in << " T " << T;
                const size_t ldy = size_t(out) + 3;                              // sentinels past each row
                std::vector<float> g16(size_t(T) * ldy, -1.0f);
                gemv_panels(g16.data(), ldy, x.data(), in, T, m.data(), out, in, 16, out, 16);
                for (int t = 0; t < T; ++t)
                    for (size_t o = 0; o < ldy; ++o)
                        ASSERT_EQ(g16[t * ldy + o], o < size_t(out) ? ref[size_t(t) * out + o] : -1.0f)
                            << "16 lanes: out " << out << " in " << in << " T " << T << " row " << t << " col " << o;
            }
        }
    }
}

} // namespace
