// Decode-time forward passes over latent KV caches (spec §3 absorbed MLA, §5 MTP): the trunk and one MTP module
// over m new tokens appended at positions n..n+m-1 of their caches. Same math as model_forward (the KV-cache test
// compares them at every position); the attention is the absorbed form reading the cache.
//
// Every pass, from one plain token to a long prompt chunk, goes through gemv_packed (src/core/gemv.h) on weights
// packed once (decode_weights), which reads each weight once for all rows; attention, norms, RoPE, routing and
// activations are computed row by row in a fixed order. A row's hidden state, cache entries and logits are
// therefore bitwise the same whether it is computed alone, together with other rows of its sequence, or together
// with the rows of other sequences (a batched pass, decode_trunk_batch) (tested). So a cache entry depends only on
// the tokens up to it, never on how the passes were split: speculative greedy decoding reproduces plain greedy
// decoding exactly, a prompt reused from a cache continues exactly as if it had been computed again, and a server
// batching many requests gives each the output it would get alone, for any thread count.
#pragma once
#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "core/gemv.h"
#include "model/attention.h"
#include "model/ffn.h"
#include "model/weights.h"

namespace mtp {

constexpr int decode_rows_max = 80;

// The row-wise steps between a pass's products (norms, residual adds, activations) are shared with the task_pool
// helpers in blocks of rows once the rows hold this many elements of work (default 4096). For tests: 0 splits
// every pass of two or more rows. Returns the previous value.
size_t decode_set_row_split_min(size_t elements);

// The latent cache of one layer again, in panels of 16 positions ([n/16][kv_lora][16] and [n/16][rope][16], the
// gemv_panels layout), so that the attention scores of all heads and rows are one multi-row GEMV over the cache.
constexpr int latent_panel_width = 16;
struct latent_panels {
    std::vector<float> ckv, kpe;
};

// Latent cache of one stack of decoder layers (trunk: num_hidden_layers; an MTP module: 1): c_kv and rotated
// k_pe per token per layer (spec §3). Entry j of every layer is position j.
struct kv_cache {
    std::vector<mla_latent_cache> layers;
    std::vector<latent_panels> panels;           // [layer]: the same entries, position-panel layout
    int n = 0;                                   // positions 0..n-1 cached
    void init(int n_layers) {
        layers.assign(n_layers, mla_latent_cache{});
        panels.assign(n_layers, latent_panels{});
        n = 0;
    }
    void truncate(int n_keep) {                  // roll back to n_keep positions (never grows)
        if (n_keep < 0) n_keep = 0;
        if (n_keep >= n) return;
        for (auto& l : layers) l.truncate(n_keep);
        n = n_keep;
    }
    size_t bytes() const;                        // memory held by the cache
    // Keeps entries `slots` (ascending, each >= from) as positions from, from+1, .. and drops every entry past
    // them (tree verification: the accepted path becomes the cache's continuation).
    void keep(int from, const std::vector<int>& slots, int kv_lora, int rope);
};

// Which cache entries each new row attends to when they are not the causal chain (a token tree): row t attends
// to entries slots[off[t] .. off[t+1]), ascending, its own entry last. Null: row t attends to 0..n0+t.
struct attn_rows {
    const int* off = nullptr;                    // [m + 1]
    const int* slots = nullptr;
};

// What a pass reports.
struct decode_scratch {
    int64_t experts = 0;                         // distinct routed experts the last pass read (all layers)
};

// Decode-time copies of the weights in the packed layout (built once per model; ~the size of the weights the
// decode path touches).
struct decode_ffn {
    packed_weight gate_up;                       // [gate; up] stacked: [2*inner, d]
    packed_weight down;                          // [d, inner]
    int inner = 0;
};
struct decode_layer_weights {
    packed_weight in_proj;                       // [q_a (or q_proj); kv_a_proj_with_mqa] stacked, in = d
    packed_weight q_b;                           // empty without q_lora
    std::vector<packed_weight> uk;               // [H] W_UK_h^T: q_nope_h -> q_abs_h (out kv_lora, in nope)
    std::vector<packed_weight> uv;               // [H] W_UV_h: latent output -> o_h (out v, in kv_lora)
    packed_weight o_proj;
    bool moe = false;
    decode_ffn mlp;                              // dense layer
    packed_weight router;                        // [E, d]
    std::vector<decode_ffn> experts;             // [E]
    decode_ffn shared;                           // inner 0: none
};
struct decode_weights {
    wtype type = wtype::f32;                     // every packed matrix but the routers (kept f32, as GGUF does)
    std::vector<decode_layer_weights> layers;    // trunk
    std::vector<decode_layer_weights> mtp;       // the decoder layer of each MTP module
    std::vector<packed_weight> eh_proj;          // [D]
    packed_weight lm_head;
    packed_weight draft_head;                    // lm_head rows of the draft vocabulary (FR-Spec); empty: none
    std::vector<int> draft_ids;                  // its token ids, ascending
    size_t bytes() const;
    size_t main_bytes() const;                   // what one main-model step reads: trunk layers + lm_head
};

void decode_weights_build(decode_weights& dw, const model_config& c, const model_layout& L, const float* W,
                          wtype type = wtype::f32);
// Restricts the draft head to `ids` (ascending, distinct, < vocab); empty removes it.
void decode_weights_set_draft_vocab(decode_weights& dw, const model_config& c, const model_layout& L, const float* W,
                                    const std::vector<int>& ids);

// Which head computes logits.
enum class head_kind { full, draft };

// One sequence's rows in a batched pass: m tokens appended as entries kv->n.. of its cache. cos/sin: rows for their
// positions [m, rope/2]; rows: a token tree (null: the causal chain). Writes h[m, d] and, when logits is non-null,
// logits[m - logits_from, V] for rows logits_from..m-1 (V = the draft vocabulary size with head_kind::draft).
// The sequences of one pass have distinct caches (their appends run side by side).
struct seq_pass {
    kv_cache* kv = nullptr;
    int m = 0;
    const int* tokens = nullptr;                 // [m]
    const float* hprev = nullptr;                // [m, d]: h^{k-1} (MTP module k only)
    const float* cos = nullptr;
    const float* sin = nullptr;
    const attn_rows* rows = nullptr;
    float* h = nullptr;
    float* logits = nullptr;
    int logits_from = 0;
    head_kind head = head_kind::full;
};

// The trunk, or MTP module k, over the rows of ns sequences in one pass (each row's result as if it were alone; the
// weights are read once for all of them). All temporaries come from `a`.
void decode_trunk_batch(const model_config& c, const model_layout& L, const float* W, const decode_weights& dw,
                        const seq_pass* seqs, int ns, decode_scratch& s, arena& a);
void decode_mtp_batch(const model_config& c, const model_layout& L, const float* W, const decode_weights& dw, int k,
                      const seq_pass* seqs, int ns, decode_scratch& s, arena& a);

// Trunk over tokens[0..m) appended as cache entries kv.n..kv.n+m-1 (cos/sin: rows for their positions, which are
// kv.n.. unless `rows` makes them a tree; a tree needs m <= decode_rows_max, the most rows a tree may have). Writes h[m, d]
// (post model.norm) and, when logits is non-null, logits[m - logits_from, V] for rows logits_from..m-1
// (V = the draft vocabulary size with head_kind::draft). All temporaries come from `a`.
void decode_trunk(const model_config& c, const model_layout& L, const float* W, const decode_weights& dw, kv_cache& kv,
                  decode_scratch& s, const int* tokens, int m, const float* cos, const float* sin, float* h,
                  float* logits, int logits_from, head_kind head, arena& a, const attn_rows* rows = nullptr);

// MTP module k (1..D) over m positions kv.n.. : row i takes hprev[i] = h^{k-1} at that position and tokens[i]
// = t_{pos+k}. Writes h^k [m, d] and optional logits as above; appends to the module's cache.
void decode_mtp(const model_config& c, const model_layout& L, const float* W, const decode_weights& dw, int k,
                kv_cache& kv, decode_scratch& s, const float* hprev, const int* tokens, int m, const float* cos,
                const float* sin, float* h, float* logits, int logits_from, head_kind head, arena& a,
                const attn_rows* rows = nullptr);

} // namespace mtp
