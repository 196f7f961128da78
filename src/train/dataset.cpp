// Dataset preparation (tokenise documents, split train/val by document, write shards + meta.json) and reading.
#include "train/dataset.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <glob.h>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/token_shard.h"
#include "io/tokenizer.h"
#include "io/json_read.h"

namespace mtp {

namespace fs = std::filesystem;

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
    std::vector<std::string> files;
    for (const auto& in : inputs) {
        std::vector<std::string> matched;
        if (fs::is_directory(in)) {
            for (const auto& e : fs::recursive_directory_iterator(in))
                if (e.is_regular_file() && e.path().filename().string()[0] != '.') matched.push_back(e.path().string());
        } else if (fs::is_regular_file(in)) {
            matched.push_back(in);
        } else {
            glob_t g{};
            if (::glob(in.c_str(), 0, nullptr, &g) == 0)
                for (size_t i = 0; i < g.gl_pathc; ++i)
                    if (fs::is_regular_file(g.gl_pathv[i])) matched.push_back(g.gl_pathv[i]);
            globfree(&g);
        }
        if (matched.empty()) fail(in, "no such file, folder or matching glob");
        std::sort(matched.begin(), matched.end());
        files.insert(files.end(), matched.begin(), matched.end());
    }
    return files;
}

prepare_stats dataset_prepare(const prepare_options& o) {
    auto t0 = std::chrono::steady_clock::now();
    if (!(o.val_fraction >= 0 && o.val_fraction < 1)) fail("--val-fraction", "must be in [0, 1)");
    tokenizer tok = tokenizer_load(o.tokenizer);
    const int V = tokenizer_vocab_size(tok);
    int sep = -1;
    if (!o.doc_sep.empty()) {
        sep = tokenizer_token_id(tok, o.doc_sep);
        if (sep < 0) fail("--doc-sep", "token '" + o.doc_sep + "' is not in " + o.tokenizer);
    } else {
        for (const char* cand : {"<｜end▁of▁sentence｜>", "<|endoftext|>", "</s>"})
            if ((sep = tokenizer_token_id(tok, cand)) >= 0) break;
    }
    std::vector<std::string> files = expand_inputs(o.inputs);
    prepare_stats st;
    std::vector<uint32_t> train, val;
    rng r(o.seed);
    std::vector<std::string> texts(files.size());
    for (size_t i = 0; i < files.size(); ++i) {
        std::ifstream f(files[i], std::ios::binary);
        if (!f) fail(files[i], "cannot read");
        std::stringstream ss;
        ss << f.rdbuf();
        texts[i] = ss.str();
    }
    std::vector<std::vector<int>> enc(files.size());
    std::vector<std::string> errors(files.size());       // exceptions must not escape the OpenMP region
#pragma omp parallel for schedule(dynamic)
    for (size_t i = 0; i < files.size(); ++i) {
        try {
            enc[i] = tokenizer_encode(tok, texts[i], false);
        } catch (const std::exception& e) {
            errors[i] = e.what();
        }
    }
    for (size_t i = 0; i < files.size(); ++i)
        if (!errors[i].empty()) fail(files[i], "tokenizing failed: " + errors[i]);
    size_t last_train_doc = 0;                            // start of the last train document
    for (size_t i = 0; i < files.size(); ++i) {
        if (enc[i].empty()) continue;
        st.docs++;
        st.bytes += texts[i].size();
        bool is_val = r.uniform() < o.val_fraction;
        auto& dst = is_val ? val : train;
        if (!is_val) last_train_doc = train.size();
        dst.insert(dst.end(), enc[i].begin(), enc[i].end());
        if (sep >= 0) dst.push_back(uint32_t(sep));
    }
    if (st.docs == 0 || train.empty()) fail(o.inputs.empty() ? "--input" : o.inputs[0], "empty corpus: no tokens to train on");
    if (o.val_fraction > 0 && val.empty() && st.docs >= 2 && last_train_doc > 0) {
        // guarantee a validation split: move the last whole train document to val
        val.assign(train.begin() + long(last_train_doc), train.end());
        train.resize(last_train_doc);
    }
    fs::create_directories(o.out_dir);
    if (!fs::is_directory(o.out_dir)) fail(o.out_dir, "cannot create output folder");
    auto write_split = [&](const std::vector<uint32_t>& ids, const std::string& name) {
        nlohmann::json shards = nlohmann::json::array();
        for (size_t start = 0, k = 0; start < ids.size() || k == 0; start += o.shard_tokens, ++k) {
            size_t n = std::min(o.shard_tokens, ids.size() - start);
            char fn[64];
            std::snprintf(fn, sizeof fn, "%s_%03zu.bin", name.c_str(), k);
            token_shard_write((fs::path(o.out_dir) / fn).string(), ids.data() + start, n, uint32_t(V));
            shards.push_back(fn);
            if (start + n >= ids.size()) break;
        }
        return shards;
    };
    nlohmann::json meta;
    meta["format"] = "mtp.cpp token shards v1";
    meta["tokenizer"] = fs::absolute(o.tokenizer).string();
    meta["vocab_size"] = V;
    meta["eos_id"] = sep;
    meta["documents"] = st.docs;
    meta["bytes"] = st.bytes;
    meta["train"] = write_split(train, "train");
    meta["val"] = write_split(val, "val");
    meta["train_tokens"] = train.size();
    meta["val_tokens"] = val.size();
    write_file_atomic((fs::path(o.out_dir) / "meta.json").string(), meta.dump(2) + "\n");
    st.train_tokens = train.size();
    st.val_tokens = val.size();
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return st;
}

dataset dataset_load(const std::string& dir) {
    const std::string mp = (fs::path(dir) / "meta.json").string();
    if (!std::ifstream(mp)) fail(mp, "cannot open (not a prepared dataset folder? run `mtp data prepare`)");
    nlohmann::json m = json_read_file(mp);
    dataset d;
    d.dir = dir;
    try {
        const int64_t vs = m.at("vocab_size").get<int64_t>(), eos = m.at("eos_id").get<int64_t>();
        if (vs < 1 || vs > int64_t(token_vocab_max))
            fail(mp, "vocab_size " + std::to_string(vs) + " is not in 1.." + std::to_string(token_vocab_max));
        if (eos < -1 || eos >= vs) fail(mp, "eos_id " + std::to_string(eos) + " is not below vocab_size (or -1)");
        d.vocab_size = int(vs);
        d.eos_id = int(eos);
        d.tokenizer = m.value("tokenizer", std::string());
        for (const char* split : {"train", "val"})
            for (const auto& fn : m.at(split)) {
                token_shard s = token_shard_read((fs::path(dir) / fn.get<std::string>()).string());
                if (s.vocab_size != uint32_t(d.vocab_size))
                    fail(s.path, "vocab_size " + std::to_string(s.vocab_size) + " differs from meta.json's " +
                                     std::to_string(d.vocab_size));
                auto& dst = std::string(split) == "train" ? d.train : d.val;
                dst.insert(dst.end(), s.ids.begin(), s.ids.end());
            }
    } catch (const nlohmann::json::exception& e) {
        fail(mp, std::string("bad field: ") + e.what());
    }
    if (d.train.empty()) fail(mp, "the train split is empty");
    return d;
}

void sample_windows(const std::vector<uint32_t>& ids, uint64_t seed, uint64_t step, int B, int T, int* out) {
    rng r(seed * 0x9E3779B97F4A7C15ull + step);
    const size_t n = ids.size();
    for (int b = 0; b < B; ++b) {
        size_t start = n > size_t(T + 1) ? r.below(n - T - 1 + 1) : 0;
        for (int t = 0; t <= T; ++t) out[size_t(b) * (T + 1) + t] = int(ids[(start + t) % n]);
    }
}

void eval_window(const std::vector<uint32_t>& ids, int i, int n, int T, int* out) {
    const size_t len = ids.size();
    size_t span = len > size_t(T + 1) ? len - T - 1 : 0;
    size_t start = n > 1 ? span * size_t(i) / size_t(n - 1) : 0;
    for (int t = 0; t <= T; ++t) out[t] = int(ids[(start + t) % len]);
}

} // namespace mtp
