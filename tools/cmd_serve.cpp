// `mtp serve`: the OpenAI-compatible HTTP server. Flag parsing only; the work is in src/serve.
#include <memory>

#include "commands.h"
#include "serve/server.h"

namespace mtp::cli {

void add_serve(CLI::App& app) {
    auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (completions, chat, MTP speculation)");
    auto o = std::make_shared<serve::serve_options>();
    cmd->add_option("--model", o->model_dir, "model directory (with tokenizer.json unless --tokenizer)")->required();
    cmd->add_option("--tokenizer", o->tokenizer_path, "tokenizer.json (default: MODEL/tokenizer.json)");
    cmd->add_option("--host", o->host, "address to listen on (default 127.0.0.1)");
    cmd->add_option("--port", o->port, "port (default 8080; 0: any free port, printed on stderr)");
    cmd->add_option("--spec", o->spec, "speculative decoding: mtp or none (default: mtp when the model has MTP modules)");
    cmd->add_option("--draft", o->n_draft, "draft tokens per round (default: D)");
    cmd->add_flag("--draft-reuse", o->draft_reuse, "continue drafting past D by reusing the last MTP module");
    cmd->add_option("--draft-tree", o->draft_tree,
                    "greedy requests draft a token tree, branches per depth (e.g. 2,2,1); sampled ones the chain");
    cmd->add_option("-t,--threads", o->threads, "OpenMP threads of the generation worker (0: OMP_NUM_THREADS / all)");
    cmd->add_option("--weights", o->weights, "weight type decoding reads: f32, bf16 or q8_0 (default: as the file stores them)");
    cmd->add_option("--max-body-bytes", o->max_body_bytes, "largest request body accepted (default 1048576; larger: 413)")
        ->check(CLI::Range(size_t(1), size_t(1) << 30));
    cmd->add_option("--parallel", o->parallel, "slots: requests generated together in one batch (default 4)");
    cmd->add_option("--queue", o->queue, "requests that may wait for a free slot (default 64; beyond: 503 + Retry-After)");
    cmd->add_option("--request-timeout", o->request_timeout_s,
                    "seconds a request may take from arrival (default 600; 0: none): queued -> 503, running -> stops");
    cmd->add_option("--shutdown-timeout", o->shutdown_timeout_s,
                    "on SIGTERM, seconds running requests get to finish before they end with an error (default 10)");
    cmd->add_option("--prefill-chunk", o->prefill_chunk,
                    "prompt tokens per pass, interleaved with the other slots' decoding (default 64)");
    cmd->add_flag("!--no-draft-adapt", o->draft_adapt,
                  "draft the fixed --draft length every step instead of adapting it to the load");
    cmd->add_option("--draft-vocab", o->draft_vocab,
                    "drafts consider only the N most frequent tokens of MODEL/draft_vocab.json (FR-Spec; 0: the full "
                    "vocabulary; default: all of its tokens when the file is present)");
    cmd->add_flag("!--no-cache-prompt", o->cache_prompt, "never reuse a slot's cached prompt prefix");
    cmd->add_option("--api-key", o->api_keys, "require 'Authorization: Bearer KEY' on every endpoint but /health (repeatable)");
    cmd->add_option("--api-key-file", o->api_key_file, "file with one accepted API key per line");
    cmd->callback([o] { serve::serve_run(*o); });
}

} // namespace mtp::cli
