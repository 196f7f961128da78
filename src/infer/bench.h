// `mtp bench` measurements (llama-bench style): prompt processing (pp) and generation (tg) tokens/s, then tg with
// MTP speculation for each draft length 1..D (and D+1, D+2 with reuse), for the full-vocabulary draft head and for
// each restricted draft vocabulary (FR-Spec), measured side by side with plain tg on the same prompt in the same
// repetition; mean ± stddev over repetitions. Also where the decode time goes per generated token (draft, verify,
// sampling, rollback, other) and what one forward of each stage costs as a function of the rows it computes.
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
    std::vector<int> draft_vocabs = {0};     // draft vocabulary sizes: 0 = full vocabulary, N = the N most frequent
    std::vector<int> vocab_rank;             // token ids, most frequent first (needed for N > 0)
    std::vector<int> cost_rows = {1, 2, 3, 4, 5, 6, 8};   // forward-cost table (empty: skip it)
    std::vector<std::vector<int>> trees;     // token trees to measure (greedy rows only; deeper than D: reuse)
};

struct bench_row {
    std::string test;                        // "pp128", "tg128", "tg128+mtp"
    float temp = 0;
    int draft = 0;                           // 0: plain
    bool reuse = false;
    float p_min = 0;
    int draft_vocab = 0;                     // 0: full vocabulary
    std::vector<int> tree;                   // token tree (draft = its depth); empty: a chain
    std::vector<double> tps;                 // tokens/s per repetition
    std::vector<double> speedup;             // tg rows: tokens/s / plain tg tokens/s of the same repetition
    gen_stats stats;                         // summed over repetitions
};

// One forward of a stage over `rows` new positions after the prompt, microseconds (median of repeated calls).
struct cost_row {
    int rows = 0;
    double main_full = 0;                    // trunk + full lm_head on every row (a verify pass)
    double trunk = 0;                        // trunk only
    double module = 0;                       // MTP module 1, no head (refill rows)
    double module_full = 0;                  // module 1 + full head on the last row (a full-vocabulary draft)
    double module_draft = 0;                 // module 1 + draft-vocabulary head on the last row (0: no draft vocab)
    long long experts = -1;                  // distinct routed experts the trunk pass read (-1: not reported)
};

struct bench_result {
    std::vector<bench_row> rows;
    std::vector<cost_row> costs;
    int cost_context = 0;                    // cache positions before the measured rows
    int cost_draft_vocab = 0;
};

// Token ids 0..V-1 ranked by frequency in `ids` (most frequent first; ties: lower id first).
std::vector<int> vocab_rank_by_frequency(const std::vector<uint32_t>& ids, int V);
// The N most frequent of a ranking, ascending (a draft vocabulary).
std::vector<int> draft_vocab_from_rank(const std::vector<int>& rank, int N);
// The ranking in a draft_vocab.json (written by `mtp draft-vocab`: "ids", most frequent first); errors name `flag`
// and the file.
std::vector<int> draft_rank_from_json(const std::string& path, int vocab, const std::string& flag);

bench_result bench_run(infer_model& m, const bench_params& p,
                       const std::function<void(const std::string&)>& progress = {});
std::string bench_table(const std::vector<bench_row>& rows);      // markdown: speed, speed-up, acceptance
std::string bench_breakdown(const std::vector<bench_row>& rows);  // markdown: where the time goes per token
std::string bench_cost_table(const bench_result& r);              // markdown: forward cost vs rows
std::string bench_json(const bench_result& r);

// Plain greedy decoding of the same model served at several weight types (one infer_model each), measured
// interleaved: repetition r runs prompt r on every model back to back, so the ratios compare like with like.
struct weights_row {
    std::string name;                        // e.g. "q8_0"
    double mb_per_step = 0;                  // weight bytes one plain step reads (MB)
    std::vector<double> tps;                 // tg tokens/s per repetition
    std::vector<double> ratio;               // tps / the first model's tps in the same repetition
};
std::vector<weights_row> bench_weight_types(const std::vector<infer_model*>& models,
                                            const std::vector<std::string>& names, const std::vector<double>& mb,
                                            const bench_params& p);
std::string bench_weights_table(const std::vector<weights_row>& rows);

double mean_of(const std::vector<double>& v);
double stddev_of(const std::vector<double>& v);             // sample standard deviation (0 for < 2 values)

} // namespace mtp
