// libFuzzer target: the server's request parsing (body JSON, then /v1/completions and /v1/chat/completions
// fields) against the seed tokenizer (300 tokens); rejections are api_error 400s.
#include "fuzz_util.h"
#include "io/tokenizer.h"
#include "serve/api.h"

namespace {
const mtp::tokenizer& tok() {
    static mtp::tokenizer t = mtp::tokenizer_load(MTP_SOURCE_DIR "/tests/fuzz/corpus/fuzz_tokenizer/bpe300_deepseek.json");
    return t;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string body(reinterpret_cast<const char*>(data), size);
    try {
        const auto j = mtp::serve::parse_body(body);
        for (auto kind : {mtp::serve::endpoint::completions, mtp::serve::endpoint::chat})
            try {
                mtp::serve::parse_request(j, kind, tok(), 64, 256);
            } catch (const mtp::serve::api_error&) {
            }
    } catch (const mtp::serve::api_error&) {
    }
    return 0;
}
