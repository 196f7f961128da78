// Datasets of token shards: preparation from text (files, folders, globs), loading, and deterministic
// random windows (a pure function of seed and step, so a resumed run draws the same batches).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mtp {

struct dataset {
    std::string dir;
    int vocab_size = 0;
    int eos_id = -1;                     // document separator (-1: none)
    std::string tokenizer;               // tokenizer.json the shards were made with
    std::vector<uint32_t> train, val;    // all shards of each split, concatenated
};

struct prepare_options {
    std::string tokenizer;
    std::vector<std::string> inputs;     // files, folders (recursive), or glob patterns
    std::string out_dir;
    double val_fraction = 0.05;          // fraction of DOCUMENTS held out
    uint64_t seed = 1;
    std::string doc_sep;                 // separator token; default: the tokenizer's end-of-sentence token
    size_t shard_tokens = size_t(1) << 26;
};

struct prepare_stats { size_t docs = 0, bytes = 0, train_tokens = 0, val_tokens = 0; double seconds = 0; };

// Expands inputs into a sorted list of files; errors for a path that matches nothing.
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs);
prepare_stats dataset_prepare(const prepare_options& o);
dataset dataset_load(const std::string& dir);

// B windows of T+1 tokens from `ids`, start positions drawn uniformly from seed and step: out[B*(T+1)].
void sample_windows(const std::vector<uint32_t>& ids, uint64_t seed, uint64_t step, int B, int T, int* out);
// The i-th fixed evaluation window (evenly strided over the split): out[T+1].
void eval_window(const std::vector<uint32_t>& ids, int i, int n, int T, int* out);

} // namespace mtp
