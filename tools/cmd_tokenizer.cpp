// `mtp tokenizer train|encode|decode`: byte-level BPE tokenizer.json training and use.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "io/bpe_train.h"
#include "io/tokenizer.h"
#include "io/json_read.h"

namespace mtp::cli {

namespace {

std::string read_all(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(path, "cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::string ids_csv(const std::vector<int>& ids) {
    std::string s;
    for (size_t i = 0; i < ids.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(ids[i]);
    }
    return s;
}

std::string json_text(const std::string& bytes) {
    return nlohmann::json(bytes).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void add_tok_train(CLI::App& parent) {
    auto* cmd = parent.add_subcommand("train", "Train a byte-level BPE tokenizer.json on text files/directories");
    struct opts {
        int vocab = 0;
        std::vector<std::string> inputs;
        std::string pre = "deepseek";
        std::vector<std::string> specials;
        bool specials_given = false;
        std::string out;
        int threads = 0;
    };
    auto o = std::make_shared<opts>();
    cmd->add_option("--vocab-size", o->vocab, "total vocabulary size: 256 bytes + merges + special tokens")->required();
    cmd->add_option("--input", o->inputs, "text files or directories (recursive)")->required()->expected(1, -1);
    cmd->add_option("--pre-tokenizer", o->pre, "deepseek (DeepSeek-V3 Split regexes) or gpt2")
        ->check(CLI::IsMember({"deepseek", "gpt2"}));
    auto* sp = cmd->add_option("--special", o->specials,
                               "special tokens (default: <｜begin▁of▁sentence｜> <｜end▁of▁sentence｜>)")
                   ->expected(0, -1);
    cmd->add_option("--threads", o->threads, "counting threads (0: all)");
    cmd->add_option("--out", o->out, "output tokenizer.json")->required()->check(non_empty());
    cmd->callback([o, sp] {
        tokenizer_train_options opt;
        opt.vocab_size = o->vocab;
        opt.pre_tokenizer = o->pre;
        opt.threads = o->threads;
        if (sp->count() > 0) opt.special_tokens = o->specials;
        const int nspec = int(opt.special_tokens.size());
        if (opt.vocab_size < 256 + nspec)
            fail("--vocab-size", std::to_string(opt.vocab_size) + " is below 256 byte tokens + " +
                                     std::to_string(nspec) + " special tokens = " + std::to_string(256 + nspec));
        auto files = tokenizer_collect_files(o->inputs);
        if (files.empty()) fail("--input", "no files found");
        auto t0 = std::chrono::steady_clock::now();
        tokenizer_train_stats st;
        tokenizer t = tokenizer_train(opt, files, &st);
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        tokenizer_save(t, o->out);
        std::printf("wrote %s: vocab %d (%zu merges, %d special) from %zu files, %.2f MB, %zu distinct pre-tokens; "
                    "%.2f s (count %.2f s, merge %.2f s)\n",
                    o->out.c_str(), tokenizer_vocab_size(t), st.merges, nspec, st.files, double(st.bytes) / 1e6,
                    st.unique_words, secs, st.count_seconds, st.merge_seconds);
        if (st.exhausted)
            std::fprintf(stderr, "note: the corpus ran out of pairs; vocab is %d, below --vocab-size %d\n",
                         tokenizer_vocab_size(t), o->vocab);
    });
}

void add_tok_encode(CLI::App& parent) {
    auto* cmd = parent.add_subcommand("encode", "Encode text to token ids (no BOS/EOS added)");
    struct opts {
        std::string tok, text, file, batch;
        bool ids_only = false, no_special = false;
    };
    auto o = std::make_shared<opts>();
    cmd->add_option("--tokenizer", o->tok, "tokenizer.json")->required();
    auto* text = cmd->add_option("--text", o->text, "text to encode");
    auto* file = cmd->add_option("--file", o->file, "file whose bytes are encoded");
    auto* batch = cmd->add_option("--batch", o->batch, "file of JSON strings, one per line -> one JSON id array per line");
    text->excludes(file)->excludes(batch);
    file->excludes(batch);
    cmd->add_flag("--ids-only", o->ids_only, "print only the comma-separated ids");
    cmd->add_flag("--no-special", o->no_special, "do not recognise special added tokens in the text");
    cmd->callback([o, text, file, batch] {
        if (!text->count() && !file->count() && !batch->count()) fail("encode", "give one of --text, --file or --batch");
        tokenizer t = tokenizer_load(o->tok);
        if (batch->count()) {
            std::ifstream in(o->batch, std::ios::binary);
            if (!in) fail(o->batch, "cannot open");
            std::string line, out;
            size_t n = 0;
            while (std::getline(in, line)) {
                ++n;
                if (line.empty()) continue;
                nlohmann::json j = json_parse(line, o->batch + ": line " + std::to_string(n));
                if (!j.is_string()) fail(o->batch, "line " + std::to_string(n) + ": expected a JSON string");
                out += "[" + ids_csv(tokenizer_encode(t, j.get<std::string>(), !o->no_special)) + "]\n";
            }
            std::fwrite(out.data(), 1, out.size(), stdout);
            return;
        }
        std::string input = text->count() ? o->text : read_all(o->file);
        std::vector<int> ids = tokenizer_encode(t, input, !o->no_special);
        if (o->ids_only) {
            std::printf("%s\n", ids_csv(ids).c_str());
            return;
        }
        for (int id : ids) std::printf("%d\t%s\n", id, json_text(tokenizer_decode(t, {id})).c_str());
        std::printf("%zu tokens, %zu bytes\n", ids.size(), input.size());
    });
}

void add_tok_decode(CLI::App& parent) {
    auto* cmd = parent.add_subcommand("decode", "Decode token ids to text (raw bytes)");
    struct opts {
        std::string tok, ids, batch;
    };
    auto o = std::make_shared<opts>();
    cmd->add_option("--tokenizer", o->tok, "tokenizer.json")->required();
    auto* ids = cmd->add_option("--ids", o->ids, "comma-separated token ids");
    auto* batch = cmd->add_option("--batch", o->batch, "file of JSON id arrays, one per line -> one JSON string per line");
    ids->excludes(batch);
    cmd->callback([o, ids, batch] {
        if (!ids->count() && !batch->count()) fail("decode", "give --ids or --batch");
        tokenizer t = tokenizer_load(o->tok);
        const int vocab = tokenizer_vocab_size(t);
        if (ids->count()) {
            std::string s = tokenizer_decode(t, parse_tokens(o->ids, vocab, "--ids"));
            s += '\n';
            std::fwrite(s.data(), 1, s.size(), stdout);
            return;
        }
        std::ifstream in(o->batch, std::ios::binary);
        if (!in) fail(o->batch, "cannot open");
        std::string line, out;
        size_t n = 0;
        while (std::getline(in, line)) {
            ++n;
            if (line.empty()) continue;
            std::string where = o->batch + ": line " + std::to_string(n);
            nlohmann::json j = json_parse(line, where);
            if (!j.is_array()) fail(where, "expected a JSON array of ids");
            std::vector<int> v;
            for (const auto& x : j) {
                if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= vocab)
                    fail(where, "ids must be integers in [0, " + std::to_string(vocab) + ")");
                v.push_back(int(x.get<int64_t>()));
            }
            out += json_text(tokenizer_decode(t, v)) + "\n";
        }
        std::fwrite(out.data(), 1, out.size(), stdout);
    });
}

} // namespace

void add_tokenizer(CLI::App& app) {
    auto* cmd = app.add_subcommand("tokenizer", "Byte-level BPE tokenizer.json: train, encode, decode");
    cmd->require_subcommand(1);
    add_tok_train(*cmd);
    add_tok_encode(*cmd);
    add_tok_decode(*cmd);
}

} // namespace mtp::cli
