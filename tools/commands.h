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

// Validators with one-line messages. Unsigned flags must not wrap (-1 is not 2^64-1): a decimal integer >= 0.
inline CLI::Validator non_negative_int() {
    return CLI::Validator(
        [](std::string& s) -> std::string {
            if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos)
                return "expected an integer >= 0 (at most 19 digits), got '" + s.substr(0, 40) + "'";
            return "";
        },
        "UINT");
}
inline CLI::Validator non_empty() {
    return CLI::Validator([](std::string& s) -> std::string { return s.empty() ? "must not be empty" : ""; },
                          "PATH");
}

// "5,17,3" -> {5,17,3}; every id must be in [0, vocab); `flag` names the option in errors.
std::vector<int> parse_tokens(const std::string& s, int vocab, const std::string& flag);

} // namespace mtp::cli
