// One MTP module (spec §5): u = eh_proj([enorm(Emb(t_{i+k})) | hnorm(h^{k-1}_i)]), a decoder layer,
// h^k = shared_head.norm(y), logits = lm_head(h^k). Forward/backward pair.
#pragma once
#include "model/layer.h"

namespace mtp {

// Shapes for R = B·T rows (B sequences, each with positions 0..T-1 of this depth); the shapes below say T for R.
struct mtp_cache {
    int T = 0;                     // positions 0..T-1 of this depth, per sequence
    int B = 1;                     // sequences
    const int* tok = nullptr;      // [T] t_{i+k}
    const float* hprev = nullptr;  // [T, d] h^{k-1} rows, owned by the previous depth / trunk
    float* e = nullptr;            // [T, d] Emb(t_{i+k})
    float* e_rstd = nullptr;       // [T]
    float* hn_rstd = nullptr;      // [T]
    float* cat = nullptr;          // [T, 2d] [enorm(e) | hnorm(hprev)]
    float* y = nullptr;            // [T, d] decoder layer output
    layer_cache layer;
    float* h = nullptr;            // [T, d] h^k (post shared_head.norm)
    float* h_rstd = nullptr;       // [T]
    float* logits = nullptr;       // [T, V] (rows of the model's stacked head product, filled by model_forward)
    size_t head_row = 0;           // first row of this depth in model_state::h / logits
    double bal_loss = 0;
};

// With "mtp_style": "parallel" these run a parallel head instead (src/model/parallel_head.h): hprev must then be
// the trunk's h (c.mtp_input_stage(k) == 0), tok is not read, and dhprev is the trunk's dL/dh.
// h_out [T, d] receives h^k (m.h points there); the head product over it is the caller's (model_forward).
// hprev [B·T, d], tok [B·T] and h_out [B·T, d] hold B sequences of T rows each.
void mtp_forward(const model_config& c, const model_layout& L, const layer_offsets& l, const float* W, mtp_cache& m,
                 const float* hprev, const int* tok, int T, const float* cos, const float* sin, float alpha, arena& a,
                 float* h_out, double* load = nullptr, int B = 1);
// The part of the backward both designs share: back through shared_head.norm and the decoder layer. Returns
// dL/du [T, d] (the layer's input gradient) in arena memory from `a` (the caller rewinds).
float* mtp_layer_backward(const model_config& c, const layer_offsets& l, const float* W, float* G, const mtp_cache& m,
                          const float* dh, float alpha, float bal_scale, arena& a);
// dh[T,d]: dL/dh^k (from this depth's head and the next depth), consumed (overwritten as scratch).
// dhprev[T,d] += dL/dh^{k-1}; G accumulates (embedding rows, lm_head handled by the caller).
void mtp_backward(const model_config& c, const model_layout& L, const layer_offsets& l, const float* W, float* G,
                  const mtp_cache& m, float* dh, float* dhprev, float alpha, float bal_scale, arena& a);

} // namespace mtp
