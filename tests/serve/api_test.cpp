// Tests for the network-free part of `mtp serve` (src/serve/api.h): request validation, the chat templates,
// stop strings and UTF-8 hold-back while streaming, error objects, metrics text. tests/serve/serve_test.py covers
// the HTTP server end to end.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "io/pretokenizer.h"
#include "serve/api.h"

namespace fs = std::filesystem;
using namespace mtp;
using namespace mtp::serve;

namespace {

// Byte-level tokenizer with the 256 byte tokens (ids = byte values), no merges; with_ds: the DeepSeek-V3 chat
// special tokens as added tokens 256..259.
tokenizer make_tok(bool with_ds) {
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[detail::bytes_to_byte_level(std::string(1, char(b)))] = b;
    json doc;
    doc["version"] = "1.0";
    doc["added_tokens"] = json::array();
    if (with_ds) {
        const char* names[] = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"};
        for (int i = 0; i < 4; ++i) doc["added_tokens"].push_back({{"id", 256 + i}, {"content", names[i]}, {"special", true}});
    }
    doc["normalizer"] = nullptr;
    doc["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    doc["post_processor"] = nullptr;
    doc["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    doc["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab},
                    {"merges", json::array()}};
    const std::string p = (fs::temp_directory_path() / ("mtp_serve_api_" + std::to_string(getpid()) +
                                                        (with_ds ? "_ds" : "") + ".json")).string();
    std::ofstream(p) << doc.dump();
    tokenizer t = tokenizer_load(p);
    fs::remove(p);
    return t;
}

api_error parse_error(const std::string& body, endpoint kind = endpoint::completions, int n_ctx = 64) {
    static tokenizer t = make_tok(false);
    try {
        parse_request(parse_body(body), kind, t, n_ctx, 300);
    } catch (const api_error& e) {
        return e;
    }
    ADD_FAILURE() << "no error for " << body;
    return {};
}

} // namespace

TEST(ServeApi, ParsesACompletionRequest) {
    tokenizer t = make_tok(false);
    gen_request r = parse_request(json::parse(R"({"prompt": "hi", "max_tokens": 5, "temperature": 0, "top_p": 0.5,
        "top_k": 3, "seed": 9, "stop": ["a", ""], "stream": true, "stream_options": {"include_usage": true}})"),
                                  endpoint::completions, t, 64, 300);
    EXPECT_EQ(r.prompt, (std::vector<int>{'h', 'i'}));
    EXPECT_EQ(r.max_tokens, 5);
    EXPECT_EQ(r.sampling.temperature, 0.0f);
    EXPECT_EQ(r.sampling.top_p, 0.5f);
    EXPECT_EQ(r.sampling.top_k, 3);
    EXPECT_EQ(r.sampling.seed, 9u);
    EXPECT_EQ(r.stop, (std::vector<std::string>{"a"}));
    EXPECT_TRUE(r.stream && r.include_usage);
    gen_request d = parse_request(json::parse(R"({"prompt": [1, 2, 3]})"), endpoint::completions, t, 64, 300);
    EXPECT_EQ(d.prompt, (std::vector<int>{1, 2, 3}));
    EXPECT_EQ(d.max_tokens, -1);                 // until the context is full
    EXPECT_EQ(d.sampling.temperature, 1.0f);     // OpenAI default
}

TEST(ServeApi, RejectsBadRequestsNamingTheField) {
    EXPECT_EQ(parse_error("{oops").status, 400);
    EXPECT_EQ(parse_error("[1]").status, 400);
    EXPECT_EQ(parse_error(R"({"prompt": "hi", "max_tokens": "5"})").param, "max_tokens");
    EXPECT_EQ(parse_error(R"({"prompt": "hi", "max_tokens": 1.5})").param, "max_tokens");
    EXPECT_EQ(parse_error(R"({"prompt": "hi", "max_tokens": 0})").param, "max_tokens");
    EXPECT_EQ(parse_error(R"({"prompt": "hi", "max_tokens": 63})").code, "context_length_exceeded");   // 2 + 63 > 64
    EXPECT_EQ(parse_error(R"({"prompt": "hi", "n": 3})").param, "n");
    EXPECT_EQ(parse_error(R"({"prompt": "hi", "stop": [1]})").param, "stop");
    EXPECT_EQ(parse_error(R"({"prompt": "hi", "top_k": -2})").param, "top_k");
    EXPECT_EQ(parse_error(R"({"prompt": "hi", "seed": "x"})").param, "seed");
    EXPECT_EQ(parse_error(R"({"prompt": ["a", "b"]})").param, "prompt");
    EXPECT_EQ(parse_error(R"({"prompt": [0, 300]})").param, "prompt");                 // vocabulary 300: ids 0..299
    const api_error e = parse_error(R"({"prompt": ")" + std::string(64, 'x') + "\"}");   // 64 tokens >= n_ctx 64
    EXPECT_EQ(e.code, "context_length_exceeded");
    EXPECT_EQ(parse_error(R"({"messages": []})", endpoint::chat).param, "messages");
    EXPECT_EQ(parse_error(R"({"messages": [{"role": "user", "content": 5}]})", endpoint::chat).param,
              "messages[0].content");
    const json j = error_json(parse_error(R"({"prompt": "hi", "n": 3})"));
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_TRUE(j["error"]["code"].is_null());
    EXPECT_EQ(j["error"].size(), 4u);
}

TEST(ServeApi, ChatTemplates) {
    std::vector<chat_message> m = {{"system", "S"}, {"user", "hi"}, {"assistant", "yo"}, {"user", "<｜User｜>"}};
    tokenizer plain = make_tok(false);
    EXPECT_FALSE(chat_template_is_deepseek(plain));
    EXPECT_EQ(chat_prompt_text(plain, m), "System: S\nUser: hi\nAssistant: yo\nUser: <｜User｜>\nAssistant:");
    tokenizer ds = make_tok(true);
    ASSERT_TRUE(chat_template_is_deepseek(ds));
    EXPECT_EQ(chat_prompt_text(ds, m), "<｜begin▁of▁sentence｜>S<｜User｜>hi<｜Assistant｜>yo<｜end▁of▁sentence｜>"
                                       "<｜User｜><｜User｜><｜Assistant｜>");
    std::vector<int> ids = chat_prompt(ds, m);
    // BOS, 'S', User, 'h' 'i', Assistant, 'y' 'o', EOS, User, <the user's text as bytes, not the special>, Assistant
    ASSERT_GE(ids.size(), 12u);
    EXPECT_EQ(ids[0], 256);
    EXPECT_EQ(ids[1], 'S');
    EXPECT_EQ(ids[2], 258);
    EXPECT_EQ(ids[5], 259);
    EXPECT_EQ(ids[8], 257);
    EXPECT_EQ(ids[9], 258);
    EXPECT_EQ(ids.back(), 259);
    EXPECT_EQ(ids.size(), 10 + std::string("<｜User｜>").size() + 1);
}

TEST(ServeApi, TextStreamStopStringsAcrossPieces) {
    text_stream s({"STOP", "xy"});
    std::string out = s.push("abc S");
    EXPECT_EQ(out, "abc ");                      // "S" may start STOP: held back
    out += s.push("T");
    EXPECT_EQ(out, "abc ");
    out += s.push("Q");                          // "STQ" cannot become STOP any more
    EXPECT_EQ(out, "abc STQ");
    out += s.push("zzSTO");
    out += s.push("Prest");
    EXPECT_TRUE(s.stopped());
    EXPECT_EQ(out, "abc STQzz");
    EXPECT_EQ(s.push("more"), "");
    EXPECT_EQ(s.flush(), "");
    text_stream e({"xy"});
    EXPECT_EQ(e.push("ax"), "a");
    EXPECT_EQ(e.flush(), "x");                   // end of generation: held bytes go out
    EXPECT_EQ(e.text(), "ax");
}

TEST(ServeApi, TextStreamHoldsIncompleteUtf8) {
    const std::string euro = "\xE2\x82\xAC";
    text_stream s({});
    EXPECT_EQ(s.push("a\xE2"), "a");
    EXPECT_EQ(s.push("\x82"), "");
    EXPECT_EQ(s.push("\xAC" "b"), euro + "b");
    EXPECT_EQ(utf8_complete_prefix("\xF0\x9F\x98"), 0u);
    EXPECT_EQ(utf8_complete_prefix("\xF0\x9F\x98\x80"), 4u);
    EXPECT_EQ(utf8_complete_prefix("\xFF"), 1u);       // invalid byte: nothing to wait for
    EXPECT_EQ(utf8_complete_prefix("\x80\x80"), 2u);
    EXPECT_EQ(dump(json("a\xFF")), "\"a\xEF\xBF\xBD\"");   // invalid UTF-8 -> U+FFFD in JSON
}

TEST(ServeApi, MetricsText) {
    metrics m;
    m.request_started();
    m.request_running();
    m.request_finished(true, 5, 10, 0.1, 0.2, 3, 6, 4, {3, 1}, 4);
    const std::string p = m.prometheus();
    for (const char* line : {"vllm:spec_decode_num_drafts 3\n", "vllm:spec_decode_num_draft_tokens 6\n",
                             "vllm:spec_decode_num_accepted_tokens 4\n",
                             "vllm:spec_decode_num_accepted_tokens_per_pos{position=\"0\"} 3\n",
                             "vllm:spec_decode_num_accepted_tokens_per_pos{position=\"1\"} 1\n",
                             "llamacpp:n_drafted_total 6\n", "llamacpp:n_accepted_total 4\n",
                             "llamacpp:prompt_tokens_total 5\n", "llamacpp:tokens_predicted_total 10\n",
                             "llamacpp:requests_processing 0\n", "# TYPE llamacpp:n_drafted_total counter\n"})
        EXPECT_NE(p.find(line), std::string::npos) << line;
}
