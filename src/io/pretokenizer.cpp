// Pre-tokenisation: PCRE2 (UTF, UCP, MATCH_INVALID_UTF, JIT) splits with HF's Split behaviours, the
// ByteLevel step, the GPT-2 byte alphabet and the leftmost-longest added-token matcher.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "io/pretokenizer.h"

#include <algorithm>
#include <array>

#include <pcre2.h>

#include "core/error.h"

namespace mtp {

const char* const gpt2_regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

const char* const deepseek_v3_regexes[3] = {
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};

const char* split_behavior_name(split_behavior b) {
    switch (b) {
    case split_behavior::isolated: return "Isolated";
    case split_behavior::removed: return "Removed";
    case split_behavior::merged_with_previous: return "MergedWithPrevious";
    case split_behavior::merged_with_next: return "MergedWithNext";
    case split_behavior::contiguous: return "Contiguous";
    }
    return "Isolated";
}

bool split_behavior_parse(const std::string& s, split_behavior& out) {
    std::string l;
    for (char c : s) if (c != '_') l += char(std::tolower(static_cast<unsigned char>(c)));
    if (l == "isolated") out = split_behavior::isolated;
    else if (l == "removed") out = split_behavior::removed;
    else if (l == "mergedwithprevious") out = split_behavior::merged_with_previous;
    else if (l == "mergedwithnext") out = split_behavior::merged_with_next;
    else if (l == "contiguous") out = split_behavior::contiguous;
    else return false;
    return true;
}

namespace detail {

namespace {

std::string utf8_encode(uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += char(cp);
    } else if (cp < 0x800) {
        s += char(0xC0 | (cp >> 6));
        s += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s += char(0xE0 | (cp >> 12));
        s += char(0x80 | ((cp >> 6) & 0x3F));
        s += char(0x80 | (cp & 0x3F));
    } else {
        s += char(0xF0 | (cp >> 18));
        s += char(0x80 | ((cp >> 12) & 0x3F));
        s += char(0x80 | ((cp >> 6) & 0x3F));
        s += char(0x80 | (cp & 0x3F));
    }
    return s;
}

struct byte_tables {
    std::array<uint32_t, 256> cp{};
    std::array<std::string, 256> utf8;
    byte_tables() {
        int extra = 0;
        for (int b = 0; b < 256; ++b) {
            bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            cp[b] = printable ? uint32_t(b) : uint32_t(256 + extra++);
            utf8[b] = utf8_encode(cp[b]);
        }
    }
};

const byte_tables& tables() {
    static const byte_tables t;
    return t;
}

// Per-thread PCRE2 match state: one ovector pair and a JIT stack that grows up to 8 MiB.
struct match_state {
    pcre2_match_data* md = nullptr;
    pcre2_match_context* mctx = nullptr;
    pcre2_jit_stack* stack = nullptr;
    match_state() {
        md = pcre2_match_data_create(1, nullptr);
        mctx = pcre2_match_context_create(nullptr);
        stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
        if (!md || !mctx || !stack) throw std::bad_alloc();
        pcre2_jit_stack_assign(mctx, nullptr, stack);
    }
    ~match_state() {
        pcre2_jit_stack_free(stack);
        pcre2_match_context_free(mctx);
        pcre2_match_data_free(md);
    }
};

match_state& mstate() {
    thread_local match_state s;
    return s;
}

std::string pcre2_message(int code) {
    PCRE2_UCHAR buf[256];
    int n = pcre2_get_error_message(code, buf, sizeof buf);
    return n < 0 ? "PCRE2 error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buf), size_t(n));
}

struct segment {
    size_t b, e;
    bool match;
};

} // namespace

const std::string& byte_to_char_utf8(uint8_t b) { return tables().utf8[b]; }

int char_to_byte(uint32_t cp) {
    static const std::vector<int16_t> inv = [] {
        std::vector<int16_t> v(324, -1);
        for (int b = 0; b < 256; ++b) v[tables().cp[b]] = int16_t(b);
        return v;
    }();
    return cp < inv.size() ? inv[cp] : -1;
}

std::string bytes_to_byte_level(std::string_view bytes) {
    std::string s;
    s.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) s += tables().utf8[c];
    return s;
}

int utf8_decode(const char* s, size_t n, size_t i, uint32_t& cp) {
    const auto* u = reinterpret_cast<const unsigned char*>(s);
    unsigned char c = u[i];
    if (c < 0x80) { cp = c; return 1; }
    int len;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) { len = 2; v = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; v = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (i + size_t(len) > n) return 0;
    for (int k = 1; k < len; ++k) {
        if ((u[i + k] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (u[i + k] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    cp = v;
    return len;
}

bool utf8_valid(std::string_view s) {
    uint32_t cp;
    for (size_t i = 0; i < s.size();) {
        int l = utf8_decode(s.data(), s.size(), i, cp);
        if (!l) return false;
        i += size_t(l);
    }
    return true;
}

bool unicode_is_whitespace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

// ---------------------------------------------------------------------------------------------- regex

regex::regex(const std::string& pattern, bool literal, const std::string& where) {
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    opts |= literal ? PCRE2_LITERAL : PCRE2_UCP;   // UCP is not allowed with LITERAL (and not needed)
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err,
                                     &off, nullptr);
    if (!code)
        fail(where, "bad regex at offset " + std::to_string(off) + ": " + pcre2_message(err));
    code_ = code;
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

regex::~regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

bool regex::find(const char* s, size_t n, size_t start, size_t& mb, size_t& me) const {
    auto* code = static_cast<pcre2_code*>(code_);
    match_state& st = mstate();
    auto subj = reinterpret_cast<PCRE2_SPTR>(s);
    int rc = jit_ ? pcre2_jit_match(code, subj, n, start, 0, st.md, st.mctx)
                  : pcre2_match(code, subj, n, start, 0, st.md, st.mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)   // pathological input: fall back to the heap-based interpreter
        rc = pcre2_match(code, subj, n, start, PCRE2_NO_JIT, st.md, st.mctx);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) fail("tokenizer", "regex match failed: " + pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    mb = ov[0];
    me = ov[1];
    return true;
}

// ------------------------------------------------------------------------------------- pretokenizer

pretokenizer::pretokenizer(const std::vector<pretokenizer_step>& steps, const std::string& where, bool indexed) {
    for (size_t i = 0; i < steps.size(); ++i) {
        const auto& s = steps[i];
        std::string w = indexed ? where + "[" + std::to_string(i) + "]" : where;
        compiled c;
        if (s.type == pretokenizer_step::kind::split) {
            if (has_byte_level_) fail(w, "a Split after the ByteLevel step is not supported");
            c.re = std::make_unique<regex>(s.pattern, !s.pattern_is_regex, w + ".pattern");
            c.behavior = s.behavior;
            c.invert = s.invert;
        } else {
            if (has_byte_level_) fail(w, "more than one ByteLevel step");
            has_byte_level_ = true;
            if (s.use_regex) c.re = std::make_unique<regex>(gpt2_regex, false, w);
            c.prefix_space = s.add_prefix_space;
        }
        steps_.push_back(std::move(c));
    }
}

namespace {

// Splits piece p by one compiled step into dst (HF Split semantics; empty pieces are dropped).
template <class Step>
void split_piece(const Step& st, piece p, std::vector<piece>& dst, std::vector<segment>& segs) {
    const char* s = p.data();
    const size_t n = p.size();
    const bool simple = st.behavior == split_behavior::isolated && !st.invert;
    segs.clear();
    size_t prev = 0, pos = 0, mb, me;
    auto emit = [&](size_t b, size_t e, bool m) {
        if (simple) dst.emplace_back(s + b, e - b);
        else segs.push_back({b, e, m});
    };
    while (pos <= n && st.re->find(s, n, pos, mb, me)) {
        if (mb > prev) emit(prev, mb, false);
        if (me > mb) emit(mb, me, true);
        prev = me;
        if (me == mb) {   // empty match: step over one character (one byte when invalid)
            if (me >= n) break;
            uint32_t cp;
            int l = utf8_decode(s, n, me, cp);
            pos = me + size_t(l ? l : 1);
        } else {
            pos = me;
        }
    }
    if (prev < n) emit(prev, n, false);
    if (simple) return;

    if (st.invert)
        for (auto& g : segs) g.match = !g.match;
    std::vector<segment> out;
    bool prev_match = false;
    switch (st.behavior) {
    case split_behavior::isolated: out = segs; break;
    case split_behavior::removed:
        for (auto& g : segs) if (!g.match) out.push_back(g);
        break;
    case split_behavior::merged_with_previous:
        for (auto& g : segs) {
            if (g.match && !prev_match && !out.empty()) out.back().e = g.e;
            else out.push_back(g);
            prev_match = g.match;
        }
        break;
    case split_behavior::merged_with_next:
        for (size_t k = segs.size(); k-- > 0;) {
            const auto& g = segs[k];
            if (g.match && !prev_match && !out.empty()) out.back().b = g.b;
            else out.push_back(g);
            prev_match = g.match;
        }
        std::reverse(out.begin(), out.end());
        break;
    case split_behavior::contiguous:
        for (size_t k = 0; k < segs.size(); ++k) {
            const auto& g = segs[k];
            if (k > 0 && g.match == prev_match) out.back().e = g.e;
            else out.push_back(g);
            prev_match = g.match;
        }
        break;
    }
    for (auto& g : out)
        if (g.e > g.b) dst.emplace_back(s + g.b, g.e - g.b);
}

struct split_scratch {
    std::vector<piece> tmp;
    std::vector<segment> segs;
    std::string aux;
};

} // namespace

void pretokenizer::split(std::string_view text, std::vector<piece>& out) const {
    thread_local split_scratch sc;
    out.clear();
    if (text.empty()) return;
    out.push_back(text);
    for (const auto& st : steps_) {
        if (st.prefix_space) {
            size_t need = 0;
            for (auto p : out) need += p.size() + 1;
            sc.aux.clear();
            sc.aux.reserve(need);   // no reallocation below: the views stay valid
            for (auto& p : out) {
                if (p[0] == ' ') continue;
                size_t off = sc.aux.size();
                sc.aux += ' ';
                sc.aux += p;
                p = piece(sc.aux.data() + off, p.size() + 1);
            }
        }
        if (!st.re) continue;
        sc.tmp.clear();
        for (auto p : out) split_piece(st, p, sc.tmp, sc.segs);
        out.swap(sc.tmp);
    }
}

// ---------------------------------------------------------------------------------- string_matcher

void string_matcher::add(const std::string& s, int payload) {
    if (s.empty()) return;
    int cur = 0;
    for (unsigned char c : s) {
        auto& nx = nodes_[size_t(cur)].next;
        auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(c, -1));
        if (it != nx.end() && it->first == c) {
            cur = it->second;
        } else {
            int id = int(nodes_.size());
            nx.insert(it, {c, id});
            nodes_.emplace_back();
            cur = id;
        }
    }
    nodes_[size_t(cur)].payload = payload;
    first_[static_cast<unsigned char>(s[0])] = true;
}

size_t string_matcher::match_at(std::string_view text, size_t i, int& payload) const {
    int cur = 0;
    size_t best = 0;
    for (size_t j = i; j < text.size(); ++j) {
        const auto& nx = nodes_[size_t(cur)].next;
        unsigned char c = static_cast<unsigned char>(text[j]);
        auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(c, -1));
        if (it == nx.end() || it->first != c) break;
        cur = it->second;
        if (nodes_[size_t(cur)].payload >= 0) {
            best = j + 1 - i;
            payload = nodes_[size_t(cur)].payload;
        }
    }
    return best;
}

} // namespace detail
} // namespace mtp
