// libFuzzer target: token shards (magic, version, width, count, vocab_size, every id).
#include "fuzz_util.h"
#include "io/token_shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string p = mtp::fuzz::as_file(data, size, ".bin");
    mtp::fuzz::expect_clean([&] { mtp::token_shard_read(p); });
    return 0;
}
