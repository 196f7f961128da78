// Draft-length choice for batched speculation: measured pass costs and running acceptance.
#include "infer/draft_policy.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <thread>

#include "core/error.h"

namespace mtp {

namespace {
double interp(const std::vector<int>& x, const std::vector<double>& y, double r) {
    if (x.empty()) return 0;
    if (r <= x.front()) return y.front() * std::max(0.0, r) / x.front();
    for (size_t i = 1; i < x.size(); ++i)
        if (r <= x[i]) return y[i - 1] + (y[i] - y[i - 1]) * (r - x[i - 1]) / (x[i] - x[i - 1]);
    const size_t n = x.size();
    if (n == 1) return y[0] * r / x[0];
    const double slope = (y[n - 1] - y[n - 2]) / (x[n - 1] - x[n - 2]);
    return y[n - 1] + std::max(0.0, slope) * (r - x[n - 1]);
}
} // namespace

double pass_cost_table::main(double r) const { return interp(rows, main_s, r) + pass_overhead_s; }
double pass_cost_table::mtp(double r) const { return interp(rows, mtp_s, r) + pass_overhead_s; }

double measure_handoff_seconds() {
    using clk = std::chrono::steady_clock;
    std::mutex mu;
    std::condition_variable cv;
    int turn = 0;                                // even: main thread's turn, odd: the other's
    constexpr int n = 200;
    std::thread other([&] {
        for (int i = 0; i < n; ++i) {
            std::unique_lock<std::mutex> l(mu);
            cv.wait(l, [&] { return turn % 2 == 1; });
            ++turn;
            cv.notify_all();
        }
    });
    std::vector<double> rt;
    for (int i = 0; i < n; ++i) {
        const auto t0 = clk::now();
        std::unique_lock<std::mutex> l(mu);
        ++turn;
        cv.notify_all();
        cv.wait(l, [&] { return turn % 2 == 0; });
        rt.push_back(std::chrono::duration<double>(clk::now() - t0).count());
    }
    other.join();
    std::sort(rt.begin(), rt.end());
    return rt[rt.size() / 2] / 2;
}

pass_cost_table measure_pass_costs(cpu_engine& e, int max_rows, int context) {
    using clk = std::chrono::steady_clock;
    const model_config& c = e.config();
    const int D = c.n_mtp(), d = c.hidden_size, V = c.vocab_size;
    max_rows = std::max(1, max_rows);
    context = std::min(context, e.n_ctx() - max_rows - 1);   // the prompt + the timed rows fit the context
    if (context < 1) fail("pass costs", "the context is too short to time a pass");
    pass_cost_table t;
    for (int r : {1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256})
        if (r <= max_rows) t.rows.push_back(r);
    if (t.rows.back() != max_rows && max_rows < 256) t.rows.push_back(max_rows);
    cpu_seq s(e);
    std::vector<int> tok(size_t(context + max_rows + 1));
    for (size_t i = 0; i < tok.size(); ++i) tok[i] = int((i * 7919 + 13) % size_t(V));
    std::vector<float> h0(size_t(context + max_rows) * d), h1(h0.size()), lg(size_t(max_rows) * V);
    s.eval(0, 0, context, tok.data(), nullptr, h0.data(), nullptr);
    if (D > 0) s.eval(1, 0, context, tok.data() + 1, h0.data(), h1.data(), nullptr);
    auto time = [&](int stage, int r) {
        s.truncate(stage, context);
        const auto t0 = clk::now();
        s.eval(stage, context, r, tok.data() + context + stage, stage ? h0.data() + size_t(context) * d : nullptr,
               (stage ? h1.data() : h0.data()) + size_t(context) * d, lg.data(), stage ? r - 1 : 0,
               stage > 0 && !e.draft_vocab().empty());   // drafts use the draft head when there is one
        const double dt = std::chrono::duration<double>(clk::now() - t0).count();
        s.truncate(stage, context);
        return dt;
    };
    // One warm-up sweep (page faults, caches), then the best of 5 to 20 sweeps per entry (more while they take under
    // half a second in all): a sweep disturbed by another process inflates its entries, the minimum over sweeps does
    // not keep that, and on a busy machine 5 sweeps left the small row counts' entries noisy enough to flip the
    // choice at one sequence.
    t.main_s.assign(t.rows.size(), 1e30);
    t.mtp_s.assign(t.rows.size(), D > 0 ? 1e30 : 0.0);
    const auto t_start = clk::now();
    for (int sweep = 0; sweep <= 20; ++sweep) {
        if (sweep > 5 && std::chrono::duration<double>(clk::now() - t_start).count() > 0.5) break;
        for (size_t i = 0; i < t.rows.size(); ++i) {
            const double a = time(0, t.rows[i]);
            const double b = D > 0 ? time(1, t.rows[i]) : 0.0;
            if (sweep == 0) continue;
            t.main_s[i] = std::min(t.main_s[i], a);
            if (D > 0) t.mtp_s[i] = std::min(t.mtp_s[i], b);
        }
    }
    // A pass never costs less with more rows: smooth timing noise into a non-decreasing curve.
    for (size_t i = 1; i < t.rows.size(); ++i) {
        t.main_s[i] = std::max(t.main_s[i], t.main_s[i - 1]);
        t.mtp_s[i] = std::max(t.mtp_s[i], t.mtp_s[i - 1]);
    }
    return t;
}

int draft_policy::bucket(int batch) {
    return batch <= 1 ? 0 : batch <= 2 ? 1 : batch <= 4 ? 2 : batch <= 8 ? 3 : batch <= 16 ? 4 : 5;
}

void draft_policy::observe_round(int batch, int k, int produced, double seconds, long long round_id) {
    if (k < 0 || k > K_ || !(seconds > 0) || produced <= 0) return;
    std::lock_guard<std::mutex> l(mu_);
    if (round_id >= 0) {
        const round_caps& rc = recent_[round_id % n_recent];
        if (rc.round == round_id) k = std::max(k, rc.max_cap);
    }
    double& t = meas_tps_[size_t(bucket(batch))][size_t(k)];
    double& n = meas_n_[size_t(bucket(batch))][size_t(k)];
    const double x = produced / seconds, w = n < 20 ? 1.0 / (n + 1) : 0.05;   // mean of the first 20, then EMA
    t = n == 0 ? x : (1 - w) * t + w * x;
    n += 1;
}

draft_policy::draft_policy(pass_cost_table costs, int K, int D) : c_(std::move(costs)), K_(std::max(0, K)), D_(D) {
    meas_tps_.assign(n_buckets, std::vector<double>(size_t(K_) + 1, 0.0));
    meas_n_.assign(n_buckets, std::vector<double>(size_t(K_) + 1, 0.0));
    backoff_.assign(n_buckets, 0);
    probes_.assign(n_buckets, 0);
    probe_round_.assign(n_buckets, -1);
    reached_.assign(size_t(K_), 2.0);            // prior: acceptance 0.5 at every depth, worth two rounds
    accepted_.assign(size_t(K_), 1.0);
}

void draft_policy::observe(int drafted, int accepted) {
    constexpr double keep = 0.995;               // ~200 rounds of memory
    std::lock_guard<std::mutex> l(mu_);
    for (int j = 0; j < std::min(drafted, K_); ++j) {
        reached_[size_t(j)] = reached_[size_t(j)] * keep + 1.0;
        accepted_[size_t(j)] = accepted_[size_t(j)] * keep + (j < accepted ? 1.0 : 0.0);
    }
}

pass_cost_table draft_policy::costs() const {
    std::lock_guard<std::mutex> l(mu_);
    return c_;
}

std::vector<double> draft_policy::acceptance() const {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<double> a(static_cast<size_t>(K_));
    for (int j = 0; j < K_; ++j) a[size_t(j)] = accepted_[size_t(j)] / reached_[size_t(j)];
    return a;
}

double draft_policy::expected_tokens_locked(int k) const {
    double e = 1.0;
    for (int j = 0; j < std::min(k, K_); ++j) e += accepted_[size_t(j)] / reached_[size_t(j)];
    return e;
}

double draft_policy::expected_tokens(int k) const {
    std::lock_guard<std::mutex> l(mu_);
    return expected_tokens_locked(k);
}

// One round of B sequences drafting k: the verify pass over B(k+1) rows; module j (j <= D) over B·r rows, r ≈ the
// tokens a round commits (the module refills the accepted positions and drafts at the frontier); reuse drafts past
// D one row per sequence each.
double draft_policy::round_seconds(int batch, int k) const {
    std::lock_guard<std::mutex> l(mu_);
    return round_seconds_locked(batch, k);
}

double draft_policy::round_seconds_locked(int batch, int k) const {
    const double B = std::max(1, batch);
    double t = c_.main(B * (k + 1));
    if (k > 0) {
        const double r = expected_tokens_locked(k);
        for (int j = 1; j <= std::min(k, D_); ++j) t += c_.mtp(B * r);
        for (int j = D_ + 1; j <= k; ++j) t += c_.mtp(B);
    }
    return t;
}

long long draft_policy::mixed_rounds() const {
    std::lock_guard<std::mutex> l(mu_);
    return mixed_;
}

int draft_policy::next(int batch, int refill, int remaining, long long* round_id) {
    std::lock_guard<std::mutex> l(mu_);
    const long long call_round = rounds_ / std::max(1, batch);
    const int k = next_locked(batch, refill, remaining);
    round_caps& rc = recent_[call_round % n_recent];
    if (rc.round != call_round) rc = {call_round, k, k};
    else {
        if ((k != rc.max_cap || k != rc.min_cap) && rc.max_cap == rc.min_cap) ++mixed_;   // the round turns mixed
        rc.max_cap = std::max(rc.max_cap, k);
        rc.min_cap = std::min(rc.min_cap, k);
    }
    if (round_id) *round_id = call_round;
    return k;
}

int draft_policy::next_locked(int batch, int refill, int remaining) {
    int model_k = 0;
    int k = choose_locked(batch, &model_k);
    const double B = std::max(1, batch);
    bool held = false;                           // not caught up, and drafting would not repay the backlog
    if (k > 0 && refill > 0) {
        // seconds per token of this sequence at k and at 0 (a round serves B sequences)
        const double per_k = round_seconds_locked(batch, k) / (B * expected_tokens_locked(k));
        const double per_0 = c_.main(B) / B;
        const double saving = std::max(0.0, per_0 - per_k) * std::max(0, remaining);
        const double backlog = std::min(k, D_) * c_.mtp(double(refill) / std::max(1, std::min(k, D_)));
        if (saving < backlog) k = 0, held = true;
    }
    // Probe rounds come for all sequences together (about `batch` calls per round): a sequence probing alone would
    // make the whole batch wait for module passes that nobody else shares.
    const long long round = rounds_++ / std::max(1, batch);
    const int b = bucket(batch);
    // The later calls of a probe round (one per sequence) probe as its first call did, whatever the interval is now.
    const bool later = round == probe_round_[size_t(b)];
    const long long every = static_cast<long long>(probe_every) << backoff_[size_t(b)];
    if ((!later && round % every != every - 1) || refill > 2 * K_ || held) return k;
    if (!later) {
        probe_round_[size_t(b)] = round;
        ++probes_[size_t(b)];
    }
    const bool second = probes_[size_t(b)] % 2 == 0;
    // When the alternative's running rate at this load is below the choice's, the probe round doubles the interval to
    // the next one (up to probe_every << max_backoff rounds), so that confirming the choice costs less and less; when
    // it is not measured yet, or measures faster, the interval is back to probe_every. Running rates, not single
    // rounds: one round is too noisy to reset the interval on.
    auto probe = [&](int alt) {
        const auto& mt = meas_tps_[size_t(b)];
        const auto& mn = meas_n_[size_t(b)];
        const bool slower = mn[size_t(alt)] >= 8 && mn[size_t(k)] >= 8 && mt[size_t(alt)] < mt[size_t(k)];
        int& bo = backoff_[size_t(b)];
        if (!later) bo = slower ? std::min(bo + 1, max_backoff) : 0;
        return alt;
    };
    // Drafting fully: the probe measures a plain round instead. Drafting part-way: every other probe is plain, so
    // that the measured veto of choose() can compare this choice with not drafting at all.
    if (k == K_ || (k > 0 && !second)) return probe(0);
    // Vetoed part-way choice: every other probe drafts it again, so that the veto lifts once it measures faster (the
    // K probes below would never re-measure it).
    if (k == 0 && model_k > 0 && model_k < K_ && !second) return probe(model_k);
    // A probe is worth its cost only when drafting could pay at this load with every draft accepted.
    const double plain = B / c_.main(B);
    for (int j = 1; j <= K_; ++j) {
        double t = c_.main(B * (j + 1));
        for (int i = 1; i <= j; ++i) t += i <= D_ ? c_.mtp(B * (j + 1)) : c_.mtp(B);
        if (B * (j + 1) / t > plain * margin) return probe(K_);
    }
    return k;
}

int draft_policy::probe_interval(int batch) const {
    std::lock_guard<std::mutex> l(mu_);
    return probe_every << backoff_[size_t(bucket(batch))];
}

int draft_policy::choose(int batch) const {
    std::lock_guard<std::mutex> l(mu_);
    return choose_locked(batch, nullptr);
}

int draft_policy::choose_locked(int batch, int* model_best) const {
    int best = 0;
    double best_tps = 0;
    for (int k = 0; k <= K_; ++k) {
        const double s = round_seconds_locked(batch, k);
        const double tps = s > 0 ? expected_tokens_locked(k) / s : 0;
        if (k == 0 || tps > best_tps * margin) {   // a longer draft must win by the margin (timing noise) to be taken
            best = k;
            best_tps = tps;
        }
    }
    if (model_best) *model_best = best;
    // Measured veto: rounds at this load drafting `best` were slower than rounds not drafting.
    const auto& mt = meas_tps_[size_t(bucket(batch))];
    const auto& mn = meas_n_[size_t(bucket(batch))];
    if (best > 0 && mn[size_t(best)] >= 8 && mn[0] >= 8 && mt[size_t(best)] < mt[0] * margin) return 0;
    return best;
}

} // namespace mtp
