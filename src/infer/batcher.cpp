// Continuous batching of sequences driven by their own threads: blocking model views and the pass runner.
#include "infer/batcher.h"

#include <algorithm>

#include "core/error.h"
#include "core/task_pool.h"

namespace mtp {

// Sequence i as an infer_model: state queries and rollbacks act on its cpu_seq directly (its thread owns it between
// calls); eval / eval_tree go to the runner.
struct batcher::member final : infer_model {
    batcher& b;
    int i;
    cpu_seq& s;
    member(batcher& b_, int i_, cpu_seq& s_) : b(b_), i(i_), s(s_) {}
    int n_vocab() const override { return s.n_vocab(); }
    int n_embd() const override { return s.n_embd(); }
    int n_mtp() const override { return s.n_mtp(); }
    bool mtp_parallel() const override { return s.mtp_parallel(); }
    int n_ctx() const override { return s.n_ctx(); }
    int n_cached(int stage) const override { return s.n_cached(stage); }
    void truncate(int stage, int n) override { s.truncate(stage, n); }
    void eval(int stage, int pos0, int m, const int* tokens, const float* hprev, float* h, float* logits,
              int logits_from, bool draft_vocab) override {
        b.submit(i, eval_call::chain(stage, pos0, m, tokens, hprev, h, logits, logits_from, draft_vocab));
    }
    void eval_tree(int stage, int m, const int* tokens, const int* parent, const float* hprev, float* h,
                   float* logits, int logits_from, bool draft_vocab) override {
        b.submit(i, eval_call::tree_rows(stage, m, tokens, parent, hprev, h, logits, logits_from, draft_vocab));
    }
    void keep_path(int stage, int from, const std::vector<int>& slots) override { s.keep_path(stage, from, slots); }
    int tree_rows_max() const override { return s.tree_rows_max(); }
    // The draft vocabulary lives in the shared engine: set it before the threads start; setting the same one again
    // (every generator does) changes nothing.
    void set_draft_vocab(const std::vector<int>& ids) override {
        if (ids != s.draft_vocab()) fail("batcher", "the draft vocabulary is shared: set it on the engine first");
    }
    const std::vector<int>& draft_vocab() const override { return s.draft_vocab(); }
    long long experts_read(int) const override { return -1; }   // a shared pass reads for all its sequences
};

batcher::batcher(const model_files& m, int n_seqs, int n_ctx, wtype type, int max_rows)
    : engine_(m, n_ctx, type), max_rows_(std::max(1, max_rows)) {
    if (n_seqs < 1) fail("batcher", "needs at least one sequence");
    for (int i = 0; i < n_seqs; ++i) {
        seqs_.push_back(std::make_unique<cpu_seq>(engine_));
        members_.push_back(std::make_unique<member>(*this, i, *seqs_.back()));
    }
    calls_ = std::vector<call_slot>(size_t(n_seqs));
    attached_.assign(size_t(n_seqs), false);
}

batcher::~batcher() { stop(); }

infer_model& batcher::seq(int i) { return *members_.at(size_t(i)); }

void batcher::attach(int i) {
    std::lock_guard<std::mutex> l(mu_);
    if (!attached_.at(size_t(i))) {
        attached_[size_t(i)] = true;
        ++n_attached_;
    }
}

void batcher::detach(int i) {
    std::lock_guard<std::mutex> l(mu_);
    if (attached_.at(size_t(i))) {
        attached_[size_t(i)] = false;
        --n_attached_;
        cv_runner_.notify_all();
    }
}

void batcher::stop() {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    cv_runner_.notify_all();
    for (auto& c : calls_) c.cv.notify_all();
}

batch_stats batcher::stats() const {
    std::lock_guard<std::mutex> l(mu_);
    return st_;
}

void batcher::submit(int i, const eval_call& x) {
    std::unique_lock<std::mutex> l(mu_);
    if (stopping_) fail("batcher", "stopped");
    if (!attached_[size_t(i)]) fail("batcher", "sequence " + std::to_string(i) + " is not attached");
    call_slot& c = calls_[size_t(i)];
    c.x = x;
    c.err = nullptr;
    c.pending = true;
    ++n_pending_;
    if (n_pending_ == n_attached_) {             // the runner waits for every attached sequence: wake it unlocked
        l.unlock();
        cv_runner_.notify_one();
        l.lock();
    }
    c.cv.wait(l, [&] { return !c.pending || stopping_; });
    if (c.pending) {                                   // stopped before the call ran
        c.pending = false;
        --n_pending_;
        fail("batcher", "stopped");
    }
    if (c.err) std::rethrow_exception(c.err);
}

bool batcher::run_round() {
    std::unique_lock<std::mutex> l(mu_);
    auto ready = [&] { return stopping_ || (n_pending_ > 0 && n_pending_ == n_attached_); };
    // The runner is about to wait for the sequences' threads, which sample, stream and post their next calls: with
    // two or more of them, the kernels' helper threads spinning for the next pass would hold cores those threads need.
    if (!ready() && n_attached_ >= 2) park_helpers();
    cv_runner_.wait(l, ready);
    if (stopping_) return false;
    // Drain this round: passes until no call is pending (callers woken after their pass may post again; those wait
    // for the next round unless every attached sequence is pending once more, which the loop re-checks).
    while (n_pending_ > 0 && n_pending_ == n_attached_ && !stopping_) {
        int stage = -1;
        for (size_t i = 0; i < calls_.size(); ++i) {
            if (!calls_[i].pending) continue;
            const int s = calls_[i].x.stage;
            if (stage < 0 || (s > 0 && (stage == 0 || s < stage))) stage = s;
        }
        chosen_.clear();
        for (size_t i = 0; i < calls_.size(); ++i)
            if (calls_[i].pending && calls_[i].x.stage == stage) chosen_.push_back(int(i));
        std::stable_sort(chosen_.begin(), chosen_.end(),
                         [&](int a, int b) { return calls_[size_t(a)].x.m < calls_[size_t(b)].x.m; });
        int rows = 0;
        size_t take = 0;
        for (; take < chosen_.size(); ++take) {
            const int m = std::max(0, calls_[size_t(chosen_[take])].x.m);
            if (take > 0 && rows + m > max_rows_) break;
            rows += m;
        }
        chosen_.resize(take);
        l.unlock();
        // Prepare (a call that breaks its sequence's contract fails alone), run, commit.
        pass_.clear();
        std::vector<int> in_pass;
        for (int i : chosen_) {
            call_slot& c = calls_[size_t(i)];
            try {
                pass_.push_back(seqs_[size_t(i)]->prepare(c.x));
                in_pass.push_back(i);
            } catch (...) {
                c.err = std::current_exception();
            }
        }
        std::exception_ptr run_err;
        if (!pass_.empty()) {
            try {
                engine_.run(stage, pass_.data(), int(pass_.size()));
                for (int i : in_pass) seqs_[size_t(i)]->commit(calls_[size_t(i)].x);
            } catch (...) {
                run_err = std::current_exception();
            }
        }
        l.lock();
        if (run_err)
            for (int i : in_pass) calls_[size_t(i)].err = run_err;
        for (int i : chosen_) calls_[size_t(i)].pending = false;
        n_pending_ -= int(chosen_.size());
        ++st_.passes;
        st_.rows += rows;
        st_.calls += int64_t(chosen_.size());
        st_.max_seqs = std::max<int64_t>(st_.max_seqs, int64_t(chosen_.size()));
        // Wake the callers with the lock released: a caller woken while it is held would only block on it again
        // (two context switches per caller instead of one). A late notify that meets a caller's next call is
        // harmless: its wait re-checks `pending`.
        l.unlock();
        for (int i : chosen_) calls_[size_t(i)].cv.notify_one();
        l.lock();
        // The woken callers have not posted yet: give the rest of this stage order a chance only when every
        // attached sequence is still pending (the loop condition).
    }
    return true;
}

} // namespace mtp
