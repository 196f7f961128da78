// Compiled state behind a `tokenizer` (internal to io/tokenizer*.cpp and bpe_train.cpp).
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/pretokenizer.h"
#include "io/tokenizer.h"

namespace mtp::detail {

// (left id, right id) -> (rank, merged id), open addressing.
class merge_table {
public:
    void init(size_t n);
    void put(int a, int b, int rank, int id);   // a later put of the same pair wins (as HF)
    bool get(int a, int b, int& rank, int& id) const {
        uint64_t k = key(a, b);
        for (uint64_t i = slot(k);; i = (i + 1) & mask_) {
            if (keys_[i] == k) {
                rank = vals_[i].first;
                id = vals_[i].second;
                return true;
            }
            if (keys_[i] == empty) return false;
        }
    }

private:
    static constexpr uint64_t empty = ~0ull;
    static uint64_t key(int a, int b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
    uint64_t slot(uint64_t k) const { return ((k * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
    std::vector<uint64_t> keys_{empty};
    std::vector<std::pair<int32_t, int32_t>> vals_{{0, 0}};
    uint64_t mask_ = 0;
};

// Bounded map from a pre-token's bytes to its ids, shared by threads: 16 shards, each behind its own mutex
// and cleared whole when full.
class piece_cache {
public:
    static constexpr size_t max_key = 64;
    piece_cache();
    bool get(std::string_view key, uint64_t h, std::vector<int>& out);   // appends the ids on a hit
    void put(std::string_view key, uint64_t h, const int* ids, size_t n);
    void clear();

private:
    struct entry {
        uint64_t h = 0;   // 0 = empty slot
        uint32_t koff = 0, klen = 0, ioff = 0, ilen = 0;
    };
    struct shard {
        std::mutex mu;
        std::vector<entry> table;
        std::string keys;
        std::vector<int> ids;
        size_t count = 0;
        void clear();
    };
    static constexpr size_t n_shards = 16;
    shard& shard_of(uint64_t h) { return shards_[(h >> 56) & (n_shards - 1)]; }
    shard shards_[n_shards];
};

struct tokenizer_runtime {
    std::string where;                                    // source file, for messages
    int vocab_size = 0;
    std::unordered_map<std::string, int> vocab_ids;       // model vocab
    std::unordered_map<std::string, int> added_ids;       // added tokens (take precedence)
    std::vector<std::string> id_text;                     // id -> token text
    std::vector<uint8_t> id_has;                          // id -> has a token
    std::vector<std::string> id_bytes;                    // id -> decoded bytes
    std::array<int, 256> byte_id{};                       // byte -> id of its byte-level token (-1: none)
    int unk_id = -1;
    bool ignore_merges = false;
    merge_table merges;
    std::unique_ptr<pretokenizer> pre;
    std::vector<added_token> added;                       // payload index of the matchers
    string_matcher match_all, match_nonspecial;
    std::unique_ptr<regex> word_char;                     // for single_word
    piece_cache cache;
    std::atomic<bool> cache_on{true};
};

// BPE of one pre-token (raw bytes), ids appended to out.
void bpe_piece(const tokenizer_runtime& rt, std::string_view p, std::vector<int>& out);

} // namespace mtp::detail
