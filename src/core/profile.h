// An optional wall-clock profile of the training step by phase (`bench_train --profile`): named phases with
// exclusive time (a phase opened inside another pauses it) and the GEMM FLOPs counted into the phase that runs
// them. Off by default; then a scope costs one branch. Only the thread outside OpenMP regions records.
#pragma once
#include <cstdint>
#include <vector>

namespace mtp {

enum class prof : uint8_t {
    attn_proj,      // MLA projections: q_a / q_b (or q_proj), kv_a, kv_b, o_proj GEMMs
    attn_core,      // per-head scores, causal softmax, context (and their backward)
    mlp_dense,      // dense SwiGLU GEMMs
    mlp_shared,     // shared-expert SwiGLU GEMMs, when they run apart from the routed ones (expert parallelism)
    experts,        // routed-expert SwiGLU GEMMs, and the shared expert's in the same job (model/expert_group.h)
    act,            // SiLU·up elementwise
    router,         // router GEMM, scores, selection, balance loss
    moe_gather,     // gather of expert inputs, scatter-add of outputs
    norm,           // RMSNorm
    rope,           // RoPE
    mtp_proj,       // MTP concat + eh_proj
    lm_head,        // lm_head GEMMs (main and MTP heads)
    cross_entropy,  // softmax + cross-entropy over the vocabulary
    embed,          // embedding rows in / gradient rows out
    optimizer,      // gradient norm, clipping, AdamW
    count
};
const char* prof_name(prof p);

void prof_enable(bool on);
bool prof_enabled();
void prof_add_flops(double flops);        // into the innermost open phase

struct prof_scope {
    explicit prof_scope(prof p);
    ~prof_scope();
    prof_scope(const prof_scope&) = delete;
    prof_scope& operator=(const prof_scope&) = delete;
  private:
    friend struct prof_seq;
    bool active_;
};

// A phase that moves on: set(p) ends the current one and starts p (straight-line code in segments).
struct prof_seq {
    explicit prof_seq(prof p) : scope_(p) {}
    void set(prof p);
  private:
    prof_scope scope_;
};

struct prof_row { prof phase; double seconds = 0, flops = 0; int64_t calls = 0; };
std::vector<prof_row> prof_take();        // every phase's totals since the last take, then reset

} // namespace mtp
