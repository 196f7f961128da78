// Shared by the libFuzzer targets: the input as a file (the readers take paths), and the rule that every
// rejection must be an mtp::error (any other exception or a crash is a finding).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "core/error.h"

namespace mtp::fuzz {

// The input written to a per-process file (rewritten for each input) with the given suffix.
inline std::string as_file(const uint8_t* data, size_t n, const char* suffix) {
    const std::string p = "/tmp/mtp_fuzz_" + std::to_string(getpid()) + suffix;
    std::FILE* f = std::fopen(p.c_str(), "wb");
    if (!f) __builtin_trap();
    if (n) std::fwrite(data, 1, n, f);
    std::fclose(f);
    return p;
}

// Runs f; an mtp::error is an accepted rejection, anything else escapes to libFuzzer (a finding).
template <class F>
void expect_clean(F&& f) {
    try {
        f();
    } catch (const mtp::error&) {
    }
}

} // namespace mtp::fuzz
