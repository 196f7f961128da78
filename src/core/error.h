// Error type thrown at every boundary (files, configs, flags); caught once in the CLI.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>

namespace mtp {

// One-line, user-facing message that names the file and/or field at fault.
struct error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Throws mtp::error("<where>: <what>").
[[noreturn]] inline void fail(const std::string& where, const std::string& what) {
    throw error(where + ": " + what);
}

// Quotes a (possibly hostile) string for a one-line message: control bytes escaped, long text cut.
inline std::string quoted(const std::string& s, size_t max_chars = 160) {
    std::string out = "'";
    size_t n = 0;
    for (unsigned char c : s) {
        if (++n > max_chars) { out += "..."; break; }
        if (c < 0x20 || c == 0x7F) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02X", c);
            out += buf;
        } else {
            out += char(c);
        }
    }
    return out + "'";
}

} // namespace mtp
