// 8-bit block quantisation (ggml's Q8_0): blocks of 32 values along a row, one scale each, q = round(x / d) with
// d = max|x| / 127. Weights store d as fp16 (34 bytes a block, the GGUF layout); decode activations keep d in fp32.
#pragma once
#include <cstdint>

namespace mtp {

constexpr int q8_block = 32;

// n % 32 == 0. out: n / 32 blocks of [fp16 d (little endian) | 32 x int8].
void q8_0_quantize_row(const float* x, int64_t n, uint8_t* out);
void q8_0_dequantize_row(const uint8_t* in, int64_t n, float* y);

// Activations: x[0..n) in ceil(n / 32) blocks (the last zero-padded): q[nb * 32] int8 in [-127, 127] and d[nb] fp32,
// d = amax / 127, q = round-to-nearest-even(x * (1 / d)); a block of zeros has d = 0 and q = 0; NaN gives q = 0.
// The decode kernels and their scalar references both call this function, so a row's codes never depend on how it
// is batched.
void q8_act_quantize(const float* x, int n, int8_t* q, float* d);

} // namespace mtp
