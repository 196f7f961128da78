// Byte-level BPE training: parallel pre-token counting, then incremental pair counts + lazy max-heap.
#include "io/bpe_train.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>
#include <unordered_map>

#include <omp.h>

#include "core/error.h"
#include "io/pretokenizer.h"

namespace mtp {

namespace {

namespace fs = std::filesystem;

struct sv_hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using count_map = std::unordered_map<std::string, int64_t, sv_hash, std::equal_to<>>;

constexpr size_t chunk_bytes = size_t(1) << 20;          // counting unit (thread-count independent)
constexpr size_t batch_bytes = size_t(256) << 20;        // files read per counting round

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Cuts text into ~1 MiB chunks ending just after a '\n' (or at the end).
void add_chunks(std::string_view text, std::vector<std::string_view>& out) {
    size_t pos = 0;
    while (pos < text.size()) {
        size_t end = pos + chunk_bytes;
        if (end >= text.size()) {
            end = text.size();
        } else {
            size_t nl = text.find('\n', end);
            end = nl == std::string_view::npos ? text.size() : nl + 1;
        }
        out.push_back(text.substr(pos, end - pos));
        pos = end;
    }
}

// Counts pre-tokens of the chunks into `total` (parallel over chunks, thread maps merged in order).
void count_chunks(const detail::pretokenizer& pre, const detail::string_matcher& specials,
                  const std::vector<std::string_view>& chunks, count_map& total, int threads) {
    int nt = threads > 0 ? threads : omp_get_max_threads();
    nt = std::max(1, std::min<int>(nt, int(chunks.size())));
    std::vector<count_map> maps(static_cast<size_t>(nt));
#pragma omp parallel num_threads(nt)
    {
        count_map& m = maps[size_t(omp_get_thread_num())];
        std::vector<detail::piece> pieces;
        auto section = [&](std::string_view s) {
            pre.split(s, pieces);
            for (auto p : pieces) {
                auto it = m.find(p);
                if (it == m.end()) m.emplace(std::string(p), 1);
                else ++it->second;
            }
        };
#pragma omp for schedule(dynamic, 1)
        for (long c = 0; c < long(chunks.size()); ++c) {
            std::string_view t = chunks[size_t(c)];
            size_t start = 0;
            for (size_t i = 0; i < t.size();) {
                int payload;
                size_t len = specials.first_byte(static_cast<unsigned char>(t[i])) ? specials.match_at(t, i, payload) : 0;
                if (!len) { ++i; continue; }
                section(t.substr(start, i - start));
                i += len;
                start = i;
            }
            section(t.substr(start));
        }
    }
    for (auto& m : maps) {
        if (total.empty()) { total.swap(m); continue; }
        for (auto& [k, v] : m) total[k] += v;
        count_map().swap(m);
    }
}

struct word {
    std::vector<int> sym;
    int64_t count = 0;
};

inline uint64_t pair_key(int a, int b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

struct heap_entry {
    int64_t count;
    uint64_t pair;
    // max-heap: higher count first, then the smaller pair
    bool operator<(const heap_entry& o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

tokenizer train_from_counts(const tokenizer_train_options& opt, count_map&& counts, tokenizer_train_stats& st) {
    auto t0 = std::chrono::steady_clock::now();
    // Words in a fixed (sorted) order.
    std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
    count_map().swap(counts);
    std::sort(sorted.begin(), sorted.end());
    std::vector<word> words(sorted.size());
    for (size_t i = 0; i < sorted.size(); ++i) {
        words[i].count = sorted[i].second;
        words[i].sym.reserve(sorted[i].first.size());
        for (unsigned char c : sorted[i].first) words[i].sym.push_back(c);
    }
    decltype(sorted)().swap(sorted);
    st.unique_words = words.size();

    std::unordered_map<uint64_t, int64_t> pair_count;
    std::unordered_map<uint64_t, std::vector<uint32_t>> where;
    for (size_t w = 0; w < words.size(); ++w) {
        const auto& s = words[w].sym;
        for (size_t i = 0; i + 1 < s.size(); ++i) {
            uint64_t k = pair_key(s[i], s[i + 1]);
            pair_count[k] += words[w].count;
            auto& wl = where[k];
            if (wl.empty() || wl.back() != uint32_t(w)) wl.push_back(uint32_t(w));
        }
    }
    std::priority_queue<heap_entry> heap;
    {
        std::vector<heap_entry> init;
        init.reserve(pair_count.size());
        for (auto& [k, c] : pair_count) init.push_back({c, k});
        heap = std::priority_queue<heap_entry>(std::less<heap_entry>(), std::move(init));
    }

    tokenizer t;
    t.vocab.reserve(size_t(opt.vocab_size));
    for (int b = 0; b < 256; ++b) t.vocab.push_back(detail::byte_to_char_utf8(uint8_t(b)));
    const int target = opt.vocab_size - int(opt.special_tokens.size());
    std::vector<uint32_t> stamp(words.size(), 0);
    std::vector<int> out;
    std::vector<uint64_t> fresh;   // pairs with the new token whose count went up this step
    uint32_t step = 0;
    while (int(t.vocab.size()) < target && !heap.empty()) {
        heap_entry top = heap.top();
        heap.pop();
        auto it = pair_count.find(top.pair);
        int64_t cur = it == pair_count.end() ? 0 : it->second;
        if (cur != top.count) {   // stale entry: counts of old pairs only go down
            if (cur > 0) heap.push({cur, top.pair});
            continue;
        }
        if (cur <= 0) continue;
        const int a = int(top.pair >> 32), b = int(uint32_t(top.pair));
        const int c = int(t.vocab.size());
        t.vocab.push_back(t.vocab[size_t(a)] + t.vocab[size_t(b)]);
        t.merges.emplace_back(a, b);
        ++step;
        fresh.clear();
        auto wit = where.find(top.pair);
        std::vector<uint32_t> todo;
        if (wit != where.end()) todo.swap(wit->second);
        for (uint32_t w : todo) {
            if (stamp[w] == step) continue;
            stamp[w] = step;
            auto& s = words[w].sym;
            const int64_t f = words[w].count;
            auto add = [&](int x, int y, int64_t d) {
                uint64_t k = pair_key(x, y);
                pair_count[k] += d * f;
                if (d > 0 && (x == c || y == c)) {
                    auto& wl = where[k];
                    if (wl.empty() || wl.back() != w) wl.push_back(w);
                    fresh.push_back(k);
                }
            };
            out.clear();
            bool hit = false;
            for (size_t i = 0; i < s.size();) {
                if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
                    hit = true;
                    if (!out.empty()) { add(out.back(), a, -1); add(out.back(), c, +1); }
                    if (i + 2 < s.size()) { add(b, s[i + 2], -1); add(c, s[i + 2], +1); }
                    out.push_back(c);
                    i += 2;
                } else {
                    out.push_back(s[i]);
                    ++i;
                }
            }
            if (hit) s.swap(out);
        }
        pair_count.erase(top.pair);
        where.erase(top.pair);
        std::sort(fresh.begin(), fresh.end());
        fresh.erase(std::unique(fresh.begin(), fresh.end()), fresh.end());
        for (uint64_t k : fresh) {
            auto pc = pair_count.find(k);
            if (pc != pair_count.end() && pc->second > 0) heap.push({pc->second, k});
        }
    }
    st.merges = t.merges.size();
    st.exhausted = int(t.vocab.size()) < target;
    int id = int(t.vocab.size());
    for (const auto& sp : opt.special_tokens) {
        added_token at;
        at.content = sp;
        at.id = id++;
        at.special = true;
        t.added_tokens.push_back(at);
    }
    t.pre_tokenizer = tokenizer_pretokenizer_steps(opt.pre_tokenizer);
    t.pre_tokenizer_is_sequence = opt.pre_tokenizer != "gpt2";
    t.normalizer_json = "null";
    t.post_processor_json = R"({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true})";
    t.decoder_json = R"({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true})";
    tokenizer_build(t);
    st.merge_seconds = seconds_since(t0);
    return t;
}

struct trainer {
    const tokenizer_train_options& opt;
    std::vector<pretokenizer_step> steps;
    std::unique_ptr<detail::pretokenizer> pre;
    detail::string_matcher specials;

    explicit trainer(const tokenizer_train_options& o) : opt(o) {
        steps = tokenizer_pretokenizer_steps(opt.pre_tokenizer);
        const int nspec = int(opt.special_tokens.size());
        if (opt.vocab_size < 256 + nspec)
            fail("vocab_size", std::to_string(opt.vocab_size) + " is below the 256 byte tokens + " +
                                   std::to_string(nspec) + " special tokens");
        for (size_t i = 0; i < opt.special_tokens.size(); ++i) {
            const auto& s = opt.special_tokens[i];
            if (s.empty()) fail("special_tokens", "empty token");
            if (!detail::utf8_valid(s)) fail("special_tokens", "token " + std::to_string(i) + " is not valid UTF-8");
            for (size_t j = 0; j < i; ++j)
                if (opt.special_tokens[j] == s) fail("special_tokens", "'" + s + "' given twice");
            specials.add(s, int(i));
        }
        pre = std::make_unique<detail::pretokenizer>(steps, "pre_tokenizer");
    }
};

} // namespace

std::vector<pretokenizer_step> tokenizer_pretokenizer_steps(const std::string& name) {
    std::vector<pretokenizer_step> steps;
    pretokenizer_step bl;
    bl.type = pretokenizer_step::kind::byte_level;
    bl.add_prefix_space = false;
    bl.trim_offsets = true;
    if (name == "deepseek") {
        for (const char* re : deepseek_v3_regexes) {
            pretokenizer_step s;
            s.type = pretokenizer_step::kind::split;
            s.pattern = re;
            s.behavior = split_behavior::isolated;
            steps.push_back(s);
        }
        bl.use_regex = false;
    } else if (name == "gpt2") {
        bl.use_regex = true;
    } else {
        fail("pre_tokenizer", "unknown pre-tokenizer '" + name + "' (deepseek or gpt2)");
    }
    steps.push_back(bl);
    return steps;
}

std::vector<std::string> tokenizer_collect_files(const std::vector<std::string>& paths) {
    std::vector<std::string> out;
    for (const auto& p : paths) {
        std::error_code ec;
        auto status = fs::status(p, ec);
        if (ec || !fs::exists(status)) fail(p, "no such file or directory");
        if (fs::is_directory(status)) {
            std::vector<std::string> found;
            for (fs::recursive_directory_iterator it(p, fs::directory_options::skip_permission_denied, ec), end;
                 !ec && it != end; it.increment(ec))
                if (it->is_regular_file(ec)) found.push_back(it->path().string());
            if (ec) fail(p, "cannot list directory: " + ec.message());
            std::sort(found.begin(), found.end());
            out.insert(out.end(), found.begin(), found.end());
        } else {
            out.push_back(p);
        }
    }
    return out;
}

tokenizer tokenizer_train(const tokenizer_train_options& opt, const std::vector<std::string>& files,
                          tokenizer_train_stats* stats) {
    trainer tr(opt);
    tokenizer_train_stats st;
    auto t0 = std::chrono::steady_clock::now();
    count_map counts;
    std::vector<std::string> texts;
    size_t held = 0;
    auto flush = [&] {
        std::vector<std::string_view> chunks;
        for (const auto& t : texts) add_chunks(t, chunks);
        count_chunks(*tr.pre, tr.specials, chunks, counts, opt.threads);
        texts.clear();
        held = 0;
    };
    for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        if (!in) fail(f, "cannot read input file");
        std::stringstream ss;
        ss << in.rdbuf();
        if (in.bad()) fail(f, "read error");
        texts.push_back(ss.str());
        held += texts.back().size();
        st.bytes += texts.back().size();
        ++st.files;
        if (held >= batch_bytes) flush();
    }
    flush();
    if (counts.empty()) fail("tokenizer_train", "empty corpus: no text in " + std::to_string(files.size()) + " input file(s)");
    st.count_seconds = seconds_since(t0);
    tokenizer t = train_from_counts(opt, std::move(counts), st);
    if (stats) *stats = st;
    return t;
}

tokenizer tokenizer_train_texts(const tokenizer_train_options& opt, const std::vector<std::string>& texts,
                                tokenizer_train_stats* stats) {
    trainer tr(opt);
    tokenizer_train_stats st;
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::string_view> chunks;
    for (const auto& t : texts) {
        add_chunks(t, chunks);
        st.bytes += t.size();
    }
    count_map counts;
    count_chunks(*tr.pre, tr.specials, chunks, counts, opt.threads);
    if (counts.empty()) fail("tokenizer_train", "empty corpus");
    st.count_seconds = seconds_since(t0);
    tokenizer t = train_from_counts(opt, std::move(counts), st);
    if (stats) *stats = st;
    return t;
}

} // namespace mtp
