// Pre-tokenisation for byte-level BPE (tokenizer.json `pre_tokenizer`): PCRE2 regex splits, the ByteLevel
// step, the GPT-2 byte<->char table, and the added-token matcher. Internal to io/tokenizer*, bpe_train.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mtp {

// How a Split step treats the pieces its pattern matches (names as in tokenizer.json "behavior").
enum class split_behavior { isolated, removed, merged_with_previous, merged_with_next, contiguous };

// One step of the pre-tokenizer: a Split, or the (last) ByteLevel step.
struct pretokenizer_step {
    enum class kind { split, byte_level };
    kind type = kind::byte_level;
    // Split
    std::string pattern;                  // a regex (Oniguruma syntax as HF writes it), or a literal
    bool pattern_is_regex = true;         // {"Regex": ...} vs {"String": ...}
    split_behavior behavior = split_behavior::isolated;
    bool invert = false;
    // ByteLevel
    bool add_prefix_space = false;        // prepend ' ' to every piece that does not start with one
    bool trim_offsets = true;             // offsets only; kept for saving
    bool use_regex = true;                // split with the GPT-2 regex first
};

// The GPT-2 pre-tokenisation regex used by ByteLevel(use_regex = true).
extern const char* const gpt2_regex;
// The three Split regexes of the DeepSeek-V3 tokenizer.json, in order.
extern const char* const deepseek_v3_regexes[3];

const char* split_behavior_name(split_behavior b);
bool split_behavior_parse(const std::string& s, split_behavior& out);   // accepts HF spellings

namespace detail {

// GPT-2 byte-level alphabet: every byte maps to one printable code point (33..126, 161..172, 174..255 map
// to themselves; the other 68 bytes to U+0100.. in byte order).
const std::string& byte_to_char_utf8(uint8_t b);          // UTF-8 of the code point for byte b
int char_to_byte(uint32_t cp);                              // -1 if cp is not in the alphabet
std::string bytes_to_byte_level(std::string_view bytes);  // maps every byte

// Decodes one UTF-8 code point at s[i]; returns its length (1..4) and sets cp, or returns 0 for an
// invalid/truncated sequence (cp untouched).
int utf8_decode(const char* s, size_t n, size_t i, uint32_t& cp);
bool utf8_valid(std::string_view s);
bool unicode_is_whitespace(uint32_t cp);   // the Unicode White_Space property

// A compiled PCRE2 pattern (UTF + UCP + MATCH_INVALID_UTF, JIT when available). Invalid UTF-8 in the
// subject never takes part in a match: it ends up in the unmatched gaps between matches.
class regex {
public:
    regex(const std::string& pattern, bool literal, const std::string& where);   // fail(where, pcre2 text)
    ~regex();
    regex(const regex&) = delete;
    regex& operator=(const regex&) = delete;
    // Next match in s[0, n) at or after `start`; false when none. Subject bounded to the piece, as HF does.
    bool find(const char* s, size_t n, size_t start, size_t& mb, size_t& me) const;

private:
    void* code_ = nullptr;   // pcre2_code_8*
    bool jit_ = false;
};

// A piece of text produced by pre-tokenisation (points into the caller's text or the scratch buffer).
using piece = std::string_view;

// Compiled pre-tokenizer: Split steps then an optional ByteLevel step (which must be last).
class pretokenizer {
public:
    // `where` prefixes errors (a bad regex names where[i].pattern; where.pattern when !indexed).
    pretokenizer(const std::vector<pretokenizer_step>& steps, const std::string& where, bool indexed = true);
    // Splits `text` into pieces (appended to out, which is cleared first). Pieces may point into the
    // thread-local scratch used by add_prefix_space; they stay valid until the next call on this thread.
    void split(std::string_view text, std::vector<piece>& out) const;
    bool byte_level() const { return has_byte_level_; }

private:
    struct compiled {
        std::unique_ptr<regex> re;
        split_behavior behavior = split_behavior::isolated;
        bool invert = false;
        bool prefix_space = false;   // ByteLevel add_prefix_space (re = GPT-2 regex or null)
    };
    std::vector<compiled> steps_;
    bool has_byte_level_ = false;
};

// Leftmost-longest matcher over a fixed set of strings (the added tokens), on bytes.
class string_matcher {
public:
    // Adds a string with its payload (>= 0); the empty string is ignored.
    void add(const std::string& s, int payload);
    // Longest string starting at text[i]; returns its length (0 if none) and sets payload.
    size_t match_at(std::string_view text, size_t i, int& payload) const;
    bool first_byte(uint8_t b) const { return first_[b]; }
    bool empty() const { return nodes_.size() <= 1; }

private:
    struct node {
        std::vector<std::pair<uint8_t, int>> next;   // sorted by byte
        int payload = -1;
    };
    std::vector<node> nodes_{1};
    bool first_[256] = {};
};

} // namespace detail
} // namespace mtp
