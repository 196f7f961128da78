// Encoding and decoding: added-token split, pre-tokenisation, byte-level BPE with a merge-rank table, and
// a bounded pre-token cache. The hot path allocates nothing per pre-token (thread-local scratch).
#include <algorithm>
#include <climits>
#include <cstring>
#include <functional>
#include <queue>

#include "core/error.h"
#include "io/tokenizer.h"
#include "io/tokenizer_runtime.h"

namespace mtp {
namespace detail {

// ------------------------------------------------------------------------------------- merge_table

void merge_table::init(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n + 16) cap <<= 1;
    keys_.assign(cap, empty);
    vals_.assign(cap, {0, 0});
    mask_ = cap - 1;
}

void merge_table::put(int a, int b, int rank, int id) {
    uint64_t k = key(a, b);
    for (uint64_t i = slot(k);; i = (i + 1) & mask_) {
        if (keys_[i] == k || keys_[i] == empty) {
            keys_[i] = k;
            vals_[i] = {rank, id};
            return;
        }
    }
}

// ------------------------------------------------------------------------------------- piece_cache

namespace {
constexpr size_t shard_slots = size_t(1) << 13;          // 8192 slots per shard, at most half used
constexpr size_t shard_max_entries = shard_slots / 2;
}

piece_cache::piece_cache() {
    for (auto& s : shards_) s.table.resize(shard_slots);
}

void piece_cache::shard::clear() {
    std::fill(table.begin(), table.end(), entry{});
    keys.clear();
    ids.clear();
    count = 0;
}

void piece_cache::clear() {
    for (auto& s : shards_) {
        std::lock_guard<std::mutex> lock(s.mu);
        s.clear();
    }
}

bool piece_cache::get(std::string_view key, uint64_t h, std::vector<int>& out) {
    shard& s = shard_of(h);
    std::lock_guard<std::mutex> lock(s.mu);
    for (size_t i = h & (shard_slots - 1);; i = (i + 1) & (shard_slots - 1)) {
        const entry& e = s.table[i];
        if (e.h == 0) return false;
        if (e.h == h && e.klen == key.size() && std::memcmp(s.keys.data() + e.koff, key.data(), key.size()) == 0) {
            out.insert(out.end(), s.ids.begin() + e.ioff, s.ids.begin() + e.ioff + e.ilen);
            return true;
        }
    }
}

void piece_cache::put(std::string_view key, uint64_t h, const int* ids, size_t n) {
    shard& s = shard_of(h);
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.count >= shard_max_entries) s.clear();
    for (size_t i = h & (shard_slots - 1);; i = (i + 1) & (shard_slots - 1)) {
        entry& e = s.table[i];
        if (e.h == h && e.klen == key.size() && std::memcmp(s.keys.data() + e.koff, key.data(), key.size()) == 0)
            return;   // another thread got there first
        if (e.h == 0) {
            e = {h, uint32_t(s.keys.size()), uint32_t(key.size()), uint32_t(s.ids.size()), uint32_t(n)};
            s.keys.append(key);
            s.ids.insert(s.ids.end(), ids, ids + n);
            ++s.count;
            return;
        }
    }
}

// --------------------------------------------------------------------------------------------- BPE

namespace {

struct bpe_scratch {
    std::vector<int> sym, rank, prev, next;
    struct cand {
        int rank, pos, left, right;
        bool operator>(const cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::vector<cand> heap;
};

constexpr int no_merge = INT_MAX;
constexpr size_t small_piece = 256;   // above this, the heap version (O(n log n))

inline int pair_rank(const tokenizer_runtime& rt, int a, int b, int& id) {
    int r;
    return rt.merges.get(a, b, r, id) ? r : no_merge;
}

} // namespace

void bpe_piece(const tokenizer_runtime& rt, std::string_view p, std::vector<int>& out) {
    thread_local bpe_scratch sc;
    auto& sym = sc.sym;
    sym.clear();
    for (unsigned char c : p) {
        int id = rt.byte_id[c];
        if (id < 0) id = rt.unk_id;   // no byte token: unk if any, else the byte is dropped (as HF)
        if (id >= 0) sym.push_back(id);
    }
    const size_t n = sym.size();
    if (n <= 1) {
        out.insert(out.end(), sym.begin(), sym.end());
        return;
    }
    if (rt.ignore_merges) {
        auto it = rt.vocab_ids.find(bytes_to_byte_level(p));
        if (it != rt.vocab_ids.end()) {
            out.push_back(it->second);
            return;
        }
    }
    int id = -1;
    if (n <= small_piece) {
        // Ranks of adjacent pairs; repeatedly merge the leftmost lowest rank, recomputing two neighbours.
        auto& rank = sc.rank;
        rank.resize(n);
        size_t m = n;
        for (size_t i = 0; i + 1 < m; ++i) rank[i] = pair_rank(rt, sym[i], sym[i + 1], id);
        rank[m - 1] = no_merge;
        for (;;) {
            size_t best = 0;
            int br = no_merge;
            for (size_t i = 0; i + 1 < m; ++i)
                if (rank[i] < br) { br = rank[i]; best = i; }
            if (br == no_merge) break;
            rt.merges.get(sym[best], sym[best + 1], br, id);
            sym[best] = id;
            std::copy(sym.begin() + long(best) + 2, sym.begin() + long(m), sym.begin() + long(best) + 1);
            std::copy(rank.begin() + long(best) + 2, rank.begin() + long(m), rank.begin() + long(best) + 1);
            --m;
            int tmp;
            rank[best] = best + 1 < m ? pair_rank(rt, sym[best], sym[best + 1], tmp) : no_merge;
            if (best > 0) rank[best - 1] = pair_rank(rt, sym[best - 1], sym[best], tmp);
        }
        out.insert(out.end(), sym.begin(), sym.begin() + long(m));
        return;
    }
    // Long pieces: doubly linked list + min-heap of (rank, position) with lazy invalidation.
    auto& prev = sc.prev;
    auto& next = sc.next;
    auto& heap = sc.heap;
    prev.resize(n);
    next.resize(n);
    heap.clear();
    for (size_t i = 0; i < n; ++i) {
        prev[i] = int(i) - 1;
        next[i] = i + 1 < n ? int(i + 1) : -1;
    }
    auto push = [&](int pos) {
        int nx = next[size_t(pos)], mid;
        if (nx < 0) return;
        int r = pair_rank(rt, sym[size_t(pos)], sym[size_t(nx)], mid);
        if (r == no_merge) return;
        heap.push_back({r, pos, sym[size_t(pos)], sym[size_t(nx)]});
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
    };
    for (size_t i = 0; i + 1 < n; ++i) push(int(i));
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), std::greater<>());
        auto c = heap.back();
        heap.pop_back();
        int nx = next[size_t(c.pos)];
        if (sym[size_t(c.pos)] != c.left || nx < 0 || sym[size_t(nx)] != c.right) continue;   // stale
        int r;
        rt.merges.get(c.left, c.right, r, id);
        sym[size_t(c.pos)] = id;
        sym[size_t(nx)] = -1;   // removed
        next[size_t(c.pos)] = next[size_t(nx)];
        if (next[size_t(nx)] >= 0) prev[size_t(next[size_t(nx)])] = c.pos;
        if (prev[size_t(c.pos)] >= 0) push(prev[size_t(c.pos)]);
        push(c.pos);
    }
    for (int i = 0; i >= 0; i = next[size_t(i)]) out.push_back(sym[size_t(i)]);
}

// ------------------------------------------------------------------------------------ added tokens

namespace {

struct added_match {
    size_t b, e;
    int id = -1;
};

// Code point ending at byte b (one byte if invalid).
uint32_t cp_before(std::string_view t, size_t b, size_t& len) {
    for (size_t l = 1; l <= 4 && l <= b; ++l) {
        uint32_t cp;
        if (int k = utf8_decode(t.data(), t.size(), b - l, cp); k == int(l)) {
            len = l;
            return cp;
        }
    }
    len = 1;
    return 0xFFFFFFFF;
}

bool is_word_char(const tokenizer_runtime& rt, std::string_view t, size_t b, size_t len) {
    size_t mb, me;
    return rt.word_char->find(t.data() + b, len, 0, mb, me);
}

void find_added(const tokenizer_runtime& rt, std::string_view t, bool allow_special,
                std::vector<added_match>& out) {
    out.clear();
    const string_matcher& m = allow_special ? rt.match_all : rt.match_nonspecial;
    if (m.empty()) return;
    size_t last_end = 0;
    for (size_t i = 0; i < t.size();) {
        if (!m.first_byte(static_cast<unsigned char>(t[i]))) { ++i; continue; }
        int payload = -1;
        size_t len = m.match_at(t, i, payload);
        if (!len) { ++i; continue; }
        const added_token& at = rt.added[size_t(payload)];
        size_t b = i, e = i + len;
        if (at.single_word) {
            size_t l;
            bool left_ok = true, right_ok = true;
            if (b > 0) {
                cp_before(t, b, l);
                left_ok = !is_word_char(rt, t, b - l, l);
            }
            if (e < t.size()) {
                uint32_t cp;
                int k = utf8_decode(t.data(), t.size(), e, cp);
                right_ok = !is_word_char(rt, t, e, size_t(k ? k : 1));
            }
            if (!left_ok || !right_ok) { i = e; continue; }
        }
        if (at.lstrip) {
            while (b > last_end) {
                size_t l;
                uint32_t cp = cp_before(t, b, l);
                if (!unicode_is_whitespace(cp) || b - l < last_end) break;
                b -= l;
            }
        }
        if (at.rstrip) {
            while (e < t.size()) {
                uint32_t cp;
                int k = utf8_decode(t.data(), t.size(), e, cp);
                if (!k || !unicode_is_whitespace(cp)) break;
                e += size_t(k);
            }
        }
        out.push_back({b, e, at.id});
        last_end = e;
        i = e;
    }
}

struct encode_scratch {
    std::vector<added_match> matches;
    std::vector<piece> pieces;
};

void encode_section(tokenizer_runtime& rt, std::string_view s, std::vector<int>& out,
                    std::vector<piece>& pieces) {
    if (s.empty()) return;
    rt.pre->split(s, pieces);
    const bool use_cache = rt.cache_on.load(std::memory_order_relaxed);
    for (piece p : pieces) {
        if (use_cache && p.size() <= piece_cache::max_key) {
            uint64_t h = std::hash<std::string_view>{}(p) | 1;
            if (rt.cache.get(p, h, out)) continue;
            size_t before = out.size();
            bpe_piece(rt, p, out);
            rt.cache.put(p, h, out.data() + before, out.size() - before);
        } else {
            bpe_piece(rt, p, out);
        }
    }
}

tokenizer_runtime& runtime(const tokenizer& t) {
    if (!t.rt) fail(t.source.empty() ? "tokenizer" : t.source, "not built (call tokenizer_build)");
    return *t.rt;
}

} // namespace
} // namespace detail

void tokenizer_encode_append(const tokenizer& t, std::string_view text, std::vector<int>& out,
                             bool allow_special) {
    auto& rt = detail::runtime(t);
    thread_local detail::encode_scratch sc;
    detail::find_added(rt, text, allow_special, sc.matches);
    size_t pos = 0;
    for (const auto& m : sc.matches) {
        detail::encode_section(rt, text.substr(pos, m.b - pos), out, sc.pieces);
        out.push_back(m.id);
        pos = m.e;
    }
    detail::encode_section(rt, text.substr(pos), out, sc.pieces);
}

std::vector<int> tokenizer_encode(const tokenizer& t, std::string_view text, bool allow_special) {
    std::vector<int> out;
    out.reserve(text.size() / 3 + 4);
    tokenizer_encode_append(t, text, out, allow_special);
    return out;
}

std::string tokenizer_decode(const tokenizer& t, const std::vector<int>& ids) {
    auto& rt = detail::runtime(t);
    std::string out;
    for (int id : ids) {
        if (id < 0 || id >= rt.vocab_size || !rt.id_has[size_t(id)])
            fail("tokenizer_decode", "id " + std::to_string(id) + " is not in the vocabulary (size " +
                                         std::to_string(rt.vocab_size) + ")");
        out += rt.id_bytes[size_t(id)];
    }
    return out;
}

int tokenizer_vocab_size(const tokenizer& t) { return detail::runtime(t).vocab_size; }

int tokenizer_token_id(const tokenizer& t, const std::string& token) {
    auto& rt = detail::runtime(t);
    if (auto it = rt.added_ids.find(token); it != rt.added_ids.end()) return it->second;
    if (auto it = rt.vocab_ids.find(token); it != rt.vocab_ids.end()) return it->second;
    return -1;
}

const std::string& tokenizer_id_to_token(const tokenizer& t, int id) {
    static const std::string none;
    auto& rt = detail::runtime(t);
    if (id < 0 || id >= rt.vocab_size || !rt.id_has[size_t(id)]) return none;
    return rt.id_text[size_t(id)];
}

void tokenizer_set_cache(const tokenizer& t, bool enabled) {
    detail::runtime(t).cache_on.store(enabled);
}

} // namespace mtp
