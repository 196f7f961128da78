// Continuous batching (src/infer/batcher.h) and the prompt cache (generator::start with reuse): sequences driven by
// their own threads through shared passes give exactly the tokens each gives alone on a cpu_model — greedy and
// sampled, plain, chain speculation, trees and reuse drafting, prompts longer than a pass — and a generator that
// keeps the prefix of its previous request continues exactly as a fresh one.
#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <thread>

#include "infer/batcher.h"
#include "infer/cpu_model.h"
#include "infer/speculative.h"
#include "infer_test_util.h"

using namespace mtp;
using namespace mtp::test;

namespace {

struct job {
    std::vector<int> prompt;
    sampler_params sp;
    spec_params spec;
    int n_new = 0;
};

std::vector<int> alone(const model_files& m, const job& j) {
    cpu_model cm(m);
    sampler s(j.sp);
    return generate(cm, s, j.spec, j.prompt, j.n_new);
}

std::vector<job> jobs_for(const model_config& c, uint64_t seed, int n) {
    rng r(seed);
    std::vector<job> js;
    for (int i = 0; i < n; ++i) {
        job j;
        const int P = i % 3 == 0 ? 70 + int(r.below(20)) : 1 + int(r.below(12));   // some longer than a pass
        for (int t = 0; t < P; ++t) j.prompt.push_back(int(r.below(uint64_t(c.vocab_size))));
        j.n_new = 10 + int(r.below(25));
        j.sp.temperature = i % 2 ? 0.8f : 0.0f;
        j.sp.seed = seed + uint64_t(i);
        switch (i % 4) {
            case 0: j.spec.enabled = false; break;
            case 1: break;                                               // chain, D drafts
            case 2: j.spec.reuse = true; j.spec.n_draft = c.n_mtp() + 1; break;
            case 3: j.spec.tree = {2, 1}; j.spec.reuse = true; break;    // greedy rows only (sampled: the chain)
        }
        js.push_back(j);
    }
    return js;
}

// Every job on a thread of one batcher with `slots` sequences (jobs beyond that wait for a free one).
void check_batched(const nlohmann::json& cfg, uint64_t seed, int n_jobs, int slots, int max_rows) {
    single_thread_scope one_thread;
    const model_files m = random_model(cfg, seed);
    const std::vector<job> js = jobs_for(m.config, seed, n_jobs);
    std::vector<std::vector<int>> want(js.size()), got(js.size());
    for (size_t i = 0; i < js.size(); ++i) want[i] = alone(m, js[i]);

    batcher b(m, slots, 0, wtype::f32, max_rows);
    std::thread runner([&] {
        while (b.run_round()) {}
    });
    std::atomic<int> next{0};
    std::vector<std::thread> th;
    // Every slot attaches before the first call, so the first round shares a pass whatever the scheduling (a loaded
    // machine could otherwise run one thread's first job to the end before another attaches).
    std::latch all_attached(std::min<std::ptrdiff_t>(slots, std::ptrdiff_t(js.size())));
    for (int s = 0; s < slots; ++s)
        th.emplace_back([&, s] {
            bool first = true;
            for (int i; (i = next++) < int(js.size());) {
                const job& j = js[size_t(i)];
                sampler smp(j.sp);
                b.attach(s);
                if (first) all_attached.arrive_and_wait();
                first = false;
                generator gen(b.seq(s), smp, j.spec);
                std::vector<int> out{gen.start(j.prompt)};
                std::vector<int> buf;
                while (int(out.size()) < j.n_new) {
                    buf.clear();
                    if (gen.step(j.n_new - int(out.size()), buf) == 0) break;
                    out.insert(out.end(), buf.begin(), buf.end());
                }
                b.detach(s);
                got[size_t(i)] = out;
            }
        });
    for (auto& t : th) t.join();
    b.stop();
    runner.join();
    for (size_t i = 0; i < js.size(); ++i) EXPECT_EQ(got[i], want[i]) << "job " << i;
    const batch_stats st = b.stats();
    if (slots > 1) {
        EXPECT_GT(st.max_seqs, 1) << "no pass was shared";
    }
    EXPECT_GE(st.calls, st.passes);
}

} // namespace

TEST(Batcher, MoeD2EightSlotsMatchAlone) { check_batched(small_config(2, true, true, true), 3, 16, 8, 128); }
TEST(Batcher, DenseD1ThreeSlotsSmallPasses) { check_batched(small_config(1, false, true, false), 5, 9, 3, 24); }
// The batch runner's passes use the helpers (its thread has the default thread count): with the row-wise steps
// split too, every row-wise step of a shared pass runs in blocks on both threads.
TEST(Batcher, MoeD2EightSlotsRowStepsSplit) {
    row_split_scope split;
    check_batched(small_config(2, true, true, true), 13, 12, 8, 128);
}
TEST(Batcher, OneSlot) { check_batched(small_config(2, true, false, false), 7, 4, 1, 128); }

// A generator kept across requests reuses the longest common prefix of its previous tokens and the new prompt, and
// gives exactly what a fresh generator gives: follow-up prompts (previous prompt + output + more), a shorter prompt
// inside the cached tokens, a prompt that diverges early, for plain, chain and sampled decoding.
// Sequential modules and parallel heads (whose entries at every prompt position stay valid: a hit covering the
// whole prompt still recomputes the frontier row the first draft reads).
TEST(PromptCache, ReusedPrefixMatchesFreshStart) {
    single_thread_scope one_thread;
    for (const bool parallel : {false, true}) {
        SCOPED_TRACE(parallel ? "parallel heads" : "sequential modules");
        const nlohmann::json cfg = small_config(2, true, true, true);
        const model_files m = random_model(parallel ? with_parallel_heads(cfg) : cfg, 11);
        const int V = m.config.vocab_size;
        rng r(11);
        for (int mode = 0; mode < 3; ++mode) {
            SCOPED_TRACE("mode " + std::to_string(mode));
            spec_params sp;
            sp.enabled = mode != 0;
            sampler_params smp;
            smp.temperature = mode == 2 ? 0.8f : 0.0f;
            cpu_model kept(m);
            sampler s0(smp);
            generator g(kept, s0, sp);
            std::vector<int> prompt(20);
            for (int& t : prompt) t = int(r.below(uint64_t(V)));
            std::vector<int> history;
            for (int req = 0; req < 6; ++req) {
                std::vector<int> p;
                if (req == 0 || req == 3) p = prompt;
                else if (req == 4) p.assign(history.begin(), history.begin() + long(history.size() / 2));   // inside
                else if (req == 5) { p = {prompt[0], prompt[1]}; p.push_back(int(r.below(uint64_t(V)))); }  // diverges
                else { p = history; for (int k = 0; k < 5; ++k) p.push_back(int(r.below(uint64_t(V)))); }     // follow-up
                smp.seed = 100 + uint64_t(req);
                sampler s(smp);
                g.set_sampler(s);
                std::vector<int> out{g.start(p, true)};
                std::vector<int> buf;
                while (out.size() < 15) {
                    buf.clear();
                    if (g.step(15 - int(out.size()), buf) == 0) break;
                    out.insert(out.end(), buf.begin(), buf.end());
                }
                if (req == 1 || req == 2 || req == 4) {
                    EXPECT_GT(g.n_reused(), 0) << "request " << req;
                }
                EXPECT_LT(g.n_reused(), int(p.size()));
                sampler sf(smp);
                cpu_model fresh(m);
                EXPECT_EQ(generate(fresh, sf, sp, p, 15), out) << "request " << req;
                history = p;
                history.insert(history.end(), out.begin(), out.end());
            }
        }
    }
}
