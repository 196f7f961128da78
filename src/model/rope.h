// RoPE frequencies with the YaRN blend (spec §3.3) and cos/sin tables for given positions.
#pragma once
#include <vector>

#include "model/config.h"

namespace mtp {

// f_i for i in [0, rope/2), YaRN-blended when rope_scaling is yarn.
std::vector<double> rope_frequencies(const model_config& c);

// cos/sin [n, rope/2] for positions pos[0..n): written into caller buffers.
void rope_table(const std::vector<double>& freqs, const int* pos, int n, float* cos, float* sin);

} // namespace mtp
