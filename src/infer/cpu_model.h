// infer_model on this engine's CPU kernels: the trunk and every MTP module with its own latent KV cache
// (absorbed MLA, src/infer/decode.h), weights from a loaded model directory.
#pragma once
#include <string>
#include <vector>

#include "core/arena.h"
#include "infer/decode.h"
#include "infer/infer_model.h"
#include "model/weights.h"

namespace mtp {

class cpu_model final : public infer_model {
public:
    // `m` must outlive this object. n_ctx <= 0: max_position_embeddings. `type`: the weight type decoding reads
    // (every packed matrix; embeddings, norms and routers stay f32).
    explicit cpu_model(const model_files& m, int n_ctx = 0, wtype type = wtype::f32);

    int n_vocab() const override { return c_.vocab_size; }
    int n_embd() const override { return c_.hidden_size; }
    int n_mtp() const override { return c_.n_mtp(); }
    int n_ctx() const override { return n_ctx_; }
    int n_cached(int stage) const override;
    void truncate(int stage, int n) override;
    void eval(int stage, int pos0, int m, const int* tokens, const float* hprev, float* h, float* logits,
              int logits_from = 0, bool draft_vocab = false) override;
    void eval_tree(int stage, int m, const int* tokens, const int* parent, const float* hprev, float* h, float* logits,
                   int logits_from = 0, bool draft_vocab = false) override;
    void keep_path(int stage, int from, const std::vector<int>& slots) override;
    int tree_rows_max() const override { return decode_rows_max; }
    void set_draft_vocab(const std::vector<int>& ids) override;
    const std::vector<int>& draft_vocab() const override { return dw_.draft_ids; }
    long long experts_read(int stage) const override { return scratch_.at(stage).experts; }

    // For tests and memory reports.
    const kv_cache& cache(int stage) const { return caches_.at(stage); }
    size_t cache_bytes() const;
    size_t packed_bytes() const { return dw_.bytes(); }   // decode-time packed weight copies
    size_t trunk_bytes() const { return dw_.main_bytes(); }  // of which one plain step reads
    const model_config& config() const { return c_; }
    wtype weights_type() const { return dw_.type; }

private:
    void check_eval(int stage, int m, const int* tokens, const float* hprev, bool draft_vocab, const float* logits,
                    const char* who) const;
    void ensure_rope(int n);              // cos_/sin_ rows for positions 0..n-1
    int pos_of(int stage, int s) const;   // position of cache entry s
    int parent_of(int stage, int s) const;

    const model_config& c_;
    const model_layout& L_;
    const float* W_;
    decode_weights dw_;
    int n_ctx_;
    std::vector<double> freqs_;
    std::vector<kv_cache> caches_;        // [1 + D]
    // Tree entries: entries below base_[stage] are the chain 0..base-1; entry s >= base has parent
    // tparent_[stage][s - base] and position tpos_[stage][s - base].
    std::vector<int> base_;
    std::vector<std::vector<int>> tparent_, tpos_;
    std::vector<int> toff_, tslots_, trow_pos_;   // scratch: attended entries per row (CSR), positions
    std::vector<float> tcos_, tsin_;
    std::vector<decode_scratch> scratch_; // [1 + D]
    std::vector<int> pos_;
    std::vector<float> cos_, sin_;        // [n_rope_, rope/2]: rows for positions 0..n_rope_-1
    int n_rope_ = 0;
    arena a_;
};

// The value of a `--weights` flag: f32 | bf16 | q8_0, or "" for what the model file stores (bf16 -> bf16,
// GGUF q8_0 -> q8_0, anything else -> f32). Throws mtp::error naming --weights for another value.
wtype weights_type_for(const std::string& flag, const model_files& m);

} // namespace mtp
