// RoPE frequencies with the YaRN blend (spec §3.3) and cos/sin tables for given positions.
#pragma once
#include <vector>

#include "model/config.h"

namespace mtp {

// f_i for i in [0, rope/2), YaRN-blended when rope_scaling is yarn.
std::vector<double> rope_frequencies(const model_config& c);

// YaRN's attention factor a, by which cos and sin are multiplied (Hugging Face's rule): rope_scaling.attention_factor
// when given; else get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when both are non-zero; else
// get_mscale(factor, 1) = 0.1 ln(factor) + 1 (for factor > 1). 1 without YaRN.
double rope_attention_factor(const model_config& c);

// cos/sin [n, rope/2] for positions pos[0..n), each multiplied by `attn` (rope_attention_factor): written into
// caller buffers.
void rope_table(const std::vector<double>& freqs, const int* pos, int n, float* cos, float* sin, double attn = 1.0);

} // namespace mtp
