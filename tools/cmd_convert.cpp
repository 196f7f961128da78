// `mtp convert`: a model (directory or .gguf) to a llama.cpp GGUF or a Hugging Face directory.
#include <cstdio>
#include <filesystem>
#include <string>

#include "commands.h"
#include "core/error.h"
#include "model/gguf_model.h"
#include "model/hf_export.h"

namespace mtp::cli {

void add_convert(CLI::App& app) {
    auto* cmd = app.add_subcommand("convert", "Convert a model to GGUF (llama.cpp deepseek2) or a Hugging Face directory");
    auto model = std::make_shared<std::string>();
    auto to = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    auto type = std::make_shared<std::string>("f32");
    auto dtype = std::make_shared<std::string>("bf16");
    auto shard = std::make_shared<double>(5000);
    auto name = std::make_shared<std::string>("mtp.cpp model");
    auto keep = std::make_shared<int>(-1);
    cmd->add_option("--model", *model, "model directory (config.json + safetensors) or a .gguf file")->required();
    cmd->add_option("--to", *to, "gguf | hf")->required()->check(CLI::IsMember({"gguf", "hf"}));
    cmd->add_option("--out", *out, "output .gguf file (gguf) or directory (hf)")->required()->check(non_empty());
    cmd->add_option("--type", *type, "GGUF tensor type: f32, f16 or q8_0 (norms and router stay f32)");
    cmd->add_option("--dtype", *dtype, "HF safetensors dtype: bf16, f16 or f32");
    cmd->add_option("--shard-size-mb", *shard, "HF: maximum shard size in MB (default 5000)");
    cmd->add_option("--name", *name, "GGUF general.name");
    auto* ko = cmd->add_option("--mtp-layers", *keep,
                    "keep only the first N MTP modules (default: all; llama.cpp's --spec-type draft-mtp needs 1)");
    cmd->callback([=] {
        namespace fs = std::filesystem;
        model_files m = model_load_dir(*model);
        if (ko->count()) m = model_keep_mtp(m, *keep);
        const std::string tok_dir = fs::is_directory(*model) ? *model : "";
        if (*to == "gguf") {
            gguf_export_options o;
            o.type = *type;
            o.name = *name;
            if (!tok_dir.empty() && fs::is_regular_file(fs::path(tok_dir) / "tokenizer.json"))
                o.tokenizer_json = (fs::path(tok_dir) / "tokenizer.json").string();
            for (const auto& w : gguf_export(m, *out, o)) std::fprintf(stderr, "warning: %s\n", w.c_str());
            std::printf("wrote %s (deepseek2, %s, %d layers + %d MTP, %s)\n", out->c_str(), type->c_str(),
                        m.config.num_hidden_layers, m.config.n_mtp(), o.tokenizer_json.empty() ? "no vocabulary" : "gpt2 vocabulary");
        } else {
            hf_export_options o;
            o.dtype = *dtype;
            o.shard_size_mb = *shard;
            o.tokenizer_dir = tok_dir;
            int n = hf_export(m, *out, o);
            std::printf("wrote %s (%d shard%s)\n", out->c_str(), n, n == 1 ? "" : "s");
        }
    });
}

} // namespace mtp::cli
