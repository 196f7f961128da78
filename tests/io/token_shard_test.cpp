// Token shards: a written shard reads back exactly, and every malformed header or id is refused with one line
// naming the file and the field (magic, version, dtype width, count vs size, vocab_size, an id >= vocab_size).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/error.h"
#include "io/token_shard.h"

namespace {

std::string tmp_path(const std::string& name) {
    static const auto d = [] {
        const auto p = std::filesystem::temp_directory_path() / ("mtp_shard_test_" + std::to_string(::getpid()));
        std::filesystem::remove_all(p);   // once per process: a folder left by an earlier process with the same pid
        std::filesystem::create_directories(p);
        return p;
    }();
    return (d / name).string();
}

// A shard built byte by byte from the documented format (not by token_shard_write).
std::string shard_bytes(uint32_t version, uint32_t width, uint64_t count, uint32_t vocab,
                        const std::vector<uint32_t>& ids) {
    std::string s("MTPTOKS\0", 8);
    auto put = [&](auto v) { s.append(reinterpret_cast<const char*>(&v), sizeof v); };
    put(version);
    put(width);
    put(count);
    put(vocab);
    put(uint32_t(0));
    for (uint32_t id : ids) {
        if (width == 2) put(uint16_t(id));
        else put(id);
    }
    return s;
}

std::string error_of(const std::string& bytes, const std::string& name) {
    const std::string p = tmp_path(name);
    std::ofstream(p, std::ios::binary) << bytes;
    try {
        mtp::token_shard_read(p);
    } catch (const mtp::error& e) {
        const std::string m = e.what();
        EXPECT_EQ(m.rfind(p, 0), 0u) << "the message names the file: " << m;
        EXPECT_EQ(m.find('\n'), std::string::npos) << m;
        return m;
    }
    return "";
}

TEST(TokenShard, RoundTripAndTheDocumentedLayout) {
    const std::vector<uint32_t> ids = {0, 5, 299, 7, 1};
    const std::string p = tmp_path("ok.bin");
    mtp::token_shard_write(p, ids.data(), ids.size(), 300);
    const auto t = mtp::token_shard_read(p);
    EXPECT_EQ(t.ids, ids);
    EXPECT_EQ(t.vocab_size, 300u);
    std::ifstream f(p, std::ios::binary);
    const std::string raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    EXPECT_EQ(raw, shard_bytes(1, 2, ids.size(), 300, ids)) << "bytes differ from the documented format";
    const std::vector<uint32_t> big = {70000, 3};
    {
        std::ofstream(tmp_path("u32.bin"), std::ios::binary) << shard_bytes(1, 4, 2, 100000, big);
    }
    EXPECT_EQ(mtp::token_shard_read(tmp_path("u32.bin")).ids, big);
}

TEST(TokenShard, EveryRejection) {
    const std::vector<uint32_t> ids = {1, 2, 3};
    EXPECT_NE(error_of("MTPTOK", "short.bin").find("too short"), std::string::npos);
    std::string bad_magic = shard_bytes(1, 2, 3, 10, ids);
    bad_magic[0] = 'X';
    EXPECT_NE(error_of(bad_magic, "magic.bin").find("magic"), std::string::npos);
    EXPECT_NE(error_of(shard_bytes(2, 2, 3, 10, ids), "version.bin").find("version 2"), std::string::npos);
    EXPECT_NE(error_of(shard_bytes(1, 3, 3, 10, ids), "width.bin").find("dtype"), std::string::npos);
    EXPECT_NE(error_of(shard_bytes(1, 2, 4, 10, ids), "count.bin").find("count 4"), std::string::npos);
    EXPECT_NE(error_of(shard_bytes(1, 2, uint64_t(1) << 62, 10, ids), "hugecount.bin").find("count"), std::string::npos);
    EXPECT_NE(error_of(shard_bytes(1, 2, 3, 10, ids) + "x", "trailing.bin").find("file size"), std::string::npos);
    EXPECT_NE(error_of(shard_bytes(1, 2, 3, 0, ids), "vocab0.bin").find("vocab_size 0"), std::string::npos);
    EXPECT_NE(error_of(shard_bytes(1, 2, 3, 0xFFFFFFFFu, ids), "vocabmax.bin").find("vocab_size 4294967295"),
              std::string::npos);
    EXPECT_NE(error_of(shard_bytes(1, 2, 3, 3, ids), "id.bin").find("token id 3 at index 2"), std::string::npos);
    EXPECT_NE(error_of(shard_bytes(1, 4, 1, 1u << 24, {1u << 24}), "id32.bin").find("not below vocab_size"),
              std::string::npos);
}

} // namespace
