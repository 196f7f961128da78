// Feed-forward blocks: the SwiGLU MLP and DeepSeekMoE with its router (spec §2, §4), forward/backward pairs.
#pragma once
#include <vector>

#include "core/arena.h"
#include "model/config.h"
#include "model/weights.h"

namespace mtp {

struct swiglu_cache {
    int T = 0;
    const float* x = nullptr;   // [T, d] input, owned by the caller
    float* g = nullptr;         // [T, f] gate_proj(x)
    float* u = nullptr;         // [T, f] up_proj(x)
    float* act = nullptr;       // [T, f] silu(g) * u
};

// y[T,d] = down(silu(gate(x)) * up(x)); accumulate adds into y.
void swiglu_forward(const float* W, const swiglu_offsets& s, swiglu_cache& m, float* y, const float* x, int T, int d,
                    arena& a, bool accumulate = false);
void swiglu_backward(const float* W, float* G, const swiglu_offsets& s, const swiglu_cache& m, float* dx,
                     const float* dy, int d, arena& a);

// The same on buffers the caller gives (no arena: callable from several threads at once, as expert_group does):
// cache holds swiglu_floats(T, f) floats and lives as long as m; scratch holds as many, for the backward only.
size_t swiglu_floats(int T, int f);
void swiglu_forward_in(const float* W, const swiglu_offsets& s, swiglu_cache& m, float* y, const float* x, int T,
                       int d, float* cache, bool accumulate = false);
void swiglu_backward_in(const float* W, float* G, const swiglu_offsets& s, const swiglu_cache& m, float* dx,
                        const float* dy, int d, float* scratch);

// Shapes for R = B·T rows (B sequences of T positions); the shapes below say T for R.
struct moe_cache {
    int T = 0;                  // positions per sequence
    int B = 1;                  // sequences (the balance loss is per sequence)
    const float* x = nullptr;   // [T, d]
    float* s = nullptr;         // [T, E] router scores (sigmoid or softmax)
    int* idx = nullptr;         // [T, K] selected experts, best first
    float* w = nullptr;         // [T, K] combine weights (normalised, scaled)
    std::vector<int> start;     // [E+1] row ranges of each expert in the gathered order
    int* tok = nullptr;         // [T*K] token of each gathered row
    int* slot = nullptr;        // [T*K] k of each gathered row
    float* xe = nullptr;        // [T*K, d] gathered expert inputs
    float* ye = nullptr;        // [T*K, d] expert outputs (before weighting)
    int* where = nullptr;       // [T, K] gathered row of each (token, k)
    std::vector<swiglu_cache> experts;
    swiglu_cache shared;
    std::vector<float> f;       // [B, E] f_e of each sequence's balance loss (constant for the gradient)
    std::vector<size_t> ep_counts;   // expert parallel: [P][E/P] rows received per group rank and owned expert
    double bal_loss = 0;        // mean over the sequences of α Σ_e f_e P_e (0 when α = 0)
};

// Router selection for one token (spec §4): scores s[E] -> idx[K] (best first) and weights w[K].
void moe_route(const model_config& c, const float* s, const float* bias, int* idx, float* w);

// y[B·T,d] = Σ_k w_k expert_k(x) + shared(x), the experts as GEMMs over all B·T rows routed to them. alpha > 0
// also computes the sequence-wise balance loss of each sequence's T rows. load (optional, [E]) += tokens routed
// to each expert.
void moe_forward(const model_config& c, const layer_offsets& l, const float* W, moe_cache& m, float* y, const float* x,
                 int T, float alpha, arena& a, double* load = nullptr, int B = 1);
// dx[B·T,d] += ...; G += parameter gradients (router bias gets none); includes the balance loss gradient
// scaled by bal_scale (the weight of each sequence's balance loss in the total loss).
void moe_backward(const model_config& c, const layer_offsets& l, const float* W, float* G, const moe_cache& m,
                  float* dx, const float* dy, float alpha, float bal_scale, arena& a);

} // namespace mtp
