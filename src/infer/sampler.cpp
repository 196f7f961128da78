// Sampler: repetition penalty, temperature, top-k / top-p / min-p, seeded draws.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MTP_SAMPLER_AVX2 1
#endif

namespace mtp {

namespace {

#ifdef MTP_SAMPLER_AVX2
// exp of 4 doubles for x <= 0 (softmax terms): x = n ln2 + r, |r| <= ln2/2, a degree-13 Taylor polynomial of
// exp(r) (truncation < 2e-17 relative), times 2^n; x < -708 gives 0.
inline __m256d exp4(__m256d x) {
    const __m256d lo = _mm256_set1_pd(-708.0);
    const __m256d under = _mm256_cmp_pd(x, lo, _CMP_LT_OQ);
    x = _mm256_max_pd(x, lo);
    const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), x);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), r);
    static const double c[14] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                 1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,
                                 1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,        0.5,
                                 1.0,                1.0};
    __m256d y = _mm256_set1_pd(c[0]);
    for (int k = 1; k < 14; ++k) y = _mm256_fmadd_pd(y, r, _mm256_set1_pd(c[k]));
    // 2^n: n + 1023 into the exponent field (n in [-1022, 0] here)
    const __m256d magic = _mm256_set1_pd(6755399441055744.0);          // 2^52 + 2^51: integer in the low bits
    const __m256i ni = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(n, magic)), _mm256_castpd_si256(magic));
    const __m256i e = _mm256_slli_epi64(_mm256_add_epi64(ni, _mm256_set1_epi64x(1023)), 52);
    y = _mm256_mul_pd(y, _mm256_castsi256_pd(e));
    return _mm256_andnot_pd(under, y);
}
#endif

// out[i] = exp((double(x[i]) - mx) * s) for i < n (x[i] <= mx); returns Σ out[i].
double exp_terms(double* out, const float* x, int n, double mx, double s) {
    int i = 0;
    double sum = 0;
#ifdef MTP_SAMPLER_AVX2
    __m256d acc = _mm256_setzero_pd();
    const __m256d m = _mm256_set1_pd(mx), sv = _mm256_set1_pd(s);
    for (; i + 4 <= n; i += 4) {
        const __m256d xv = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
        const __m256d e = exp4(_mm256_mul_pd(_mm256_sub_pd(xv, m), sv));
        _mm256_storeu_pd(out + i, e);
        acc = _mm256_add_pd(acc, e);
    }
    alignas(32) double l[4];
    _mm256_store_pd(l, acc);
    sum = (l[0] + l[2]) + (l[1] + l[3]);
    if (i < n) {
        alignas(32) float t[4] = {float(mx), float(mx), float(mx), float(mx)};
        for (int j = i; j < n; ++j) t[j - i] = x[j];
        alignas(32) double e[4];
        _mm256_store_pd(e, exp4(_mm256_mul_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_load_ps(t)), m), sv)));
        for (int j = i; j < n; ++j) sum += out[j] = e[j - i];
    }
#else
    for (; i < n; ++i) sum += out[i] = std::exp((double(x[i]) - mx) * s);
#endif
    return sum;
}

// Index of the first maximum of x[0..n).
int argmax_first(const float* x, int n) {
    if (n <= 0) return 0;
#ifdef MTP_SAMPLER_AVX2
    if (n >= 16) {
        __m256 mv = _mm256_loadu_ps(x);
        int i = 8;
        for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
        alignas(32) float l[8];
        _mm256_store_ps(l, mv);
        float mx = l[0];
        for (int k = 1; k < 8; ++k) mx = l[k] > mx ? l[k] : mx;
        for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
        if (mx == mx) {                                                  // no NaN: the first element equal to mx
            const __m256 m8 = _mm256_set1_ps(mx);
            int j = 0;
            for (; j + 8 <= n; j += 8) {
                const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + j), m8, _CMP_EQ_OQ));
                if (mask) return j + __builtin_ctz(unsigned(mask));
            }
            for (; j < n; ++j)
                if (x[j] == mx) return j;
        }
    }
#endif
    return int(std::max_element(x, x + n) - x);
}

} // namespace

void sampler_params_check(const sampler_params& p) {
    if (!std::isfinite(p.temperature) || p.temperature < 0) fail("--temp", "must be >= 0");
    if (p.top_k < 0) fail("--top-k", "must be >= 0");
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("--top-p", "must be in (0, 1]");
    if (!(p.min_p >= 0.0f && p.min_p < 1.0f)) fail("--min-p", "must be in [0, 1)");
    if (!(p.repeat_penalty > 0.0f) || !std::isfinite(p.repeat_penalty)) fail("--repeat-penalty", "must be > 0");
    if (p.repeat_last_n < -1) fail("--repeat-last-n", "must be >= -1");
}

sampler::sampler(const sampler_params& p) : p_(p), rng_(p.seed) { sampler_params_check(p); }

void sampler::penalize(const float* logits, int n, const int* hist, int n_hist, std::vector<float>& out,
                       const int* ids) const {
    out.assign(logits, logits + n);
    if (p_.repeat_penalty == 1.0f || p_.repeat_last_n == 0 || n_hist <= 0) return;
    const int w = p_.repeat_last_n < 0 ? n_hist : std::min(n_hist, p_.repeat_last_n);
    std::vector<int> seen(hist + (n_hist - w), hist + n_hist);        // each distinct token once
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int t : seen) {
        int i = t;
        if (ids) {
            const int* it = std::lower_bound(ids, ids + n, t);
            if (it == ids + n || *it != t) continue;
            i = int(it - ids);
        }
        if (i < 0 || i >= n) continue;
        out[i] = out[i] > 0 ? out[i] / p_.repeat_penalty : out[i] * p_.repeat_penalty;
    }
}

const float* sampler::effective(const float* logits, int n, const int* hist, int n_hist, const int* ids) const {
    if (p_.repeat_penalty == 1.0f || p_.repeat_last_n == 0 || n_hist <= 0) return logits;
    penalize(logits, n, hist, n_hist, pen_, ids);
    return pen_.data();
}

int sampler::argmax(const float* logits, int n, const int* hist, int n_hist, const int* ids) const {
    return argmax_first(effective(logits, n, hist, n_hist, ids), n);
}

double sampler::prob_t1(const float* logits, int n, const int* hist, int n_hist, int i, const int* ids) const {
    const float* e = effective(logits, n, hist, n_hist, ids);
    const float mx = e[argmax_first(e, n)];
    tmp_t1_.resize(n);
    const double sum = exp_terms(tmp_t1_.data(), e, n, mx, 1.0);
    return tmp_t1_[i] / sum;
}

void sampler::dist(const float* logits, int V, const int* hist, int n_hist, std::vector<double>& probs,
                   const int* ids) const {
    const float* pen = effective(logits, V, hist, n_hist, ids);
    const int best = argmax_first(pen, V);
    if (greedy()) {
        probs.assign(V, 0.0);
        probs[best] = 1.0;
        return;
    }
    probs.resize(V);
    // softmax at temperature T over all tokens
    const double inv_t = 1.0 / p_.temperature, mx = pen[best];
    double sum = exp_terms(probs.data(), pen, V, mx, inv_t);
    const bool use_k = p_.top_k > 0 && p_.top_k < V, use_p = p_.top_p < 1.0f;
    if (!use_k && !use_p && p_.min_p <= 0.0f) {                         // nothing removed: one normalisation
        const double inv = 1.0 / sum;
        for (int i = 0; i < V; ++i) probs[i] *= inv;
        return;
    }
    for (int i = 0; i < V; ++i) probs[i] /= sum;
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
    // Inverse CDF in blocks of 32: block masses first (vectorisable), then the entries of the block u falls in.
    constexpr int B = 32;
    const int n = int(probs.size());
    const double* p = probs.data();
    int last = n - 1;
    while (last >= 0 && !(p[last] > 0)) --last;
    if (last < 0) fail("sampler", "empty distribution");
    const int nb = (last + B) / B;
    blk_.resize(nb);
    double sum = 0;
    for (int b = 0; b < nb; ++b) {
        const int i0 = b * B, i1 = std::min(last + 1, i0 + B);
        double m = 0;
        for (int i = i0; i < i1; ++i) m += p[i] > 0 ? p[i] : 0.0;
        blk_[b] = m;
        sum += m;
    }
    double u = rng_.uniform() * sum;
    for (int b = 0; b < nb; ++b) {
        if (u >= blk_[b] && b + 1 < nb) {
            u -= blk_[b];
            continue;
        }
        const int i0 = b * B, i1 = std::min(last + 1, i0 + B);
        for (int i = i0; i < i1; ++i) {
            if (!(p[i] > 0)) continue;
            if (u < p[i]) return i;
            u -= p[i];
        }
    }
    return last;
}

int sampler::sample(const float* logits, int V, const int* hist, int n_hist, const int* ids) {
    if (greedy()) return argmax(logits, V, hist, n_hist, ids);
    dist(logits, V, hist, n_hist, tmp_, ids);
    return draw(tmp_);
}

} // namespace mtp
