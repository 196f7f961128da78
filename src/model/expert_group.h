// The experts of one MoE layer as one job over the threads: each expert's SwiGLU (the routed ones over their
// gathered rows, the shared one over all rows) runs whole on one thread, its products single-threaded, the experts
// handed out largest first; an expert with more than its share of the rows runs alone on every thread first. No
// fork and join per expert product.
#pragma once
#include "core/arena.h"
#include "model/ffn.h"

namespace mtp {

// m.xe [T*K, d] in the gathered order (m.start) -> m.ye [T*K, d], and y [T, d] = shared(m.x) (zeroed when there is
// no shared expert); every expert's cache in m.experts and m.shared (from a).
void expert_group_forward(const float* W, const layer_offsets& l, moe_cache& m, float* y, int d, arena& a);
// dye [T*K, d] -> dxe [T*K, d] (overwritten), dx [T, d] += the shared expert's input gradient; G += every expert's
// weight gradients.
void expert_group_backward(const float* W, float* G, const layer_offsets& l, const moe_cache& m, const float* dye,
                           float* dxe, const float* dy, float* dx, int d, arena& a);

} // namespace mtp
