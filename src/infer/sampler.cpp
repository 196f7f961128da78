// Sampler: repetition penalty, temperature, top-k / top-p / min-p, seeded draws.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "core/error.h"

namespace mtp {

void sampler_params_check(const sampler_params& p) {
    if (!std::isfinite(p.temperature) || p.temperature < 0) fail("--temp", "must be >= 0");
    if (p.top_k < 0) fail("--top-k", "must be >= 0");
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("--top-p", "must be in (0, 1]");
    if (!(p.min_p >= 0.0f && p.min_p < 1.0f)) fail("--min-p", "must be in [0, 1)");
    if (!(p.repeat_penalty > 0.0f) || !std::isfinite(p.repeat_penalty)) fail("--repeat-penalty", "must be > 0");
    if (p.repeat_last_n < -1) fail("--repeat-last-n", "must be >= -1");
}

sampler::sampler(const sampler_params& p) : p_(p), rng_(p.seed) { sampler_params_check(p); }

void sampler::penalize(const float* logits, int V, const int* hist, int n_hist, std::vector<float>& out) const {
    out.assign(logits, logits + V);
    if (p_.repeat_penalty == 1.0f || p_.repeat_last_n == 0 || n_hist <= 0) return;
    const int n = p_.repeat_last_n < 0 ? n_hist : std::min(n_hist, p_.repeat_last_n);
    std::unordered_set<int> seen;
    for (int i = n_hist - n; i < n_hist; ++i) {
        int t = hist[i];
        if (t < 0 || t >= V || !seen.insert(t).second) continue;
        out[t] = out[t] > 0 ? out[t] / p_.repeat_penalty : out[t] * p_.repeat_penalty;
    }
}

int sampler::argmax(const float* logits, int V, const int* hist, int n_hist) const {
    penalize(logits, V, hist, n_hist, pen_);
    return int(std::max_element(pen_.begin(), pen_.end()) - pen_.begin());
}

double sampler::prob_t1(const float* logits, int V, const int* hist, int n_hist, int token) const {
    penalize(logits, V, hist, n_hist, pen_);
    const float mx = *std::max_element(pen_.begin(), pen_.end());
    double sum = 0;
    for (int i = 0; i < V; ++i) sum += std::exp(double(pen_[i]) - mx);
    return std::exp(double(pen_[token]) - mx) / sum;
}

void sampler::dist(const float* logits, int V, const int* hist, int n_hist, std::vector<double>& probs) const {
    penalize(logits, V, hist, n_hist, pen_);
    probs.assign(V, 0.0);
    const int best = int(std::max_element(pen_.begin(), pen_.end()) - pen_.begin());
    if (greedy()) {
        probs[best] = 1.0;
        return;
    }
    // softmax at temperature T over all tokens
    const double inv_t = 1.0 / p_.temperature, mx = pen_[best];
    double sum = 0;
    for (int i = 0; i < V; ++i) sum += probs[i] = std::exp((double(pen_[i]) - mx) * inv_t);
    for (int i = 0; i < V; ++i) probs[i] /= sum;
    const bool use_k = p_.top_k > 0 && p_.top_k < V, use_p = p_.top_p < 1.0f;
    if (use_k || use_p) {
        // tokens by probability, descending (ties: lower id first), far enough to cover top-k / top-p
        order_.resize(V);
        std::iota(order_.begin(), order_.end(), 0);
        auto cmp = [&](int a, int b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); };
        const int k = use_k ? p_.top_k : V;
        std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), cmp);
        int keep = k;
        if (use_p) {
            double cum = 0, kept_mass = 0;
            for (int i = 0; i < k; ++i) kept_mass += probs[order_[i]];
            // top-p over the top-k renormalised distribution
            for (int i = 0; i < k; ++i) {
                cum += probs[order_[i]] / kept_mass;
                if (cum >= p_.top_p) { keep = i + 1; break; }
            }
        }
        for (int i = keep; i < V; ++i) probs[order_[i]] = 0.0;
    }
    if (p_.min_p > 0.0f) {
        const double thr = p_.min_p * probs[best];
        for (int i = 0; i < V; ++i)
            if (probs[i] < thr) probs[i] = 0.0;
    }
    sum = 0;
    for (int i = 0; i < V; ++i) sum += probs[i];
    for (int i = 0; i < V; ++i) probs[i] /= sum;
}

int sampler::draw(const std::vector<double>& probs) {
    double sum = 0;
    int last = -1;
    for (size_t i = 0; i < probs.size(); ++i)
        if (probs[i] > 0) { sum += probs[i]; last = int(i); }
    if (last < 0) fail("sampler", "empty distribution");
    double u = rng_.uniform() * sum;
    for (int i = 0; i <= last; ++i) {
        if (probs[i] <= 0) continue;
        if (u < probs[i]) return i;
        u -= probs[i];
    }
    return last;
}

int sampler::sample(const float* logits, int V, const int* hist, int n_hist) {
    if (greedy()) return argmax(logits, V, hist, n_hist);
    dist(logits, V, hist, n_hist, tmp_);
    return draw(tmp_);
}

} // namespace mtp
