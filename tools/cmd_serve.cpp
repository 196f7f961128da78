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
    cmd->callback([o] { serve::serve_run(*o); });
}

} // namespace mtp::cli
