// `mtp generate` (KV-cached decoding, optionally with MTP speculative decoding), `mtp bench` (pp / tg / tg with
// speculation tokens/s, llama-bench style, and where the time goes) and `mtp draft-vocab` (token frequencies of the
// training shards for the FR-Spec restricted draft vocabulary). Flag parsing only; the work is in src/infer.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "infer/bench.h"
#include "infer/cpu_model.h"
#include "infer/speculative.h"
#include "io/atomic_file.h"
#include "io/token_shard.h"
#include "io/tokenizer.h"
#include "io/json_read.h"

namespace mtp::cli {

namespace {

namespace fs = std::filesystem;

std::string read_text(const std::string& path, const std::string& flag) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(flag, "cannot open " + path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// --tokenizer, else MODEL/tokenizer.json when present; nullptr when neither.
std::unique_ptr<tokenizer> load_tokenizer(const std::string& flag_value, const std::string& model_dir, int vocab) {
    std::string path = flag_value;
    if (path.empty()) {
        fs::path p = fs::path(model_dir) / "tokenizer.json";
        if (!fs::exists(p)) return nullptr;
        path = p.string();
    }
    auto t = std::make_unique<tokenizer>(tokenizer_load(path));
    if (tokenizer_vocab_size(*t) > vocab)
        fail(path, "tokenizer has " + std::to_string(tokenizer_vocab_size(*t)) + " tokens, the model's vocab_size is " +
                       std::to_string(vocab));
    return t;
}

void set_threads(int n) {
    if (n < 0) fail("--threads", "must be >= 0");
    if (n > 0) omp_set_num_threads(n);
}

// The bytes of one token, or "[id]" when the tokenizer has no such token.
std::string piece(const tokenizer* t, int id) {
    if (!t) return std::to_string(id) + " ";
    if (id >= tokenizer_vocab_size(*t) || tokenizer_id_to_token(*t, id).empty()) {
        bool added = false;
        for (const auto& a : t->added_tokens) added |= a.id == id;
        if (!added) return "[" + std::to_string(id) + "]";
    }
    return tokenizer_decode(*t, {id});
}

// ---------------------------------------------------------------------------------------------------------------
// Draft vocabulary (FR-Spec): token ids ranked by frequency in the training data.

// Ranking from a token shard (every id counted; ties: lower id first).
std::vector<int> rank_from_shard(const std::string& path, int vocab, const std::string& flag) {
    token_shard ts = token_shard_read(path);
    if (int64_t(ts.vocab_size) > vocab)
        fail(flag, "shard vocab_size " + std::to_string(ts.vocab_size) + " exceeds the model's " + std::to_string(vocab));
    if (ts.ids.empty()) fail(flag, path + " holds no tokens");
    return vocab_rank_by_frequency(ts.ids, vocab);
}

// The frequency ranking for --draft-vocab: --draft-vocab-from SHARD, else MODEL/draft_vocab.json.
std::vector<int> draft_rank(const std::string& from, const std::string& model_dir, int vocab) {
    if (!from.empty()) return rank_from_shard(from, vocab, "--draft-vocab-from");
    const fs::path p = fs::path(model_dir) / "draft_vocab.json";
    if (!fs::exists(p))
        fail("--draft-vocab", "needs token frequencies: --draft-vocab-from SHARD, or " + p.string() +
                                  " (mtp draft-vocab --data DATA_DIR --out " + p.string() + ")");
    return draft_rank_from_json(p.string(), vocab, "--draft-vocab");
}

struct sampling_flags {
    sampler_params s;
    void add(CLI::App* cmd) {
        cmd->add_option("--temp", s.temperature, "temperature (0: greedy)");
        cmd->add_option("--top-k", s.top_k, "keep the k most likely tokens (0: off)");
        cmd->add_option("--top-p", s.top_p, "nucleus sampling mass (1: off)");
        cmd->add_option("--min-p", s.min_p, "drop tokens below min-p × the top probability (0: off)");
        cmd->add_option("--repeat-penalty", s.repeat_penalty, "CTRL repetition penalty (1: off)");
        cmd->add_option("--repeat-last-n", s.repeat_last_n, "tokens the penalty looks back at (-1: all)");
        cmd->add_option("--seed", s.seed, "sampling seed")->check(non_negative_int());
    }
};

void add_generate_cmd(CLI::App& app) {
    auto* cmd = app.add_subcommand("generate", "Generate text with KV caches and MTP speculative decoding");
    struct opts {
        std::string model, tok, prompt, prompt_file, prompt_tokens, spec, tokens_out, dv_from, tree;
        int n = 128, draft = 0, batch = 256, threads = 0, draft_vocab = -1;
        std::string weights;
        float p_min = 0;
        bool reuse = false, ignore_eos = false;
        sampling_flags sf;
    };
    auto o = std::make_shared<opts>();
    cmd->add_option("--model", o->model, "model directory")->required();
    cmd->add_option("--tokenizer", o->tok, "tokenizer.json (default: MODEL/tokenizer.json if present)");
    auto* p1 = cmd->add_option("--prompt", o->prompt, "prompt text");
    auto* p2 = cmd->add_option("--prompt-file", o->prompt_file, "file with the prompt text");
    auto* p3 = cmd->add_option("--prompt-tokens", o->prompt_tokens, "prompt as comma-separated token ids");
    p1->excludes(p2)->excludes(p3);
    p2->excludes(p3);
    cmd->add_option("-n,--n-predict", o->n, "tokens to generate");
    o->sf.add(cmd);
    cmd->add_option("--spec", o->spec, "speculative decoding: mtp or none (default: mtp when the model has MTP modules)");
    cmd->add_option("-t,--threads", o->threads, "OpenMP threads (0: OMP_NUM_THREADS / all cores)");
    cmd->add_option("--weights", o->weights, "weight type decoding reads: f32, bf16 or q8_0 (default: as the file stores them)");
    auto* dr = cmd->add_option("--draft", o->draft, "draft tokens per round (default: D; D+1 with --draft-reuse)");
    cmd->add_option("--draft-p-min", o->p_min, "adaptive drafting: stop at a draft token with probability below P");
    cmd->add_flag("--draft-reuse", o->reuse, "continue drafting past D by reusing the last MTP module");
    cmd->add_option("--draft-tree", o->tree,
                    "greedy: draft a token tree, branches per depth (e.g. 2,2,1), verified in one pass; sampling "
                    "drafts the chain of its depth");
    auto* dvo = cmd->add_option("--draft-vocab", o->draft_vocab,
                                "drafts consider only the N most frequent tokens (FR-Spec; 0: the full vocabulary; "
                                "default: every token of MODEL/draft_vocab.json when present, else 0)");
    cmd->add_option("--draft-vocab-from", o->dv_from,
                    "token shard to count frequencies in (default: MODEL/draft_vocab.json from mtp draft-vocab)");
    cmd->add_option("--batch", o->batch, "prompt tokens per forward");
    cmd->add_flag("--ignore-eos", o->ignore_eos, "do not stop at eos_token_id");
    cmd->add_option("--tokens-out", o->tokens_out, "write the generated token ids (comma-separated) to FILE");
    cmd->callback([o, p1, p2, p3, dr, dvo] {
        if (p1->count() + p2->count() + p3->count() == 0)
            fail("generate", "give a prompt with --prompt, --prompt-file or --prompt-tokens");
        if (o->n < 0) fail("-n", "must be >= 0");
        if (!o->spec.empty() && o->spec != "mtp" && o->spec != "none")
            fail("--spec", "expected mtp or none, got '" + o->spec + "'");
        if (dr->count() && o->draft < 1) fail("--draft", "must be >= 1");
        if (dvo->count() && o->draft_vocab < 0) fail("--draft-vocab", "must be >= 0");
        if (!o->dv_from.empty() && o->draft_vocab <= 0) fail("--draft-vocab-from", "needs --draft-vocab N");
        set_threads(o->threads);
        sampler_params_check(o->sf.s);
        model_files m = model_load_dir(o->model);
        const model_config& c = m.config;
        auto tok = load_tokenizer(o->tok, o->model, c.vocab_size);
        std::vector<int> prompt;
        if (p3->count()) {
            prompt = parse_tokens(o->prompt_tokens, c.vocab_size, "--prompt-tokens");
        } else {
            const std::string flag = p1->count() ? "--prompt" : "--prompt-file";
            std::string text = p1->count() ? o->prompt : read_text(o->prompt_file, flag);
            if (text.empty()) fail(flag, "empty prompt");
            if (!tok) fail(flag, "text prompts need a tokenizer (--tokenizer, or tokenizer.json in the model directory)");
            prompt = tokenizer_encode(*tok, text);
            for (int id : prompt)
                if (id >= c.vocab_size) fail(flag, "token id " + std::to_string(id) + " is not below vocab_size");
        }
        if (prompt.empty()) fail("prompt", "empty prompt");
        if (int(prompt.size()) > c.max_position_embeddings)
            fail("prompt", std::to_string(prompt.size()) + " tokens exceed max_position_embeddings " +
                               std::to_string(c.max_position_embeddings));
        spec_params sp;
        sp.enabled = o->spec != "none";
        sp.n_draft = o->draft;
        sp.p_min = o->p_min;
        sp.reuse = o->reuse;
        sp.n_batch = o->batch;
        if (!o->tree.empty()) sp.tree = parse_draft_tree(o->tree);
        if (o->spec == "mtp" && c.n_mtp() == 0)
            std::fprintf(stderr, "warning: --spec mtp: the model has no MTP modules; decoding without speculation\n");
        if (o->draft_vocab < 0) {                 // default: MODEL/draft_vocab.json when present
            const fs::path f = fs::path(o->model) / "draft_vocab.json";
            if (sp.enabled && c.n_mtp() > 0 && fs::exists(f)) {
                const std::vector<int> rank = draft_rank_from_json(f.string(), c.vocab_size, "--draft-vocab");
                sp.draft_vocab = draft_vocab_from_rank(rank, int(rank.size()));
            }
        } else if (o->draft_vocab > 0) {
            if (o->draft_vocab > c.vocab_size)
                fail("--draft-vocab", std::to_string(o->draft_vocab) + " exceeds vocab_size " +
                                          std::to_string(c.vocab_size));
            const std::vector<int> rank = draft_rank(o->dv_from, o->model, c.vocab_size);
            if (o->draft_vocab > int(rank.size()))
                fail("--draft-vocab", std::to_string(o->draft_vocab) + " exceeds the " + std::to_string(rank.size()) +
                                          " ranked tokens available");
            sp.draft_vocab = draft_vocab_from_rank(rank, o->draft_vocab);
        }
        spec_params_check(sp, c.n_mtp(), c.mtp_parallel);

        cpu_model cm(m, 0, weights_type_for(o->weights, m));
        sampler s(o->sf.s);
        std::vector<int> out;
        gen_stats st;
        out = generate(cm, s, sp, prompt, o->n, o->ignore_eos ? -1 : c.eos_token_id,
                       [&](const int* ids, int k) {
                           for (int i = 0; i < k; ++i) {
                               std::string b = piece(tok.get(), ids[i]);
                               std::fwrite(b.data(), 1, b.size(), stdout);
                           }
                           std::fflush(stdout);
                       },
                       &st);
        std::printf("\n");
        std::fflush(stdout);
        if (!o->tokens_out.empty()) {
            std::string s2;
            for (size_t i = 0; i < out.size(); ++i) s2 += (i ? "," : "") + std::to_string(out[i]);
            std::ofstream f(o->tokens_out, std::ios::binary);
            if (!f || !(f << s2 << "\n")) fail("--tokens-out", "cannot write " + o->tokens_out);
        }
        std::string tail = sp.enabled && c.n_mtp() > 0 ? "" : " | speculation off";
        if (sp.enabled && c.n_mtp() > 0 && !sp.draft_vocab.empty())
            tail += " | draft vocab " + std::to_string(sp.draft_vocab.size());
        std::fprintf(stderr, "%s%s\n", st.summary().c_str(), tail.c_str());
    });
}

void add_bench_cmd(CLI::App& app) {
    auto* cmd = app.add_subcommand("bench", "Prompt/generation tokens/s, plain and with MTP speculation");
    struct opts {
        std::string model, tok, prompt_file, prompt_shard, dv_from;
        int p = 128, n = 128, r = 3, batch = 256, threads = 0;
        std::vector<std::string> weights, trees;
        std::vector<float> temps;
        std::vector<int> draft_vocabs, cost_rows;
        bool no_costs = false;
        float p_min = 0;
        uint64_t seed = 1;
        bool json = false;
    };
    auto o = std::make_shared<opts>();
    cmd->add_option("--model", o->model, "model directory")->required();
    cmd->add_option("--tokenizer", o->tok, "tokenizer.json (default: MODEL/tokenizer.json if present)");
    cmd->add_option("--prompt-file", o->prompt_file,
                    "held-out text; prompt r is -p tokens from offset r*(len/reps) (default: random token ids)");
    cmd->add_option("--prompt-shard", o->prompt_shard,
                    "held-out token shard from `mtp data prepare` (e.g. DATA/val_000.bin), prompts taken as above")
        ->excludes(cmd->get_option("--prompt-file"));
    cmd->add_option("-p,--n-prompt", o->p, "prompt tokens");
    cmd->add_option("-n,--n-gen", o->n, "generated tokens");
    cmd->add_option("-r,--repetitions", o->r, "repetitions");
    cmd->add_option("--temp", o->temps, "temperatures (default: 0 and 0.8)")->expected(1, -1);
    cmd->add_option("--draft-p-min", o->p_min, "also measure adaptive drafting with this p-min");
    cmd->add_option("--draft-vocab", o->draft_vocabs,
                    "draft vocabulary sizes to measure (0: full vocabulary; N: the N most frequent tokens; default: 0, "
                    "and every token of MODEL/draft_vocab.json when present)")
        ->expected(1, -1);
    cmd->add_option("--draft-vocab-from", o->dv_from,
                    "token shard to count frequencies in (default: MODEL/draft_vocab.json)");
    cmd->add_option("--draft-tree", o->trees,
                    "token trees to measure at temperature 0 (branches per depth, e.g. 2,1 3,2,1; deeper than D uses "
                    "--draft-reuse drafting)")
        ->expected(1, -1);
    cmd->add_option("--cost-rows", o->cost_rows, "row counts of the forward-cost table (default 1 2 3 4 5 6 8)")
        ->expected(1, -1);
    cmd->add_flag("--no-costs", o->no_costs, "skip the forward-cost table");
    cmd->add_option("--batch", o->batch, "prompt tokens per forward");
    cmd->add_option("--seed", o->seed, "sampling / random prompt seed")->check(non_negative_int());
    cmd->add_option("-t,--threads", o->threads, "OpenMP threads (0: OMP_NUM_THREADS / all cores)");
    cmd->add_option("--weights", o->weights,
                    "weight types: f32, bf16, q8_0 (default: as the file stores them); several: plain decoding is "
                    "compared across them first, then the speculative bench runs at the first")
        ->expected(1, -1);
    cmd->add_flag("--json", o->json, "print JSON instead of the table");
    cmd->callback([o] {
        if (o->p < 1) fail("-p", "must be >= 1");
        if (o->n < 2) fail("-n", "must be >= 2");
        if (o->r < 1) fail("-r", "must be >= 1");
        if (o->batch < 1) fail("--batch", "must be >= 1");
        if (!(o->p_min >= 0 && o->p_min <= 1)) fail("--draft-p-min", "must be in [0, 1]");
        for (float t : o->temps)
            if (!(t >= 0)) fail("--temp", "must be >= 0");
        for (int v : o->draft_vocabs)
            if (v < 0) fail("--draft-vocab", "must be >= 0");
        for (int v : o->cost_rows)
            if (v < 1 || v > 64) fail("--cost-rows", "must be in 1..64");
        set_threads(o->threads);
        model_files m = model_load_dir(o->model);
        const model_config& c = m.config;
        if (o->p + o->n > c.max_position_embeddings)
            fail("-p", "-p + -n exceeds max_position_embeddings " + std::to_string(c.max_position_embeddings));
        bench_params bp;
        bp.n_prompt = o->p;
        bp.n_gen = o->n;
        bp.reps = o->r;
        bp.n_batch = o->batch;
        bp.p_min = o->p_min;
        bp.seed = o->seed;
        for (const std::string& t : o->trees) bp.trees.push_back(parse_draft_tree(t));
        if (!o->temps.empty()) bp.temps = o->temps;
        if (!o->draft_vocabs.empty()) {
            bp.draft_vocabs = o->draft_vocabs;
            bool any = false;
            for (int v : o->draft_vocabs) {
                any |= v > 0;
                if (v > c.vocab_size)
                    fail("--draft-vocab", std::to_string(v) + " exceeds vocab_size " + std::to_string(c.vocab_size));
            }
            if (any) bp.vocab_rank = draft_rank(o->dv_from, o->model, c.vocab_size);
            for (int v : o->draft_vocabs)
                if (v > int(bp.vocab_rank.size()))
                    fail("--draft-vocab", std::to_string(v) + " exceeds the " + std::to_string(bp.vocab_rank.size()) +
                                              " ranked tokens available");
        } else if (!o->dv_from.empty()) {
            fail("--draft-vocab-from", "needs --draft-vocab N...");
        } else if (fs::exists(fs::path(o->model) / "draft_vocab.json")) {   // default: full and the file's vocabulary
            bp.vocab_rank = draft_rank_from_json((fs::path(o->model) / "draft_vocab.json").string(), c.vocab_size,
                                           "--draft-vocab");
            bp.draft_vocabs = {0, int(bp.vocab_rank.size())};
        }
        if (!o->cost_rows.empty()) bp.cost_rows = o->cost_rows;
        if (o->no_costs) bp.cost_rows.clear();
        if (!bp.cost_rows.empty() && o->p + *std::max_element(bp.cost_rows.begin(), bp.cost_rows.end()) >
                                         c.max_position_embeddings)
            fail("--cost-rows", "-p + the largest row count exceeds max_position_embeddings");
        std::string source = "random token ids";
        if (!o->prompt_file.empty() || !o->prompt_shard.empty()) {
            const bool shard = !o->prompt_shard.empty();
            const std::string flag = shard ? "--prompt-shard" : "--prompt-file";
            std::vector<int> ids;
            if (shard) {
                token_shard ts = token_shard_read(o->prompt_shard);
                if (int64_t(ts.vocab_size) > c.vocab_size)
                    fail(flag, "shard vocab_size " + std::to_string(ts.vocab_size) + " exceeds the model's " +
                                   std::to_string(c.vocab_size));
                ids.assign(ts.ids.begin(), ts.ids.end());
                source = o->prompt_shard;
            } else {
                auto tok = load_tokenizer(o->tok, o->model, c.vocab_size);
                if (!tok) fail(flag, "needs a tokenizer (--tokenizer, or tokenizer.json in the model directory)");
                ids = tokenizer_encode(*tok, read_text(o->prompt_file, flag));
                source = o->prompt_file;
            }
            if (int64_t(ids.size()) < o->p)
                fail(flag, "has " + std::to_string(ids.size()) + " tokens, fewer than -p " + std::to_string(o->p));
            const size_t stride = (ids.size() - o->p) / size_t(o->r);
            for (int r = 0; r < o->r; ++r)
                bp.prompts.emplace_back(ids.begin() + long(r * stride), ids.begin() + long(r * stride + o->p));
        } else {
            rng g(o->seed);
            for (int r = 0; r < o->r; ++r) {
                std::vector<int> pr(o->p);
                for (int& t : pr) t = int(g.below(uint64_t(c.vocab_size)));
                bp.prompts.push_back(pr);
            }
        }
        std::vector<wtype> types;
        for (const auto& w : o->weights) types.push_back(weights_type_for(w, m));
        if (types.empty()) types.push_back(weights_type_for("", m));
        const wtype wt = types[0];
        if (types.size() > 1 && !o->json) {
            std::vector<std::unique_ptr<cpu_model>> owned;
            std::vector<infer_model*> ms;
            std::vector<std::string> names;
            std::vector<double> mb;
            for (wtype t : types) {
                owned.push_back(std::make_unique<cpu_model>(m, 0, t));
                ms.push_back(owned.back().get());
                names.push_back(wtype_name(t));
                mb.push_back(owned.back()->trunk_bytes() / 1e6);
            }
            std::fprintf(stderr, "bench: plain decoding at %zu weight types\r", types.size());
            const auto wr = bench_weight_types(ms, names, mb, bp);
            std::printf("Plain greedy decoding (tg%d) at each weight type, interleaved per repetition; %s:\n\n%s\n",
                        o->n, isa_report().c_str(), bench_weights_table(wr).c_str());
        }
        cpu_model cm(m, 0, wt);
        auto res = bench_run(cm, bp, [](const std::string& s) { std::fprintf(stderr, "bench: %-40s\r", s.c_str()); });
        std::fprintf(stderr, "\n");
        if (o->json) {
            std::printf("%s\n", bench_json(res).c_str());
        } else {
            std::printf("model %s: %d layers + %d MTP modules, d %d, vocab %d; prompts: %s; -p %d -n %d -r %d, "
                        "%d threads\nweights %s: %.1f MB decoded per plain step (packed, all stages %.1f MB); %s\n\n",
                        o->model.c_str(), c.num_hidden_layers, c.n_mtp(), c.hidden_size, c.vocab_size, source.c_str(),
                        o->p, o->n, o->r, omp_get_max_threads(), wtype_name(wt), cm.trunk_bytes() / 1e6,
                        cm.packed_bytes() / 1e6, isa_report().c_str());
            std::printf("%s\n", bench_table(res.rows).c_str());
            std::printf("Where the decode time goes, per generated token (all repetitions):\n\n%s",
                        bench_breakdown(res.rows).c_str());
            if (!res.costs.empty())
                std::printf("\nOne forward over R new positions after %d cached ones, µs (median of 41):\n\n%s",
                            res.cost_context, bench_cost_table(res).c_str());
        }
    });
}

void add_draft_vocab_cmd(CLI::App& app) {
    auto* cmd = app.add_subcommand("draft-vocab",
                                   "Rank tokens by frequency in the training shards (FR-Spec draft vocabulary)");
    struct opts {
        std::string data, out;
        int n = 0;
    };
    auto o = std::make_shared<opts>();
    cmd->add_option("--data", o->data, "dataset directory from `mtp data prepare` (meta.json + shards)")->required();
    cmd->add_option("--out", o->out, "output JSON (e.g. MODEL/draft_vocab.json)")->required()->check(non_empty());
    cmd->add_option("--n", o->n, "keep the N most frequent tokens (0: every token that occurs)");
    cmd->callback([o] {
        if (o->n < 0) fail("--n", "must be >= 0");
        const fs::path dir(o->data);
        const fs::path meta = dir / "meta.json";
        if (!fs::exists(meta)) fail("--data", meta.string() + " not found (a directory from `mtp data prepare`)");
        nlohmann::json j = json_parse(read_text(meta.string(), "--data"), "--data: " + meta.string());
        if (!j.is_object() || !j.contains("train") || !j["train"].is_array() || j["train"].empty() ||
            !j.contains("vocab_size") || !j["vocab_size"].is_number_integer() || j["vocab_size"].get<int64_t>() < 1 ||
            j["vocab_size"].get<int64_t>() > (int64_t(1) << 24))
            fail("--data", meta.string() + ": expected \"train\" shards and \"vocab_size\"");
        const int V = j["vocab_size"].get<int>();
        std::vector<int64_t> cnt(V, 0);
        int64_t total = 0;
        for (const auto& f : j["train"]) {
            if (!f.is_string()) fail("--data", meta.string() + ": shard names must be strings");
            token_shard ts = token_shard_read((dir / f.get<std::string>()).string());
            for (uint32_t t : ts.ids) {
                if (t >= uint32_t(V)) fail("--data", "token id " + std::to_string(t) + " is not below vocab_size");
                ++cnt[t];
            }
            total += int64_t(ts.ids.size());
        }
        if (total == 0) fail("--data", "the training shards hold no tokens");
        std::vector<int> rank(V);
        for (int i = 0; i < V; ++i) rank[i] = i;
        std::stable_sort(rank.begin(), rank.end(), [&](int a, int b) { return cnt[a] > cnt[b]; });
        int keep = 0;
        while (keep < V && cnt[rank[keep]] > 0) ++keep;
        if (o->n > 0 && o->n < keep) keep = o->n;
        std::vector<int> ids(rank.begin(), rank.begin() + keep);
        std::vector<int64_t> counts;
        int64_t covered = 0;
        for (int id : ids) {
            counts.push_back(cnt[id]);
            covered += cnt[id];
        }
        nlohmann::json out{{"format", "mtp.cpp draft vocab v1"},
                           {"data", o->data},
                           {"vocab_size", V},
                           {"train_tokens", total},
                           {"n", keep},
                           {"coverage", double(covered) / double(total)},
                           {"ids", ids},
                           {"counts", counts}};
        try {
            write_file_atomic(o->out, out.dump() + "\n");
        } catch (const std::exception& e) {
            fail("--out", std::string("cannot write ") + o->out + ": " + e.what());
        }
        std::printf("%d tokens ranked from %lld training tokens; the first %d cover %.2f%% of them -> %s\n", keep,
                    (long long)total, keep, 100.0 * double(covered) / double(total), o->out.c_str());
    });
}

} // namespace

void add_generate(CLI::App& app) {
    add_generate_cmd(app);
    add_bench_cmd(app);
    add_draft_vocab_cmd(app);
}

} // namespace mtp::cli
