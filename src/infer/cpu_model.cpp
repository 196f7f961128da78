// CPU infer_model: the engine (packed weights, RoPE rows, passes over one or many sequences) and the per-sequence
// state (caches, token trees) with its stage/position contract checks.
#include "infer/cpu_model.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "core/ops.h"
#include "model/rope.h"

namespace mtp {

wtype weights_type_for(const std::string& flag, const model_files& m) {
    if (flag.empty()) return m.storage == "bf16" ? wtype::bf16 : m.storage == "q8_0" ? wtype::q8_0 : wtype::f32;
    wtype t;
    if (!wtype_from_name(flag, t)) fail("--weights", "expected f32, bf16 or q8_0, got " + quoted(flag));
    return t;
}

// ---------------------------------------------------------------------------------------------------------------
// Engine.

cpu_engine::cpu_engine(const model_files& m, int n_ctx, wtype type)
    : c_(m.config), L_(m.layout), W_(m.weights.data()),
      n_ctx_(n_ctx > 0 && n_ctx < m.config.max_position_embeddings ? n_ctx : m.config.max_position_embeddings) {
    freqs_ = rope_frequencies(c_);
    scratch_.resize(1 + c_.n_mtp());
    decode_weights_build(dw_, c_, L_, W_, type);
}

void cpu_engine::set_draft_vocab(const std::vector<int>& ids) {
    if (ids == dw_.draft_ids) return;
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= c_.vocab_size)
            fail("draft vocabulary", "token id " + std::to_string(ids[i]) + " out of range");
        if (i > 0 && ids[i] <= ids[i - 1]) fail("draft vocabulary", "ids must be ascending and distinct");
    }
    decode_weights_set_draft_vocab(dw_, c_, L_, W_, ids);
}

// cos/sin rows from a table of every position seen so far, computed once (rope_table per position: the same values).
void cpu_engine::rope_rows(const int* pos, int m, std::vector<float>& cos, std::vector<float>& sin) {
    int need = 0;
    for (int i = 0; i < m; ++i) need = std::max(need, pos[i] + 1);
    const int half = c_.qk_rope_head_dim / 2;
    if (need > n_rope_) {
        const int from = n_rope_, to = std::max(need, std::min(n_ctx_, 2 * n_rope_ + 64));
        pos_.resize(to - from);
        for (int i = from; i < to; ++i) pos_[i - from] = i;
        cos_.resize(size_t(to) * half);
        sin_.resize(size_t(to) * half);
        rope_table(freqs_, pos_.data(), to - from, cos_.data() + size_t(from) * half, sin_.data() + size_t(from) * half,
                   rope_attention_factor(c_));
        n_rope_ = to;
    }
    cos.resize(size_t(m) * half + 1);
    sin.resize(size_t(m) * half + 1);
    for (int i = 0; i < m; ++i) {
        std::copy_n(cos_.data() + size_t(pos[i]) * half, half, cos.data() + size_t(i) * half);
        std::copy_n(sin_.data() + size_t(pos[i]) * half, half, sin.data() + size_t(i) * half);
    }
}

void cpu_engine::run(int stage, const seq_pass* seqs, int ns) {
    if (stage < 0 || stage > c_.n_mtp()) fail("cpu_engine::run", "no stage " + std::to_string(stage));
    a_.reset();
    serial_ops_scope serial;   // no OpenMP forks for a pass's norms and adds: see core/ops.h
    if (stage == 0) decode_trunk_batch(c_, L_, W_, dw_, seqs, ns, scratch_[0], a_);
    else decode_mtp_batch(c_, L_, W_, dw_, stage, seqs, ns, scratch_[size_t(stage)], a_);
}

// ---------------------------------------------------------------------------------------------------------------
// Sequence.

cpu_seq::cpu_seq(cpu_engine& e) : e_(e) {
    const model_config& c = e.config();
    caches_.resize(1 + c.n_mtp());
    caches_[0].init(c.num_hidden_layers);
    for (int k = 1; k <= c.n_mtp(); ++k) caches_[size_t(k)].init(1);
    base_.assign(1 + c.n_mtp(), 0);
    tparent_.resize(1 + c.n_mtp());
    tpos_.resize(1 + c.n_mtp());
}

int cpu_seq::n_cached(int stage) const {
    if (stage < 0 || stage > n_mtp()) fail("cpu_model", "no stage " + std::to_string(stage));
    return caches_[size_t(stage)].n;
}

void cpu_seq::truncate(int stage, int n) {
    if (stage < 0 || stage > n_mtp()) fail("cpu_model", "no stage " + std::to_string(stage));
    kv_cache& kv = caches_[size_t(stage)];
    kv.truncate(n);
    base_[size_t(stage)] = std::min(base_[size_t(stage)], kv.n);
    tparent_[size_t(stage)].resize(size_t(kv.n - base_[size_t(stage)]));
    tpos_[size_t(stage)].resize(size_t(kv.n - base_[size_t(stage)]));
}

size_t cpu_seq::cache_bytes() const {
    size_t b = 0;
    for (const auto& kv : caches_) b += kv.bytes();
    return b;
}

void cpu_seq::check_eval(int stage, int m, const int* tokens, const float* hprev, bool draft_vocab,
                         const float* logits, const char* who) const {
    const int V = n_vocab();
    const bool reads_tokens = stage == 0 || !e_.config().mtp_parallel;    // parallel heads read none
    for (int i = 0; i < m && reads_tokens; ++i)
        if (tokens[i] < 0 || tokens[i] >= V) fail(who, "token id " + std::to_string(tokens[i]) + " out of range");
    if (stage > 0 && !hprev) fail(who, "MTP stage needs hprev");
    if (draft_vocab && logits && e_.draft_vocab().empty()) fail(who, "no draft vocabulary set");
}

int cpu_seq::pos_of(int stage, int s) const {
    const int b = base_[size_t(stage)];
    return s < b ? s : tpos_[size_t(stage)][size_t(s - b)];
}

int cpu_seq::parent_of(int stage, int s) const {
    const int b = base_[size_t(stage)];
    return s < b ? s - 1 : tparent_[size_t(stage)][size_t(s - b)];
}

seq_pass cpu_seq::prepare(const eval_call& x) {
    const int stage = x.stage, m = x.m;
    const char* who = x.tree ? "cpu_model::eval_tree" : "cpu_model::eval";
    if (stage < 0 || stage > n_mtp()) fail(who, "no stage " + std::to_string(stage));
    kv_cache& kv = caches_[size_t(stage)];
    const int n0 = kv.n, n_ctx = e_.n_ctx();
    seq_pass sp;
    sp.kv = &kv;
    chain_ = true;
    if (m <= 0) return sp;
    if (x.tree) {
        if (m > decode_rows_max)
            fail(who, std::to_string(m) + " rows exceed the tree limit of " + std::to_string(decode_rows_max));
        bool chain = base_[size_t(stage)] == n0;
        for (int i = 0; i < m; ++i) {
            if (x.parent[i] < -1 || x.parent[i] >= n0 + i)
                fail(who, "row " + std::to_string(i) + ": parent " + std::to_string(x.parent[i]) +
                              " is not an earlier entry");
            chain = chain && x.parent[i] == n0 + i - 1;
        }
        chain_ = chain;
    } else {
        if (x.pos0 != n0)
            fail(who, "stage " + std::to_string(stage) + ": position " + std::to_string(x.pos0) +
                          " is not the cache end " + std::to_string(n0));
        if (base_[size_t(stage)] != n0)
            fail(who, "stage " + std::to_string(stage) + " holds tree entries (keep_path or truncate first)");
        if (x.pos0 + m > n_ctx)
            fail(who, "positions up to " + std::to_string(x.pos0 + m - 1) + " exceed the context of " +
                          std::to_string(n_ctx));
    }
    check_eval(stage, m, x.tokens, x.hprev, x.draft_vocab, x.logits, who);
    trow_pos_.resize(size_t(m));
    sp.rows = nullptr;
    if (chain_) {
        if (n0 + m > n_ctx)
            fail(who, "positions up to " + std::to_string(n0 + m - 1) + " exceed the context of " +
                          std::to_string(n_ctx));
        for (int i = 0; i < m; ++i) trow_pos_[size_t(i)] = n0 + i;
    } else {
        const int b = base_[size_t(stage)];
        const std::vector<int>& tp = tparent_[size_t(stage)];
        int maxpos = 0;
        for (int i = 0; i < m; ++i) {             // positions (rows before i are entries now too)
            const int p = x.parent[i];
            trow_pos_[size_t(i)] = p < 0 ? 0 : p < n0 ? pos_of(stage, p) + 1 : trow_pos_[size_t(p - n0)] + 1;
            maxpos = std::max(maxpos, trow_pos_[size_t(i)]);
        }
        if (maxpos >= n_ctx)
            fail(who, "position " + std::to_string(maxpos) + " exceeds the context of " + std::to_string(n_ctx));
        toff_.assign(1, 0);
        tslots_.clear();
        for (int i = 0; i < m; ++i) {             // attended entries: ancestors walked down, then reversed
            const size_t first = tslots_.size();
            tslots_.push_back(n0 + i);
            int p = x.parent[i];
            while (p >= b) {
                tslots_.push_back(p);
                p = p >= n0 ? x.parent[p - n0] : tp[size_t(p - b)];
            }
            for (; p >= 0; --p) tslots_.push_back(p);
            std::reverse(tslots_.begin() + std::ptrdiff_t(first), tslots_.end());
            toff_.push_back(int(tslots_.size()));
        }
        rows_ = attn_rows{toff_.data(), tslots_.data()};
        sp.rows = &rows_;
    }
    e_.rope_rows(trow_pos_.data(), m, tcos_, tsin_);
    sp.m = m;
    sp.tokens = stage > 0 && e_.config().mtp_parallel ? nullptr : x.tokens;
    sp.hprev = x.hprev;
    sp.cos = tcos_.data();
    sp.sin = tsin_.data();
    sp.h = x.h;
    sp.logits = x.logits;
    sp.logits_from = x.logits_from;
    sp.head = x.draft_vocab ? head_kind::draft : head_kind::full;
    return sp;
}

void cpu_seq::commit(const eval_call& x) {
    if (x.m <= 0) return;
    const size_t st = size_t(x.stage);
    if (chain_) {
        base_[st] = caches_[st].n;
        return;
    }
    for (int i = 0; i < x.m; ++i) {
        tparent_[st].push_back(x.parent[i]);
        tpos_[st].push_back(trow_pos_[size_t(i)]);
    }
}

void cpu_seq::eval(int stage, int pos0, int m, const int* tokens, const float* hprev, float* h, float* logits,
                   int logits_from, bool draft_vocab) {
    run_one(eval_call::chain(stage, pos0, m, tokens, hprev, h, logits, logits_from, draft_vocab));
}

void cpu_seq::eval_tree(int stage, int m, const int* tokens, const int* parent, const float* hprev, float* h,
                        float* logits, int logits_from, bool draft_vocab) {
    run_one(eval_call::tree_rows(stage, m, tokens, parent, hprev, h, logits, logits_from, draft_vocab));
}

void cpu_seq::run_one(const eval_call& x) {
    const seq_pass sp = prepare(x);
    if (x.m <= 0) return;
    e_.run(x.stage, &sp, 1);
    commit(x);
}

void cpu_seq::keep_path(int stage, int from, const std::vector<int>& slots) {
    const char* who = "cpu_model::keep_path";
    if (stage < 0 || stage > n_mtp()) fail(who, "no stage " + std::to_string(stage));
    kv_cache& kv = caches_[size_t(stage)];
    if (from < 0 || from > base_[size_t(stage)]) fail(who, "entries before " + std::to_string(from) + " are not a chain");
    for (size_t j = 0; j < slots.size(); ++j) {
        const int s = slots[j];
        const int want = j == 0 ? from - 1 : slots[j - 1];
        if (s < from || s >= kv.n || parent_of(stage, s) != want)
            fail(who, "entry " + std::to_string(s) + " does not extend the path");
    }
    kv.keep(from, slots, e_.config().kv_lora_rank, e_.config().qk_rope_head_dim);
    base_[size_t(stage)] = kv.n;
    tparent_[size_t(stage)].clear();
    tpos_[size_t(stage)].clear();
}

} // namespace mtp
