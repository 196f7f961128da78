// `mtp train` and `mtp data prepare`: thin flag parsing over src/train.
#include <cstdio>

#include "commands.h"
#include "core/error.h"
#include "train/dataset.h"
#include "train/trainer.h"

namespace mtp::cli {

void add_train(CLI::App& app) {
    auto* cmd = app.add_subcommand("train", "Train a DeepSeek-V3-style model with MTP on a prepared dataset");
    auto config = std::make_shared<std::string>();
    auto resume = std::make_shared<std::string>();
    auto help_keys = std::make_shared<bool>(false);
    cmd->add_option("--config", *config, "training config JSON (keys as listed by --help-keys)");
    cmd->add_option("--resume", *resume, "checkpoint folder, or a run folder (its latest checkpoint)");
    cmd->add_flag("--help-keys", *help_keys, "list every training key with its type");
    cmd->allow_extras();
    cmd->footer("Any training key can be given as --KEY VALUE, overriding the config file, e.g. --max-steps 200.");
    cmd->callback([=] {
        if (*help_keys) {
            for (const auto& k : train_keys()) std::printf("  --%-22s %-8s %s\n", k.name, k.type, k.help);
            return;
        }
        train_config tc;
        if (!config->empty()) tc = train_config_load(*config);
        std::vector<std::pair<std::string, std::string>> overrides;
        auto extras = cmd->remaining();
        for (size_t i = 0; i < extras.size(); ++i) {
            std::string k = extras[i];
            if (k.rfind("--", 0) != 0) fail(k, "unexpected argument (training keys are given as --KEY VALUE)");
            k = k.substr(2);
            std::string v;
            size_t eq = k.find('=');
            if (eq != std::string::npos) {
                v = k.substr(eq + 1);
                k = k.substr(0, eq);
            } else {
                if (i + 1 >= extras.size()) fail("--" + k, "missing value");
                v = extras[++i];
            }
            train_config_apply_flag(tc, k, v);
            overrides.push_back({k, v});
        }
        train_run(tc, *resume, overrides);
    });
}

void add_data(CLI::App& app) {
    auto* cmd = app.add_subcommand("data", "Datasets of token shards");
    cmd->require_subcommand(1);
    auto* prep = cmd->add_subcommand("prepare", "Tokenise text files into train/val token shards");
    auto o = std::make_shared<prepare_options>();
    prep->add_option("--tokenizer", o->tokenizer, "tokenizer.json")->required();
    prep->add_option("--input", o->inputs, "text files, folders (recursive) or globs")->required();
    prep->add_option("--out", o->out_dir, "output folder")->required()->check(non_empty());
    prep->add_option("--val-fraction", o->val_fraction, "fraction of documents held out for validation");
    prep->add_option("--seed", o->seed, "seed of the document split")->check(non_negative_int());
    prep->add_option("--doc-sep", o->doc_sep, "token appended after each document (default: the end-of-sentence token)");
    prep->callback([o] {
        prepare_stats st = dataset_prepare(*o);
        std::printf("prepared %s: %zu documents, %.1f MB, %zu train + %zu val tokens (%.2f bytes/token) in %.1f s\n",
                    o->out_dir.c_str(), st.docs, st.bytes / 1e6, st.train_tokens, st.val_tokens,
                    double(st.bytes) / double(std::max<size_t>(1, st.train_tokens + st.val_tokens)), st.seconds);
    });
}

} // namespace mtp::cli
