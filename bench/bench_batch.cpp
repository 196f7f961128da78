// Continuous batching without the HTTP server: N sequences, each on its own thread, decode through one batcher
// (src/infer/batcher.h) for every N of a ladder, plain and with MTP speculation at a fixed draft length; prints
// aggregate tokens/s and its ratio to N = 1, and rows / sequences per shared pass. The engine-side ceiling of what
// `mtp serve --parallel` can give (bench/serve_load.py measures the server, client on the same machine).
//   build/bench_batch MODEL DATA/val_000.bin [--levels 1,2,4,8,16] [--n-gen 64] [--n-prompt 32] [--reps 2]
//       [--threads 2] [--weights f32]
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
} // namespace

int main(int argc, char** argv) {
    try {
        if (argc < 3) fail("bench_batch", "usage: bench_batch MODEL SHARD [--levels 1,2,4,8,16] [--n-gen N] "
                                          "[--n-prompt N] [--reps R] [--threads T] [--weights f32|bf16|q8_0]");
        std::vector<int> levels = {1, 2, 4, 8, 16};
        int n_gen = 64, n_prompt = 32, reps = 2, threads = 2;
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
            else if (k == "--reps") reps = std::atoi(v.c_str());
            else if (k == "--threads") threads = std::atoi(v.c_str());
            else if (k == "--weights") { if (!wtype_from_name(v, t)) fail("--weights", "expected f32, bf16 or q8_0"); }
            else fail(k, "unknown flag");
        }
        const model_files m = model_load_dir(argv[1]);
        const token_shard sh = token_shard_read(argv[2]);
        if (sh.ids.size() < size_t(n_prompt) * 4) fail(argv[2], "too few tokens for the prompts");
        std::printf("model %s, %s weights, %d threads, prompts %d tokens, %d generated, %d per sequence\n\n", argv[1],
                    wtype_name(t), threads, n_prompt, n_gen, reps);
        std::printf("| sequences | plain tok/s | vs N=1 | rows/pass | seqs/pass | mtp (D drafts) tok/s | vs plain |\n");
        std::printf("|---:|---:|---:|---:|---:|---:|---:|\n");
        double base = 0;
        for (int N : levels) {
            batch_stats sp, ss;
            const double plain = run_level(m, t, sh.ids, N, false, n_gen, n_prompt, reps, threads, sp);
            const double spec = m.config.n_mtp() > 0 ? run_level(m, t, sh.ids, N, true, n_gen, n_prompt, reps, threads, ss) : 0;
            if (base == 0) base = plain;
            std::printf("| %d | %.1f | %.2fx | %.2f | %.2f | %.1f | %.2fx |\n", N, plain, plain / base,
                        double(sp.rows) / double(std::max<int64_t>(1, sp.passes)),
                        double(sp.calls) / double(std::max<int64_t>(1, sp.passes)), spec, spec / plain);
            std::fflush(stdout);
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
