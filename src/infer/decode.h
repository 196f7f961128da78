// Decode-time forward passes over latent KV caches (spec §3 absorbed MLA, §5 MTP): the trunk and one MTP module
// over m new tokens appended at positions n..n+m-1 of their caches. Same math as model_forward (the KV-cache test
// compares them at every position); only the attention is the absorbed form reading the cache.
#pragma once
#include <vector>

#include "core/arena.h"
#include "model/attention.h"
#include "model/ffn.h"
#include "model/weights.h"

namespace mtp {

// Latent cache of one stack of decoder layers (trunk: num_hidden_layers; an MTP module: 1): c_kv and rotated
// k_pe per token per layer (spec §3). Entry j of every layer is position j.
struct kv_cache {
    std::vector<mla_latent_cache> layers;
    int n = 0;                                   // positions 0..n-1 cached
    void init(int n_layers) { layers.assign(n_layers, mla_latent_cache{}); n = 0; }
    void truncate(int n_keep) {                  // roll back to n_keep positions (never grows)
        if (n_keep < 0) n_keep = 0;
        if (n_keep >= n) return;
        for (auto& l : layers) l.truncate(n_keep);
        n = n_keep;
    }
    size_t bytes() const;                        // memory held by the cache
};

// Per-layer scratch reused across calls (MoE bookkeeping vectors), so decode steps do not reallocate.
struct decode_scratch {
    std::vector<moe_cache> moe;
    std::vector<swiglu_cache> mlp;
};

// y[T,out] = x[T,in] · w[out,in]^T for a few rows against a large weight (the lm_head at decode time): each weight
// row is read once for all T rows, where a BLAS GEMM would first pack the whole weight (measured 4-7x slower for
// 1-4 rows of the 8000x256 head). Every y element is the same fixed-order dot product whatever T is, so a row's
// logits do not depend on how many rows are verified together. Falls back to linear_forward for many rows or small
// weights.
void decode_linear(float* y, const float* x, const float* w, int T, int in, int out);

// Trunk over tokens[0..m) at positions kv.n..kv.n+m-1 (cos/sin: rows for those positions). Writes h[m, d]
// (post model.norm) and, when logits is non-null, logits[m - logits_from, V] for rows logits_from..m-1.
// All temporaries come from `a` and are released before returning.
void decode_trunk(const model_config& c, const model_layout& L, const float* W, kv_cache& kv, decode_scratch& s,
                  const int* tokens, int m, const float* cos, const float* sin, float* h, float* logits,
                  int logits_from, arena& a);

// MTP module k (1..D) over m positions kv.n.. : row i takes hprev[i] = h^{k-1} at that position and tokens[i]
// = t_{pos+k}. Writes h^k [m, d] and optional logits as above; appends to the module's cache.
void decode_mtp(const model_config& c, const model_layout& L, const float* W, int k, kv_cache& kv, decode_scratch& s,
                const float* hprev, const int* tokens, int m, const float* cos, const float* sin, float* h,
                float* logits, int logits_from, arena& a);

} // namespace mtp
