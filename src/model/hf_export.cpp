// Hugging Face checkpoint export (sharded safetensors + index).
#include "model/hf_export.h"

#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace mtp {

int hf_export(const model_files& m, const std::string& out_dir, const hf_export_options& o) {
    namespace fs = std::filesystem;
    const model_config& c = m.config;
    const model_layout& L = m.layout;
    std::string up = o.dtype;
    for (auto& ch : up) ch = char(std::toupper(static_cast<unsigned char>(ch)));
    dtype t;
    if (!dtype_from_name(up, t) || t == dtype::f8_e4m3) fail("--dtype", "expected bf16, f16 or f32, got '" + o.dtype + "'");
    if (!(o.shard_size_mb > 0)) fail("--shard-size-mb", "must be positive");
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (!fs::is_directory(out_dir)) fail(out_dir, "cannot create output directory");

    std::vector<st_write_item> items;
    for (const auto& p : L.params) items.push_back({p.name, p.shape, m.weights.data() + p.offset, p.trainable ? t : dtype::f32});
    for (const auto& l : L.mtp) {   // copies vLLM / SGLang load from the MTP layer itself
        const std::string pre = "model.layers." + std::to_string(l.index) + ".";
        items.push_back({pre + "embed_tokens.weight", {c.vocab_size, c.hidden_size}, m.weights.data() + L.embed, t});
        items.push_back({pre + "shared_head.head.weight", {c.vocab_size, c.hidden_size}, m.weights.data() + L.lm_head, t});
    }
    const double limit = o.shard_size_mb * 1024.0 * 1024.0;
    std::vector<std::vector<st_write_item>> shards(1);
    double cur = 0, total = 0;
    for (const auto& it : items) {
        double n = double(dtype_size(it.type));
        for (auto s : it.shape) n *= double(s);
        if (cur > 0 && cur + n > limit) shards.emplace_back(), cur = 0;
        shards.back().push_back(it);
        cur += n;
        total += n;
    }
    const int N = int(shards.size());
    // Stale files from an earlier export with a different shard count would confuse loaders.
    for (const auto& e : fs::directory_iterator(out_dir)) {
        const std::string f = e.path().filename().string();
        if (f == "model.safetensors" || f == "model.safetensors.index.json" ||
            (f.rfind("model-", 0) == 0 && e.path().extension() == ".safetensors"))
            fs::remove(e.path(), ec);
    }
    if (N == 1) {
        st_write((fs::path(out_dir) / "model.safetensors").string(), shards[0], {{"format", "pt"}});
    } else {
        nlohmann::json wm = nlohmann::json::object();
        for (int i = 0; i < N; ++i) {
            char name[64];
            std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i + 1, N);
            st_write((fs::path(out_dir) / name).string(), shards[size_t(i)], {{"format", "pt"}});
            for (const auto& it : shards[size_t(i)]) wm[it.name] = name;
        }
        nlohmann::json idx = {{"metadata", {{"total_size", uint64_t(total)}}}, {"weight_map", wm}};
        write_file_atomic((fs::path(out_dir) / "model.safetensors.index.json").string(), idx.dump(2) + "\n");
    }
    config_save(c, (fs::path(out_dir) / "config.json").string());
    if (!o.tokenizer_dir.empty())
        for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
            fs::path src = fs::path(o.tokenizer_dir) / f;
            if (fs::is_regular_file(src) && fs::absolute(src) != fs::absolute(fs::path(out_dir) / f))
                fs::copy_file(src, fs::path(out_dir) / f, fs::copy_options::overwrite_existing);
        }
    return N;
}

} // namespace mtp
