// Token shard reading (strictly validated) and atomic writing.
#include "io/token_shard.h"

#include <cstring>
#include <fstream>

#include "core/error.h"
#include "io/atomic_file.h"

namespace mtp {

namespace {
constexpr char magic[8] = {'M', 'T', 'P', 'T', 'O', 'K', 'S', '\0'};
constexpr size_t header_size = 32;

template <class T> void put(std::string& s, T v) { s.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
template <class T> T get(const std::string& s, size_t off) { T v; std::memcpy(&v, s.data() + off, sizeof(T)); return v; }
}

void token_shard_write(const std::string& path, const uint32_t* ids, size_t n, uint32_t vocab_size) {
    const uint32_t width = vocab_size <= 65536 ? 2 : 4;
    std::string s;
    s.reserve(header_size + n * width);
    s.append(magic, 8);
    put<uint32_t>(s, 1);
    put<uint32_t>(s, width);
    put<uint64_t>(s, n);
    put<uint32_t>(s, vocab_size);
    put<uint32_t>(s, 0);
    for (size_t i = 0; i < n; ++i) {
        if (ids[i] >= vocab_size) fail(path, "token id " + std::to_string(ids[i]) + " not below vocab_size");
        if (width == 2) put<uint16_t>(s, uint16_t(ids[i]));
        else put<uint32_t>(s, ids[i]);
    }
    write_file_atomic(path, s);
}

token_shard token_shard_read(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(path, "cannot open token shard");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (s.size() < header_size) fail(path, "file too short for a token shard header");
    if (std::memcmp(s.data(), magic, 8) != 0) fail(path, "not a token shard (bad magic)");
    if (get<uint32_t>(s, 8) != 1) fail(path, "unsupported token shard version " + std::to_string(get<uint32_t>(s, 8)));
    const uint32_t width = get<uint32_t>(s, 12);
    if (width != 2 && width != 4) fail(path, "bad dtype field " + std::to_string(width));
    const uint64_t n = get<uint64_t>(s, 16);
    token_shard t;
    t.path = path;
    t.vocab_size = get<uint32_t>(s, 24);
    if (t.vocab_size < 1 || t.vocab_size > token_vocab_max)
        fail(path, "vocab_size " + std::to_string(t.vocab_size) + " in the header is not in 1.." +
                       std::to_string(token_vocab_max));
    if (n > (s.size() - header_size) / width || header_size + n * width != s.size())
        fail(path, "count " + std::to_string(n) + " does not match the file size " + std::to_string(s.size()));
    t.ids.resize(n);
    for (uint64_t i = 0; i < n; ++i) {
        uint32_t v = width == 2 ? get<uint16_t>(s, header_size + 2 * i) : get<uint32_t>(s, header_size + 4 * i);
        if (v >= t.vocab_size) fail(path, "token id " + std::to_string(v) + " at index " + std::to_string(i) +
                                              " not below vocab_size " + std::to_string(t.vocab_size));
        t.ids[i] = v;
    }
    return t;
}

} // namespace mtp
