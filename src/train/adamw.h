// AdamW (decoupled weight decay, as torch.optim.AdamW) over the flat parameter buffer.
#pragma once
#include <cstdint>
#include <vector>

#include "model/weights.h"

namespace mtp {

struct adamw_config {
    float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
};

struct adamw_state {
    std::vector<float> m, v;   // same layout as the weights
    int64_t step = 0;
};

// One update with learning rate lr. Skips non-trainable tensors (the router bias); weight decay only on
// tensors with param_info::decay (not norms or biases).
void adamw_step(const adamw_config& cfg, adamw_state& st, const model_layout& L, float* W, const float* G, float lr);
// The same update restricted to the flat range [lo, hi) of the buffer (a ZeRO-1 shard): st.m / st.v hold that range
// only (indexed from lo); W and G are the full buffers. Elementwise, so shards compose to exactly adamw_step.
void adamw_step_range(const adamw_config& cfg, adamw_state& st, const model_layout& L, float* W, const float* G,
                      float lr, size_t lo, size_t hi);

} // namespace mtp
