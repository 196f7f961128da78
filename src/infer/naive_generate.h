// Reference generation without a KV cache: one full forward per new token. Used for training-time samples
// and as the ground truth that cached and speculative decoding are tested against.
#pragma once
#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "model/weights.h"

namespace mtp {

// Appends n_new tokens to `tokens`: greedy when temperature == 0, else softmax(logits/temperature) restricted to
// the top_k (0 = all) most likely tokens, sampled with a generator seeded by `seed`. Context is cut to the last
// max_ctx tokens. Stops early at stop_id (>= 0).
void generate_naive(const model_config& c, const model_layout& L, const float* W, std::vector<int>& tokens, int n_new,
                    float temperature, int top_k, uint64_t seed, int max_ctx, int stop_id, arena& a);

} // namespace mtp
