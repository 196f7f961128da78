// Benchmark runner and its table / JSON output.
#include "infer/bench.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_read.h"

namespace mtp {

double mean_of(const std::vector<double>& v) {
    if (v.empty()) return 0;
    double s = 0;
    for (double x : v) s += x;
    return s / double(v.size());
}

double stddev_of(const std::vector<double>& v) {
    if (v.size() < 2) return 0;
    const double mu = mean_of(v);
    double s = 0;
    for (double x : v) s += (x - mu) * (x - mu);
    return std::sqrt(s / double(v.size() - 1));
}

namespace {

struct spec_cfg {
    int draft;
    bool reuse;
    float p_min;
    int vocab;                                     // draft vocabulary size, 0: full
    std::vector<int> tree = {};                    // token tree (greedy only)
};

std::string tree_label(const std::vector<int>& t) {
    std::string s;
    for (size_t i = 0; i < t.size(); ++i) s += (i ? "," : "") + std::to_string(t[i]);
    return s;
}

using clk = std::chrono::steady_clock;

double median_of(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Per-rows forward costs after a prefill of `prompt` (stage 0 and module 1).
void measure_costs(infer_model& m, const bench_params& p, const std::vector<int>& dv, bench_result& res) {
    const std::vector<int>& prompt = p.prompts[0];
    const int P = int(prompt.size()), d = m.n_embd(), V = m.n_vocab();
    int rmax = 0;
    for (int r : p.cost_rows) rmax = std::max(rmax, r);
    if (rmax <= 0 || P < 2 || P + rmax > m.n_ctx() || m.n_mtp() == 0) return;
    if (!dv.empty()) m.set_draft_vocab(dv);
    for (int k = 0; k <= m.n_mtp(); ++k) m.truncate(k, 0);
    std::vector<float> h0(size_t(P + rmax) * d), h1(size_t(P + rmax) * d), hb(size_t(rmax) * d),
        lg(size_t(rmax) * V);
    for (int j0 = 0; j0 < P; j0 += p.n_batch) {
        const int cnt = std::min(p.n_batch, P - j0);
        m.eval(0, j0, cnt, prompt.data() + j0, nullptr, h0.data() + size_t(j0) * d, nullptr);
    }
    for (int j0 = 0; j0 < P - 1; j0 += p.n_batch) {
        const int cnt = std::min(p.n_batch, P - 1 - j0);
        m.eval(1, j0, cnt, prompt.data() + j0 + 1, h0.data() + size_t(j0) * d, h1.data() + size_t(j0) * d, nullptr);
    }
    std::vector<int> toks(rmax);
    for (int i = 0; i < rmax; ++i) toks[i] = prompt[size_t(i) % P];
    res.cost_context = P;
    res.cost_draft_vocab = int(dv.size());
    const int iters = 41;
    auto time_it = [&](auto&& fn) {
        std::vector<double> t;
        fn();                                      // warm-up
        for (int i = 0; i < iters; ++i) {
            auto t0 = clk::now();
            fn();
            t.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
        }
        return median_of(t);
    };
    for (int R : p.cost_rows) {
        if (R <= 0) continue;
        cost_row c;
        c.rows = R;
        c.main_full = time_it([&] {
            m.eval(0, P, R, toks.data(), nullptr, hb.data(), lg.data(), 0);
            m.truncate(0, P);
        });
        c.experts = m.experts_read(0);
        c.trunk = time_it([&] {
            m.eval(0, P, R, toks.data(), nullptr, hb.data(), nullptr);
            m.truncate(0, P);
        });
        c.module = time_it([&] {
            m.eval(1, P - 1, R, toks.data(), h0.data(), hb.data(), nullptr);
            m.truncate(1, P - 1);
        });
        c.module_full = time_it([&] {
            m.eval(1, P - 1, R, toks.data(), h0.data(), hb.data(), lg.data(), R - 1);
            m.truncate(1, P - 1);
        });
        if (!dv.empty())
            c.module_draft = time_it([&] {
                m.eval(1, P - 1, R, toks.data(), h0.data(), hb.data(), lg.data(), R - 1, true);
                m.truncate(1, P - 1);
            });
        res.costs.push_back(c);
    }
    for (int k = 0; k <= m.n_mtp(); ++k) m.truncate(k, 0);
}

} // namespace

std::vector<int> vocab_rank_by_frequency(const std::vector<uint32_t>& ids, int V) {
    std::vector<int64_t> cnt(V, 0);
    for (uint32_t t : ids)
        if (t < uint32_t(V)) ++cnt[t];
    std::vector<int> rank(V);
    std::iota(rank.begin(), rank.end(), 0);
    std::stable_sort(rank.begin(), rank.end(), [&](int a, int b) { return cnt[a] > cnt[b]; });
    return rank;
}

std::vector<int> draft_vocab_from_rank(const std::vector<int>& rank, int N) {
    if (N <= 0 || N > int(rank.size()))
        fail("--draft-vocab", std::to_string(N) + " is not in 1.." + std::to_string(rank.size()));
    std::vector<int> v(rank.begin(), rank.begin() + N);
    std::sort(v.begin(), v.end());
    return v;
}

bench_result bench_run(infer_model& m, const bench_params& p,
                       const std::function<void(const std::string&)>& progress) {
    if (p.prompts.empty()) fail("bench", "no prompts");
    if (p.reps < 1) fail("-r", "must be >= 1");
    if (p.n_gen < 2) fail("-n", "must be >= 2");
    const int D = m.n_mtp();
    std::vector<std::vector<int>> vocabs;          // per entry of p.draft_vocabs
    for (int N : p.draft_vocabs) {
        if (N > 0 && p.vocab_rank.empty()) fail("--draft-vocab", "needs token frequencies");
        vocabs.push_back(N > 0 ? draft_vocab_from_rank(p.vocab_rank, N) : std::vector<int>{});
    }
    std::vector<spec_cfg> cfgs;
    const bool par = D > 0 && m.mtp_parallel();    // parallel heads: no reuse past D, no trees
    if (par && !p.trees.empty())
        fail("--draft-tree", "needs sequential MTP modules; this model's are parallel heads (mtp_style \"parallel\")");
    if (D > 0)
        for (int N : p.draft_vocabs) {
            for (int d = 1; d <= D; ++d) cfgs.push_back({d, false, 0.0f, N});
            if (!par) {
                cfgs.push_back({D + 1, true, 0.0f, N});
                cfgs.push_back({D + 2, true, 0.0f, N});
            }
            if (p.p_min > 0) {
                cfgs.push_back({D, false, p.p_min, N});
                if (!par) cfgs.push_back({D + 2, true, p.p_min, N});
            }
            for (const auto& t : p.trees) cfgs.push_back({int(t.size()), int(t.size()) > D, 0.0f, N, t});
        }
    auto vocab_of = [&](int N) -> const std::vector<int>& {
        for (size_t i = 0; i < p.draft_vocabs.size(); ++i)
            if (p.draft_vocabs[i] == N) return vocabs[i];
        return vocabs[0];
    };
    const std::string pp = "pp" + std::to_string(p.n_prompt), tg = "tg" + std::to_string(p.n_gen);
    {                                              // warm-up (caches, thread pools, page faults), not measured
        sampler_params sp;
        sampler s(sp);
        spec_params w;
        w.n_batch = p.n_batch;
        generate(m, s, w, p.prompts[0], std::min(p.n_gen, 16));
    }
    bench_result res;
    std::vector<bench_row>& rows = res.rows;
    bench_row pp_row;
    pp_row.test = pp;
    rows.push_back(pp_row);
    for (float temp : p.temps) {
        bench_row plain;
        plain.test = tg;
        plain.temp = temp;
        std::vector<bench_row> spec(cfgs.size());
        for (size_t i = 0; i < cfgs.size(); ++i) {
            spec[i].test = tg + "+mtp";
            spec[i].temp = temp;
            spec[i].draft = cfgs[i].draft;
            spec[i].reuse = cfgs[i].reuse;
            spec[i].p_min = cfgs[i].p_min;
            spec[i].draft_vocab = cfgs[i].vocab;
            spec[i].tree = cfgs[i].tree;
        }
        for (int r = 0; r < p.reps; ++r) {
            const std::vector<int>& prompt = p.prompts[size_t(r) % p.prompts.size()];
            sampler_params sp;
            sp.temperature = temp;
            sp.seed = p.seed + uint64_t(r);
            auto run = [&](const spec_params& spp, bench_row& row) {
                sampler s(sp);
                gen_stats st;
                generate(m, s, spp, prompt, p.n_gen, -1, {}, &st);
                row.tps.push_back(st.gen_tps());
                row.stats.add(st);
                return st;
            };
            spec_params none;
            none.enabled = false;
            none.n_batch = p.n_batch;
            if (progress) progress("rep " + std::to_string(r + 1) + " temp " + std::to_string(temp) + ": plain");
            gen_stats st0 = run(none, plain);
            if (temp == p.temps.front()) {         // pp once per repetition, from the plain run's prompt pass
                rows[0].tps.push_back(st0.prompt_tps());
                rows[0].stats.add(st0);
            }
            const double base = st0.gen_tps();
            plain.speedup.push_back(1.0);
            for (size_t i = 0; i < cfgs.size(); ++i) {
                if (!cfgs[i].tree.empty() && temp > 0) continue;     // trees are greedy; sampling = the chain row
                spec_params sp2;
                sp2.tree = cfgs[i].tree;
                sp2.n_draft = cfgs[i].draft;
                sp2.reuse = cfgs[i].reuse;
                sp2.p_min = cfgs[i].p_min;
                sp2.n_batch = p.n_batch;
                sp2.draft_vocab = vocab_of(cfgs[i].vocab);
                if (progress)
                    progress("rep " + std::to_string(r + 1) + " temp " + std::to_string(temp) + ": draft " +
                             std::to_string(cfgs[i].draft));
                gen_stats st = run(sp2, spec[i]);
                spec[i].speedup.push_back(base > 0 ? st.gen_tps() / base : 0);
            }
        }
        rows.push_back(plain);
        for (auto& r : spec)
            if (!r.tps.empty()) rows.push_back(r);
    }
    if (!p.cost_rows.empty()) {
        if (progress) progress("forward costs");
        std::vector<int> dv;
        for (size_t i = 0; i < p.draft_vocabs.size() && dv.empty(); ++i) dv = vocabs[i];
        measure_costs(m, p, dv, res);
    }
    return res;
}

namespace {

std::string draft_label(const bench_row& r) {
    char b[64];
    std::string draft = "-";
    if (r.draft > 0 && !r.tree.empty()) {
        draft = "tree " + tree_label(r.tree);
        if (r.reuse) draft += " reuse";
    } else if (r.draft > 0) {
        draft = std::to_string(r.draft);
        if (r.reuse) draft += " reuse";
        if (r.p_min > 0) {
            std::snprintf(b, sizeof b, " p-min %.2g", r.p_min);
            draft += b;
        }
    }
    return draft;
}

std::string vocab_label(const bench_row& r) {
    if (r.draft == 0) return "-";
    return r.draft_vocab > 0 ? std::to_string(r.draft_vocab) : "full";
}

std::string temp_label(const bench_row& r) {
    char b[32];
    if (r.test.rfind("pp", 0) == 0) return "-";
    std::snprintf(b, sizeof b, "%.2g", r.temp);
    return b;
}

} // namespace

std::vector<weights_row> bench_weight_types(const std::vector<infer_model*>& models,
                                            const std::vector<std::string>& names, const std::vector<double>& mb,
                                            const bench_params& p) {
    std::vector<weights_row> rows(models.size());
    spec_params plain;
    plain.enabled = false;
    plain.n_batch = p.n_batch;
    for (size_t i = 0; i < models.size(); ++i) {
        rows[i].name = names[i];
        rows[i].mb_per_step = mb[i];
        sampler s(sampler_params{});
        generate(*models[i], s, plain, p.prompts[0], std::min(p.n_gen, 16));     // warm-up
    }
    for (int r = 0; r < p.reps; ++r) {
        const std::vector<int>& prompt = p.prompts[size_t(r) % p.prompts.size()];
        for (size_t i = 0; i < models.size(); ++i) {
            sampler s(sampler_params{});
            gen_stats st;
            generate(*models[i], s, plain, prompt, p.n_gen, -1, {}, &st);
            rows[i].tps.push_back(st.gen_tps());
            rows[i].ratio.push_back(rows[0].tps.back() > 0 ? st.gen_tps() / rows[0].tps.back() : 0);
        }
    }
    return rows;
}

std::string bench_weights_table(const std::vector<weights_row>& rows) {
    std::string out = "| weights | MB per step | tg t/s | vs " + (rows.empty() ? std::string() : rows[0].name) + " |\n";
    out += "|---|---:|---:|---:|\n";
    char b[256];
    for (const auto& r : rows) {
        std::snprintf(b, sizeof b, "| %s | %.1f | %.1f ± %.1f | %.2f× ± %.2f |\n", r.name.c_str(), r.mb_per_step,
                      mean_of(r.tps), stddev_of(r.tps), mean_of(r.ratio), stddev_of(r.ratio));
        out += b;
    }
    return out;
}

std::string bench_table(const std::vector<bench_row>& rows) {
    std::string s = "| test | temp | draft | draft vocab | t/s | speed-up vs tg | mean acc. len | acceptance per draft "
                    "position (- none reached) |\n"
                    "|---|---:|---|---:|---:|---:|---:|---|\n";
    char b[512];
    for (const auto& r : rows) {
        std::string sp = "-", acc = "-", len = "-";
        if (!r.speedup.empty() && r.draft > 0) {
            std::snprintf(b, sizeof b, "%.3f ± %.3f", mean_of(r.speedup), stddev_of(r.speedup));
            sp = b;
            std::snprintf(b, sizeof b, "%.3f", r.stats.mean_accept_len());
            len = b;
            acc.clear();
            for (size_t j = 0; j < r.stats.reached.size(); ++j) {
                if (r.stats.reached[j] == 0) std::snprintf(b, sizeof b, "%s-", j ? " " : "");
                else std::snprintf(b, sizeof b, "%s%.3f", j ? " " : "", r.stats.accept_rate(int(j)));
                acc += b;
            }
        }
        std::snprintf(b, sizeof b, "| %s | %s | %s | %s | %.2f ± %.2f | %s | %s | %s |\n", r.test.c_str(),
                      temp_label(r).c_str(), draft_label(r).c_str(), vocab_label(r).c_str(), mean_of(r.tps),
                      stddev_of(r.tps), sp.c_str(), len.c_str(), acc.c_str());
        s += b;
    }
    return s;
}

std::string bench_breakdown(const std::vector<bench_row>& rows) {
    std::string s = "| test | temp | draft | draft vocab | µs/token | draft (MTP fwd) | verify (main fwd) | sampling | "
                    "rollback | other | main rows/round | MTP passes/round | refill rows/round |\n"
                    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    char b[512];
    for (const auto& r : rows) {
        if (r.test.rfind("tg", 0) != 0) continue;
        const gen_stats& st = r.stats;
        if (st.n_steps_tokens == 0) continue;
        const double k = 1e6 / double(st.n_steps_tokens);
        const double other = st.t_gen - st.t_draft - st.t_verify - st.t_sample - st.t_rollback;
        const double rounds = st.n_rounds > 0 ? double(st.n_rounds) : 1.0;
        std::snprintf(b, sizeof b,
                      "| %s | %s | %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f |\n",
                      r.test.c_str(), temp_label(r).c_str(), draft_label(r).c_str(), vocab_label(r).c_str(),
                      st.t_gen * k, st.t_draft * k, st.t_verify * k, st.t_sample * k, st.t_rollback * k, other * k,
                      st.n_verify_rows / rounds, st.n_module_passes / rounds, st.n_refill_rows / rounds);
        s += b;
    }
    return s;
}

std::string bench_cost_table(const bench_result& r) {
    if (r.costs.empty()) return "";
    char b[512];
    std::snprintf(b, sizeof b,
                  "| rows | main fwd + full head | (× 1 row) | trunk only | MTP module, no head | (× 1 row) | module + "
                  "full head (last row) | module + draft head %d (last row) | routed experts read (× 1 row) |\n"
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
                  r.cost_draft_vocab);
    std::string s = b;
    const cost_row& one = r.costs.front();
    for (const auto& c : r.costs) {
        std::string dv = c.module_draft > 0 ? (std::snprintf(b, sizeof b, "%.1f", c.module_draft), b) : "-";
        std::string ex = "-";
        if (c.experts > 0 && one.experts > 0) {
            std::snprintf(b, sizeof b, "%lld (%.2f)", c.experts, double(c.experts) / double(one.experts));
            ex = b;
        }
        std::snprintf(b, sizeof b, "| %d | %.1f | %.2f | %.1f | %.1f | %.2f | %.1f | %s | %s |\n", c.rows, c.main_full,
                      one.main_full > 0 ? c.main_full / one.main_full : 0, c.trunk, c.module,
                      one.module > 0 ? c.module / one.module : 0, c.module_full, dv.c_str(), ex.c_str());
        s += b;
    }
    return s;
}

std::string bench_json(const bench_result& res) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& r : res.rows) {
        nlohmann::json j{{"test", r.test},
                         {"temperature", r.temp},
                         {"draft", r.draft},
                         {"reuse", r.reuse},
                         {"p_min", r.p_min},
                         {"draft_vocab", r.draft_vocab},
                         {"tree", r.tree},
                         {"tokens_per_s", r.tps},
                         {"tokens_per_s_mean", mean_of(r.tps)},
                         {"tokens_per_s_stddev", stddev_of(r.tps)}};
        const gen_stats& st = r.stats;
        if (r.test.rfind("tg", 0) == 0 && st.n_steps_tokens > 0) {
            const double k = 1e6 / double(st.n_steps_tokens);
            j["us_per_token"] = {{"total", st.t_gen * k},
                                 {"draft", st.t_draft * k},
                                 {"verify", st.t_verify * k},
                                 {"sampling", st.t_sample * k},
                                 {"rollback", st.t_rollback * k},
                                 {"other", (st.t_gen - st.t_draft - st.t_verify - st.t_sample - st.t_rollback) * k}};
            j["rounds"] = st.n_rounds;
            j["main_rows"] = st.n_verify_rows;
            j["module_passes"] = st.n_module_passes;
            j["refill_rows"] = st.n_refill_rows;
        }
        if (r.draft > 0) {
            std::vector<double> acc;
            for (size_t k = 0; k < r.stats.reached.size(); ++k) acc.push_back(r.stats.accept_rate(int(k)));
            j["speedup"] = r.speedup;
            j["speedup_mean"] = mean_of(r.speedup);
            j["speedup_stddev"] = stddev_of(r.speedup);
            j["drafts"] = r.stats.n_drafts;
            j["draft_tokens"] = r.stats.n_draft_tokens;
            j["accepted"] = r.stats.n_accepted;
            j["acceptance_per_position"] = acc;
            j["mean_acceptance_length"] = r.stats.mean_accept_len();
        }
        a.push_back(j);
    }
    nlohmann::json costs = nlohmann::json::array();
    for (const auto& c : res.costs)
        costs.push_back({{"rows", c.rows},
                         {"main_full_us", c.main_full},
                         {"trunk_us", c.trunk},
                         {"module_us", c.module},
                         {"module_full_head_us", c.module_full},
                         {"module_draft_head_us", c.module_draft},
                         {"experts_read", c.experts}});
    nlohmann::json out{{"rows", a},
                       {"forward_costs", {{"context", res.cost_context}, {"draft_vocab", res.cost_draft_vocab},
                                          {"rows", costs}}}};
    return out.dump(2);
}

// Ranking from DIR/draft_vocab.json (written by `mtp draft-vocab`): "ids", most frequent first.
std::vector<int> draft_rank_from_json(const std::string& path, int vocab, const std::string& flag) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(flag, "cannot open " + path);
    std::stringstream ss;
    ss << f.rdbuf();
    nlohmann::json j = json_parse(ss.str(), flag + ": " + path);
    if (!j.is_object() || !j.contains("ids") || !j["ids"].is_array() || j["ids"].empty())
        fail(flag, path + ": expected an object with a non-empty \"ids\" array");
    std::vector<int> rank;
    std::vector<char> seen(vocab, 0);
    for (const auto& v : j["ids"]) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab)
            fail(flag, path + ": ids must be integers in [0, " + std::to_string(vocab) + ")");
        const int id = v.get<int>();
        if (seen[id]) fail(flag, path + ": id " + std::to_string(id) + " listed twice");
        seen[id] = 1;
        rank.push_back(id);
    }
    return rank;
}

} // namespace mtp
