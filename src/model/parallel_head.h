// One parallel prediction head (spec §8, Gloeckle et al. 2024): u = hnorm(h_i) of the trunk's post-norm hidden
// state, a decoder layer, h^k = shared_head.norm(y), logits = lm_head(h^k). No token input, no eh_proj: every head
// reads the same h and predicts t_{i+k+1} independently. Forward/backward pair; mtp_forward/mtp_backward dispatch
// here for a config with "mtp_style": "parallel", so callers use one interface for both styles.
#pragma once
#include "model/mtp.h"

namespace mtp {

// h [B·T, d]: the trunk's post-norm hidden rows 0..T-1 of each of B sequences; h_out [B·T, d] receives h^k (m.h
// points there).
void parallel_head_forward(const model_config& c, const layer_offsets& l, const float* W, mtp_cache& m,
                           const float* h, int T, const float* cos, const float* sin, float alpha, arena& a,
                           float* h_out, double* load, int B = 1);
// dh [T, d]: dL/dh^k (consumed as scratch); dh_trunk [T, d] += dL/dh through this head.
void parallel_head_backward(const model_config& c, const layer_offsets& l, const float* W, float* G,
                            const mtp_cache& m, float* dh, float* dh_trunk, float alpha, float bal_scale, arena& a);

} // namespace mtp
