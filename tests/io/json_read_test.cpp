// The one JSON reading path: depth limit (a 100,000-level document is refused, not a stack overflow), errors of one
// short line that name the input, and ordinary documents parsed unchanged.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "io/json_read.h"

namespace {

std::string error_of(const std::string& text) {
    try {
        mtp::json_parse(text, "where.json");
    } catch (const mtp::error& e) {
        return e.what();
    }
    return "";
}

TEST(JsonRead, DepthLimit) {
    const int lim = mtp::json_max_depth;
    const std::string ok = std::string(size_t(lim), '[') + std::string(size_t(lim), ']');
    EXPECT_NO_THROW(mtp::json_parse(ok, "x"));
    for (int depth : {lim + 1, 10000, 100000}) {
        const std::string deep = std::string(size_t(depth), '[') + std::string(size_t(depth), ']');
        const std::string e = error_of(deep);
        EXPECT_NE(e.find("nesting deeper than"), std::string::npos) << depth;
        EXPECT_LT(e.size(), 200u) << "a short message, not the input";   // a chosen cap (inputs: 130 .. 200,000 chars)
    }
    std::string objs = "1";
    for (int i = 0; i < 70; ++i) objs = "{\"a\": " + objs + "}";
    EXPECT_NE(error_of(objs).find("nesting deeper"), std::string::npos);
}

TEST(JsonRead, ErrorsAreOneShortLineNamingTheInput) {
    for (const std::string& bad : {std::string("{\"a\": "), std::string("[1, 2,, 3]"), std::string(20000, '[') + "x",
                                   std::string("{\"k\": \"") + std::string(50000, 'z')}) {
        const std::string e = error_of(bad);
        ASSERT_FALSE(e.empty());
        EXPECT_EQ(e.rfind("where.json: invalid JSON", 0), 0u) << e;
        EXPECT_EQ(e.find('\n'), std::string::npos) << e;
        EXPECT_LT(e.size(), 400u) << e.substr(0, 400);   // a chosen cap; the two long inputs are 20,001+ chars
    }
}

TEST(JsonRead, ParsesOrdinaryDocuments) {
    const auto j = mtp::json_parse("{\"a\": [1, 2, {\"b\": null}], \"c\": \"d\"}", "x");
    EXPECT_EQ(j["a"][1], 2);
    EXPECT_TRUE(j["a"][2]["b"].is_null());
    EXPECT_EQ(j["c"], "d");
    EXPECT_THROW(mtp::json_read_file("/nonexistent/file.json"), mtp::error);
}

} // namespace
