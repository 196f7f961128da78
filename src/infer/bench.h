// `mtp bench` measurements (llama-bench style): prompt processing (pp) and generation (tg) tokens/s, then tg with
// MTP speculation for each draft length 1..D (and D+1, D+2 with reuse), measured side by side with plain tg on the
// same prompt in the same repetition; mean ± stddev over repetitions.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/infer_model.h"
#include "infer/speculative.h"

namespace mtp {

struct bench_params {
    int n_prompt = 128, n_gen = 128, reps = 3;
    std::vector<float> temps = {0.0f, 0.8f};
    std::vector<std::vector<int>> prompts;   // prompt of repetition r: prompts[r % size], each n_prompt tokens
    int n_batch = 256;
    float p_min = 0.0f;                      // > 0: also adaptive rows (draft D, and D+2 with reuse)
    uint64_t seed = 1;
};

struct bench_row {
    std::string test;                        // "pp128", "tg128", "tg128+mtp"
    float temp = 0;
    int draft = 0;                           // 0: plain
    bool reuse = false;
    float p_min = 0;
    std::vector<double> tps;                 // tokens/s per repetition
    std::vector<double> speedup;             // tg rows: tokens/s / plain tg tokens/s of the same repetition
    gen_stats stats;                         // summed over repetitions
};

std::vector<bench_row> bench_run(infer_model& m, const bench_params& p,
                                 const std::function<void(const std::string&)>& progress = {});
std::string bench_table(const std::vector<bench_row>& rows);   // markdown
std::string bench_json(const std::vector<bench_row>& rows);

double mean_of(const std::vector<double>& v);
double stddev_of(const std::vector<double>& v);             // sample standard deviation (0 for < 2 values)

} // namespace mtp
