// Model FLOPs per token (for MFU) and the machine's measured fp32 GEMM peak.
#pragma once
#include "model/config.h"

namespace mtp {

// Forward FLOPs of one sequence of T tokens (matmuls + attention), trunk and every MTP depth.
double model_forward_flops(const model_config& c, int T);
// Measures SGEMM GFLOP/s with the current thread count: best of ~0.5 s of 768^3 products.
double measure_peak_gflops();

} // namespace mtp
