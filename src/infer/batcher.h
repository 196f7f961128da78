// Continuous batching: many sequences, each driven by its own thread (a generator with its sampler), share one
// cpu_engine. Their model calls block; one runner thread gathers the calls pending from every attached sequence
// into shared passes (one stage per pass: the rows of all sequences at that stage, each reading only its own
// cache) and wakes the callers. Since a row's result does not depend on the other rows of its pass
// (src/infer/decode.h), every sequence gets bitwise the output it would get alone, whatever joins or leaves.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <vector>

#include "infer/cpu_model.h"

namespace mtp {

struct batch_stats {
    int64_t passes = 0;            // shared passes run
    int64_t rows = 0;              // rows over all passes
    int64_t calls = 0;             // model calls served (a pass serves one per sequence in it)
    int64_t max_seqs = 0;          // most sequences in one pass
};

class batcher {
public:
    // n_seqs sequences on one engine; max_rows: rows a pass takes at most (a call larger than that runs alone).
    batcher(const model_files& m, int n_seqs, int n_ctx, wtype type, int max_rows = 128);
    ~batcher();
    batcher(const batcher&) = delete;
    batcher& operator=(const batcher&) = delete;

    int n_seqs() const { return int(seqs_.size()); }
    cpu_engine& engine() { return engine_; }
    // The model as sequence i's thread sees it (calls block until a pass has run them).
    infer_model& seq(int i);
    const cpu_seq& state(int i) const { return *seqs_.at(size_t(i)); }

    // Sequence i's thread begins / ends driving it: while attached, the runner waits for its next call before it
    // runs a pass (so that the pass includes it). A thread must detach before it waits for anything else.
    void attach(int i);
    void detach(int i);

    // Runner: waits until every attached sequence has a call pending (or stop()), runs the passes of one round
    // and returns true; false once stopped. Passes: the lowest pending MTP stage first (drafts come before the
    // verify they feed), calls with fewer rows first, up to max_rows.
    bool run_round();
    void stop();
    batch_stats stats() const;

private:
    struct member;
    struct call_slot {
        eval_call x;
        bool pending = false;
        std::exception_ptr err;
        std::condition_variable cv;      // its caller waits here (woken alone, not with every other caller)
    };
    void submit(int i, const eval_call& x);

    cpu_engine engine_;
    std::vector<std::unique_ptr<cpu_seq>> seqs_;
    std::vector<std::unique_ptr<member>> members_;
    std::vector<call_slot> calls_;
    std::vector<bool> attached_;
    int n_attached_ = 0, n_pending_ = 0;
    bool stopping_ = false;
    int max_rows_;
    mutable std::mutex mu_;
    std::condition_variable cv_runner_;
    batch_stats st_;
    std::vector<seq_pass> pass_;
    std::vector<int> chosen_;
};

} // namespace mtp
