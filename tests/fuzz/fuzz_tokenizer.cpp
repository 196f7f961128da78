// libFuzzer target: tokenizer.json (model, merges, added tokens, normalizer / pre-tokenizer / decoder /
// post-processor sections), then encoding and decoding with what loaded.
#include "fuzz_util.h"
#include "io/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string p = mtp::fuzz::as_file(data, size, ".tokenizer.json");
    mtp::fuzz::expect_clean([&] {
        mtp::tokenizer t = mtp::tokenizer_load(p);
        const auto ids = mtp::tokenizer_encode(t, "Hello, world! 123 \xe4\xbd\xa0\xe5\xa5\xbd <|eos|>  x");
        mtp::tokenizer_decode(t, ids);
    });
    return 0;
}
