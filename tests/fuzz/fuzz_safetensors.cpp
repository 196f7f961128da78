// libFuzzer target: safetensors files (header JSON, offsets, dtypes), read through st_read and read_f32.
#include <vector>

#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string p = mtp::fuzz::as_file(data, size, ".safetensors");
    mtp::fuzz::expect_clean([&] {
        mtp::checkpoint ck = mtp::checkpoint_open(p);
        std::vector<float> out;
        for (const auto& n : ck.names()) mtp::fuzz::expect_clean([&] { ck.read_f32(n, out); });
    });
    return 0;
}
