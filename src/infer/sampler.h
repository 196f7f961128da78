// Token sampling shared by plain and speculative decoding. Processing order (as Hugging Face / vLLM):
// repetition penalty -> temperature -> top-k -> top-p -> min-p -> renormalise. temperature <= 0 is greedy: the
// processed distribution is one-hot at the argmax of the penalised logits (lowest id wins ties).
// The full processed distribution is available (dist) because speculative sampling needs p and q processed the
// same way (spec §6).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"

namespace mtp {

struct sampler_params {
    float temperature = 0.0f;     // <= 0: greedy
    int top_k = 0;                // 0: off
    float top_p = 1.0f;           // 1: off; keep the smallest most-likely set with mass >= top_p
    float min_p = 0.0f;           // 0: off; drop tokens with p < min_p * p_max
    float repeat_penalty = 1.0f;  // 1: off; CTRL rule on the distinct tokens of the last repeat_last_n
    int repeat_last_n = 64;       // 0: off, -1: whole history
    uint64_t seed = 0;
};

// Throws mtp::error("<flag>: ...") for values out of range (flag names as the CLI spells them).
void sampler_params_check(const sampler_params& p);

// Every function takes the logits of n tokens. ids == nullptr: the tokens are 0..n-1 (the full vocabulary). ids
// non-null: logits[i] belongs to token ids[i] (ascending, distinct: a restricted draft vocabulary), the repetition
// penalty maps history tokens through ids, ties go to the lower index (= lower id), and the distribution / argmax /
// draw are over the n positions (the caller maps a position i back to ids[i]). The restricted distribution is the
// full processing applied as if every other token had logit -inf, i.e. restricted and renormalised.
class sampler {
public:
    explicit sampler(const sampler_params& p);

    const sampler_params& params() const { return p_; }
    bool greedy() const { return p_.temperature <= 0.0f; }
    rng& gen() { return rng_; }
    double uniform() { return rng_.uniform(); }

    // Penalised logits (repetition penalty over hist[0..n_hist)) into out[n].
    void penalize(const float* logits, int n, const int* hist, int n_hist, std::vector<float>& out,
                  const int* ids = nullptr) const;
    // The processed distribution probs[n] (zeros outside the kept set; sums to 1).
    void dist(const float* logits, int n, const int* hist, int n_hist, std::vector<double>& probs,
              const int* ids = nullptr) const;
    // argmax of the penalised logits (the greedy token; a position when ids is given).
    int argmax(const float* logits, int n, const int* hist, int n_hist, const int* ids = nullptr) const;
    // softmax(penalised logits)[i] at temperature 1: a draft's confidence under greedy decoding.
    double prob_t1(const float* logits, int n, const int* hist, int n_hist, int i, const int* ids = nullptr) const;
    // Draws an index from a distribution (need not be normalised; must have positive mass).
    int draw(const std::vector<double>& probs);
    // Greedy: argmax; else a draw from dist().
    int sample(const float* logits, int n, const int* hist, int n_hist, const int* ids = nullptr);

private:
    // The penalised logits: `logits` itself when no penalty applies, else pen_.
    const float* effective(const float* logits, int n, const int* hist, int n_hist, const int* ids) const;

    sampler_params p_;
    rng rng_;
    mutable std::vector<float> pen_;
    mutable std::vector<int> order_;
    mutable std::vector<double> tmp_t1_;
    std::vector<double> tmp_, blk_;
};

} // namespace mtp
