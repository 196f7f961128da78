// Packed GEMV at every weight type (f32, bf16, q8_0) and kernel family (avx2; avx2x2, the 16-lane layout on AVX2;
// avx512, avx512bf16 and amx where the CPU has them): bitwise equal to the scalar definition (gemv_reference_typed; bf16
// on avx512bf16: the bf16 GEMM's definition) for every row count 1-13 (amx bf16: within the fp32 summation bound of its
// definition, and bitwise the same for every row count),
// odd shapes (partial panels, inputs not a multiple of 32), strided rows and 1 or 2 threads; a row alone equals the
// same row in a batch; packing round trips (bf16 rounding, Q8_0 codes); the activation quantiser's definition; the
// Q8_0 error stays within its bound; the process picks the widest supported ISA.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <omp.h>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/gemm_bf16.h"
#include "core/gemv.h"
#include "core/quant.h"
#include "core/rng.h"

namespace {

using namespace mtp;

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
    rng r(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = scale * float(r.normal());
    return v;
}

std::vector<isa> kernels_here() {
    std::vector<isa> k = {isa::avx2, isa::avx2x2};
    if (isa_supported(isa::avx512)) k.push_back(isa::avx512);
    if (isa_supported(isa::avx512bf16)) k.push_back(isa::avx512bf16);
    if (isa_supported(isa::amx)) k.push_back(isa::amx);
    return k;
}

void check(wtype t, isa k, int out, int in, int T_max, int threads) {
    SCOPED_TRACE(std::string(wtype_name(t)) + " " + isa_name(k) + " out " + std::to_string(out) + " in " +
                 std::to_string(in) + " threads " + std::to_string(threads));
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    const auto w = randn(size_t(out) * in, 1 + out + in);
    const size_t ldx = size_t(in) + 3, ldy = size_t(out) + 5;       // strided rows
    auto x = randn(size_t(T_max) * ldx, 7 + in);
    if (T_max > 2) for (int i = 0; i < in; ++i) x[2 * ldx + i] = 0.0f;   // an all-zero row (q8_0: scale 0)
    packed_weight p;
    pack_weight(p, w.data(), out, in, t, k);
    const bool tiles = t == wtype::bf16 && k == isa::amx;            // AMX: bf16 activations, the tile's own order
    ASSERT_EQ(p.lanes, k == isa::avx2 ? 8 : tiles ? 32 : 16);
    ASSERT_EQ(p.panels, (out + p.lanes - 1) / p.lanes);
    std::vector<float> ref(size_t(T_max) * ldy, -1.0f), got(size_t(T_max) * ldy), one(ldy);
    if (tiles) {
        // Held to the error bound of any fp32 summation of the same exact products (gemm_bf16_test.cpp): within
        // 2(in+1)·2^-24·Σ|w x| of the in-order definition; bitwise: every T and a row alone agree (below).
        gemv_reference_bf16_both(ref.data(), ldy, x.data(), ldx, T_max, w.data(), out, in);
        std::vector<float> all(size_t(T_max) * ldy);
        gemv_packed(all.data(), ldy, x.data(), ldx, T_max, p);
        for (int r = 0; r < T_max; ++r)
            for (int o = 0; o < out; ++o) {
                double sabs = 0;
                for (int i = 0; i < in; ++i) sabs += std::fabs(double(w[size_t(o) * in + i]) * x[size_t(r) * ldx + i]);
                ASSERT_NEAR(all[size_t(r) * ldy + o], ref[size_t(r) * ldy + o], 2.0 * (in + 1) * 0x1p-24 * sabs * 1.01)
                    << "row " << r << " out " << o;
            }
        ref = all;                                                    // the rows of the T_max call, bitwise, below
    } else if (t == wtype::bf16 && k == isa::avx512bf16) {
        // vdpbf16ps pairs: bf16 activations too, one chain over the input pairs = the bf16 GEMM's definition, bitwise
        gemm_bf16_reference(false, true, T_max, out, in, x.data(), int(ldx), w.data(), in, 0.0f, ref.data(), int(ldy),
                            true);
    } else {
        gemv_reference_typed(t, ref.data(), ldy, x.data(), ldx, T_max, w.data(), out, in);
    }
    for (int T = 1; T <= T_max; ++T) {
        std::fill(got.begin(), got.end(), 1234.5f);
        gemv_packed(got.data(), ldy, x.data(), ldx, T, p);
        for (int r = 0; r < T; ++r)
            for (int o = 0; o < out; ++o)
                ASSERT_EQ(got[size_t(r) * ldy + o], ref[size_t(r) * ldy + o]) << "T " << T << " row " << r << " out " << o;
        for (int o = out; o < int(ldy); ++o) ASSERT_EQ(got[o], 1234.5f) << "wrote past the outputs";
        if (T < T_max) { ASSERT_EQ(got[size_t(T) * ldy], 1234.5f) << "wrote past the rows"; }
    }
    for (int r = 0; r < T_max; ++r) {                                 // a row alone == the row in any batch
        gemv_packed(one.data(), ldy, x.data() + size_t(r) * ldx, ldx, 1, p);
        for (int o = 0; o < out; ++o) ASSERT_EQ(one[o], ref[size_t(r) * ldy + o]);
    }
    omp_set_num_threads(saved);
}

TEST(GemvTyped, EveryTypeAndKernelMatchesItsScalarDefinition) {
    for (wtype t : {wtype::f32, wtype::bf16, wtype::q8_0})
        for (isa k : kernels_here()) {
            check(t, k, 1, 1, 13, 1);
            check(t, k, 7, 5, 13, 1);            // one partial panel, a partial q8_0 block
            check(t, k, 17, 33, 13, 1);          // 16 + 1 outputs, 32 + 1 inputs
            check(t, k, 77, 67, 13, 1);          // several tiles, partial last tile and panel
            check(t, k, 200, 192, 13, 1);
            check(t, k, 1000, 64, 5, 1);
        }
    for (isa k : kernels_here()) check(wtype::bf16, k, 45, 70, 150, 1);   // past 128 rows: the calls are chunked
}

TEST(GemvTyped, ThreadedEqualsSingleThreaded) {
    for (wtype t : {wtype::f32, wtype::bf16, wtype::q8_0})
        for (isa k : kernels_here()) {
            check(t, k, 3001, 96, 9, 2);     // above the helper-thread threshold
            check(t, k, 392, 1536, 9, 2);    // 24.5 panels of 16: too few tiles, shared out as narrower ones
        }
}

TEST(GemvTyped, PackingRoundTrips) {
    const int out = 37, in = 70;
    const auto w = randn(size_t(out) * in, 5);
    for (isa k : kernels_here()) {
        packed_weight p;
        pack_weight(p, w.data(), out, in, wtype::f32, k);
        EXPECT_EQ(unpack_weight(p), w);
        pack_weight(p, w.data(), out, in, wtype::bf16, k);
        const auto b = unpack_weight(p);
        for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(b[i], bf16_to_f32(f32_to_bf16(w[i])));
        pack_weight(p, w.data(), out, in, wtype::q8_0, k);
        const auto q = unpack_weight(p);
        std::vector<float> pad(96), dq(96);
        std::vector<uint8_t> blk(3 * 34);
        for (int o = 0; o < out; ++o) {                  // the codes are ggml's Q8_0 of the zero-padded row
            std::fill(pad.begin(), pad.end(), 0.0f);
            std::copy(w.begin() + size_t(o) * in, w.begin() + size_t(o + 1) * in, pad.begin());
            q8_0_quantize_row(pad.data(), 96, blk.data());
            q8_0_dequantize_row(blk.data(), 96, dq.data());
            for (int i = 0; i < in; ++i) ASSERT_EQ(q[size_t(o) * in + i], dq[i]) << "out " << o << " in " << i;
        }
    }
}

TEST(GemvTyped, Q8FromAQ8FileKeepsItsCodes) {
    // A GGUF Q8_0 tensor is loaded as its dequantised fp32 values d·q; packing those as q8_0 again must reproduce the
    // file's codes and scales exactly (d·127 and d·q are exact in fp32, so amax / 127 gives d back), i.e. no second
    // rounding: the packed weight dequantises to exactly the values the file holds.
    const int out = 29, in = 96;
    const auto w = randn(size_t(out) * in, 31, 0.05f);
    std::vector<uint8_t> file(size_t(out) * (in / 32) * 34);
    std::vector<float> deq(size_t(out) * in);
    for (int o = 0; o < out; ++o) {
        q8_0_quantize_row(w.data() + size_t(o) * in, in, file.data() + size_t(o) * (in / 32) * 34);
        q8_0_dequantize_row(file.data() + size_t(o) * (in / 32) * 34, in, deq.data() + size_t(o) * in);
    }
    for (isa k : kernels_here()) {
        packed_weight p;
        pack_weight(p, deq.data(), out, in, wtype::q8_0, k);
        EXPECT_EQ(unpack_weight(p), deq) << isa_name(k);
    }
}

TEST(GemvTyped, ActivationQuantiserDefinition) {
    auto x = randn(70, 9, 3.0f);
    x[5] = 0.0f;
    std::vector<int8_t> q(96);
    std::vector<float> d(3);
    q8_act_quantize(x.data(), 70, q.data(), d.data());
    for (int b = 0; b < 3; ++b) {
        float amax = 0;
        for (int i = b * 32; i < std::min(70, b * 32 + 32); ++i) amax = std::max(amax, std::fabs(x[i]));
        ASSERT_EQ(d[b], amax / 127.0f);
        for (int i = b * 32; i < b * 32 + 32; ++i) {
            if (i >= 70) { ASSERT_EQ(q[i], 0); continue; }
            // round to nearest: |x - d q| <= d / 2 (+ rounding of the product), and the largest value maps to ±127.
            // x·(1/d) carries two roundings (1/d and the product), ≤ 2^-23 relative, i.e. ≤ 127·2^-23 ≈ 1.5e-5 of a
            // step, so near a rounding tie |x - d q| ≤ d/2·(1 + 3.1e-5): the bound below (measured: 0.987·d/2 here).
            ASSERT_LE(std::fabs(x[i] - d[b] * q[i]), 0.5f * d[b] * (1 + 4e-5f));
            if (std::fabs(x[i]) == amax) { ASSERT_EQ(std::abs(int(q[i])), 127); }
        }
    }
    std::vector<float> z(40, 0.0f);
    q8_act_quantize(z.data(), 40, q.data(), d.data());
    EXPECT_EQ(d[0], 0.0f);
    EXPECT_EQ(q[0], 0);
    z[3] = NAN;                                          // never undefined behaviour: NaN codes are 0
    q8_act_quantize(z.data(), 40, q.data(), d.data());
    EXPECT_EQ(q[3], 0);
}

// The vectorised quantiser equals its scalar definition bit for bit (codes and scales): every length 1-130 (full
// blocks and a partial tail), magnitudes from denormal to 1e30, zeros and -0, NaN and ±inf, and exact rounding ties
// (a block whose max is 127 has scale 1: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, nearest even).
TEST(GemvTyped, ActivationQuantiserEqualsScalarDefinitionBitwise) {
    auto reference = [](const std::vector<float>& x, std::vector<int8_t>& q, std::vector<float>& d) {
        const int n = int(x.size()), nb = (n + 31) / 32;
        q.assign(size_t(nb) * 32, 0);
        d.assign(size_t(nb), 0.0f);
        for (int b = 0; b < nb; ++b) {
            float amax = 0.0f;
            for (int i = b * 32; i < std::min(n, b * 32 + 32); ++i) amax = std::max(amax, std::fabs(x[size_t(i)]));
            d[size_t(b)] = amax / 127.0f;
            const float id = d[size_t(b)] != 0.0f ? 1.0f / d[size_t(b)] : 0.0f;
            for (int i = b * 32; i < std::min(n, b * 32 + 32); ++i) {
                float v = std::nearbyint(x[size_t(i)] * id);
                if (std::isnan(v)) v = 0.0f;
                q[size_t(i)] = int8_t(std::clamp(v, -127.0f, 127.0f));
            }
        }
    };
    mtp::rng r(41);
    int checked = 0;
    for (int n = 1; n <= 130; ++n)
        for (int variant = 0; variant < 6; ++variant) {
            std::vector<float> x(static_cast<size_t>(n));
            const float scale = std::pow(10.0f, float(int(r.below(61)) - 40));   // 1e-40 (denormal) .. 1e20
            for (float& v : x) v = scale * float(r.normal());
            if (variant == 1) for (size_t i = 0; i < x.size(); i += 3) x[i] = (i % 2) ? -0.0f : 0.0f;
            if (variant == 2) x[r.below(uint64_t(n))] = NAN;
            if (variant == 3) x[r.below(uint64_t(n))] = (n % 2) ? INFINITY : -INFINITY;
            if (variant == 4) {                                                   // ties at scale 1
                for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(r.below(120)) - 60) + 0.5f;
                x[0] = 127.0f;
                if (n > 32) x[32] = -127.0f;
                if (n > 64) x[64] = 127.0f;
                if (n > 96) x[96] = 127.0f;
                if (n > 128) x[128] = 127.0f;
            }
            if (variant == 5) std::fill(x.begin(), x.end(), 1e30f);
            std::vector<int8_t> want_q, got_q(size_t((n + 31) / 32) * 32, 99);
            std::vector<float> want_d, got_d(size_t((n + 31) / 32), -1.0f);
            reference(x, want_q, want_d);
            q8_act_quantize(x.data(), n, got_q.data(), got_d.data());
            for (size_t b = 0; b < want_d.size(); ++b)
                ASSERT_EQ(std::memcmp(&got_d[b], &want_d[b], sizeof(float)), 0) << "n " << n << " variant " << variant
                                                                               << " block " << b;
            ASSERT_EQ(got_q, want_q) << "n " << n << " variant " << variant;
            ++checked;
        }
    EXPECT_EQ(checked, 130 * 6);
}

TEST(GemvTyped, QuantisedResultsStayCloseToF32) {
    // Worst-case bounds (measured errors are far inside them):
    // bf16: round to nearest of an 8-bit significand, |w - ŵ| <= 2^-8 |w|, so |y - y32| <= 2^-8 Σ|w x|.
    // q8_0: per block, d_w = max|w|/127 and ŵ = d16·q with d16 the f16 of d_w and q rounded against d_w, so
    //   |w - ŵ| <= d_w/2 + 127·|d_w - d16| <= (0.5 + 127·2^-11)·d_w = 0.562·d_w (f16: 11-bit significand); and
    //   |x - x̂| <= d_x/2·(1 + 3.1e-5) (fp32 scale; see the codec test). y - y32 = Σ ŵ(x̂ - x) + (ŵ - w)x, hence
    //   |y - y32| <= Σ_blocks [0.562·d_w·Σ|x| + d_x/2·(1 + 3.1e-5)·(Σ|w| + 32·0.562·d_w)].
    // + 2·in·2^-24·Σ|w x|: both fp32 chains within γ_in ≈ in·u of their exact sums (the block integer sums are exact).
    const int out = 64, in = 256;
    const auto w = randn(size_t(out) * in, 21), x = randn(in, 22);
    std::vector<float> y32(out), yb(out), yq(out);
    gemv_reference_typed(wtype::f32, y32.data(), out, x.data(), in, 1, w.data(), out, in);
    gemv_reference_typed(wtype::bf16, yb.data(), out, x.data(), in, 1, w.data(), out, in);
    gemv_reference_typed(wtype::q8_0, yq.data(), out, x.data(), in, 1, w.data(), out, in);
    for (int o = 0; o < out; ++o) {
        double sabs = 0, bound_q = 0;
        for (int b = 0; b < in / 32; ++b) {
            double wmax = 0, xmax = 0, sx = 0, sw = 0;
            for (int i = b * 32; i < b * 32 + 32; ++i) {
                wmax = std::max(wmax, double(std::fabs(w[size_t(o) * in + i])));
                xmax = std::max(xmax, double(std::fabs(x[i])));
                sx += std::fabs(x[i]);
                sw += std::fabs(w[size_t(o) * in + i]);
            }
            const double dw = wmax / 127, dx = xmax / 127, ew = (0.5 + 127 * 0x1p-11) * dw;
            bound_q += ew * sx + dx / 2 * (1 + 3.1e-5) * (sw + 32 * ew);
        }
        for (int i = 0; i < in; ++i) sabs += std::fabs(double(w[size_t(o) * in + i]) * x[i]);
        EXPECT_LE(std::fabs(yb[o] - y32[o]), 0x1p-8 * sabs + 2.0 * in * 0x1p-24 * sabs) << o;
        EXPECT_LE(std::fabs(yq[o] - y32[o]), bound_q + 2.0 * in * 0x1p-24 * sabs) << o;
        EXPECT_NE(yq[o], y32[o]);                        // it is really quantised
    }
}

bool f_amx() { return cpu_detect().amx_bf16 && cpu_detect().avx512bf16; }

TEST(GemvTyped, PicksTheWidestSupportedIsa) {
    if (std::getenv("MTP_ISA")) GTEST_SKIP() << "MTP_ISA set";
    EXPECT_EQ(isa_active(), isa_supported(isa::amx)          ? isa::amx
                            : cpu_detect().amd && isa_supported(isa::avx512bf16) ? isa::avx512bf16
                            : isa_supported(isa::avx512)     ? isa::avx512
                                                             : isa::avx2)
        << isa_report();
    if (isa_supported(isa::avx512bf16)) {
        EXPECT_TRUE(cpu_detect().avx512bf16 && isa_supported(isa::avx512));
    }
    if (isa_supported(isa::amx)) {
        EXPECT_TRUE(f_amx() && isa_supported(isa::avx512));
    }
    const cpu_features& f = cpu_detect();
#ifdef MTP_HAVE_AVX512_KERNELS
    EXPECT_EQ(isa_supported(isa::avx512), f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni);
#else
    EXPECT_FALSE(isa_supported(isa::avx512));
#endif
    EXPECT_TRUE(f.avx2 && f.fma && f.f16c);              // the build's baseline
}

} // namespace
