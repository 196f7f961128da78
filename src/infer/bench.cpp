// Benchmark runner and its table / JSON output.
#include "infer/bench.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "core/error.h"

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
};

} // namespace

std::vector<bench_row> bench_run(infer_model& m, const bench_params& p,
                                 const std::function<void(const std::string&)>& progress) {
    if (p.prompts.empty()) fail("bench", "no prompts");
    if (p.reps < 1) fail("-r", "must be >= 1");
    if (p.n_gen < 2) fail("-n", "must be >= 2");
    const int D = m.n_mtp();
    std::vector<spec_cfg> cfgs;
    for (int d = 1; d <= D; ++d) cfgs.push_back({d, false, 0.0f});
    if (D > 0) {
        cfgs.push_back({D + 1, true, 0.0f});
        cfgs.push_back({D + 2, true, 0.0f});
        if (p.p_min > 0) {
            cfgs.push_back({D, false, p.p_min});
            cfgs.push_back({D + 2, true, p.p_min});
        }
    }
    const std::string pp = "pp" + std::to_string(p.n_prompt), tg = "tg" + std::to_string(p.n_gen);
    {                                              // warm-up (caches, thread pools, page faults), not measured
        sampler_params sp;
        sampler s(sp);
        spec_params w;
        w.n_batch = p.n_batch;
        generate(m, s, w, p.prompts[0], std::min(p.n_gen, 16));
    }
    std::vector<bench_row> rows;
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
                spec_params sp2;
                sp2.n_draft = cfgs[i].draft;
                sp2.reuse = cfgs[i].reuse;
                sp2.p_min = cfgs[i].p_min;
                sp2.n_batch = p.n_batch;
                if (progress)
                    progress("rep " + std::to_string(r + 1) + " temp " + std::to_string(temp) + ": draft " +
                             std::to_string(cfgs[i].draft));
                gen_stats st = run(sp2, spec[i]);
                spec[i].speedup.push_back(base > 0 ? st.gen_tps() / base : 0);
            }
        }
        rows.push_back(plain);
        for (auto& r : spec) rows.push_back(r);
    }
    return rows;
}

std::string bench_table(const std::vector<bench_row>& rows) {
    std::string s = "| test | temp | draft | t/s | speed-up vs tg | mean acc. len | acceptance per draft position (- none "
                    "reached) |\n"
                    "|---|---:|---|---:|---:|---:|---|\n";
    char b[512];
    for (const auto& r : rows) {
        std::string draft = "-";
        if (r.draft > 0) {
            draft = std::to_string(r.draft);
            if (r.reuse) draft += " reuse";
            if (r.p_min > 0) {
                std::snprintf(b, sizeof b, " p-min %.2g", r.p_min);
                draft += b;
            }
        }
        std::string temp = r.test.rfind("pp", 0) == 0 ? "-" : (std::snprintf(b, sizeof b, "%.2g", r.temp), b);
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
        std::snprintf(b, sizeof b, "| %s | %s | %s | %.2f ± %.2f | %s | %s | %s |\n", r.test.c_str(), temp.c_str(),
                      draft.c_str(), mean_of(r.tps), stddev_of(r.tps), sp.c_str(), len.c_str(), acc.c_str());
        s += b;
    }
    return s;
}

std::string bench_json(const std::vector<bench_row>& rows) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& r : rows) {
        nlohmann::json j{{"test", r.test},
                         {"temperature", r.temp},
                         {"draft", r.draft},
                         {"reuse", r.reuse},
                         {"p_min", r.p_min},
                         {"tokens_per_s", r.tps},
                         {"tokens_per_s_mean", mean_of(r.tps)},
                         {"tokens_per_s_stddev", stddev_of(r.tps)}};
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
    return a.dump(2);
}

} // namespace mtp
