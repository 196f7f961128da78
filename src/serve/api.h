// OpenAI-compatible request parsing, chat prompt formatting, incremental text output with stop strings, and the
// response / error / metrics formatting for `mtp serve`. No networking here (src/serve/server.h does that), so all
// of it is unit-testable.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/sampler.h"
#include "io/tokenizer.h"

namespace mtp::serve {

using json = nlohmann::json;

// A request that cannot be served: HTTP status + an OpenAI error object.
struct api_error {
    int status = 400;
    std::string message;
    std::string type = "invalid_request_error";
    std::string param;   // "" -> null
    std::string code;    // "" -> null
};
// {"error": {"message", "type", "param", "code"}}
json error_json(const api_error& e);
[[noreturn]] void throw_api(int status, const std::string& message, const std::string& param = "",
                            const std::string& code = "");

enum class endpoint { completions, chat };

struct gen_request {
    endpoint kind = endpoint::completions;
    std::vector<int> prompt;             // token ids (after the chat template for chat)
    int max_tokens = -1;                 // -1: until the context is full
    sampler_params sampling;             // temperature 1, top_p 1, top_k 0 (off) unless given
    std::vector<std::string> stop;       // stop strings (not included in the output)
    bool stream = false;
    bool include_usage = false;
    bool ignore_eos = false;             // extension (llama-server): do not stop at eos_token_id
    bool cache_prompt = true;            // extension (llama-server): reuse a slot's cached prefix
};

// Chat prompts: the DeepSeek-V3 format when the tokenizer has <｜User｜> and <｜Assistant｜> (BOS
// <｜begin▁of▁sentence｜> first when present; system messages joined by "\n\n" right after it; a user message is
// <｜User｜>content, an assistant one <｜Assistant｜>content<｜end▁of▁sentence｜>; the prompt ends with
// <｜Assistant｜>). Otherwise the plain template: "System: ...\n\n" for system messages, then "User: ...\n" and
// "Assistant: ...\n" per message, ending with "Assistant:". Message text is always encoded with special tokens
// disabled, so text that looks like a special token stays text.
struct chat_message {
    std::string role;      // system | user | assistant ("developer" is read as system)
    std::string content;
};
bool chat_template_is_deepseek(const tokenizer& t);
std::vector<int> chat_prompt(const tokenizer& t, const std::vector<chat_message>& msgs);
std::string chat_prompt_text(const tokenizer& t, const std::vector<chat_message>& msgs);   // for docs / tests

// Parses and validates a request body (already parsed JSON) for `kind`. n_ctx: the model's context; vocab: the
// model's vocabulary (token-id prompts must be below it). Throws api_error (status 400) naming the field.
gen_request parse_request(const json& body, endpoint kind, const tokenizer& t, int n_ctx, int vocab);
// Parses a body; bad JSON or not an object -> api_error 400.
json parse_body(const std::string& body);

// Turns generated token bytes into text to send: holds back bytes that may still become a stop string and an
// incomplete UTF-8 character at the end; finds stop strings (the earliest one wins; the output ends before it).
class text_stream {
public:
    explicit text_stream(std::vector<std::string> stop) : stop_(std::move(stop)) {}
    // Appends bytes; returns the text now safe to send (maybe empty). After a stop string is found, stopped() is
    // true and nothing more is produced.
    std::string push(const std::string& bytes);
    // End of generation: whatever was held back (when no stop string matched).
    std::string flush();
    bool stopped() const { return stopped_; }
    const std::string& text() const { return out_; }   // everything sent so far

private:
    std::vector<std::string> stop_;
    std::string buf_, out_;
    bool stopped_ = false;
};
// Length of the longest prefix of s that does not end inside a UTF-8 character (invalid bytes count as complete).
size_t utf8_complete_prefix(const std::string& s);
// JSON text; invalid UTF-8 is replaced by U+FFFD.
std::string dump(const json& j);

struct timings {
    int prompt_n = 0;
    double prompt_ms = 0;
    int predicted_n = 0;
    double predicted_ms = 0;
    int64_t draft_n = 0;
    int64_t draft_n_accepted = 0;
    int tokens_cached = 0;               // prompt positions reused from the slot's cache
    double queue_ms = 0;                 // waiting for a slot
    int slot = -1;
    bool time_limit_reached = false;     // stopped by --request-timeout
};
json timings_json(const timings& t);
json usage_json(int prompt_tokens, int completion_tokens);

// Counters behind GET /metrics (thread-safe).
class metrics {
public:
    void request_started();                       // a request entered the queue
    void request_running();                       // the worker took it
    void request_finished(bool ok, int n_prompt, int n_gen, double prompt_s, double gen_s, int64_t n_drafts,
                          int64_t n_draft_tokens, int64_t n_accepted, const std::vector<int64_t>& accepted_at,
                          int64_t n_decode);
    void request_rejected();                      // failed validation (4xx)
    void request_overloaded();                    // refused with 503: the queue was full
    void request_left_queue();                    // left the queue without running (cancelled, timed out, shutdown)
    void prompt_cached(int n);                    // prompt positions a request reused
    void draft_chosen(int k);                     // a decode round's draft length (load-adaptive policy)
    std::string prometheus() const;               // text exposition format 0.0.4

private:
    mutable std::mutex mu_;
    int64_t waiting_ = 0, running_ = 0, ok_ = 0, failed_ = 0, rejected_ = 0, overloaded_ = 0, cached_tokens_ = 0;
    std::vector<int64_t> draft_len_;
    int64_t prompt_tokens_ = 0, gen_tokens_ = 0, n_decode_ = 0;
    double prompt_s_ = 0, gen_s_ = 0;
    int64_t drafts_ = 0, draft_tokens_ = 0, accepted_ = 0;
    std::vector<int64_t> accepted_at_;
};

} // namespace mtp::serve
