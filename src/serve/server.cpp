#include "serve/server.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include <httplib.h>
#include <netdb.h>
#include <omp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/error.h"
#include "infer/cpu_model.h"
#include "infer/speculative.h"
#include "model/weights.h"
#include "serve/api.h"

namespace mtp::serve {

namespace {
// Test hooks (the serving tests only): a model load or each decode round held back by this many milliseconds, so
// that /health's 503 and a client leaving mid-generation can be observed on a tiny model. 0 when unset.
int test_delay_ms(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::max(0, std::min(60000, std::atoi(v))) : 0;
}
} // namespace

namespace {

using clk = std::chrono::steady_clock;
double secs(clk::time_point a, clk::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// One request on its way through the queue: the worker appends text pieces, the HTTP thread takes them.
struct job {
    gen_request req;
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::string> pieces;
    bool done = false;
    std::atomic<bool> cancelled{false};
    // results (valid once done)
    std::string text;              // everything generated (after stop-string handling)
    std::string finish_reason = "length";
    int n_prompt = 0, n_gen = 0;
    timings tm;
    std::string error;             // non-empty: generation failed

    void push(std::string s) {
        if (s.empty()) return;
        std::lock_guard<std::mutex> l(mu);
        pieces.push_back(std::move(s));
        cv.notify_all();
    }
    void finish() {
        std::lock_guard<std::mutex> l(mu);
        done = true;
        cv.notify_all();
    }
};

// The model and the single generation worker.
class engine {
public:
    engine(model_files m, tokenizer t, spec_params sp, int threads, metrics& met, const std::string& weights)
        : m_(std::move(m)), tok_(std::move(t)), sp_(sp), threads_(threads), met_(met),
          cm_(m_, 0, weights_type_for(weights, m_)) {
        th_ = std::thread([this] { loop(); });
    }
    ~engine() {
        {
            std::lock_guard<std::mutex> l(mu_);
            stopping_ = true;
            cv_.notify_all();
        }
        th_.join();
    }
    const model_config& config() const { return m_.config; }
    const tokenizer& tok() const { return tok_; }
    bool speculating() const { return sp_.enabled; }

    void submit(const std::shared_ptr<job>& j) {
        met_.request_started();
        std::lock_guard<std::mutex> l(mu_);
        q_.push_back(j);
        cv_.notify_all();
    }

private:
    void loop() {
        if (threads_ > 0) omp_set_num_threads(threads_);   // per-thread ICV: set on the worker itself
        for (;;) {
            std::shared_ptr<job> j;
            {
                std::unique_lock<std::mutex> l(mu_);
                cv_.wait(l, [&] { return stopping_ || !q_.empty(); });
                if (q_.empty()) return;
                j = q_.front();
                q_.pop_front();
                if (stopping_) {   // shutting down: answer the rest without generating
                    met_.request_running();
                    met_.request_finished(false, 0, 0, 0, 0, 0, 0, 0, {}, 0);
                    j->error = "the server is shutting down";
                    j->finish();
                    continue;
                }
            }
            met_.request_running();
            run(*j);
        }
    }

    std::string piece(int id) const {
        if (id >= tokenizer_vocab_size(tok_)) return "";
        try {
            return tokenizer_decode(tok_, {id});
        } catch (const error&) {
            return "";   // an id the tokenizer has no text for
        }
    }

    void run(job& j) {
        const gen_request& r = j.req;
        gen_stats st;
        const auto t0 = clk::now();
        auto t1 = t0;
        bool ok = true;
        try {
            if (j.cancelled) throw error("cancelled before it started");
            sampler s(r.sampling);
            generator g(cm_, s, sp_);
            text_stream ts(r.stop);
            const int n_ctx = cm_.n_ctx();
            const int limit = r.max_tokens > 0 ? r.max_tokens : n_ctx - int(r.prompt.size());
            const int eos = r.ignore_eos ? -1 : m_.config.eos_token_id;
            int n_gen = 0;
            // true: generation ends here
            auto take = [&](int id) {
                ++n_gen;
                if (id == eos) {
                    j.finish_reason = "stop";
                    return true;
                }
                j.push(ts.push(piece(id)));
                if (ts.stopped()) {
                    j.finish_reason = "stop";
                    return true;
                }
                return n_gen >= limit;
            };
            bool end = take(g.start(r.prompt));
            t1 = clk::now();
            std::vector<int> buf;
            while (!end && !j.cancelled) {
                buf.clear();
                if (step_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_delay_ms_));
                const int k = g.step(limit - n_gen, buf);
                if (k == 0) break;   // context full
                for (int i = 0; i < k && !end; ++i) end = take(buf[size_t(i)]);
            }
            if (j.cancelled) j.finish_reason = "cancelled";
            j.push(ts.flush());
            j.text = ts.text();
            j.n_prompt = int(r.prompt.size());
            j.n_gen = n_gen;
            st = g.stats();
        } catch (const std::exception& e) {
            ok = false;
            j.error = e.what();
        }
        const auto t2 = clk::now();
        j.tm.prompt_n = j.n_prompt;
        j.tm.prompt_ms = 1e3 * secs(t0, t1);
        j.tm.predicted_n = j.n_gen;
        j.tm.predicted_ms = 1e3 * secs(t1, t2);
        j.tm.draft_n = st.n_draft_tokens;
        j.tm.draft_n_accepted = st.n_accepted;
        met_.request_finished(ok && !j.cancelled, j.n_prompt, j.n_gen, secs(t0, t1), secs(t1, t2), st.n_drafts,
                              st.n_draft_tokens, st.n_accepted, st.accepted_at, st.n_rounds);
        j.finish();
    }

    model_files m_;
    tokenizer tok_;
    spec_params sp_;
    int threads_;
    int step_delay_ms_ = test_delay_ms("MTP_SERVE_TEST_STEP_DELAY_MS");
    metrics& met_;
    cpu_model cm_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<job>> q_;
    bool stopping_ = false;
    std::thread th_;
};

std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) { g_stop = true; }

std::string random_id(const char* prefix) {
    static std::mutex mu;
    static std::mt19937_64 g{std::random_device{}()};
    std::lock_guard<std::mutex> l(mu);
    char b[40];
    std::snprintf(b, sizeof b, "%016llx%08llx", (unsigned long long)g(), (unsigned long long)(g() & 0xffffffffu));
    return prefix + std::string(b);
}

void send_json(httplib::Response& res, int status, const json& j) {
    res.status = status;
    res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, const api_error& e) { send_json(res, e.status, error_json(e)); }

// The server state shared by the handlers.
struct state {
    serve_options opt;
    std::string model_name;
    std::time_t created = std::time(nullptr);
    metrics met;
    std::atomic<bool> ready{false};
    std::unique_ptr<engine> eng;
};

json choice_message(endpoint kind, const std::string& text, const json& finish) {
    if (kind == endpoint::chat)
        return json{{"index", 0},
                    {"message", {{"role", "assistant"}, {"content", text}}},
                    {"logprobs", nullptr},
                    {"finish_reason", finish}};
    return json{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish}};
}

json choice_delta(endpoint kind, const json& delta_or_text, const json& finish) {
    if (kind == endpoint::chat)
        return json{{"index", 0}, {"delta", delta_or_text}, {"logprobs", nullptr}, {"finish_reason", finish}};
    return json{{"index", 0}, {"text", delta_or_text}, {"logprobs", nullptr}, {"finish_reason", finish}};
}

void handle_generate(state& S, endpoint kind, const httplib::Request& req, httplib::Response& res) {
    if (!S.ready) throw_api(503, "the model is loading", "", "model_loading");
    gen_request gr;
    try {
        json body = parse_body(req.body);
        gr = parse_request(body, kind, S.eng->tok(), S.eng->config().max_position_embeddings,
                           S.eng->config().vocab_size);
    } catch (const api_error&) {
        S.met.request_rejected();
        throw;
    }
    auto j = std::make_shared<job>();
    j->req = std::move(gr);
    const bool stream = j->req.stream, include_usage = j->req.include_usage;
    S.eng->submit(j);

    const std::string id = random_id(kind == endpoint::chat ? "chatcmpl-" : "cmpl-");
    const std::string object = kind == endpoint::chat ? "chat.completion" : "text_completion";
    const std::time_t created = std::time(nullptr);
    const std::string model = S.model_name;

    if (!stream) {
        {
            std::unique_lock<std::mutex> l(j->mu);
            j->cv.wait(l, [&] { return j->done; });
        }
        if (!j->error.empty()) throw_api(500, "generation failed: " + j->error);
        json out = {{"id", id},
                    {"object", object},
                    {"created", created},
                    {"model", model},
                    {"choices", json::array({choice_message(kind, j->text, j->finish_reason)})},
                    {"usage", usage_json(j->n_prompt, j->n_gen)},
                    {"timings", timings_json(j->tm)}};
        send_json(res, 200, out);
        return;
    }

    const std::string chunk_object = kind == endpoint::chat ? "chat.completion.chunk" : "text_completion";
    auto chunk = [=](const json& choices) {
        json c = {{"id", id}, {"object", chunk_object}, {"created", created}, {"model", model}, {"choices", choices}};
        if (include_usage) c["usage"] = nullptr;
        return c;
    };
    auto started = std::make_shared<bool>(false);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [j, kind, chunk, started, include_usage](size_t, httplib::DataSink& sink) {
            auto send = [&](const json& c) {
                const std::string s = "data: " + dump(c) + "\n\n";
                if (!sink.write(s.data(), s.size())) {
                    j->cancelled = true;
                    return false;
                }
                return true;
            };
            if (!*started) {
                *started = true;
                if (kind == endpoint::chat &&
                    !send(chunk(json::array({choice_delta(kind, {{"role", "assistant"}, {"content", ""}}, nullptr)}))))
                    return false;
            }
            std::deque<std::string> got;
            bool done;
            {
                std::unique_lock<std::mutex> l(j->mu);
                j->cv.wait(l, [&] { return j->done || !j->pieces.empty(); });
                got.swap(j->pieces);
                done = j->done;
            }
            // every piece its own chunk; once done, the last piece goes with the finish_reason
            std::string rest;
            if (done && !got.empty()) {
                rest = std::move(got.back());
                got.pop_back();
            }
            for (auto& p : got) {
                json d = kind == endpoint::chat ? json{{"content", p}} : json(p);
                if (!send(chunk(json::array({choice_delta(kind, d, nullptr)})))) return false;
            }
            if (!done) return true;
            if (!j->error.empty()) {   // headers are out: report the failure in-band
                api_error e;
                e.status = 500;
                e.type = "server_error";
                e.message = "generation failed: " + j->error;
                send(error_json(e));
            } else {
                json d = kind == endpoint::chat ? (rest.empty() ? json::object() : json{{"content", rest}}) : json(rest);
                json last = chunk(json::array({choice_delta(kind, d, j->finish_reason)}));
                last["timings"] = timings_json(j->tm);
                if (!send(last)) return false;
                if (include_usage) {
                    json u = chunk(json::array());
                    u["usage"] = usage_json(j->n_prompt, j->n_gen);
                    if (!send(u)) return false;
                }
            }
            const std::string fin = "data: [DONE]\n\n";
            if (!sink.write(fin.data(), fin.size())) return false;
            sink.done();
            return true;
        },
        [j](bool success) {
            if (!success) j->cancelled = true;   // the client went away: stop generating
        });
}

// Wraps a handler: api_error -> its status and error object; anything else -> 500.
template <class F>
httplib::Server::Handler guarded(F f) {
    return [f](const httplib::Request& req, httplib::Response& res) {
        try {
            f(req, res);
        } catch (const api_error& e) {
            send_error(res, e);
        } catch (const std::exception& e) {
            api_error x;
            x.status = 500;
            x.type = "server_error";
            x.message = e.what();
            send_error(res, x);
        }
    };
}

} // namespace

namespace {
// Names the flag at fault before httplib, which only says that binding failed: a host that is no address of this
// machine (--host) or a port in use or privileged (--port).
void check_listen_address(const std::string& host, int port) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res)
        fail("--host", quoted(host, 80) + " is not an IP address or a name that resolves");
    const int fd = ::socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    int err = 0;
    if (fd >= 0) {
        const int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0) err = errno;
        ::close(fd);
    }
    freeaddrinfo(res);
    if (err == EADDRNOTAVAIL) fail("--host", quoted(host, 80) + " is not an address of this machine");
    if (err == EADDRINUSE) fail("--port", std::to_string(port) + " is already in use on " + host);
    if (err == EACCES) fail("--port", std::to_string(port) + " needs privileges (use a port above 1023)");
    if (err != 0) fail("--host", "cannot listen on " + host + ":" + std::to_string(port) + ": " + std::strerror(err));
}
} // namespace

void serve_run(const serve_options& o) {
    if (o.port < 0 || o.port > 65535) fail("--port", "must be in [0, 65535]");
    if (!o.spec.empty() && o.spec != "mtp" && o.spec != "none")
        fail("--spec", "expected mtp or none, got '" + o.spec + "'");
    if (o.n_draft < 0) fail("--draft", "must be >= 1");
    if (!o.draft_tree.empty()) parse_draft_tree(o.draft_tree);
    if (o.threads < 0) fail("--threads", "must be >= 0");
    if (o.max_body_bytes < 1) fail("--max-body-bytes", "must be >= 1");
    if (wtype wt; !o.weights.empty() && !wtype_from_name(o.weights, wt))
        fail("--weights", "expected f32, bf16 or q8_0, got " + quoted(o.weights));
    namespace fs = std::filesystem;
    if (!fs::is_directory(o.model_dir)) fail(o.model_dir, "no such model directory");
    const std::string tok_path =
        o.tokenizer_path.empty() ? (fs::path(o.model_dir) / "tokenizer.json").string() : o.tokenizer_path;
    if (!fs::exists(tok_path))
        fail(o.tokenizer_path.empty() ? "--model" : "--tokenizer",
             "serving needs a tokenizer: " + tok_path + " does not exist (give --tokenizer)");

    state S;
    S.opt = o;
    S.model_name = fs::path(o.model_dir).lexically_normal().filename().string();
    if (S.model_name.empty()) S.model_name = fs::path(o.model_dir).lexically_normal().parent_path().filename().string();

    httplib::Server svr;
    svr.set_payload_max_length(o.max_body_bytes);
    // Idle and slow clients must not starve the others: many workers (each connection holds one while it is
    // open), idle keep-alive connections closed after 2 s, a request that does not arrive within 10 s dropped.
    svr.new_task_queue = [] { return new httplib::ThreadPool(serve_workers); };
    svr.set_keep_alive_timeout(2);
    svr.set_keep_alive_max_count(100);
    svr.set_read_timeout(10);
    svr.set_write_timeout(60);
    // Malformed framing is answered before any body is read: a Content-Length that is not a plain decimal
    // number, or one beyond --max-body-bytes (413 at once instead of after the read timeout).
    svr.set_pre_routing_handler([&S](const httplib::Request& req, httplib::Response& res) {
        if (!req.has_header("Content-Length")) return httplib::Server::HandlerResponse::Unhandled;
        const std::string v = req.get_header_value("Content-Length");
        api_error e;
        if (v.empty() || v.size() > 19 || v.find_first_not_of("0123456789") != std::string::npos) {
            e.status = 400;
            e.message = "bad Content-Length " + quoted(v, 40);
        } else if (std::stoull(v) > S.opt.max_body_bytes) {
            e.status = 413;
            e.code = "request_too_large";
            e.message = "the request body of " + v + " bytes exceeds " + std::to_string(S.opt.max_body_bytes) +
                        " bytes (--max-body-bytes)";
        } else {
            return httplib::Server::HandlerResponse::Unhandled;
        }
        res.set_header("Connection", "close");
        send_error(res, e);
        return httplib::Server::HandlerResponse::Handled;
    });
    svr.set_error_handler(httplib::Server::HandlerWithResponse([&S](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;   // our own error object
        api_error e;
        e.status = res.status;
        if (res.status == 404) {
            e.type = "not_found_error";
            e.message = "no route for " + req.method + " " + req.path;
        } else if (res.status == 413) {
            e.message = "the request body exceeds " + std::to_string(S.opt.max_body_bytes) + " bytes (--max-body-bytes)";
            e.code = "request_too_large";
        } else {
            e.type = res.status >= 500 ? "server_error" : "invalid_request_error";
            e.message = "HTTP " + std::to_string(res.status);
        }
        send_error(res, e);
        return httplib::Server::HandlerResponse::Handled;
    }));

    svr.Get("/health", guarded([&S](const httplib::Request&, httplib::Response& res) {
        if (S.ready) send_json(res, 200, {{"status", "ok"}});
        else send_json(res, 503, {{"status", "loading"}});
    }));
    svr.Get("/v1/models", guarded([&S](const httplib::Request&, httplib::Response& res) {
        json m = {{"id", S.model_name}, {"object", "model"}, {"created", S.created}, {"owned_by", "mtp.cpp"}};
        if (S.ready) {
            const auto& c = S.eng->config();
            m["meta"] = {{"vocab_size", c.vocab_size},
                         {"n_ctx", c.max_position_embeddings},
                         {"n_mtp", c.n_mtp()},
                         {"speculative", S.eng->speculating()},
                         {"chat_template", chat_template_is_deepseek(S.eng->tok()) ? "deepseek-v3" : "plain"}};
        }
        send_json(res, 200, {{"object", "list"}, {"data", json::array({m})}});
    }));
    svr.Post("/v1/completions", guarded([&S](const httplib::Request& q, httplib::Response& r) {
        handle_generate(S, endpoint::completions, q, r);
    }));
    svr.Post("/v1/chat/completions", guarded([&S](const httplib::Request& q, httplib::Response& r) {
        handle_generate(S, endpoint::chat, q, r);
    }));
    svr.Post("/tokenize", guarded([&S](const httplib::Request& req, httplib::Response& res) {
        if (!S.ready) throw_api(503, "the model is loading", "", "model_loading");
        json b = parse_body(req.body);
        if (!b.contains("content") || !b["content"].is_string()) throw_api(400, "'content' must be a string", "content");
        bool special = true;
        if (b.contains("add_special") && !b["add_special"].is_null() && !b["add_special"].is_boolean())
            throw_api(400, "'add_special' must be a boolean", "add_special");
        if (b.contains("parse_special") && b["parse_special"].is_boolean()) special = b["parse_special"].get<bool>();
        std::vector<int> ids = tokenizer_encode(S.eng->tok(), b["content"].get<std::string>(), special);
        send_json(res, 200, {{"tokens", ids}});
    }));
    svr.Post("/detokenize", guarded([&S](const httplib::Request& req, httplib::Response& res) {
        if (!S.ready) throw_api(503, "the model is loading", "", "model_loading");
        json b = parse_body(req.body);
        if (!b.contains("tokens") || !b["tokens"].is_array()) throw_api(400, "'tokens' must be an array", "tokens");
        std::vector<int> ids;
        const int nv = tokenizer_vocab_size(S.eng->tok());
        for (const auto& x : b["tokens"]) {
            if (!x.is_number_integer()) throw_api(400, "'tokens' must hold integers", "tokens");
            const int64_t id = x.get<int64_t>();
            if (id < 0 || id >= nv || (tokenizer_id_to_token(S.eng->tok(), int(id)).empty() &&
                                       [&] {
                                           for (const auto& a : S.eng->tok().added_tokens)
                                               if (a.id == id) return false;
                                           return true;
                                       }()))
                throw_api(400, "token id " + std::to_string(id) + " has no text in the tokenizer", "tokens");
            ids.push_back(int(id));
        }
        send_json(res, 200, {{"content", tokenizer_decode(S.eng->tok(), ids)}});
    }));
    svr.Get("/metrics", guarded([&S](const httplib::Request&, httplib::Response& res) {
        res.set_content(S.met.prometheus(), "text/plain; version=0.0.4");
    }));

    std::signal(SIGPIPE, SIG_IGN);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);

    check_listen_address(o.host, o.port);
    int port = o.port;
    if (port == 0) {
        port = svr.bind_to_any_port(o.host);
        if (port < 0) fail("--host", "cannot listen on " + o.host);
    } else if (!svr.bind_to_port(o.host, port)) {
        fail("--port", "cannot listen on " + o.host + ":" + std::to_string(port));
    }
    std::thread listener([&svr] { svr.listen_after_bind(); });
    std::fprintf(stderr, "serve: listening on http://%s:%d (loading %s)\n", o.host.c_str(), port, o.model_dir.c_str());
    std::fflush(stderr);

    auto stop_listener = [&] {
        svr.stop();
        listener.join();
    };
    try {
        if (const int ms = test_delay_ms("MTP_SERVE_TEST_LOAD_DELAY_MS"); ms > 0)
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        model_files m = model_load_dir(o.model_dir);
        tokenizer t = tokenizer_load(tok_path);
        if (tokenizer_vocab_size(t) > m.config.vocab_size)
            fail(tok_path, "tokenizer has " + std::to_string(tokenizer_vocab_size(t)) +
                               " tokens, the model's vocab_size is " + std::to_string(m.config.vocab_size));
        spec_params sp;
        sp.enabled = o.spec != "none" && m.config.n_mtp() > 0;
        sp.n_draft = o.n_draft;
        sp.reuse = o.draft_reuse;
        if (!o.draft_tree.empty()) sp.tree = parse_draft_tree(o.draft_tree);
        if (o.spec == "mtp" && m.config.n_mtp() == 0)
            std::fprintf(stderr, "warning: --spec mtp: the model has no MTP modules; decoding without speculation\n");
        spec_params_check(sp, m.config.n_mtp());
        const int D = m.config.n_mtp();
        S.eng = std::make_unique<engine>(std::move(m), std::move(t), sp, o.threads, S.met, o.weights);
        S.ready = true;
        std::fprintf(stderr, "serve: model %s loaded (%d MTP modules, speculation %s); ready\n", S.model_name.c_str(), D,
                     sp.enabled ? "on" : "off");
        std::fflush(stderr);
    } catch (...) {
        stop_listener();
        throw;
    }
    while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::fprintf(stderr, "serve: shutting down\n");
    stop_listener();
    S.eng.reset();   // finishes the running request, answers the queued ones with an error
}

} // namespace mtp::serve
