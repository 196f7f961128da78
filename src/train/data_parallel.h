// Data parallelism over the ranks of an mpirun job (core/comm.h): each rank takes a contiguous share of every
// micro-batch, gradients are summed over ranks, and every rank applies the same update, so weights stay identical.
// With ZeRO-1 the AdamW moments are sharded: gradients are reduce-scattered, each rank updates its shard of the
// flat parameter buffer, and the updated shards are all-gathered. With one rank every call is a no-op or the plain
// single-process step.
#pragma once
#include <cstddef>
#include <utility>
#include <vector>

#include "model/weights.h"
#include "train/adamw.h"

namespace mtp {

struct dp_plan {
    int rank = 0, size = 1;
    bool zero1 = false;
    std::vector<size_t> counts;        // [size] floats of the flat buffer owned by each rank (ZeRO-1)
    size_t lo = 0, hi = 0;             // this rank's shard [lo, hi)
};

dp_plan dp_make(const model_layout& L, bool zero1);
// The sequences [first, last) of a micro-batch of B that this rank computes (contiguous, sizes differ by <= 1).
std::pair<int, int> dp_rows(const dp_plan& p, int B);
// Sums the step's gradient over ranks. Afterwards G is complete everywhere, or (ZeRO-1) on [lo, hi) only.
void dp_reduce_gradients(const dp_plan& p, std::vector<float>& G);
// The global norm of the trainable gradient (the same value on every rank).
double dp_grad_norm(const dp_plan& p, const model_layout& L, const std::vector<float>& G);
void dp_scale_gradients(const dp_plan& p, std::vector<float>& G, float s);
// The AdamW step on this rank's part, then (ZeRO-1) the all-gather of the updated weights.
void dp_adamw(const dp_plan& p, const adamw_config& c, adamw_state& st, const model_layout& L, std::vector<float>& W,
              const std::vector<float>& G, float lr);
// ZeRO-1: keeps this rank's shard of a full (checkpointed) state; no-op otherwise or for an empty state.
void dp_adopt_state(const dp_plan& p, adamw_state& st);
// The full optimizer state, for a checkpoint: rank 0 receives every shard (collective: every rank calls it).
adamw_state dp_full_state(const dp_plan& p, const adamw_state& st, const model_layout& L);

} // namespace mtp
