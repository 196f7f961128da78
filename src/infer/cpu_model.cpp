// CPU infer_model: checks the stage/position contract, builds RoPE rows, and calls the decode forwards.
#include "infer/cpu_model.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "model/rope.h"

namespace mtp {

wtype weights_type_for(const std::string& flag, const model_files& m) {
    if (flag.empty()) return m.storage == "bf16" ? wtype::bf16 : m.storage == "q8_0" ? wtype::q8_0 : wtype::f32;
    wtype t;
    if (!wtype_from_name(flag, t)) fail("--weights", "expected f32, bf16 or q8_0, got " + quoted(flag));
    return t;
}

cpu_model::cpu_model(const model_files& m, int n_ctx, wtype type)
    : c_(m.config), L_(m.layout), W_(m.weights.data()),
      n_ctx_(n_ctx > 0 && n_ctx < m.config.max_position_embeddings ? n_ctx : m.config.max_position_embeddings) {
    freqs_ = rope_frequencies(c_);
    caches_.resize(1 + c_.n_mtp());
    caches_[0].init(c_.num_hidden_layers);
    for (int k = 1; k <= c_.n_mtp(); ++k) caches_[k].init(1);
    scratch_.resize(1 + c_.n_mtp());
    decode_weights_build(dw_, c_, L_, W_, type);
}

void cpu_model::set_draft_vocab(const std::vector<int>& ids) {
    if (ids == dw_.draft_ids) return;
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= c_.vocab_size)
            fail("draft vocabulary", "token id " + std::to_string(ids[i]) + " out of range");
        if (i > 0 && ids[i] <= ids[i - 1]) fail("draft vocabulary", "ids must be ascending and distinct");
    }
    decode_weights_set_draft_vocab(dw_, c_, L_, W_, ids);
}

int cpu_model::n_cached(int stage) const {
    if (stage < 0 || stage > c_.n_mtp()) fail("cpu_model", "no stage " + std::to_string(stage));
    return caches_[stage].n;
}

void cpu_model::truncate(int stage, int n) {
    if (stage < 0 || stage > c_.n_mtp()) fail("cpu_model", "no stage " + std::to_string(stage));
    caches_[stage].truncate(n);
}

size_t cpu_model::cache_bytes() const {
    size_t b = 0;
    for (const auto& kv : caches_) b += kv.bytes();
    return b;
}

void cpu_model::eval(int stage, int pos0, int m, const int* tokens, const float* hprev, float* h, float* logits,
                     int logits_from, bool draft_vocab) {
    if (stage < 0 || stage > c_.n_mtp()) fail("cpu_model::eval", "no stage " + std::to_string(stage));
    kv_cache& kv = caches_[stage];
    if (pos0 != kv.n)
        fail("cpu_model::eval", "stage " + std::to_string(stage) + ": position " + std::to_string(pos0) +
                                    " is not the cache end " + std::to_string(kv.n));
    if (m <= 0) return;
    if (pos0 + m > n_ctx_)
        fail("cpu_model::eval", "positions up to " + std::to_string(pos0 + m - 1) + " exceed the context of " +
                                    std::to_string(n_ctx_));
    for (int i = 0; i < m; ++i)
        if (tokens[i] < 0 || tokens[i] >= c_.vocab_size)
            fail("cpu_model::eval", "token id " + std::to_string(tokens[i]) + " out of range");
    if (stage > 0 && !hprev) fail("cpu_model::eval", "MTP stage needs hprev");
    if (draft_vocab && logits && dw_.draft_ids.empty()) fail("cpu_model::eval", "no draft vocabulary set");
    const head_kind hk = draft_vocab ? head_kind::draft : head_kind::full;
    // cos/sin rows of every position seen so far, computed once (rope_table per position: the same values).
    const int half = c_.qk_rope_head_dim / 2;
    if (pos0 + m > n_rope_) {
        const int from = n_rope_, to = std::max(pos0 + m, std::min(n_ctx_, 2 * n_rope_ + 64));
        pos_.resize(to - from);
        for (int i = from; i < to; ++i) pos_[i - from] = i;
        cos_.resize(size_t(to) * half);
        sin_.resize(size_t(to) * half);
        rope_table(freqs_, pos_.data(), to - from, cos_.data() + size_t(from) * half, sin_.data() + size_t(from) * half);
        n_rope_ = to;
    }
    const float* cs = cos_.data() + size_t(pos0) * half;
    const float* sn = sin_.data() + size_t(pos0) * half;
    a_.reset();
    if (stage == 0)
        decode_trunk(c_, L_, W_, dw_, kv, scratch_[0], tokens, m, cs, sn, h, logits, logits_from,
                     hk, a_);
    else
        decode_mtp(c_, L_, W_, dw_, stage, kv, scratch_[stage], hprev, tokens, m, cs, sn, h, logits,
                   logits_from, hk, a_);
}

} // namespace mtp
