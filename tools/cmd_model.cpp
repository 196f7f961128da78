// `mtp init`, `mtp logits`, `mtp grad`: create a model, and dump its logits or gradients for debugging/parity.
#include <cstdio>
#include <filesystem>
#include <string>

#include "commands.h"
#include "core/arena.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace mtp::cli {

std::vector<int> parse_tokens(const std::string& s, int vocab, const std::string& flag) {
    std::vector<int> out;
    size_t i = 0;
    while (i < s.size()) {
        size_t j = s.find(',', i);
        if (j == std::string::npos) j = s.size();
        std::string item = s.substr(i, j - i);
        if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 9)
            fail(flag, "expected comma-separated token ids, got '" + item + "'");
        int v = std::stoi(item);
        if (v >= vocab) fail(flag, "token id " + item + " is not below vocab_size " + std::to_string(vocab));
        out.push_back(v);
        i = j + 1;
    }
    if (out.empty()) fail(flag, "no tokens given");
    return out;
}

void add_init(CLI::App& app) {
    auto* cmd = app.add_subcommand("init", "Create a randomly initialised model: OUT/config.json + OUT/model.safetensors");
    auto config = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    auto seed = std::make_shared<uint64_t>(0);
    auto dtype = std::make_shared<std::string>("F32");
    cmd->add_option("--config", *config, "Hugging Face config.json (DeepseekV3ForCausalLM)")->required();
    cmd->add_option("--out", *out, "output model directory")->required()->check(non_empty());
    cmd->add_option("--seed", *seed, "random seed")->check(non_negative_int());
    cmd->add_option("--dtype", *dtype, "storage dtype: F32, BF16 or F16");
    cmd->callback([=] {
        model_files m;
        m.config = config_load(*config);
        m.layout = layout_build(m.config);
        weights_init(m.config, m.layout, m.weights, *seed);
        model_save_dir(m, *out, *dtype);
        size_t n = 0;
        for (const auto& p : m.layout.params) n += p.size;
        std::printf("wrote %s (%zu parameters, %d MTP modules)\n", out->c_str(), n, m.config.n_mtp());
    });
}

void add_logits(CLI::App& app) {
    auto* cmd = app.add_subcommand("logits", "Full forward pass: main and MTP logits to a safetensors file");
    auto model = std::make_shared<std::string>();
    auto tokens = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    cmd->add_option("--model", *model, "model directory")->required();
    cmd->add_option("--tokens", *tokens, "comma-separated token ids")->required();
    cmd->add_option("--out", *out, "output .safetensors")->required()->check(non_empty());
    cmd->callback([=] {
        model_files m = model_load_dir(*model);
        const auto& c = m.config;
        std::vector<int> ids = parse_tokens(*tokens, c.vocab_size, "--tokens");
        if (int(ids.size()) > c.max_position_embeddings)
            fail("--tokens", "sequence longer than max_position_embeddings");
        arena a;
        model_state s;
        model_forward(c, m.layout, m.weights.data(), s, ids.data(), int(ids.size()), 0.0f, a);
        const int64_t T = int64_t(ids.size()), V = c.vocab_size;
        std::vector<st_write_item> items;
        items.push_back({"logits", {T, V}, s.logits, dtype::f32});
        std::vector<std::string> names;
        for (int k = 1; k <= c.n_mtp(); ++k) {
            int64_t Tk = std::max<int64_t>(T - k, 0);
            items.push_back({"mtp." + std::to_string(k) + ".logits", {Tk, V}, Tk ? s.mtp[k - 1].logits : nullptr,
                             dtype::f32});
        }
        st_write(*out, items);
    });
}

void add_grad(CLI::App& app) {
    auto* cmd = app.add_subcommand("grad", "Loss and the gradient of every parameter to a safetensors file");
    auto model = std::make_shared<std::string>();
    auto tokens = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    auto lambda = std::make_shared<float>(0.3f);
    auto alpha = std::make_shared<float>(0.0f);
    cmd->add_option("--model", *model, "model directory")->required();
    cmd->add_option("--tokens", *tokens, "comma-separated token ids (at least 2)")->required();
    cmd->add_option("--out", *out, "output .safetensors")->required()->check(non_empty());
    cmd->add_option("--mtp-lambda", *lambda, "weight λ of the MTP losses: L = L_main + λ/D Σ L_MTP^k");
    cmd->add_option("--bal-alpha", *alpha, "weight α of the sequence-wise balance loss (default 0)");
    cmd->callback([=] {
        model_files m = model_load_dir(*model);
        const auto& c = m.config;
        std::vector<int> ids = parse_tokens(*tokens, c.vocab_size, "--tokens");
        if (ids.size() < 2) fail("--tokens", "need at least 2 tokens (one target)");
        if (int(ids.size()) > c.max_position_embeddings)
            fail("--tokens", "sequence longer than max_position_embeddings");
        arena a;
        model_state s;
        std::vector<float> G(m.layout.n_floats, 0.0f);
        model_forward(c, m.layout, m.weights.data(), s, ids.data(), int(ids.size()), *alpha, a);
        loss_stats ls = model_backward(c, m.layout, m.weights.data(), G.data(), s, *lambda, *alpha, 1.0f, a);
        float loss = float(ls.total);
        std::vector<st_write_item> items;
        items.push_back({"loss", {}, &loss, dtype::f32});
        for (const auto& p : m.layout.params)
            if (p.trainable) items.push_back({p.name, p.shape, G.data() + p.offset, dtype::f32});
        st_write(*out, items);
        std::printf("loss %.6f (main %.6f", ls.total, ls.main);
        for (size_t k = 0; k < ls.mtp.size(); ++k) std::printf(", mtp%zu %.6f", k + 1, ls.mtp[k]);
        std::printf(")\n");
    });
}

} // namespace mtp::cli
