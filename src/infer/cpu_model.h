// infer_model on this engine's CPU kernels: the trunk and every MTP module with its own latent KV cache
// (absorbed MLA, src/infer/decode.h), weights from a loaded model directory. cpu_engine holds what sequences share
// (packed weights, RoPE table) and runs passes; cpu_seq is one sequence (its caches and token-tree bookkeeping) and
// can join a pass with other sequences (the batched server); cpu_model is one engine with one sequence.
#pragma once
#include <string>
#include <vector>

#include "core/arena.h"
#include "infer/decode.h"
#include "infer/infer_model.h"
#include "model/weights.h"

namespace mtp {

// The weights and the pass runner shared by the sequences of one model. Not thread-safe: one thread runs passes.
class cpu_engine {
public:
    // `m` must outlive this object. n_ctx <= 0: max_position_embeddings. `type`: the weight type decoding reads
    // (every packed matrix; embeddings, norms and routers stay f32).
    cpu_engine(const model_files& m, int n_ctx = 0, wtype type = wtype::f32);

    const model_config& config() const { return c_; }
    int n_ctx() const { return n_ctx_; }
    wtype weights_type() const { return dw_.type; }
    size_t packed_bytes() const { return dw_.bytes(); }     // decode-time packed weight copies
    size_t trunk_bytes() const { return dw_.main_bytes(); } // of which one plain step reads
    void set_draft_vocab(const std::vector<int>& ids);
    const std::vector<int>& draft_vocab() const { return dw_.draft_ids; }

    // cos/sin rows [m, rope/2] for positions pos[0..m).
    void rope_rows(const int* pos, int m, std::vector<float>& cos, std::vector<float>& sin);
    // One pass of `stage` (0: trunk, k: MTP module k) over the rows of several sequences.
    void run(int stage, const seq_pass* seqs, int ns);
    long long experts_read(int stage) const { return scratch_.at(size_t(stage)).experts; }

private:
    const model_config& c_;
    const model_layout& L_;
    const float* W_;
    decode_weights dw_;
    int n_ctx_;
    std::vector<double> freqs_;
    std::vector<float> cos_, sin_;        // [n_rope_, rope/2]: rows for positions 0..n_rope_-1
    std::vector<int> pos_;
    int n_rope_ = 0;
    std::vector<decode_scratch> scratch_; // [1 + D]
    arena a_;
};

// The arguments of one eval / eval_tree call (infer_model), kept so that a call can be prepared, run in a batched
// pass and committed (cpu_seq::prepare / commit).
struct eval_call {
    int stage = 0;
    bool tree = false;                    // eval_tree (parent given) or eval (pos0 given)
    int pos0 = 0, m = 0;
    const int* tokens = nullptr;
    const int* parent = nullptr;
    const float* hprev = nullptr;
    float* h = nullptr;
    float* logits = nullptr;
    int logits_from = 0;
    bool draft_vocab = false;

    // The call of infer_model::eval / eval_tree with these arguments.
    static eval_call chain(int stage, int pos0, int m, const int* tokens, const float* hprev, float* h, float* logits,
                           int logits_from, bool draft_vocab) {
        return eval_call{stage, false, pos0, m, tokens, nullptr, hprev, h, logits, logits_from, draft_vocab};
    }
    static eval_call tree_rows(int stage, int m, const int* tokens, const int* parent, const float* hprev, float* h,
                               float* logits, int logits_from, bool draft_vocab) {
        return eval_call{stage, true, 0, m, tokens, parent, hprev, h, logits, logits_from, draft_vocab};
    }
};

// One sequence: the caches of the trunk and of every MTP module, on a shared engine.
class cpu_seq : public infer_model {
public:
    explicit cpu_seq(cpu_engine& e);

    int n_vocab() const override { return e_.config().vocab_size; }
    int n_embd() const override { return e_.config().hidden_size; }
    int n_mtp() const override { return e_.config().n_mtp(); }
    bool mtp_parallel() const override { return e_.config().mtp_parallel; }
    int n_ctx() const override { return e_.n_ctx(); }
    int n_cached(int stage) const override;
    void truncate(int stage, int n) override;
    void eval(int stage, int pos0, int m, const int* tokens, const float* hprev, float* h, float* logits,
              int logits_from = 0, bool draft_vocab = false) override;
    void eval_tree(int stage, int m, const int* tokens, const int* parent, const float* hprev, float* h, float* logits,
                   int logits_from = 0, bool draft_vocab = false) override;
    void keep_path(int stage, int from, const std::vector<int>& slots) override;
    int tree_rows_max() const override { return decode_rows_max; }
    void set_draft_vocab(const std::vector<int>& ids) override { e_.set_draft_vocab(ids); }
    const std::vector<int>& draft_vocab() const override { return e_.draft_vocab(); }
    long long experts_read(int stage) const override { return e_.experts_read(stage); }

    // Batched passes: prepare() checks a call against this sequence (mtp::error as eval would throw) and returns its
    // rows for cpu_engine::run (valid until the next prepare); after the pass, commit() records it. A sequence has
    // at most one call prepared at a time; m == 0 gives a pass entry with no rows.
    seq_pass prepare(const eval_call& x);
    void commit(const eval_call& x);

    const kv_cache& cache(int stage) const { return caches_.at(size_t(stage)); }
    size_t cache_bytes() const;

private:
    void run_one(const eval_call& x);     // prepare, a pass of this sequence alone, commit
    void check_eval(int stage, int m, const int* tokens, const float* hprev, bool draft_vocab, const float* logits,
                    const char* who) const;
    int pos_of(int stage, int s) const;   // position of cache entry s
    int parent_of(int stage, int s) const;

    cpu_engine& e_;
    std::vector<kv_cache> caches_;        // [1 + D]
    // Tree entries: entries below base_[stage] are the chain 0..base-1; entry s >= base has parent
    // tparent_[stage][s - base] and position tpos_[stage][s - base].
    std::vector<int> base_;
    std::vector<std::vector<int>> tparent_, tpos_;
    std::vector<int> toff_, tslots_, trow_pos_;   // scratch: attended entries per row (CSR), positions
    std::vector<float> tcos_, tsin_;
    attn_rows rows_;
    bool chain_ = true;                   // the prepared call is a chain
};

// One engine with one sequence: what generate, bench and the tests use.
class cpu_model final : public infer_model {
public:
    explicit cpu_model(const model_files& m, int n_ctx = 0, wtype type = wtype::f32) : e_(m, n_ctx, type), s_(e_) {}

    int n_vocab() const override { return s_.n_vocab(); }
    int n_embd() const override { return s_.n_embd(); }
    int n_mtp() const override { return s_.n_mtp(); }
    bool mtp_parallel() const override { return s_.mtp_parallel(); }
    int n_ctx() const override { return s_.n_ctx(); }
    int n_cached(int stage) const override { return s_.n_cached(stage); }
    void truncate(int stage, int n) override { s_.truncate(stage, n); }
    void eval(int stage, int pos0, int m, const int* tokens, const float* hprev, float* h, float* logits,
              int logits_from = 0, bool draft_vocab = false) override {
        s_.eval(stage, pos0, m, tokens, hprev, h, logits, logits_from, draft_vocab);
    }
    void eval_tree(int stage, int m, const int* tokens, const int* parent, const float* hprev, float* h, float* logits,
                   int logits_from = 0, bool draft_vocab = false) override {
        s_.eval_tree(stage, m, tokens, parent, hprev, h, logits, logits_from, draft_vocab);
    }
    void keep_path(int stage, int from, const std::vector<int>& slots) override { s_.keep_path(stage, from, slots); }
    int tree_rows_max() const override { return s_.tree_rows_max(); }
    void set_draft_vocab(const std::vector<int>& ids) override { e_.set_draft_vocab(ids); }
    const std::vector<int>& draft_vocab() const override { return e_.draft_vocab(); }
    long long experts_read(int stage) const override { return e_.experts_read(stage); }

    // For tests and memory reports.
    const kv_cache& cache(int stage) const { return s_.cache(stage); }
    size_t cache_bytes() const { return s_.cache_bytes(); }
    size_t packed_bytes() const { return e_.packed_bytes(); }
    size_t trunk_bytes() const { return e_.trunk_bytes(); }
    const model_config& config() const { return e_.config(); }
    wtype weights_type() const { return e_.weights_type(); }

private:
    cpu_engine e_;
    cpu_seq s_;
};

// The value of a `--weights` flag: f32 | bf16 | q8_0, or "" for what the model file stores (bf16 -> bf16,
// GGUF q8_0 -> q8_0, anything else -> f32). Throws mtp::error naming --weights for another value.
wtype weights_type_for(const std::string& flag, const model_files& m);

} // namespace mtp
