// Expert parallelism: the routed experts of every MoE layer are split over the ranks of an expert-parallel group
// (core/comm.h; group rank i computes experts [i·E/P, (i+1)·E/P)). moe_forward's gathered expert rows, already
// sorted by expert and so by owner, travel to their owners with an all-to-all, the owners run their experts over
// the rows of every group rank at once, and the outputs travel back; moe_backward sends the output gradients the
// same way and gets the input gradients back. The router, the shared experts and every other weight stay replicated;
// each rank accumulates gradients only for the experts it owns (the trainer's all-reduce completes them).
#pragma once
#include "core/arena.h"
#include "model/ffn.h"

namespace mtp {

// Turns expert parallelism on for this process with the current comm_expert_group() (off: group size 1), or off.
void expert_parallel_enable(bool on);
bool expert_parallel_active();

// moe_forward's expert step: m.xe [T*K, d] in the gathered order (m.start) -> m.ye, the owned experts' caches kept.
void expert_parallel_forward(const model_config& c, const layer_offsets& l, const float* W, moe_cache& m, arena& a);
// moe_backward's expert step: dye [T*K, d] (gathered order) -> dxe [T*K, d] (zeroed by the caller); G += the owned
// experts' parameter gradients.
void expert_parallel_backward(const model_config& c, const layer_offsets& l, const float* W, float* G,
                              const moe_cache& m, const float* dye, float* dxe, arena& a);

} // namespace mtp
