// `mtp serve`: an OpenAI-compatible HTTP server (cpp-httplib) in front of the KV-cached generator with MTP
// speculative decoding and continuous batching. --parallel slots each hold one request and their own KV caches
// (kept after the request: the prompt cache); every engine step runs the rows of all busy slots (their frontier
// token, draft rows, a prompt chunk) as shared passes (src/infer/batcher.h), so each response is exactly what the
// request would get alone. Requests beyond the slots wait in a bounded queue (503 + Retry-After past it). HTTP
// threads parse, authenticate, validate, enqueue and stream; a client that goes away (a failed write, or a closed
// socket while a non-streaming request waits) frees its slot at the next step.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace mtp::serve {

constexpr int serve_workers = 256;      // HTTP worker threads (each open connection holds one while open)

struct serve_options {
    std::string model_dir;
    std::string tokenizer_path;          // "" -> MODEL/tokenizer.json (required)
    std::string host = "127.0.0.1";
    int port = 8080;                     // 0: any free port (printed on stderr)
    std::string spec;                    // "mtp" | "none" | "" (mtp when the model has MTP modules)
    int n_draft = 0;                     // 0: the generator's default (D)
    bool draft_reuse = false;            // continue drafting past D with the last module
    std::string draft_tree;              // token tree for greedy requests, e.g. "2,2,1" ("" : chain drafts)
    int threads = 0;                     // OpenMP threads of the worker (0: OMP_NUM_THREADS / all cores)
    size_t max_body_bytes = 1 << 20;     // larger bodies -> 413
    std::string weights;                 // f32 | bf16 | q8_0 | "" (as the file stores them)
    int parallel = 4;                    // slots: requests generated together
    int queue = 64;                      // requests that may wait for a slot; more -> 503
    double request_timeout_s = 600;      // per request, from arrival (0: none): queued -> 503, running -> stops
    double shutdown_timeout_s = 10;      // SIGTERM: running requests get this long to finish, then end with an error
    int prefill_chunk = 64;              // prompt tokens per pass (interleaved with the other slots' decoding)
    bool draft_adapt = true;             // draft length per step from the measured pass costs and the load
    int draft_vocab = -1;                // FR-Spec draft head: -1 MODEL/draft_vocab.json when present, 0 off, N: top N
    bool cache_prompt = true;            // reuse a slot's cached prefix (requests may opt out: cache_prompt false)
    std::vector<std::string> api_keys;   // --api-key (repeatable)
    std::string api_key_file;            // one key per line
};

// Checks the options (mtp::error naming the flag), binds the listener (it answers /health with 503 "loading"
// at once), loads the model and tokenizer, then serves until SIGINT or SIGTERM.
void serve_run(const serve_options& o);

} // namespace mtp::serve
