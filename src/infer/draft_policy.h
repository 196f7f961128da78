// How many tokens to draft per round when B sequences decode together: the k that maximises expected tokens per
// second, B · E[tokens | k] / time(B, k), from pass costs measured on this machine and the running acceptance per
// draft depth. With few sequences a decode pass is memory-bound and extra verify rows are nearly free, so drafting
// pays; with many, the pass is compute-bound and every draft row costs what a real row costs, so k falls to 0 by
// itself (plain batching) rather than letting speculation take throughput away.
#pragma once
#include <mutex>
#include <vector>

#include "infer/cpu_model.h"

namespace mtp {

// Seconds per pass by row count, for the trunk + lm_head and for one MTP module (+ its head).
struct pass_cost_table {
    std::vector<int> rows;                       // ascending, rows[0] = 1
    std::vector<double> main_s, mtp_s;
    double pass_overhead_s = 0;                  // added to every pass: handing the calls to the runner thread and back
    double main(double r) const;                 // linear in between, linear past the last entry (+ the overhead)
    double mtp(double r) const;
};

// Seconds one hand-off between two threads through a condition variable takes here (median of a ping-pong): what
// a pass of the batcher adds over a direct call, twice (calls in, results out).
double measure_handoff_seconds();

// Times passes of 1..max_rows rows (a ladder of row counts, best of 5-20 sweeps, about half a second) on a fresh sequence of `e` after a
// `context`-token prompt. Runs on the caller's thread (before any runner starts).
pass_cost_table measure_pass_costs(cpu_engine& e, int max_rows, int context = 64);

class draft_policy {
public:
    // K: the most drafts per round; D: the model's MTP modules (drafts past D reuse module D, one row each).
    draft_policy(pass_cost_table costs, int K, int D);

    int choose(int batch) const;                 // 0..K: the best k for the current estimates
    // The draft length of a decode round: choose(batch), except that every probe_every-th round (of all sequences
    // at once) is a probe: a plain round when the choice is K (for observe_round's comparison; every other probe when
    // the choice is between 0 and K; when such a choice is vetoed, every other probe drafts it), else it drafts K when
    // drafting could pay at this load if every draft were accepted, so that the acceptance of depths the choice no
    // longer drafts is still measured (a stale estimate could keep speculation off for good after a bad start).
    // refill: the sequence's refill_rows(K) (its modules' backlog); remaining: tokens it may still produce. A
    // sequence that is not caught up drafts only when the time drafting saves over its remaining tokens exceeds
    // the time of the backlog's module passes (which the whole batch waits for), and is not probed.
    // A probe whose alternative's running rate at this load is below the choice's (8 rounds of each measured)
    // doubles the interval to the next probe at this load, up to probe_every << max_backoff rounds; any other probe
    // resets it.
    // round_id (when given) receives the round this call belongs to, for observe_round.
    int next(int batch, int refill = 0, int remaining = 1 << 20, long long* round_id = nullptr);
    static constexpr int probe_every = 16;
    static constexpr int max_backoff = 5;
    int probe_interval(int batch) const;         // rounds from one probe to the next at this load, now
    // One round of one sequence: it drafted `drafted` tokens and `accepted` of them were accepted.
    void observe(int drafted, int accepted);
    // One round of one sequence as it went: `batch` sequences were decoding, the cap was k, the round produced
    // `produced` tokens in `seconds` of wall time. Per batch-size bucket and k, the running tokens/s of such rounds
    // veto a draft length that the cost model favours but that has measured slower than not drafting (costs the
    // model does not see: sampling, thread hand-offs, caches shared with other processes).
    // A round counts under the longest cap any sequence of it was given (round_id from next()): in a shared pass a
    // sequence that does not draft waits for its batch-mates' drafts and module passes, so its round is a cost of
    // drafting, not a plain round. Counted per sequence, such rounds made not drafting look slower than it is.
    void observe_round(int batch, int k, int produced, double seconds, long long round_id = -1);
    long long mixed_rounds() const;              // rounds whose sequences were given different caps (for /metrics)
    std::vector<double> acceptance() const;      // [K]: running P(at least j+1 drafts accepted | j+1 drafted)
    // Model of the choice (for tests and /metrics).
    double expected_tokens(int k) const;         // per sequence and round: 1 + Σ_{j<k} acceptance[j]
    double round_seconds(int batch, int k) const;
    pass_cost_table costs() const;

private:
    int choose_locked(int batch, int* model_best) const;   // model_best: the cost model's choice before the veto
    int next_locked(int batch, int refill, int remaining);
    double expected_tokens_locked(int k) const;
    double round_seconds_locked(int batch, int k) const;
    static constexpr double margin = 1.05;       // a longer draft must promise 5% more tokens/s to be chosen
    pass_cost_table c_;
    int K_, D_;
    mutable std::mutex mu_;
    std::vector<double> reached_, accepted_;     // exponentially decayed counts per depth
    long long rounds_ = 0;
    static constexpr int n_buckets = 6;          // batch 1, 2, 3-4, 5-8, 9-16, 17+
    static int bucket(int batch);
    std::vector<std::vector<double>> meas_tps_, meas_n_;   // [bucket][k]
    std::vector<int> backoff_;                   // [bucket] probe interval = probe_every << backoff_
    std::vector<long long> probes_;              // [bucket] probe rounds so far (every other one alternates)
    std::vector<long long> probe_round_;         // [bucket] the last probe round
    // The longest cap and the smallest given in recent rounds (a ring: a round's observations come in before
    // the ring wraps, since every sequence of a round waits for that round's pass).
    struct round_caps { long long round = -1; int max_cap = 0, min_cap = 0; };
    static constexpr int n_recent = 16;
    round_caps recent_[n_recent];
    long long mixed_ = 0;
};

} // namespace mtp
