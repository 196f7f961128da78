// libFuzzer target: GGUF files (header, key/values, tensor table) and a deepseek2 model built from one.
#include <vector>

#include "fuzz_util.h"
#include "io/gguf.h"
#include "model/gguf_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string p = mtp::fuzz::as_file(data, size, ".gguf");
    mtp::fuzz::expect_clean([&] {
        mtp::gguf_file g = mtp::gguf_read(p);
        std::vector<float> out;
        for (const auto& t : g.tensors) mtp::fuzz::expect_clean([&] { g.read_f32(t, out); });
    });
    mtp::fuzz::expect_clean([&] { mtp::model_load_gguf(p); });
    return 0;
}
