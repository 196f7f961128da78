// Tests for dtype conversions, checked against values computed here from the raw bit fields.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace {

// Independent f16 decode from the IEEE binary16 bit fields.
double ref_f16(uint16_t h) {
    const int s = h >> 15, e = (h >> 10) & 0x1F, m = h & 0x3FF;
    double v;
    if (e == 31) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    else if (e == 0) v = std::ldexp(double(m), -24);
    else v = std::ldexp(double(1024 + m), e - 25);
    return s ? -v : v;
}

// Independent bf16 decode: 8-bit exponent (bias 127), 7-bit mantissa.
double ref_bf16(uint16_t h) {
    const int s = h >> 15, e = (h >> 7) & 0xFF, m = h & 0x7F;
    double v;
    if (e == 255) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    else if (e == 0) v = std::ldexp(double(m), -133);
    else v = std::ldexp(double(128 + m), e - 134);
    return s ? -v : v;
}

// Independent E4M3FN decode: bias 7, subnormals m/8 * 2^-6, S.1111.111 = NaN, no infinities.
double ref_e4m3(uint8_t b) {
    const int s = b >> 7, e = (b >> 3) & 0xF, m = b & 7;
    double v;
    if (e == 15 && m == 7) v = std::numeric_limits<double>::quiet_NaN();
    else if (e == 0) v = std::ldexp(double(m), -9);
    else v = std::ldexp(double(8 + m), e - 10);
    return s ? -v : v;
}

// Round-to-nearest-even of x to a binary format with `mant_bits` stored mantissa bits and minimum
// normal exponent `emin`, computed in double; returns +-inf when it overflows `max_finite`.
double ref_round(float x, int mant_bits, int emin, double max_finite) {
    const double d = x;
    if (d == 0) return d;
    int e;
    std::frexp(d, &e);                      // d = f * 2^e, 0.5 <= |f| < 1
    const int exp = std::max(e - 1, emin);  // exponent of the leading bit, clamped at the subnormal range
    const double ulp = std::ldexp(1.0, exp - mant_bits);
    const double r = std::nearbyint(d / ulp) * ulp;   // default rounding mode: to nearest, ties to even
    if (std::fabs(r) > max_finite) return d < 0 ? -INFINITY : INFINITY;
    return r;
}

bool same(double want, float got) {
    if (std::isnan(want)) return std::isnan(got);
    return double(got) == want && std::signbit(got) == std::signbit(want);
}

} // namespace

TEST(DtypeTest, NamesAndSizes) {
    const mtp::dtype all[] = {mtp::dtype::f32, mtp::dtype::f16, mtp::dtype::bf16, mtp::dtype::f8_e4m3};
    const char* names[] = {"F32", "F16", "BF16", "F8_E4M3"};
    const size_t sizes[] = {4, 2, 2, 1};
    for (int i = 0; i < 4; ++i) {
        EXPECT_STREQ(mtp::dtype_name(all[i]), names[i]);
        EXPECT_EQ(mtp::dtype_size(all[i]), sizes[i]);
        mtp::dtype t = mtp::dtype::f32;
        ASSERT_TRUE(mtp::dtype_from_name(names[i], t));
        EXPECT_EQ(t, all[i]);
    }
    mtp::dtype t;
    EXPECT_FALSE(mtp::dtype_from_name("F64", t));
    EXPECT_FALSE(mtp::dtype_from_name("f32", t));
    EXPECT_FALSE(mtp::dtype_from_name("", t));
}

TEST(F16Test, DecodesEveryCode) {
    for (uint32_t h = 0; h < 65536; ++h)
        ASSERT_TRUE(same(ref_f16(uint16_t(h)), mtp::f16_to_f32(uint16_t(h)))) << "code " << h;
}

TEST(F16Test, EveryNonNanCodeRoundTrips) {
    for (uint32_t h = 0; h < 65536; ++h) {
        const float f = mtp::f16_to_f32(uint16_t(h));
        if (std::isnan(f)) {
            EXPECT_TRUE(std::isnan(mtp::f16_to_f32(mtp::f32_to_f16(f)))) << "code " << h;
            continue;
        }
        ASSERT_EQ(mtp::f32_to_f16(f), h) << "code " << h;
    }
}

TEST(F16Test, RoundsHalfwayCasesToEven) {
    struct c { double x; uint16_t want; };
    const c cases[] = {
        {1.0 + std::ldexp(1.0, -11), 0x3C00},                          // tie, 1.0 is even
        {1.0 + 3 * std::ldexp(1.0, -11), 0x3C02},                      // tie, rounds up to even
        {1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -20), 0x3C01},   // just above the tie
        {65504.0, 0x7BFF},
        {65519.0, 0x7BFF},
        {65520.0, 0x7C00},                                             // tie above max -> inf
        {1e10, 0x7C00},
        {std::ldexp(1.0, -24), 0x0001},
        {std::ldexp(1.0, -25), 0x0000},                                // tie between 0 and 1 ulp
        {1.5 * std::ldexp(1.0, -25), 0x0001},
        {3 * std::ldexp(1.0, -25), 0x0002},                            // tie 1|2 -> 2
        {5 * std::ldexp(1.0, -25), 0x0002},                            // tie 2|3 -> 2
        {std::ldexp(1.0, -14) - std::ldexp(1.0, -25), 0x0400},         // tie 0x3FF|0x400 -> 0x400
        {-1.0, 0xBC00},
        {-0.0, 0x8000},
        {-3 * std::ldexp(1.0, -25), 0x8002},
    };
    for (const c& k : cases) EXPECT_EQ(mtp::f32_to_f16(float(k.x)), k.want) << "x = " << k.x;
    EXPECT_EQ(mtp::f32_to_f16(INFINITY), 0x7C00);
    EXPECT_EQ(mtp::f32_to_f16(-INFINITY), 0xFC00);
    EXPECT_TRUE(std::isnan(mtp::f16_to_f32(mtp::f32_to_f16(NAN))));
    EXPECT_TRUE(std::isnan(mtp::f16_to_f32(mtp::f32_to_f16(std::bit_cast<float>(0x7F800001u)))));
}

TEST(F16Test, MatchesReferenceRoundingOnFloatSweep) {
    for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 997) {
        const float x = std::bit_cast<float>(uint32_t(u));
        if (std::isnan(x)) continue;
        const double want = std::isinf(x) ? double(x) : ref_round(x, 10, -14, 65504.0);
        ASSERT_TRUE(same(want, mtp::f16_to_f32(mtp::f32_to_f16(x)))) << "bits " << u;
    }
}

TEST(Bf16Test, DecodesEveryCode) {
    for (uint32_t h = 0; h < 65536; ++h)
        ASSERT_TRUE(same(ref_bf16(uint16_t(h)), mtp::bf16_to_f32(uint16_t(h)))) << "code " << h;
}

TEST(Bf16Test, RoundsHalfwayCasesToEven) {
    EXPECT_EQ(mtp::f32_to_bf16(float(1.0 + std::ldexp(1.0, -8))), 0x3F80);
    EXPECT_EQ(mtp::f32_to_bf16(float(1.0 + 3 * std::ldexp(1.0, -8))), 0x3F82);
    EXPECT_EQ(mtp::f32_to_bf16(float(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -20))), 0x3F81);
    EXPECT_EQ(mtp::f32_to_bf16(-2.0f), 0xC000);
    EXPECT_EQ(mtp::f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);   // rounds past max -> inf
    EXPECT_EQ(mtp::f32_to_bf16(INFINITY), 0x7F80);
    EXPECT_EQ(mtp::f32_to_bf16(std::bit_cast<float>(0x00008000u)), 0x0000);   // subnormal tie -> even
    EXPECT_EQ(mtp::f32_to_bf16(std::bit_cast<float>(0x00018000u)), 0x0002);
    // NaN stays NaN, also when the payload sits only in the dropped low bits.
    EXPECT_TRUE(std::isnan(mtp::bf16_to_f32(mtp::f32_to_bf16(NAN))));
    EXPECT_TRUE(std::isnan(mtp::bf16_to_f32(mtp::f32_to_bf16(std::bit_cast<float>(0x7F800001u)))));
    EXPECT_TRUE(std::isnan(mtp::bf16_to_f32(mtp::f32_to_bf16(std::bit_cast<float>(0xFF800001u)))));
}

TEST(Bf16Test, MatchesReferenceRoundingOnFloatSweep) {
    const double max_bf16 = std::ldexp(255.0, 120);   // 0x7F7F
    for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 997) {
        const float x = std::bit_cast<float>(uint32_t(u));
        if (std::isnan(x)) continue;
        const double want = std::isinf(x) ? double(x) : ref_round(x, 7, -126, max_bf16);
        ASSERT_TRUE(same(want, mtp::bf16_to_f32(mtp::f32_to_bf16(x)))) << "bits " << u;
    }
}

TEST(Fp8Test, DecodesAll256Codes) {
    for (int b = 0; b < 256; ++b) {
        const float got = mtp::f8_e4m3_to_f32(uint8_t(b));
        if (b == 0x7F || b == 0xFF) {
            EXPECT_TRUE(std::isnan(got)) << "code " << b;
            continue;
        }
        EXPECT_FALSE(std::isnan(got) || std::isinf(got)) << "code " << b;
        EXPECT_TRUE(same(ref_e4m3(uint8_t(b)), got)) << "code " << b << " got " << got;
    }
    EXPECT_EQ(mtp::f8_e4m3_to_f32(0x7E), 448.0f);
    EXPECT_EQ(mtp::f8_e4m3_to_f32(0xFE), -448.0f);
    EXPECT_EQ(mtp::f8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
    EXPECT_EQ(mtp::f8_e4m3_to_f32(0x38), 1.0f);
    EXPECT_TRUE(std::signbit(mtp::f8_e4m3_to_f32(0x80)));
}

TEST(DtypeTest, ConvertArraysMatchScalarFunctions) {
    const size_t n = 200000;   // large enough for the parallel path (dtype.cpp: parallel_min = 2^16)
    std::vector<float> src(n);
    for (size_t i = 0; i < n; ++i) src[i] = float(std::sin(double(i)) * std::ldexp(1.0, int(i % 40) - 20));
    for (mtp::dtype t : {mtp::dtype::f32, mtp::dtype::f16, mtp::dtype::bf16}) {
        std::vector<uint8_t> raw(n * mtp::dtype_size(t) + 1);
        mtp::convert_from_f32(t, src.data(), raw.data() + 1, n);   // unaligned on purpose
        std::vector<float> back(n);
        mtp::convert_to_f32(t, raw.data() + 1, back.data(), n);
        for (size_t i = 0; i < n; ++i) {
            float want = src[i];
            if (t == mtp::dtype::f16) want = mtp::f16_to_f32(mtp::f32_to_f16(src[i]));
            if (t == mtp::dtype::bf16) want = mtp::bf16_to_f32(mtp::f32_to_bf16(src[i]));
            ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(want)) << mtp::dtype_name(t) << " " << i;
        }
    }
    std::vector<uint8_t> codes(n);
    for (size_t i = 0; i < n; ++i) codes[i] = uint8_t(i * 31);
    std::vector<float> dec(n);
    mtp::convert_to_f32(mtp::dtype::f8_e4m3, codes.data(), dec.data(), n);
    for (size_t i = 0; i < n; ++i) ASSERT_TRUE(same(ref_e4m3(codes[i]), dec[i])) << i;
    uint8_t out[4];
    EXPECT_THROW(mtp::convert_from_f32(mtp::dtype::f8_e4m3, src.data(), out, 4), mtp::error);
}
