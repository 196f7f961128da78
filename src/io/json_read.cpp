// JSON parsing with a depth limit and short error messages.
#include "io/json_read.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace mtp {

namespace {
struct too_deep {};

// nlohmann's message without its "last read: '…'" excerpt (which can be the whole input), plus a short one.
std::string short_reason(const nlohmann::json::parse_error& e, std::string_view text) {
    std::string m = e.what();
    const size_t a = m.find("] ");
    if (a != std::string::npos) m = m.substr(a + 2);
    const size_t lr = m.find("; last read:");
    if (lr != std::string::npos) m = m.substr(0, lr);
    if (m.size() > 160) m = m.substr(0, 160) + "...";
    const size_t at = e.byte > 0 ? e.byte - 1 : 0;
    if (at < text.size()) {
        const size_t from = at >= 20 ? at - 20 : 0;
        m += " near " + quoted(std::string(text.substr(from, 40)), 40);
    }
    return m;
}
} // namespace

nlohmann::json json_parse(std::string_view text, const std::string& where) {
    const auto limit = [](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
        if (depth >= json_max_depth) throw too_deep{};      // depth counts from 0 at the outermost value
        return true;
    };
    try {
        return nlohmann::json::parse(text.begin(), text.end(), limit);
    } catch (const too_deep&) {
        fail(where, "invalid JSON: nesting deeper than " + std::to_string(json_max_depth) + " levels");
    } catch (const nlohmann::json::parse_error& e) {
        fail(where, "invalid JSON: " + short_reason(e, text));
    } catch (const nlohmann::json::exception& e) {
        fail(where, std::string("invalid JSON: ") + e.what());
    }
}

nlohmann::json json_read_file(const std::string& path, const std::string& where) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(where.empty() ? path : where, "cannot open " + path);
    std::stringstream ss;
    ss << f.rdbuf();
    return json_parse(ss.str(), where.empty() ? path : where);
}

} // namespace mtp
