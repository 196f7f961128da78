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
    base_.assign(1 + c_.n_mtp(), 0);
    tparent_.resize(1 + c_.n_mtp());
    tpos_.resize(1 + c_.n_mtp());
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
    kv_cache& kv = caches_[stage];
    kv.truncate(n);
    base_[stage] = std::min(base_[stage], kv.n);
    tparent_[stage].resize(size_t(kv.n - base_[stage]));
    tpos_[stage].resize(size_t(kv.n - base_[stage]));
}

size_t cpu_model::cache_bytes() const {
    size_t b = 0;
    for (const auto& kv : caches_) b += kv.bytes();
    return b;
}

void cpu_model::check_eval(int stage, int m, const int* tokens, const float* hprev, bool draft_vocab,
                           const float* logits, const char* who) const {
    for (int i = 0; i < m; ++i)
        if (tokens[i] < 0 || tokens[i] >= c_.vocab_size)
            fail(who, "token id " + std::to_string(tokens[i]) + " out of range");
    if (stage > 0 && !hprev) fail(who, "MTP stage needs hprev");
    if (draft_vocab && logits && dw_.draft_ids.empty()) fail(who, "no draft vocabulary set");
}

// cos/sin rows of every position seen so far, computed once (rope_table per position: the same values).
void cpu_model::ensure_rope(int n) {
    if (n <= n_rope_) return;
    const int half = c_.qk_rope_head_dim / 2;
    const int from = n_rope_, to = std::max(n, std::min(n_ctx_, 2 * n_rope_ + 64));
    pos_.resize(to - from);
    for (int i = from; i < to; ++i) pos_[i - from] = i;
    cos_.resize(size_t(to) * half);
    sin_.resize(size_t(to) * half);
    rope_table(freqs_, pos_.data(), to - from, cos_.data() + size_t(from) * half, sin_.data() + size_t(from) * half,
               rope_attention_factor(c_));
    n_rope_ = to;
}

int cpu_model::pos_of(int stage, int s) const {
    const int b = base_[stage];
    return s < b ? s : tpos_[stage][s - b];
}

int cpu_model::parent_of(int stage, int s) const {
    const int b = base_[stage];
    return s < b ? s - 1 : tparent_[stage][s - b];
}

void cpu_model::eval(int stage, int pos0, int m, const int* tokens, const float* hprev, float* h, float* logits,
                     int logits_from, bool draft_vocab) {
    if (stage < 0 || stage > c_.n_mtp()) fail("cpu_model::eval", "no stage " + std::to_string(stage));
    kv_cache& kv = caches_[stage];
    if (pos0 != kv.n)
        fail("cpu_model::eval", "stage " + std::to_string(stage) + ": position " + std::to_string(pos0) +
                                    " is not the cache end " + std::to_string(kv.n));
    if (base_[stage] != kv.n)
        fail("cpu_model::eval", "stage " + std::to_string(stage) + " holds tree entries (keep_path or truncate first)");
    if (m <= 0) return;
    if (pos0 + m > n_ctx_)
        fail("cpu_model::eval", "positions up to " + std::to_string(pos0 + m - 1) + " exceed the context of " +
                                    std::to_string(n_ctx_));
    check_eval(stage, m, tokens, hprev, draft_vocab, logits, "cpu_model::eval");
    const head_kind hk = draft_vocab ? head_kind::draft : head_kind::full;
    ensure_rope(pos0 + m);
    const int half = c_.qk_rope_head_dim / 2;
    const float* cs = cos_.data() + size_t(pos0) * half;
    const float* sn = sin_.data() + size_t(pos0) * half;
    a_.reset();
    if (stage == 0)
        decode_trunk(c_, L_, W_, dw_, kv, scratch_[0], tokens, m, cs, sn, h, logits, logits_from, hk, a_);
    else
        decode_mtp(c_, L_, W_, dw_, stage, kv, scratch_[stage], hprev, tokens, m, cs, sn, h, logits, logits_from, hk,
                   a_);
    base_[stage] = kv.n;
}

void cpu_model::eval_tree(int stage, int m, const int* tokens, const int* parent, const float* hprev, float* h,
                          float* logits, int logits_from, bool draft_vocab) {
    const char* who = "cpu_model::eval_tree";
    if (stage < 0 || stage > c_.n_mtp()) fail(who, "no stage " + std::to_string(stage));
    kv_cache& kv = caches_[stage];
    const int n0 = kv.n;
    if (m <= 0) return;
    if (m > decode_rows_max)
        fail(who, std::to_string(m) + " rows exceed the tree limit of " + std::to_string(decode_rows_max));
    bool chain = base_[stage] == n0;
    for (int i = 0; i < m; ++i) {
        if (parent[i] < -1 || parent[i] >= n0 + i)
            fail(who, "row " + std::to_string(i) + ": parent " + std::to_string(parent[i]) + " is not an earlier entry");
        chain = chain && parent[i] == n0 + i - 1;
    }
    if (chain) return eval(stage, n0, m, tokens, hprev, h, logits, logits_from, draft_vocab);
    check_eval(stage, m, tokens, hprev, draft_vocab, logits, who);
    const int b = base_[stage];
    std::vector<int>& tp = tparent_[stage];
    std::vector<int>& tq = tpos_[stage];
    trow_pos_.resize(m);
    int maxpos = 0;
    for (int i = 0; i < m; ++i) {                 // positions (rows before i are entries now too)
        const int p = parent[i];
        trow_pos_[i] = p < 0 ? 0 : p < n0 ? pos_of(stage, p) + 1 : trow_pos_[p - n0] + 1;
        maxpos = std::max(maxpos, trow_pos_[i]);
    }
    if (maxpos >= n_ctx_)
        fail(who, "position " + std::to_string(maxpos) + " exceeds the context of " + std::to_string(n_ctx_));
    toff_.assign(1, 0);
    tslots_.clear();
    for (int i = 0; i < m; ++i) {                 // attended entries: ancestors walked down, then reversed
        const size_t first = tslots_.size();
        tslots_.push_back(n0 + i);
        int p = parent[i];
        while (p >= b) {
            tslots_.push_back(p);
            p = p >= n0 ? parent[p - n0] : tp[p - b];
        }
        for (; p >= 0; --p) tslots_.push_back(p);
        std::reverse(tslots_.begin() + first, tslots_.end());
        toff_.push_back(int(tslots_.size()));
    }
    ensure_rope(maxpos + 1);
    const int half = c_.qk_rope_head_dim / 2;
    tcos_.resize(size_t(m) * half);
    tsin_.resize(size_t(m) * half);
    for (int i = 0; i < m; ++i) {
        std::copy_n(cos_.data() + size_t(trow_pos_[i]) * half, half, tcos_.data() + size_t(i) * half);
        std::copy_n(sin_.data() + size_t(trow_pos_[i]) * half, half, tsin_.data() + size_t(i) * half);
    }
    const attn_rows rows{toff_.data(), tslots_.data()};
    const head_kind hk = draft_vocab ? head_kind::draft : head_kind::full;
    a_.reset();
    if (stage == 0)
        decode_trunk(c_, L_, W_, dw_, kv, scratch_[0], tokens, m, tcos_.data(), tsin_.data(), h, logits, logits_from,
                     hk, a_, &rows);
    else
        decode_mtp(c_, L_, W_, dw_, stage, kv, scratch_[stage], hprev, tokens, m, tcos_.data(), tsin_.data(), h,
                   logits, logits_from, hk, a_, &rows);
    for (int i = 0; i < m; ++i) {
        tp.push_back(parent[i]);
        tq.push_back(trow_pos_[i]);
    }
}

void cpu_model::keep_path(int stage, int from, const std::vector<int>& slots) {
    const char* who = "cpu_model::keep_path";
    if (stage < 0 || stage > c_.n_mtp()) fail(who, "no stage " + std::to_string(stage));
    kv_cache& kv = caches_[stage];
    if (from < 0 || from > base_[stage]) fail(who, "entries before " + std::to_string(from) + " are not a chain");
    for (size_t j = 0; j < slots.size(); ++j) {
        const int s = slots[j];
        const int want = j == 0 ? from - 1 : slots[j - 1];
        if (s < from || s >= kv.n || parent_of(stage, s) != want)
            fail(who, "entry " + std::to_string(s) + " does not extend the path");
    }
    kv.keep(from, slots, c_.kv_lora_rank, c_.qk_rope_head_dim);
    base_[stage] = kv.n;
    tparent_[stage].clear();
    tpos_[stage].clear();
}

} // namespace mtp
