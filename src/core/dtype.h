// Storage dtypes and their conversion to/from fp32 (compute is always fp32).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace mtp {

enum class dtype { f32, f16, bf16, f8_e4m3 };

size_t dtype_size(dtype t);                 // bytes per element
const char* dtype_name(dtype t);            // safetensors spelling: "F32", "F16", "BF16", "F8_E4M3"
bool dtype_from_name(const std::string& s, dtype& out);  // false if unknown

float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);              // round to nearest even; NaN stays NaN
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);               // round to nearest even; overflow -> inf
float f8_e4m3_to_f32(uint8_t b);            // OCP E4M3FN: bias 7, no inf, S.1111.111 = NaN

// Converts n elements stored as `t` at `src` to fp32.
void convert_to_f32(dtype t, const void* src, float* dst, size_t n);
// Converts n fp32 values to storage type `t` (not f8) at `dst`.
void convert_from_f32(dtype t, const float* src, void* dst, size_t n);

} // namespace mtp
