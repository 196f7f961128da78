// Hugging Face tokenizer.json, byte-level BPE (spec §7): load, save, encode, decode.
//
// Supported: model.type "BPE" (vocab; merges as "a b" strings or [a, b] pairs; unk_token; ignore_merges),
// added_tokens (matched leftmost-longest on the raw text before pre-tokenisation; lstrip/rstrip/single_word
// as HF; `normalized` is kept but has no effect because only identity normalizers are supported),
// normalizer null or an (empty/nested) Sequence, pre_tokenizer = Split steps (Regex or String pattern, all
// five behaviours, invert) followed by one ByteLevel step (add_prefix_space, use_regex = GPT-2 regex),
// decoder ByteLevel. post_processor is kept for saving and never applied: tokenizer_encode returns the
// bare ids (callers add BOS themselves).
//
// Regexes run under PCRE2 in UTF + UCP mode. Known engine differences for \s: PCRE2 matches U+0085 (as
// Oniguruma, which HF uses, does; JavaScript does not) and U+180E (HF and JavaScript do not), and not U+FEFF
// (JavaScript does). Unicode properties follow PCRE2's Unicode version (14.0 for PCRE2 10.42).
//
// Invalid UTF-8 (defined behaviour): PCRE2 runs with PCRE2_MATCH_INVALID_UTF, so an invalid byte never
// takes part in a regex match; it stays in the unmatched gap between matches, and every gap is a piece of
// its own (Isolated). Byte-level BPE then encodes those bytes like any others, so encode never fails on
// bad input and tokenizer_decode(tokenizer_encode(x)) == x for EVERY byte string x (all 256 byte tokens
// present), valid UTF-8 or not.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/pretokenizer.h"

namespace mtp {

struct added_token {
    std::string content;
    int id = -1;
    bool single_word = false;   // only matched when not next to a letter/digit/underscore
    bool lstrip = false;        // also swallows the whitespace on its left
    bool rstrip = false;        // ... and on its right
    bool normalized = false;
    bool special = true;        // tokenizer_encode(allow_special = false) leaves these as plain text
};

namespace detail {
struct tokenizer_runtime;
}

struct tokenizer {
    std::string source;                              // file it was loaded from ("" when built in memory)
    std::vector<std::string> vocab;                  // model vocab: id -> token (byte-level chars); "" = no token
    std::vector<std::pair<int, int>> merges;         // rank order; each merged token is in vocab
    bool merges_as_pairs = false;                    // save merges as [a, b] (else "a b")
    std::vector<added_token> added_tokens;
    std::vector<pretokenizer_step> pre_tokenizer;    // Splits, then ByteLevel (last)
    bool pre_tokenizer_is_sequence = true;           // save as {"type": "Sequence", ...} even with one step
    std::string unk_token;                           // "" = none (unknown bytes are dropped, as HF does)
    bool ignore_merges = false;                      // a piece that is itself in vocab is one token
    std::string normalizer_json = "null";            // kept verbatim (only identity normalizers load)
    std::string post_processor_json = "null";        // kept verbatim, never applied
    std::string decoder_json = R"({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true})";

    std::shared_ptr<detail::tokenizer_runtime> rt;   // compiled state; (re)built by tokenizer_build
};

// Validates the fields and compiles regexes, merge table, added-token matcher and cache. Call after
// editing a tokenizer by hand; load and train call it. Errors name `source` (or "tokenizer") and the field.
void tokenizer_build(tokenizer& t);

// Reads and validates a tokenizer.json. Throws mtp::error "<path>: <field>: <what>".
tokenizer tokenizer_load(const std::string& path);
// Writes the full HF structure (version, truncation, padding, added_tokens, normalizer, pre_tokenizer,
// post_processor, decoder, model) atomically (temp file + rename).
void tokenizer_save(const tokenizer& t, const std::string& path);
std::string tokenizer_to_json(const tokenizer& t);

// Encodes text to ids (see the invalid-UTF-8 note above). allow_special = false: added tokens marked
// special are not recognised (they are tokenized as ordinary text); non-special added tokens still are.
// Thread-safe (a bounded cache shared by threads sits behind a mutex).
std::vector<int> tokenizer_encode(const tokenizer& t, std::string_view text, bool allow_special = true);
void tokenizer_encode_append(const tokenizer& t, std::string_view text, std::vector<int>& out,
                             bool allow_special = true);
// Raw bytes of the concatenated tokens (added tokens verbatim, byte-level tokens mapped back to bytes). The
// result may be invalid UTF-8 when `ids` cuts a character; no replacement characters are inserted.
// Throws mtp::error for an id outside [0, vocab size) or an id with no token.
std::string tokenizer_decode(const tokenizer& t, const std::vector<int>& ids);

int tokenizer_vocab_size(const tokenizer& t);                           // largest id + 1
int tokenizer_token_id(const tokenizer& t, const std::string& token);   // added tokens first; -1 if absent
const std::string& tokenizer_id_to_token(const tokenizer& t, int id);   // "" if none
// Turns the pre-token cache on/off (benchmarks measure both); on by default.
void tokenizer_set_cache(const tokenizer& t, bool enabled);

} // namespace mtp
