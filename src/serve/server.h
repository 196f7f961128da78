// `mtp serve`: an OpenAI-compatible HTTP server (cpp-httplib) in front of the KV-cached generator with MTP
// speculative decoding. One generation worker thread owns the model and serves requests one at a time from a FIFO
// queue (queued, not batched); HTTP threads parse, validate, enqueue and stream. A streaming client that goes away
// is noticed when a write fails and its generation stops at the next decode round.
#pragma once
#include <cstddef>
#include <string>

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
};

// Checks the options (mtp::error naming the flag), binds the listener (it answers /health with 503 "loading"
// at once), loads the model and tokenizer, then serves until SIGINT or SIGTERM.
void serve_run(const serve_options& o);

} // namespace mtp::serve
