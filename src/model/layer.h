// One pre-norm decoder layer: x += MLA(norm(x)); x += FFN(norm(x)), FFN dense or MoE by the layer index.
#pragma once
#include "model/attention.h"
#include "model/ffn.h"

namespace mtp {

// Shapes for R = B·T rows (B sequences of T positions); the shapes below say T for R.
struct layer_cache {
    int T = 0;                 // positions per sequence
    int B = 1;                 // sequences
    float* x_in = nullptr;     // [T, d] layer input
    float* xn1 = nullptr;      // [T, d] input_layernorm(x_in)
    float* rstd1 = nullptr;    // [T]
    mla_cache attn;
    float* x_mid = nullptr;    // [T, d] after the attention residual
    float* xn2 = nullptr;      // [T, d] post_attention_layernorm(x_mid)
    float* rstd2 = nullptr;    // [T]
    swiglu_cache mlp;          // dense layers
    moe_cache moe;             // MoE layers
};

// x[B·T,d] is replaced by the layer output. Returns the layer's balance loss (0 unless MoE and alpha > 0; the mean
// over the B sequences).
double layer_forward(const model_config& c, const layer_offsets& l, const float* W, layer_cache& m, float* x, int T,
                     const float* cos, const float* sin, float alpha, arena& a, double* load = nullptr, int B = 1);
// dx[B·T,d]: in = dL/d(output), out = dL/d(input). G accumulates parameter gradients.
void layer_backward(const model_config& c, const layer_offsets& l, const float* W, float* G, const layer_cache& m,
                    float* dx, float alpha, float bal_scale, arena& a);

} // namespace mtp
