// Training-step benchmark of mtp.cpp: forward + backward over a batch + AdamW, same protocol as
// bench_train_torch.py so bench/compare_train.sh can print the two side by side.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <omp.h>

#include "core/arena.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/model.h"
#include "train/adamw.h"

int main(int argc, char** argv) {
    std::string config;
    int seq = 128, batch = 4, steps = 5, threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--config") config = v;
        else if (k == "--seq") seq = std::atoi(v.c_str());
        else if (k == "--batch") batch = std::atoi(v.c_str());
        else if (k == "--steps") steps = std::atoi(v.c_str());
        else if (k == "--threads") threads = std::atoi(v.c_str());
        else { std::fprintf(stderr, "error: unknown flag %s\n", k.c_str()); return 1; }
    }
    if (config.empty()) { std::fprintf(stderr, "usage: bench_train --config C [--seq T --batch B --steps N --threads P]\n"); return 1; }
    try {
        if (threads > 0) omp_set_num_threads(threads);
        mtp::model_config c = mtp::config_load(config);
        mtp::model_layout L = mtp::layout_build(c);
        std::vector<float> W, G(L.n_floats);
        mtp::weights_init(c, L, W, 1);
        size_t n_params = 0;
        for (const auto& p : L.params) n_params += p.size;
        mtp::rng r(1234);
        std::vector<int> tokens(size_t(batch) * seq);
        for (auto& t : tokens) t = int(r.below(c.vocab_size));
        mtp::arena a;
        mtp::model_state s;
        mtp::adamw_state opt;
        mtp::adamw_config oc;
        double loss = 0;
        auto step = [&] {
            std::fill(G.begin(), G.end(), 0.0f);
            loss = 0;
            for (int b = 0; b < batch; ++b) {
                a.reset();
                mtp::model_forward(c, L, W.data(), s, tokens.data() + size_t(b) * seq, seq, 0.0f, a);
                loss += mtp::model_backward(c, L, W.data(), G.data(), s, 0.3f, 0.0f, 1.0f / batch, a).total / batch;
            }
            mtp::adamw_step(oc, opt, L, W.data(), G.data(), 1e-3f);
        };
        for (int i = 0; i < 2; ++i) step();                      // warm-up (arena growth, BLAS init)
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < steps; ++i) step();
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
        std::printf("{\"impl\":\"mtp.cpp\",\"ms_per_step\":%.2f,\"tokens_per_s\":%.1f,\"params\":%zu,\"loss\":%.4f,"
                    "\"threads\":%d}\n",
                    ms, batch * seq / (ms / 1000.0), n_params, loss, omp_get_max_threads());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
