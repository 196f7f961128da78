// Token shards: the binary files `mtp data prepare` writes and the trainer reads.
//
// Format (little-endian): a 32-byte header, then `count` token ids.
//   bytes 0..7   magic "MTPTOKS\0"
//   bytes 8..11  u32 version (1)
//   bytes 12..15 u32 dtype: 2 = uint16 ids, 4 = uint32 ids (bytes per id)
//   bytes 16..23 u64 count (number of ids)
//   bytes 24..27 u32 vocab_size of the tokenizer that made it (ids are < vocab_size)
//   bytes 28..31 u32 reserved (0)
// Documents are separated by the end-of-document token id recorded in the dataset's meta.json.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mtp {

struct token_shard {
    std::string path;
    uint32_t vocab_size = 0;
    std::vector<uint32_t> ids;
};

void token_shard_write(const std::string& path, const uint32_t* ids, size_t n, uint32_t vocab_size);  // atomic
constexpr uint32_t token_vocab_max = 1u << 24;   // largest vocabulary a shard (or a dataset) may declare
token_shard token_shard_read(const std::string& path);   // validates header, size and every id < vocab_size

} // namespace mtp
