// Storage dtypes: names, sizes and bit-exact bf16/f16/f8_e4m3 <-> fp32 conversion.
#include "core/dtype.h"

#include <array>
#include <bit>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace mtp {

namespace {

// Below this many elements a conversion runs on the calling thread only.
constexpr size_t parallel_min = size_t(1) << 16;

uint32_t f32_bits(float f) { return std::bit_cast<uint32_t>(f); }
float bits_f32(uint32_t u) { return std::bit_cast<float>(u); }

// All 256 E4M3FN values, built once from the bit fields.
std::array<float, 256> make_f8_table() {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) {
        const uint32_t sign = uint32_t(b >> 7) << 31;
        const uint32_t e = (b >> 3) & 0xF, m = b & 7;
        float v;
        if (e == 15 && m == 7) {
            v = std::numeric_limits<float>::quiet_NaN();
        } else if (e == 0) {
            v = float(m) * (1.0f / 512.0f);           // m/8 * 2^-6
        } else {
            v = bits_f32(((e - 7 + 127) << 23) | (m << 20));
        }
        t[b] = bits_f32(f32_bits(v) | sign);
    }
    return t;
}

const std::array<float, 256>& f8_table() {
    static const std::array<float, 256> t = make_f8_table();
    return t;
}

// Loads the i-th 16-bit element of an arbitrarily aligned buffer.
inline uint16_t load_u16(const void* p, size_t i) {
    uint16_t v;
    std::memcpy(&v, static_cast<const uint8_t*>(p) + 2 * i, 2);
    return v;
}

inline void store_u16(void* p, size_t i, uint16_t v) {
    std::memcpy(static_cast<uint8_t*>(p) + 2 * i, &v, 2);
}

} // namespace

size_t dtype_size(dtype t) {
    switch (t) {
    case dtype::f32: return 4;
    case dtype::f16: return 2;
    case dtype::bf16: return 2;
    case dtype::f8_e4m3: return 1;
    }
    return 0;
}

const char* dtype_name(dtype t) {
    switch (t) {
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::f8_e4m3: return "F8_E4M3";
    }
    return "?";
}

bool dtype_from_name(const std::string& s, dtype& out) {
    if (s == "F32") out = dtype::f32;
    else if (s == "F16") out = dtype::f16;
    else if (s == "BF16") out = dtype::bf16;
    else if (s == "F8_E4M3") out = dtype::f8_e4m3;
    else return false;
    return true;
}

float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

uint16_t f32_to_bf16(float f) {
    const uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)                 // NaN: keep sign and top payload, force quiet
        return uint16_t((x >> 16) | 0x0040u);
    const uint32_t lsb = (x >> 16) & 1u;
    return uint16_t((x + 0x7FFFu + lsb) >> 16);          // ties to even; overflow carries into inf
}

float f16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    uint32_t bits;
    if (e == 0x1F) {
        bits = 0x7F800000u | (m << 13);                 // inf or NaN (payload kept)
    } else if (e != 0) {
        bits = ((e + 127 - 15) << 23) | (m << 13);
    } else if (m == 0) {
        bits = 0;
    } else {                                            // subnormal: m * 2^-24, exact in fp32
        return bits_f32(f32_bits(float(m) * (1.0f / 16777216.0f)) | sign);
    }
    return bits_f32(bits | sign);
}

uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    x &= 0x7FFFFFFFu;
    if (x >= 0x7F800000u) {
        if (x > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((x >> 13) & 0x3FFu));   // quiet NaN
        return uint16_t(sign | 0x7C00u);
    }
    if (x >= 0x477FF000u) return uint16_t(sign | 0x7C00u);   // >= 65520 rounds to inf
    if (x >= 0x38800000u) {                                  // normal in f16 (>= 2^-14)
        const uint32_t y = x - 0x38000000u;                  // rebias 127 -> 15
        uint32_t r = y >> 13;
        const uint32_t rem = y & 0x1FFFu;
        if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
        return uint16_t(sign | r);
    }
    if (x <= 0x33000000u) return sign;                       // <= 2^-25 rounds to zero (tie -> even 0)
    // Subnormal result in units of 2^-24.
    const uint32_t e = x >> 23;
    const uint32_t m = (x & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;                          // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return uint16_t(sign | r);
}

float f8_e4m3_to_f32(uint8_t b) { return f8_table()[b]; }

void convert_to_f32(dtype t, const void* src, float* dst, size_t n) {
    const int64_t count = int64_t(n);
    switch (t) {
    case dtype::f32:
        if (n) std::memcpy(dst, src, n * 4);
        return;
    case dtype::f16:
#pragma omp parallel for schedule(static) if (n >= parallel_min)
        for (int64_t i = 0; i < count; ++i) dst[i] = f16_to_f32(load_u16(src, size_t(i)));
        return;
    case dtype::bf16:
#pragma omp parallel for schedule(static) if (n >= parallel_min)
        for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(load_u16(src, size_t(i)));
        return;
    case dtype::f8_e4m3: {
        const float* table = f8_table().data();
        const uint8_t* s = static_cast<const uint8_t*>(src);
#pragma omp parallel for schedule(static) if (n >= parallel_min)
        for (int64_t i = 0; i < count; ++i) dst[i] = table[s[i]];
        return;
    }
    }
}

void convert_from_f32(dtype t, const float* src, void* dst, size_t n) {
    const int64_t count = int64_t(n);
    switch (t) {
    case dtype::f32:
        if (n) std::memcpy(dst, src, n * 4);
        return;
    case dtype::f16:
#pragma omp parallel for schedule(static) if (n >= parallel_min)
        for (int64_t i = 0; i < count; ++i) store_u16(dst, size_t(i), f32_to_f16(src[i]));
        return;
    case dtype::bf16:
#pragma omp parallel for schedule(static) if (n >= parallel_min)
        for (int64_t i = 0; i < count; ++i) store_u16(dst, size_t(i), f32_to_bf16(src[i]));
        return;
    case dtype::f8_e4m3:
        fail("convert_from_f32", "F8_E4M3 is a read-only storage dtype");
    }
}

} // namespace mtp
