// Byte-level BPE training (HF BpeTrainer-compatible output): GPT-2 or DeepSeek-V3 pre-tokenisation,
// pre-token counting over fixed 1 MiB chunks (OpenMP; results independent of the thread count), then
// merges driven by incremental pair counts and a max-heap with lazy deletion.
//
// Vocabulary layout: ids 0..255 are the 256 byte tokens in byte order, then one id per merge in merge
// order, then the special tokens (added_tokens, special = true, not part of model.vocab) at the end, so
// tokenizer_vocab_size() == vocab_size. Special tokens found in the training text are cut out before
// counting. Ties between equally frequent pairs go to the smaller (left id, right id).
#pragma once
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace mtp {

struct tokenizer_train_options {
    int vocab_size = 0;                      // total, bytes + merges + special tokens
    std::string pre_tokenizer = "deepseek";  // "deepseek" (the V3 Split regexes) or "gpt2"
    std::vector<std::string> special_tokens{"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"};
    int threads = 0;                         // 0: OpenMP default
};

struct tokenizer_train_stats {
    size_t files = 0;
    size_t bytes = 0;            // corpus size
    size_t unique_words = 0;     // distinct pre-tokens
    size_t merges = 0;
    double count_seconds = 0, merge_seconds = 0;
    bool exhausted = false;      // ran out of pairs before reaching vocab_size
};

// Files and directories (walked recursively, files in sorted order) -> regular files.
// Throws mtp::error for a path that does not exist.
std::vector<std::string> tokenizer_collect_files(const std::vector<std::string>& paths);

// Trains on the given files (already expanded). Throws mtp::error on vocab_size < 256 + specials, an
// unknown pre-tokenizer name, bad special tokens (empty, duplicate, invalid UTF-8), unreadable files or an
// empty corpus. If the corpus runs out of pairs first, the vocabulary is smaller and stats->exhausted set.
tokenizer tokenizer_train(const tokenizer_train_options& opt, const std::vector<std::string>& files,
                          tokenizer_train_stats* stats = nullptr);

// Same, on in-memory texts (tests, benchmarks).
tokenizer tokenizer_train_texts(const tokenizer_train_options& opt, const std::vector<std::string>& texts,
                                tokenizer_train_stats* stats = nullptr);

// The pre-tokenizer steps for "deepseek" or "gpt2" (throws otherwise).
std::vector<pretokenizer_step> tokenizer_pretokenizer_steps(const std::string& name);

} // namespace mtp
