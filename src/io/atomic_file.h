// Whole-file writes that never leave a half-written file: temp file in the same folder, then rename.
#pragma once
#include <string>

namespace mtp {

void write_file_atomic(const std::string& path, const std::string& contents);

} // namespace mtp
