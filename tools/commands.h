// Registration of the `mtp` subcommands (one file each) and helpers they share.
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace mtp::cli {

void add_init(CLI::App& app);
void add_logits(CLI::App& app);
void add_grad(CLI::App& app);
void add_train(CLI::App& app);
void add_data(CLI::App& app);
void add_tokenizer(CLI::App& app);   // cmd_tokenizer.cpp: tokenizer train|encode|decode
void add_generate(CLI::App& app);    // cmd_generate.cpp: generate, bench
void add_convert(CLI::App& app);     // cmd_convert.cpp: convert --to gguf|hf
void add_serve(CLI::App& app);       // cmd_serve.cpp: serve (OpenAI-compatible HTTP server)
void add_distill(CLI::App& app);     // cmd_distill.cpp: distill (self-distillation of the MTP modules)

// "5,17,3" -> {5,17,3}; every id must be in [0, vocab); `flag` names the option in errors.
std::vector<int> parse_tokens(const std::string& s, int vocab, const std::string& flag);

} // namespace mtp::cli
