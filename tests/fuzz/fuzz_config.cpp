// libFuzzer target: config.json (JSON, then every key's type and range) and the layout it implies.
#include "fuzz_util.h"
#include "io/json_read.h"
#include "model/config.h"
#include "model/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    mtp::fuzz::expect_clean([&] {
        const auto j = mtp::json_parse(std::string_view(reinterpret_cast<const char*>(data), size), "config.json");
        const mtp::model_config c = mtp::config_from_json(j, "config.json");
        mtp::layout_build(c);
    });
    return 0;
}
