// The one way JSON inputs are read: a nesting limit (deeper documents are refused before they can exhaust the
// stack), and parse errors that name the input and quote only a short excerpt.
#pragma once
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace mtp {

constexpr int json_max_depth = 64;     // no config, tokenizer, state or request nests deeper than ~10

// Parses `text`; throws mtp::error(where, "invalid JSON: <reason> at byte N") or "(nesting deeper than 64)".
nlohmann::json json_parse(std::string_view text, const std::string& where);
// Reads and parses a file; `where` names it in errors (default: the path).
nlohmann::json json_read_file(const std::string& path, const std::string& where = "");

} // namespace mtp
