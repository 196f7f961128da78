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
#include <sstream>
#include <thread>

#include <httplib.h>
#include <netdb.h>
#include <omp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/error.h"
#include "infer/batcher.h"
#include "infer/bench.h"
#include "infer/cpu_model.h"
#include "infer/draft_policy.h"
#include "infer/speculative.h"
#include "model/weights.h"
#include "serve/api.h"
#include "serve/peer.h"

namespace mtp::serve {

namespace {
// Test hooks (the serving tests only): a model load or each decode round held back by this many milliseconds, so
// that /health's 503 and a client leaving mid-generation can be observed on a tiny model. 0 when unset.
// MTP_SERVE_TEST_DRAFTS_FREE (set): the draft policy's cost table says a pass of any row count costs one row, a
// module pass nothing and a hand-off nothing, so that a tiny compute-bound model drafts under the policy until
// measured rounds veto it.
int test_delay_ms(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::max(0, std::min(60000, std::atoi(v))) : 0;
}
} // namespace

namespace {

using clk = std::chrono::steady_clock;
double secs(clk::time_point a, clk::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// One request on its way through the queue and a slot: the slot thread appends text pieces, the HTTP thread takes
// them.
struct job {
    gen_request req;
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::string> pieces;
    bool done = false;
    std::atomic<bool> cancelled{false};
    clk::time_point arrived = clk::now();
    clk::time_point deadline = clk::time_point::max();
    // results (valid once done)
    std::string text;              // everything generated (after stop-string handling)
    std::string finish_reason = "length";
    int n_prompt = 0, n_gen = 0;
    timings tm;
    std::string error;             // non-empty: generation failed
    int error_status = 500;        // 503: not started (shutdown, timed out in the queue)

    // The waiting HTTP thread is woken with the lock released, so that it does not wake only to block on it (the
    // caller holds a shared_ptr to the job throughout).
    void push(std::string s) {
        if (s.empty()) return;
        {
            std::lock_guard<std::mutex> l(mu);
            pieces.push_back(std::move(s));
        }
        cv.notify_all();
    }
    void finish() {
        {
            std::lock_guard<std::mutex> l(mu);
            done = true;
        }
        cv.notify_all();
    }
};

enum class admit { ok, full, stopping };

// The model, the slots and the pass runner.
class engine {
public:
    engine(model_files m, tokenizer t, spec_params sp, const serve_options& o, metrics& met)
        : m_(std::move(m)), tok_(std::move(t)), sp_(sp), o_(o), met_(met),
          b_(m_, o.parallel, 0, weights_type_for(o.weights, m_), pass_rows(o, sp, m_.config.n_mtp())) {
        if (!sp_.draft_vocab.empty()) b_.engine().set_draft_vocab(sp_.draft_vocab);
        sp_.n_batch = o.prefill_chunk;
        runner_ = std::thread([this] { runner_loop(); });
        {
            std::unique_lock<std::mutex> l(mu_);
            cv_.wait(l, [&] { return runner_ready_; });
        }
        if (!runner_error_.empty()) {
            shutdown();
            fail("serve", runner_error_);
        }
        slots_.resize(size_t(o.parallel));
        for (int i = 0; i < o.parallel; ++i) {
            slot& s = slots_[size_t(i)];
            s.smp = std::make_unique<sampler>(sampler_params{});
            s.g = std::make_unique<generator>(b_.seq(i), *s.smp, sp_);
        }
        for (int i = 0; i < o.parallel; ++i) slots_[size_t(i)].th = std::thread([this, i] { slot_loop(i); });
    }
    ~engine() { shutdown(); }

    const model_config& config() const { return m_.config; }
    const tokenizer& tok() const { return tok_; }
    bool speculating() const { return sp_.enabled && m_.config.n_mtp() > 0; }
    const draft_policy* policy() const { return pol_.get(); }
    double cost_seconds() const { return cost_s_; }

    admit submit(const std::shared_ptr<job>& j) {
        std::lock_guard<std::mutex> l(mu_);
        if (draining_ || stopping_) return admit::stopping;
        // A free slot whose cached tokens share the longest prefix with the prompt (then the least recently used).
        int best = -1;
        size_t best_lcp = 0;
        for (size_t i = 0; i < slots_.size(); ++i) {
            const slot& s = slots_[i];
            if (s.cur || s.next) continue;
            size_t c = 0;
            if (j->req.cache_prompt && o_.cache_prompt)
                while (c < s.cached.size() && c < j->req.prompt.size() && s.cached[c] == j->req.prompt[c]) ++c;
            if (best < 0 || c > best_lcp || (c == best_lcp && s.last_used < slots_[size_t(best)].last_used)) {
                best = int(i);
                best_lcp = c;
            }
        }
        if (best < 0 && int(q_.size()) >= o_.queue) return admit::full;
        met_.request_started();
        if (best >= 0) {
            slots_[size_t(best)].next = j;
            ++n_load_;
        } else {
            q_.push_back(j);
        }
        cv_.notify_all();
        return admit::ok;
    }

    int busy() const { return n_busy_.load(); }
    int queued() const {
        std::lock_guard<std::mutex> l(mu_);
        return int(q_.size());
    }
    int parallel() const { return int(slots_.size()); }
    batch_stats stats() const { return b_.stats(); }

    // SIGTERM: no new requests; queued ones end with 503; running ones get `grace` seconds, then are cancelled
    // with an error. Returns when no slot is busy.
    void drain(double grace) {
        std::deque<std::shared_ptr<job>> q;
        {
            std::lock_guard<std::mutex> l(mu_);
            draining_ = true;
            q.swap(q_);
            for (auto& s : slots_)
                if (s.next) {
                    q.push_back(s.next);
                    s.next.reset();
                    --n_load_;
                }
        }
        for (auto& j : q) fail_unstarted(*j, "the server is shutting down");
        const auto until = clk::now() + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(grace));
        while (n_busy_ > 0 && clk::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (n_busy_ > 0) {
            std::lock_guard<std::mutex> l(mu_);
            for (auto& s : slots_)
                if (s.cur) {
                    s.cur->error = "the server is shutting down";
                    s.cur->cancelled = true;
                }
        }
        while (n_busy_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }

private:
    struct slot {
        std::thread th;
        std::shared_ptr<job> cur, next;
        std::unique_ptr<sampler> smp;      // the generator's initial sampler (each request sets its own)
        std::unique_ptr<generator> g;
        std::vector<int> cached;           // tokens its caches hold (for choosing a slot), under mu_
        uint64_t last_used = 0;
    };

    static int pass_rows(const serve_options& o, const spec_params& sp, int D) {
        const int K = sp.enabled && D > 0 ? std::max({sp.n_draft > 0 ? sp.n_draft : D, int(sp.tree.size()),
                                                      sp.tree.empty() ? 0 : draft_tree_nodes(sp.tree)})
                                          : 0;
        return std::max(16, o.parallel * (K + 1) + o.prefill_chunk);
    }

    void shutdown() {
        {
            std::lock_guard<std::mutex> l(mu_);
            stopping_ = true;
            cv_.notify_all();
        }
        for (auto& s : slots_)
            if (s.th.joinable()) s.th.join();
        b_.stop();
        if (runner_.joinable()) runner_.join();
    }

    void fail_unstarted(job& j, const std::string& why) {
        met_.request_left_queue();
        j.error = why;
        j.error_status = 503;
        j.finish();
    }

    void runner_loop() {
        if (o_.threads > 0) omp_set_num_threads(o_.threads);   // per-thread ICV: set on the runner itself
        try {
            const int D = m_.config.n_mtp();
            if (speculating() && o_.draft_adapt) {
                const auto t0 = clk::now();
                const int K = sp_.n_draft > 0 ? sp_.n_draft : (sp_.reuse ? D + 1 : D);
                const int Kt = std::max(K, int(sp_.tree.size()));
                pass_cost_table costs = measure_pass_costs(b_.engine(), std::min(256, o_.parallel * (Kt + 1)), 64);
                costs.pass_overhead_s = 2 * measure_handoff_seconds();   // calls to the runner and results back
                if (std::getenv("MTP_SERVE_TEST_DRAFTS_FREE")) {   // test hook: drafting looks free until measured
                    for (double& x : costs.main_s) x = costs.main_s[0];
                    for (double& x : costs.mtp_s) x = 0;
                    costs.pass_overhead_s = 0;
                }
                pol_ = std::make_unique<draft_policy>(std::move(costs), Kt, D);
                cost_s_ = secs(t0, clk::now());
            }
        } catch (const std::exception& e) {
            runner_error_ = e.what();
        }
        {
            std::lock_guard<std::mutex> l(mu_);
            runner_ready_ = true;
            cv_.notify_all();
        }
        if (!runner_error_.empty()) return;
        while (b_.run_round()) {}
    }

    void slot_loop(int i) {
        slot& s = slots_[size_t(i)];
        for (;;) {
            std::shared_ptr<job> j;
            {
                std::unique_lock<std::mutex> l(mu_);
                cv_.wait(l, [&] { return stopping_ || s.next || (!q_.empty() && !draining_); });
                if (stopping_ && !s.next) return;
                if (s.next) {
                    j = std::move(s.next);
                    s.next.reset();
                } else {
                    j = q_.front();
                    q_.pop_front();
                    ++n_load_;
                }
                s.cur = j;
                s.last_used = ++use_clock_;
            }
            const auto now = clk::now();
            j->tm.queue_ms = 1e3 * secs(j->arrived, now);
            j->tm.slot = i;
            bool ran = false;                    // `cancelled` may change meanwhile: read it once
            if (j->cancelled) {
                fail_unstarted(*j, "cancelled before it started");
            } else if (now >= j->deadline) {
                fail_unstarted(*j, "timed out waiting for a free slot (--request-timeout)");
            } else {
                ran = true;
                met_.request_running();
                ++n_busy_;
                run(i, s, *j);
                if (release_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(release_delay_ms_));
            }
            {
                // The slot is free, with its cached tokens, before the client sees the end of the response: a
                // follow-up sent at once then finds its prefix here (not a busy slot and a cold one instead).
                std::lock_guard<std::mutex> l(mu_);
                s.cached = s.g->tokens();
                s.cur.reset();
                --n_load_;
            }
            if (ran) {
                j->finish();
                --n_busy_;
            }
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

    void run(int i, slot& sl, job& j) {
        const gen_request& r = j.req;
        generator& g = *sl.g;
        gen_stats st;
        const auto t0 = clk::now();
        auto t1 = t0;
        bool ok = true;
        b_.attach(i);
        try {
            sampler s(r.sampling);
            g.set_sampler(s);
            // With a policy the MTP modules' pass over the prompt waits for the first round that drafts: next() weighs
            // it as this sequence's backlog (refill_rows) against what drafting would save over its remaining tokens,
            // and the round that pays it is timed as a drafting round. Done in start(), it was a cost of speculation
            // that no round's timing saw.
            g.set_draft_cap(pol_ ? 0 : 1 << 30);
            text_stream ts(r.stop);
            const int n_ctx = b_.seq(i).n_ctx();
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
            bool end = take(g.start(r.prompt, r.cache_prompt && o_.cache_prompt));
            j.tm.tokens_cached = g.n_reused();
            met_.prompt_cached(g.n_reused());
            t1 = clk::now();
            std::vector<int> buf;
            while (!end && !j.cancelled) {
                if (clk::now() >= j.deadline) {
                    j.tm.time_limit_reached = true;
                    break;
                }
                buf.clear();
                if (step_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_delay_ms_));
                int cap = 0;
                long long round_id = -1;
                if (pol_) {
                    cap = pol_->next(n_load_.load(), g.refill_rows(g.draft_max()), limit - n_gen, &round_id);
                    g.set_draft_cap(cap);
                    met_.draft_chosen(cap);
                }
                const auto ts = clk::now();
                const int k = g.step(limit - n_gen, buf);
                if (k == 0) break;   // context full
                if (pol_) {
                    pol_->observe(int(g.last_drafts().size()), k - 1);
                    pol_->observe_round(n_load_.load(), cap, k, secs(ts, clk::now()), round_id);
                }
                for (int t = 0; t < k && !end; ++t) end = take(buf[size_t(t)]);
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
        b_.detach(i);
        const auto t2 = clk::now();
        j.tm.prompt_n = j.n_prompt;
        j.tm.prompt_ms = 1e3 * secs(t0, t1);
        j.tm.predicted_n = j.n_gen;
        j.tm.predicted_ms = 1e3 * secs(t1, t2);
        j.tm.draft_n = st.n_draft_tokens;
        j.tm.draft_n_accepted = st.n_accepted;
        met_.request_finished(ok && !j.cancelled, j.n_prompt, j.n_gen, secs(t0, t1), secs(t1, t2), st.n_drafts,
                              st.n_draft_tokens, st.n_accepted, st.accepted_at, st.n_rounds);
    }

    model_files m_;
    tokenizer tok_;
    spec_params sp_;
    serve_options o_;
    int step_delay_ms_ = test_delay_ms("MTP_SERVE_TEST_STEP_DELAY_MS");
    int release_delay_ms_ = test_delay_ms("MTP_SERVE_TEST_RELEASE_DELAY_MS");   // between a request and its slot's release
    metrics& met_;
    batcher b_;
    std::unique_ptr<draft_policy> pol_;
    double cost_s_ = 0;
    std::vector<slot> slots_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<job>> q_;
    bool stopping_ = false, draining_ = false, runner_ready_ = false;
    std::string runner_error_;
    std::atomic<int> n_busy_{0};
    std::atomic<int> n_load_{0};             // slots holding a request, started or about to (the policy's batch size)
    uint64_t use_clock_ = 0;
    std::thread runner_;
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
    if (S.opt.request_timeout_s > 0)
        j->deadline = j->arrived + std::chrono::duration_cast<clk::duration>(
                                       std::chrono::duration<double>(S.opt.request_timeout_s));
    const bool stream = j->req.stream, include_usage = j->req.include_usage;
    switch (S.eng->submit(j)) {
        case admit::ok: break;
        case admit::full:
            S.met.request_overloaded();
            res.set_header("Retry-After", "1");
            throw_api(503,
                      "the server is busy: all " + std::to_string(S.eng->parallel()) + " slots are generating and " +
                          std::to_string(S.opt.queue) + " requests are waiting (--queue); retry later",
                      "", "server_overloaded");
        case admit::stopping:
            res.set_header("Retry-After", "5");
            throw_api(503, "the server is shutting down", "", "server_shutting_down");
    }

    const std::string id = random_id(kind == endpoint::chat ? "chatcmpl-" : "cmpl-");
    const std::string object = kind == endpoint::chat ? "chat.completion" : "text_completion";
    const std::time_t created = std::time(nullptr);
    const std::string model = S.model_name;

    if (!stream) {
        // Wait for the result; a client that closes its connection meanwhile cancels the request (its slot is free
        // after the current step).
        const int fd = find_connection_fd(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
        {
            std::unique_lock<std::mutex> l(j->mu);
            while (!j->done) {
                j->cv.wait_for(l, std::chrono::milliseconds(20));
                if (!j->done && !j->cancelled && peer_closed(fd)) j->cancelled = true;
            }
        }
        if (!j->error.empty()) {
            if (j->error_status == 503) res.set_header("Retry-After", "1");
            throw_api(j->error_status, (j->error_status == 503 ? "" : "generation failed: ") + j->error);
        }
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
            std::string events;                // one write for every piece that arrived together
            for (auto& p : got) {
                json d = kind == endpoint::chat ? json{{"content", p}} : json(p);
                events += "data: " + dump(chunk(json::array({choice_delta(kind, d, nullptr)}))) + "\n\n";
            }
            if (!events.empty() && !sink.write(events.data(), events.size())) {
                j->cancelled = true;
                return false;
            }
            if (!done) return true;
            if (!j->error.empty()) {   // headers are out: report the failure in-band
                api_error e;
                e.status = j->error_status;
                e.type = "server_error";
                e.message = (j->error_status == 503 ? "" : "generation failed: ") + j->error;
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

namespace {
// Equal without an early exit: the time taken depends on the lengths only, not on where the strings differ.
bool equal_ct(const std::string& a, const std::string& b) {
    const size_t n = std::max(a.size(), b.size());
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    for (size_t i = 0; i < n; ++i)
        diff |= (unsigned char)((i < a.size() ? a[i] : 0) ^ (i < b.size() ? b[i] : 0));
    return diff == 0;
}

bool key_ok(const std::vector<std::string>& keys, const std::string& header) {
    static const std::string bearer = "Bearer ";
    if (header.size() <= bearer.size() || header.compare(0, bearer.size(), bearer) != 0) return false;
    const std::string given = header.substr(bearer.size());
    bool ok = false;
    for (const auto& k : keys) ok |= equal_ct(k, given);   // every key compared, whichever matches
    return ok;
}

void check_key(const std::string& k, const std::string& where) {
    if (k.empty()) fail(where, "an API key must not be empty");
    for (unsigned char c : k)
        if (c <= ' ' || c >= 127) fail(where, "an API key must be printable ASCII without spaces");
}

// --api-key values and the lines of --api-key-file (blank lines and lines starting with # skipped).
std::vector<std::string> load_keys(const serve_options& o) {
    std::vector<std::string> keys;
    for (const auto& k : o.api_keys) {
        check_key(k, "--api-key");
        keys.push_back(k);
    }
    if (!o.api_key_file.empty()) {
        std::FILE* f = std::fopen(o.api_key_file.c_str(), "rb");
        if (!f) fail(o.api_key_file, std::string("cannot read the API key file: ") + std::strerror(errno));
        std::string all;
        char buf[4096];
        for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0 && all.size() < (1u << 20);) all.append(buf, n);
        std::fclose(f);
        size_t added = 0, line = 0;
        for (size_t i = 0; i <= all.size();) {
            size_t e = all.find('\n', i);
            if (e == std::string::npos) e = all.size();
            std::string k = all.substr(i, e - i);
            ++line;
            while (!k.empty() && (k.back() == '\r' || k.back() == ' ' || k.back() == '\t')) k.pop_back();
            size_t b = k.find_first_not_of(" \t");
            k = b == std::string::npos ? "" : k.substr(b);
            if (!k.empty() && k[0] != '#') {
                check_key(k, o.api_key_file + ": line " + std::to_string(line));
                keys.push_back(k);
                ++added;
            }
            i = e + 1;
        }
        if (added == 0) fail(o.api_key_file, "no API key in the file");
    }
    return keys;
}

bool is_loopback(const std::string& host) {
    return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}
} // namespace

void serve_run(const serve_options& o) {
    if (o.port < 0 || o.port > 65535) fail("--port", "must be in [0, 65535]");
    if (o.parallel < 1 || o.parallel > 256) fail("--parallel", "must be in [1, 256]");
    if (o.queue < 0 || o.queue > 100000) fail("--queue", "must be in [0, 100000]");
    if (!(o.request_timeout_s >= 0) || o.request_timeout_s > 1e7) fail("--request-timeout", "must be >= 0 seconds");
    if (!(o.shutdown_timeout_s >= 0) || o.shutdown_timeout_s > 3600) fail("--shutdown-timeout", "must be in [0, 3600] seconds");
    if (o.prefill_chunk < 1 || o.prefill_chunk > 4096) fail("--prefill-chunk", "must be in [1, 4096]");
    if (o.draft_vocab < -1) fail("--draft-vocab", "must be >= 0");
    const std::vector<std::string> keys = load_keys(o);
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
    svr.set_pre_routing_handler([&S, keys](const httplib::Request& req, httplib::Response& res) {
        // With keys set, everything but /health needs one (checked before the body is looked at).
        if (!keys.empty() && req.path != "/health" && !key_ok(keys, req.get_header_value("Authorization"))) {
            api_error e;
            e.status = 401;
            e.message = req.has_header("Authorization")
                            ? "invalid API key (expected 'Authorization: Bearer <key>' with a key the server accepts)"
                            : "missing API key: send 'Authorization: Bearer <key>'";
            e.code = "invalid_api_key";
            res.set_header("WWW-Authenticate", "Bearer");
            send_error(res, e);
            return httplib::Server::HandlerResponse::Handled;
        }
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
                         {"parallel", S.eng->parallel()},
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
        std::string out = S.met.prometheus();
        if (S.ready) {
            std::ostringstream o;
            o.precision(17);
            auto one = [&](const char* name, const char* type, const char* help, double v) {
                o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n" << name << " " << v
                  << "\n";
            };
            const batch_stats bs = S.eng->stats();
            one("mtp:slots", "gauge", "Slots (--parallel).", S.eng->parallel());
            one("mtp:slots_busy", "gauge", "Slots generating a request.", S.eng->busy());
            one("mtp:queue_length", "gauge", "Requests waiting for a slot.", S.eng->queued());
            one("mtp:batch_passes_total", "counter", "Shared forward passes run.", double(bs.passes));
            one("mtp:batch_rows_total", "counter", "Rows over all passes.", double(bs.rows));
            one("mtp:batch_calls_total", "counter", "Per-slot model calls served by the passes.", double(bs.calls));
            if (const draft_policy* p = S.eng->policy()) {
                const std::vector<double> a = p->acceptance();
                o << "# HELP mtp:draft_acceptance Running acceptance per draft depth (the adaptive policy's estimate).\n"
                  << "# TYPE mtp:draft_acceptance gauge\n";
                for (size_t k = 0; k < a.size(); ++k) o << "mtp:draft_acceptance{depth=\"" << k + 1 << "\"} " << a[k] << "\n";
                o << "# HELP mtp:draft_length_now Draft length the policy would choose at this many busy slots.\n"
                  << "# TYPE mtp:draft_length_now gauge\n";
                for (int b = 1; b <= S.eng->parallel(); b = b < 4 ? b + 1 : b * 2)
                    o << "mtp:draft_length_now{slots_busy=\"" << b << "\"} " << p->choose(b) << "\n";
                o << "# HELP mtp:draft_probe_interval Decode rounds from one probe of another draft length to the next "
                     "at this many busy slots (longer while the probes confirm the choice).\n"
                  << "# TYPE mtp:draft_probe_interval gauge\n";
                for (int b = 1; b <= S.eng->parallel(); b = b < 4 ? b + 1 : b * 2)
                    o << "mtp:draft_probe_interval{slots_busy=\"" << b << "\"} " << p->probe_interval(b) << "\n";
                one("mtp:draft_rounds_mixed_total", "counter",
                    "Decode rounds whose sequences were given different draft lengths (counted under the longest).",
                    double(p->mixed_rounds()));
            }
            out += o.str();
        }
        res.set_content(out, "text/plain; version=0.0.4");
    }));

    std::signal(SIGPIPE, SIG_IGN);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);

    check_listen_address(o.host, o.port);
    if (keys.empty() && !is_loopback(o.host))
        std::fprintf(stderr, "warning: listening on %s without an API key: anyone who can reach this address can use "
                             "the server (give --api-key or --api-key-file)\n", o.host.c_str());
    int port = o.port;
    if (port == 0) {
        port = svr.bind_to_any_port(o.host);
        if (port < 0) fail("--host", "cannot listen on " + o.host);
    } else if (!svr.bind_to_port(o.host, port)) {
        fail("--port", "cannot listen on " + o.host + ":" + std::to_string(port));
    }
    if (!widen_listen_backlog(port, SOMAXCONN))
        std::fprintf(stderr, "warning: could not widen the listen backlog: bursts of new connections may wait 1 s\n");
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
        if (o.draft_vocab != 0 && sp.enabled) {   // FR-Spec: the model's draft_vocab.json ranking
            const fs::path f = fs::path(o.model_dir) / "draft_vocab.json";
            if (fs::exists(f)) {
                const std::vector<int> rank = draft_rank_from_json(f.string(), m.config.vocab_size, "--draft-vocab");
                const int n = o.draft_vocab < 0 ? int(rank.size()) : o.draft_vocab;
                if (n > int(rank.size()))
                    fail("--draft-vocab", std::to_string(n) + " exceeds the " + std::to_string(rank.size()) +
                                              " tokens ranked in " + f.string());
                sp.draft_vocab = draft_vocab_from_rank(rank, n);
            } else if (o.draft_vocab > 0) {
                fail("--draft-vocab", "needs " + f.string() + " (mtp draft-vocab --data DATA_DIR --out " + f.string() + ")");
            }
        }
        if (o.spec == "mtp" && m.config.n_mtp() == 0)
            std::fprintf(stderr, "warning: --spec mtp: the model has no MTP modules; decoding without speculation\n");
        spec_params_check(sp, m.config.n_mtp(), m.config.mtp_parallel);
        const int D = m.config.n_mtp();
        S.eng = std::make_unique<engine>(std::move(m), std::move(t), sp, o, S.met);
        S.ready = true;
        std::fprintf(stderr, "serve: model %s loaded (%d MTP modules, speculation %s%s); %d slots, queue %d; ready\n",
                     S.model_name.c_str(), D, sp.enabled ? "on" : "off",
                     S.eng->policy() ? ", draft length adapted to the load" : "", o.parallel, o.queue);
        if (S.eng->policy())
            std::fprintf(stderr, "serve: pass costs measured in %.2f s: 1 row %.3f ms, %d rows %.3f ms (each with a "
                                 "%.3f ms hand-off)\n",
                         S.eng->cost_seconds(), 1e3 * S.eng->policy()->costs().main(1),
                         S.eng->policy()->costs().rows.back(),
                         1e3 * S.eng->policy()->costs().main(S.eng->policy()->costs().rows.back()),
                         1e3 * S.eng->policy()->costs().pass_overhead_s);
        std::fflush(stderr);
    } catch (...) {
        stop_listener();
        throw;
    }
    while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::fprintf(stderr, "serve: shutting down (running requests get %.0f s to finish)\n", o.shutdown_timeout_s);
    std::fflush(stderr);
    S.eng->drain(o.shutdown_timeout_s);   // queued: 503; running: finish, or end with an error after the timeout
    stop_listener();
    S.eng.reset();
    std::fprintf(stderr, "serve: stopped\n");
}

} // namespace mtp::serve
