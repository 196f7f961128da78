// Continuous batching without the HTTP server: N sequences, each on its own thread, decode through one batcher
// (src/infer/batcher.h) for every N of a ladder, plain and with MTP speculation at a fixed draft length; prints
// aggregate tokens/s and its ratio to N = 1, and rows / sequences per shared pass. The engine-side ceiling of what
// `mtp serve --parallel` can give (bench/serve_load.py measures the server, client on the same machine).
// The whole ladder runs --rounds times in turn (machine drift hits every level alike); each cell is the median over
// the rounds, and each ratio the median of the ratios measured within a round, with their range (rows and sequences
// per pass: the last round's).
//   build/bench_batch MODEL DATA/val_000.bin [--levels 1,2,4,8,16] [--n-gen 64] [--n-prompt 32] [--reps 2]
//       [--rounds 5] [--threads 2] [--weights f32]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <omp.h>

#include "core/error.h"
#include "infer/batcher.h"
#include "infer/speculative.h"
#include "io/token_shard.h"

using namespace mtp;

namespace {
double run_level(const model_files& m, wtype t, const std::vector<uint32_t>& ids, int N, bool spec, int n_gen,
                 int n_prompt, int reps, int threads, batch_stats& st) {
    batcher b(m, N, 0, t, 256);
    std::thread runner([&] {
        if (threads > 0) omp_set_num_threads(threads);
        while (b.run_round()) {}
    });
    std::atomic<long> toks{0};
    const size_t stride = std::max<size_t>(1, (ids.size() - size_t(n_prompt)) / size_t(N * reps + 1));
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> th;
    for (int s = 0; s < N; ++s)
        th.emplace_back([&, s] {
            for (int r = 0; r < reps; ++r) {
                const size_t at = size_t(s * reps + r) * stride;
                std::vector<int> prompt(ids.begin() + long(at), ids.begin() + long(at) + n_prompt);
                sampler smp(sampler_params{});
                spec_params p;
                p.enabled = spec;
                b.attach(s);
                toks += long(generate(b.seq(s), smp, p, prompt, n_gen).size());
                b.detach(s);
            }
        });
    for (auto& x : th) x.join();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st = b.stats();
    b.stop();
    runner.join();
    return double(toks) / dt;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
} // namespace

int main(int argc, char** argv) {
    try {
        const char* usage = "usage: bench_batch MODEL SHARD [--levels 1,2,4,8,16] [--n-gen N] [--n-prompt N] [--reps R] "
                            "[--rounds R] [--threads T] [--weights f32|bf16|q8_0]";
        for (int i = 1; i < argc; ++i)
            if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
                std::printf("%s\n", usage);
                return 0;
            }
        if (argc < 3) fail("bench_batch", usage);
        if ((argc - 3) % 2 != 0) fail(argv[argc - 1], "flag without a value");
        std::vector<int> levels = {1, 2, 4, 8, 16};
        int n_gen = 64, n_prompt = 32, reps = 2, threads = 2, rounds = 5;
        wtype t = wtype::f32;
        for (int i = 3; i + 1 < argc; i += 2) {
            const std::string k = argv[i], v = argv[i + 1];
            if (k == "--levels") {
                levels.clear();
                for (size_t p = 0; p <= v.size();) {
                    size_t q = v.find(',', p);
                    if (q == std::string::npos) q = v.size();
                    levels.push_back(std::max(1, std::atoi(v.substr(p, q - p).c_str())));
                    p = q + 1;
                }
            } else if (k == "--n-gen") n_gen = std::atoi(v.c_str());
            else if (k == "--n-prompt") n_prompt = std::atoi(v.c_str());
            else if (k == "--reps") {
                reps = std::atoi(v.c_str());
                if (reps < 1) fail("--reps", "must be at least 1");
            } else if (k == "--rounds") rounds = std::max(1, std::atoi(v.c_str()));
            else if (k == "--threads") threads = std::atoi(v.c_str());
            else if (k == "--weights") { if (!wtype_from_name(v, t)) fail("--weights", "expected f32, bf16 or q8_0"); }
            else fail(k, "unknown flag");
        }
        const model_files m = model_load_dir(argv[1]);
        const token_shard sh = token_shard_read(argv[2]);
        if (sh.ids.size() < size_t(n_prompt) * 4) fail(argv[2], "too few tokens for the prompts");
        std::printf("model %s, %s weights, %d threads, prompts %d tokens, %d generated, %d per sequence, %d rounds\n\n",
                    argv[1], wtype_name(t), threads, n_prompt, n_gen, reps, rounds);
        const size_t L = levels.size();
        const bool has_mtp = m.config.n_mtp() > 0;
        std::vector<std::vector<double>> plain(L), spec(L), vs1(L), vsplain(L);
        std::vector<batch_stats> sp(L);
        for (int r = 0; r < rounds; ++r)
            for (size_t i = 0; i < L; ++i) {
                batch_stats ss;
                const double p = run_level(m, t, sh.ids, levels[i], false, n_gen, n_prompt, reps, threads, sp[i]);
                const double q = has_mtp ? run_level(m, t, sh.ids, levels[i], true, n_gen, n_prompt, reps, threads, ss) : 0;
                plain[i].push_back(p);
                spec[i].push_back(q);
                vs1[i].push_back(p / plain[0].back());
                vsplain[i].push_back(q / p);
                std::fprintf(stderr, "round %d/%d, %d sequences: plain %.1f, mtp %.1f tok/s\n", r + 1, rounds,
                             levels[i], p, q);
            }
        auto range = [](const std::vector<double>& v) {
            char b[64];
            std::snprintf(b, sizeof b, "%.2f-%.2f", *std::min_element(v.begin(), v.end()),
                          *std::max_element(v.begin(), v.end()));
            return std::string(b);
        };
        std::printf("| sequences | plain tok/s | vs N=1 | (range) | rows/pass | seqs/pass | mtp (D drafts) tok/s | vs plain | (range) |\n");
        std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (size_t i = 0; i < L; ++i)
            std::printf("| %d | %.1f | %.2fx | %s | %.2f | %.2f | %.1f | %.2fx | %s |\n", levels[i], median(plain[i]),
                        median(vs1[i]), range(vs1[i]).c_str(),
                        double(sp[i].rows) / double(std::max<int64_t>(1, sp[i].passes)),
                        double(sp[i].calls) / double(std::max<int64_t>(1, sp[i].passes)), median(spec[i]),
                        median(vsplain[i]), range(vsplain[i]).c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
