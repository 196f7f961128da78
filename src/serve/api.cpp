#include "serve/api.h"

#include <cmath>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/json_read.h"

namespace mtp::serve {

json error_json(const api_error& e) {
    json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
    if (!e.param.empty()) err["param"] = e.param;
    if (!e.code.empty()) err["code"] = e.code;
    return json{{"error", err}};
}

void throw_api(int status, const std::string& message, const std::string& param, const std::string& code) {
    api_error e;
    e.status = status;
    e.message = message;
    e.param = param;
    e.code = code;
    if (status == 404) e.type = "not_found_error";
    else if (status >= 500) e.type = status == 503 ? "unavailable_error" : "server_error";
    throw e;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json parse_body(const std::string& body) {
    json j;
    try {
        j = json_parse(body, "request body");
    } catch (const mtp::error& e) {
        throw_api(400, std::string("the request body is not valid JSON (") + e.what() + ")");
    }
    if (!j.is_object()) throw_api(400, "the request body must be a JSON object");
    return j;
}

// ---------------------------------------------------------------- chat templates

namespace {
const char* DS_BOS = "<｜begin▁of▁sentence｜>";
const char* DS_EOS = "<｜end▁of▁sentence｜>";
const char* DS_USER = "<｜User｜>";
const char* DS_ASSISTANT = "<｜Assistant｜>";

// The template as (is_special, text) segments.
std::vector<std::pair<bool, std::string>> chat_segments(const tokenizer& t, const std::vector<chat_message>& msgs) {
    std::vector<std::pair<bool, std::string>> seg;
    if (chat_template_is_deepseek(t)) {
        if (tokenizer_token_id(t, DS_BOS) >= 0) seg.emplace_back(true, DS_BOS);
        std::string sys;
        for (const auto& m : msgs)
            if (m.role == "system") sys += (sys.empty() ? "" : "\n\n") + m.content;
        if (!sys.empty()) seg.emplace_back(false, sys);
        const bool has_eos = tokenizer_token_id(t, DS_EOS) >= 0;
        for (const auto& m : msgs) {
            if (m.role == "user") {
                seg.emplace_back(true, DS_USER);
                if (!m.content.empty()) seg.emplace_back(false, m.content);
            } else if (m.role == "assistant") {
                seg.emplace_back(true, DS_ASSISTANT);
                if (!m.content.empty()) seg.emplace_back(false, m.content);
                if (has_eos) seg.emplace_back(true, DS_EOS);
            }
        }
        seg.emplace_back(true, DS_ASSISTANT);
        return seg;
    }
    std::string s;
    for (const auto& m : msgs) {
        if (m.role == "system") s += "System: " + m.content + "\n";
        else if (m.role == "user") s += "User: " + m.content + "\n";
        else s += "Assistant: " + m.content + "\n";
    }
    s += "Assistant:";
    seg.emplace_back(false, s);
    return seg;
}
} // namespace

bool chat_template_is_deepseek(const tokenizer& t) {
    return tokenizer_token_id(t, DS_USER) >= 0 && tokenizer_token_id(t, DS_ASSISTANT) >= 0;
}

std::vector<int> chat_prompt(const tokenizer& t, const std::vector<chat_message>& msgs) {
    std::vector<int> ids;
    for (const auto& [special, text] : chat_segments(t, msgs)) {
        if (special) ids.push_back(tokenizer_token_id(t, text));
        else tokenizer_encode_append(t, text, ids, /*allow_special=*/false);
    }
    return ids;
}

std::string chat_prompt_text(const tokenizer& t, const std::vector<chat_message>& msgs) {
    std::string s;
    for (const auto& seg : chat_segments(t, msgs)) s += seg.second;
    return s;
}

// ---------------------------------------------------------------- request parsing

namespace {

const json* field(const json& b, const char* name) {
    auto it = b.find(name);
    if (it == b.end() || it->is_null()) return nullptr;
    return &*it;
}

int get_int(const json& v, const char* name) {
    if (!v.is_number_integer()) throw_api(400, std::string("'") + name + "' must be an integer", name);
    const bool huge = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT32_MAX);   // 2^64-1 is not -1
    const int64_t x = huge ? int64_t(INT32_MAX) + 1 : v.get<int64_t>();
    if (x < INT32_MIN || x > INT32_MAX)
        throw_api(400, std::string("'") + name + "' is out of range (" + v.dump() + ")", name);
    return int(x);
}

double get_num(const json& v, const char* name) {
    if (!v.is_number()) throw_api(400, std::string("'") + name + "' must be a number", name);
    const double x = v.get<double>();
    if (!std::isfinite(x)) throw_api(400, std::string("'") + name + "' must be finite", name);
    return x;
}

bool get_bool(const json& v, const char* name) {
    if (!v.is_boolean()) throw_api(400, std::string("'") + name + "' must be a boolean", name);
    return v.get<bool>();
}

std::vector<int> token_array(const json& a, int vocab, const char* name) {
    std::vector<int> ids;
    for (const auto& x : a) {
        if (!x.is_number_integer()) throw_api(400, std::string("'") + name + "' must be a string or token ids", name);
        const int64_t id = x.get<int64_t>();
        if (id < 0 || id >= vocab)
            throw_api(400, "token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab) +
                               ")", name);
        ids.push_back(int(id));
    }
    return ids;
}

std::string message_content(const json& c, size_t i) {
    const std::string param = "messages[" + std::to_string(i) + "].content";
    if (c.is_null()) return "";
    if (c.is_string()) return c.get<std::string>();
    if (c.is_array()) {   // content parts: only text
        std::string s;
        for (const auto& p : c) {
            if (!p.is_object() || p.value("type", "") != "text" || !p.contains("text") || !p["text"].is_string())
                throw_api(400, "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported", param);
            s += p["text"].get<std::string>();
        }
        return s;
    }
    throw_api(400, "'content' must be a string or an array of text parts", param);
}

} // namespace

gen_request parse_request(const json& b, endpoint kind, const tokenizer& t, int n_ctx, int vocab) {
    gen_request r;
    r.kind = kind;
    if (kind == endpoint::completions) {
        const json* p = field(b, "prompt");
        if (!p) throw_api(400, "'prompt' is required", "prompt");
        const json* one = p;
        if (p->is_array() && !p->empty() && (p->at(0).is_string() || p->at(0).is_array())) {
            if (p->size() != 1) throw_api(400, "batched prompts are not supported: give one prompt", "prompt");
            one = &p->at(0);
        }
        if (one->is_string()) r.prompt = tokenizer_encode(t, one->get<std::string>());
        else if (one->is_array()) r.prompt = token_array(*one, vocab, "prompt");
        else throw_api(400, "'prompt' must be a string or an array of token ids", "prompt");
        for (int id : r.prompt)
            if (id >= vocab) throw_api(400, "the prompt encodes to token id " + std::to_string(id) +
                                                " outside the model's vocabulary", "prompt");
    } else {
        const json* m = field(b, "messages");
        if (!m) throw_api(400, "'messages' is required", "messages");
        if (!m->is_array()) throw_api(400, "'messages' must be an array", "messages");
        if (m->empty()) throw_api(400, "'messages' must not be empty", "messages");
        std::vector<chat_message> msgs;
        for (size_t i = 0; i < m->size(); ++i) {
            const json& x = m->at(i);
            const std::string pi = "messages[" + std::to_string(i) + "]";
            if (!x.is_object()) throw_api(400, pi + " must be an object", pi);
            if (!x.contains("role") || !x["role"].is_string()) throw_api(400, pi + ".role must be a string", pi + ".role");
            chat_message cm;
            cm.role = x["role"].get<std::string>();
            if (cm.role == "developer") cm.role = "system";
            if (cm.role != "system" && cm.role != "user" && cm.role != "assistant")
                throw_api(400, "unsupported role '" + cm.role + "' (system, user, assistant)", pi + ".role");
            cm.content = message_content(x.contains("content") ? x["content"] : json(), i);
            msgs.push_back(std::move(cm));
        }
        r.prompt = chat_prompt(t, msgs);
        for (int id : r.prompt)
            if (id >= vocab) throw_api(400, "the messages encode to token id " + std::to_string(id) +
                                                " outside the model's vocabulary", "messages");
    }
    const char* pname = kind == endpoint::completions ? "prompt" : "messages";
    if (r.prompt.empty()) throw_api(400, "the prompt is empty", pname);
    const int n_prompt = int(r.prompt.size());
    if (n_prompt >= n_ctx)
        throw_api(400, "this model's maximum context length is " + std::to_string(n_ctx) + " tokens, the prompt has " +
                           std::to_string(n_prompt) + " (at least one must be left to generate)",
                  pname, "context_length_exceeded");

    const char* mt_name = "max_tokens";
    const json* mt = field(b, "max_tokens");
    if (!mt && kind == endpoint::chat && field(b, "max_completion_tokens")) {
        mt_name = "max_completion_tokens";
        mt = field(b, mt_name);
    }
    if (mt) {
        r.max_tokens = get_int(*mt, mt_name);
        if (r.max_tokens < 1) throw_api(400, std::string("'") + mt_name + "' must be at least 1", mt_name);
        if (int64_t(n_prompt) + r.max_tokens > n_ctx)
            throw_api(400, "this model's maximum context length is " + std::to_string(n_ctx) + " tokens; you requested " +
                               std::to_string(n_prompt + int64_t(r.max_tokens)) + " (" + std::to_string(n_prompt) +
                               " in the prompt, " + std::to_string(r.max_tokens) + " to generate)",
                      mt_name, "context_length_exceeded");
    }
    if (const json* n = field(b, "n")) {
        if (get_int(*n, "n") != 1) throw_api(400, "only n = 1 is supported", "n");
    }

    sampler_params& s = r.sampling;
    s.temperature = 1.0f;
    s.repeat_penalty = 1.0f;
    if (const json* v = field(b, "temperature")) {
        const double x = get_num(*v, "temperature");
        if (x < 0 || x > 100) throw_api(400, "'temperature' must be in [0, 100]", "temperature");
        s.temperature = float(x);
    }
    if (const json* v = field(b, "top_p")) {
        const double x = get_num(*v, "top_p");
        if (!(x > 0 && x <= 1)) throw_api(400, "'top_p' must be in (0, 1]", "top_p");
        s.top_p = float(x);
    }
    if (const json* v = field(b, "top_k")) {
        const int x = get_int(*v, "top_k");
        if (x < -1) throw_api(400, "'top_k' must be >= 0 (0 or -1: off)", "top_k");
        s.top_k = x < 0 ? 0 : x;
    }
    if (const json* v = field(b, "min_p")) {
        const double x = get_num(*v, "min_p");
        if (!(x >= 0 && x < 1)) throw_api(400, "'min_p' must be in [0, 1)", "min_p");
        s.min_p = float(x);
    }
    if (const json* v = field(b, "seed")) {
        if (!v->is_number_integer()) throw_api(400, "'seed' must be an integer", "seed");
        s.seed = v->is_number_unsigned() ? v->get<uint64_t>() : uint64_t(v->get<int64_t>());
    } else {
        std::random_device rd;
        s.seed = (uint64_t(rd()) << 32) ^ rd();
    }
    try {
        sampler_params_check(s);
    } catch (const error& e) {
        throw_api(400, e.what());
    }

    if (const json* v = field(b, "stop")) {
        if (v->is_string()) {
            r.stop.push_back(v->get<std::string>());
        } else if (v->is_array()) {
            if (v->size() > 16) throw_api(400, "'stop' has more than 16 strings", "stop");
            for (const auto& x : *v) {
                if (!x.is_string()) throw_api(400, "'stop' must be a string or an array of strings", "stop");
                r.stop.push_back(x.get<std::string>());
            }
        } else {
            throw_api(400, "'stop' must be a string or an array of strings", "stop");
        }
        std::erase_if(r.stop, [](const std::string& x) { return x.empty(); });
    }
    if (const json* v = field(b, "stream")) r.stream = get_bool(*v, "stream");
    if (const json* v = field(b, "ignore_eos")) r.ignore_eos = get_bool(*v, "ignore_eos");
    if (const json* v = field(b, "cache_prompt")) r.cache_prompt = get_bool(*v, "cache_prompt");
    if (const json* v = field(b, "stream_options")) {
        if (!v->is_object()) throw_api(400, "'stream_options' must be an object", "stream_options");
        if (v->contains("include_usage") && !(*v)["include_usage"].is_null())
            r.include_usage = get_bool((*v)["include_usage"], "stream_options.include_usage");
    }
    return r;
}

// ---------------------------------------------------------------- text output

size_t utf8_complete_prefix(const std::string& s) {
    const size_t n = s.size();
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i, ++back;
    if (i == 0) return n;
    const unsigned char lead = static_cast<unsigned char>(s[i - 1]);
    size_t need;
    if (lead < 0x80) return n;
    else if ((lead & 0xE0) == 0xC0) need = 2;
    else if ((lead & 0xF0) == 0xE0) need = 3;
    else if ((lead & 0xF8) == 0xF0) need = 4;
    else return n;   // invalid lead byte: complete as far as we are concerned
    const size_t have = n - (i - 1);
    return have < need ? i - 1 : n;
}

std::string text_stream::push(const std::string& bytes) {
    if (stopped_) return "";
    buf_ += bytes;
    size_t first = std::string::npos;
    for (const auto& s : stop_) first = std::min(first, buf_.find(s));
    std::string emit;
    if (first != std::string::npos) {
        emit = buf_.substr(0, first);
        buf_.clear();
        stopped_ = true;
    } else {
        size_t hold = 0;   // longest suffix of buf_ that is a proper prefix of a stop string
        for (const auto& s : stop_)
            for (size_t k = std::min(s.size() - 1, buf_.size()); k > hold; --k)
                if (buf_.compare(buf_.size() - k, k, s, 0, k) == 0) {
                    hold = k;
                    break;
                }
        size_t safe = utf8_complete_prefix(buf_.substr(0, buf_.size() - hold));
        emit = buf_.substr(0, safe);
        buf_.erase(0, safe);
    }
    out_ += emit;
    return emit;
}

std::string text_stream::flush() {
    if (stopped_) return "";
    std::string emit;
    emit.swap(buf_);
    out_ += emit;
    return emit;
}

json timings_json(const timings& t) {
    return json{{"prompt_n", t.prompt_n},
                {"prompt_ms", t.prompt_ms},
                {"prompt_per_token_ms", t.prompt_n > 0 ? t.prompt_ms / t.prompt_n : 0.0},
                {"prompt_per_second", t.prompt_ms > 0 ? 1e3 * t.prompt_n / t.prompt_ms : 0.0},
                {"predicted_n", t.predicted_n},
                {"predicted_ms", t.predicted_ms},
                {"predicted_per_token_ms", t.predicted_n > 0 ? t.predicted_ms / t.predicted_n : 0.0},
                {"predicted_per_second", t.predicted_ms > 0 ? 1e3 * t.predicted_n / t.predicted_ms : 0.0},
                {"draft_n", t.draft_n},
                {"draft_n_accepted", t.draft_n_accepted},
                {"tokens_cached", t.tokens_cached},
                {"queue_ms", t.queue_ms},
                {"slot", t.slot},
                {"time_limit_reached", t.time_limit_reached}};
}

json usage_json(int prompt_tokens, int completion_tokens) {
    return json{{"prompt_tokens", prompt_tokens},
                {"completion_tokens", completion_tokens},
                {"total_tokens", prompt_tokens + completion_tokens}};
}

// ---------------------------------------------------------------- metrics

void metrics::request_started() {
    std::lock_guard<std::mutex> l(mu_);
    ++waiting_;
}

void metrics::request_running() {
    std::lock_guard<std::mutex> l(mu_);
    --waiting_;
    ++running_;
}

void metrics::request_finished(bool ok, int n_prompt, int n_gen, double prompt_s, double gen_s, int64_t n_drafts,
                               int64_t n_draft_tokens, int64_t n_accepted, const std::vector<int64_t>& accepted_at,
                               int64_t n_decode) {
    std::lock_guard<std::mutex> l(mu_);
    --running_;
    (ok ? ok_ : failed_) += 1;
    prompt_tokens_ += n_prompt;
    gen_tokens_ += n_gen;
    prompt_s_ += prompt_s;
    gen_s_ += gen_s;
    drafts_ += n_drafts;
    draft_tokens_ += n_draft_tokens;
    accepted_ += n_accepted;
    n_decode_ += n_decode;
    if (accepted_at_.size() < accepted_at.size()) accepted_at_.resize(accepted_at.size(), 0);
    for (size_t i = 0; i < accepted_at.size(); ++i) accepted_at_[i] += accepted_at[i];
}

void metrics::request_rejected() {
    std::lock_guard<std::mutex> l(mu_);
    ++rejected_;
}

void metrics::request_overloaded() {
    std::lock_guard<std::mutex> l(mu_);
    ++overloaded_;
}

void metrics::request_left_queue() {
    std::lock_guard<std::mutex> l(mu_);
    --waiting_;
}

void metrics::prompt_cached(int n) {
    std::lock_guard<std::mutex> l(mu_);
    cached_tokens_ += n;
}

void metrics::draft_chosen(int k) {
    std::lock_guard<std::mutex> l(mu_);
    if (k < 0) return;
    if (draft_len_.size() <= size_t(k)) draft_len_.resize(size_t(k) + 1, 0);
    ++draft_len_[size_t(k)];
}

std::string metrics::prometheus() const {
    std::lock_guard<std::mutex> l(mu_);
    std::ostringstream o;
    o.precision(17);
    auto one = [&](const char* name, const char* type, const char* help, double v) {
        o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n" << name << " " << v << "\n";
    };
    // llama.cpp server names
    one("llamacpp:prompt_tokens_total", "counter", "Number of prompt tokens processed.", double(prompt_tokens_));
    one("llamacpp:prompt_seconds_total", "counter", "Prompt process time.", prompt_s_);
    one("llamacpp:tokens_predicted_total", "counter", "Number of generation tokens processed.", double(gen_tokens_));
    one("llamacpp:tokens_predicted_seconds_total", "counter", "Predict process time.", gen_s_);
    one("llamacpp:n_decode_total", "counter", "Total number of decode rounds (main-model forwards after the prompt).",
        double(n_decode_));
    one("llamacpp:n_drafted_total", "counter", "Draft tokens proposed by the MTP modules.", double(draft_tokens_));
    one("llamacpp:n_accepted_total", "counter", "Draft tokens accepted by verification.", double(accepted_));
    one("llamacpp:requests_processing", "gauge", "Number of requests being generated.", double(running_));
    one("llamacpp:requests_deferred", "gauge", "Number of requests waiting in the queue.", double(waiting_));
    // vLLM names
    one("vllm:num_requests_running", "gauge", "Number of requests being generated.", double(running_));
    one("vllm:num_requests_waiting", "gauge", "Number of requests waiting in the queue.", double(waiting_));
    one("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", double(prompt_tokens_));
    one("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", double(gen_tokens_));
    o << "# HELP vllm:request_success_total Finished requests.\n# TYPE vllm:request_success_total counter\n"
      << "vllm:request_success_total{finished_reason=\"ok\"} " << ok_ << "\n"
      << "vllm:request_success_total{finished_reason=\"error\"} " << failed_ << "\n";
    one("mtp:requests_rejected_total", "counter", "Requests refused with a 4xx error before generation.",
        double(rejected_));
    one("mtp:requests_overloaded_total", "counter", "Requests refused with 503 because the queue was full.",
        double(overloaded_));
    one("mtp:prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's cache (not recomputed).",
        double(cached_tokens_));
    o << "# HELP mtp:draft_length_chosen_total Decode rounds by the draft length the load-adaptive policy chose.\n"
      << "# TYPE mtp:draft_length_chosen_total counter\n";
    for (size_t k = 0; k < draft_len_.size(); ++k)
        o << "mtp:draft_length_chosen_total{draft=\"" << k << "\"} " << draft_len_[k] << "\n";
    one("vllm:spec_decode_num_drafts", "counter", "Speculative rounds that drafted at least one token.",
        double(drafts_));
    one("vllm:spec_decode_num_draft_tokens", "counter", "Draft tokens proposed.", double(draft_tokens_));
    one("vllm:spec_decode_num_accepted_tokens", "counter", "Draft tokens accepted.", double(accepted_));
    o << "# HELP vllm:spec_decode_num_accepted_tokens_per_pos Accepted draft tokens per draft position.\n"
      << "# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter\n";
    for (size_t i = 0; i < accepted_at_.size(); ++i)
        o << "vllm:spec_decode_num_accepted_tokens_per_pos{position=\"" << i << "\"} " << accepted_at_[i] << "\n";
    return o.str();
}

} // namespace mtp::serve
