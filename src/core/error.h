// Error type thrown at every boundary (files, configs, flags); caught once in the CLI.
#pragma once
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

} // namespace mtp
