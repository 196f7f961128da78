// Multi-head Latent Attention (spec §3): the naive training form (forward/backward) and the absorbed
// form over a latent KV cache (c_kv + rotated k_pe per token), used for decoding.
#pragma once
#include <vector>

#include "core/arena.h"
#include "model/config.h"
#include "model/weights.h"

namespace mtp {

// Activations one naive MLA forward keeps for its backward. Shapes for B sequences of T positions (R = B·T rows,
// sequence b at rows b·T..b·T+T-1), H heads, dq = nope+rope, kvl = kv_lora_rank, ql = q_lora_rank; the shapes
// below say T for R.
struct mla_cache {
    int T = 0;                    // positions per sequence
    int B = 1;                    // sequences
    const float* x = nullptr;     // [T, d]   input (already normed), owned by the caller
    float* qa = nullptr;          // [T, ql]  q_a_proj(x)           (q_lora only)
    float* qa_rstd = nullptr;     // [T]
    float* qan = nullptr;         // [T, ql]  q_a_layernorm(qa)
    float* q = nullptr;           // [T, H*dq] per head [q_nope | q_pe], q_pe rotated
    float* c = nullptr;           // [T, kvl] compressed kv before its norm
    float* c_rstd = nullptr;      // [T]
    float* ckv = nullptr;         // [T, kvl] kv_a_layernorm(c)
    float* kpe = nullptr;         // [T, rope] shared rotated key
    float* kv = nullptr;          // [T, H*(nope+v)] kv_b_proj(ckv)
    float* k = nullptr;           // [B, H, T, dq] assembled keys [k_nope_h | k_pe]
    float* lse = nullptr;         // [B, H, T] log-sum-exp of each row of scaled scores (the backward recomputes
                                  // the probabilities from it: no T x T matrix is kept)
    float* o = nullptr;           // [T, H*v] concatenated head outputs
    const float* cos = nullptr;   // [T, rope/2] (the same positions in every sequence)
    const float* sin = nullptr;   // [T, rope/2]
};

// y[B·T,d] = MLA(x[B·T,d]) over positions given by cos/sin rows (causal within each sequence's T rows).
void mla_forward(const model_config& c, const layer_offsets& l, const float* W, mla_cache& cache, float* y,
                 const float* x, int T, const float* cos, const float* sin, arena& a, int B = 1);
// dx[T,d] += dL/dx; parameter gradients accumulate into G (same layout as W).
void mla_backward(const model_config& c, const layer_offsets& l, const float* W, float* G, const mla_cache& cache,
                  float* dx, const float* dy, arena& a);

// Latent cache of one layer: c_kv [n, kvl] and rotated k_pe [n, rope]; entry j is position j.
struct mla_latent_cache {
    int n = 0;
    std::vector<float> ckv, kpe;
    void truncate(int n_keep) { if (n_keep < n) n = n_keep; }
};

// Absorbed MLA for T new tokens at positions cache.n .. cache.n+T-1: appends their latents, then each attends
// to cache entries 0..its position. y[T,d] written.
void mla_absorbed_forward(const model_config& c, const layer_offsets& l, const float* W, mla_latent_cache& cache,
                          float* y, const float* x, int T, const float* cos, const float* sin, arena& a);

} // namespace mtp
