// Training-step benchmark of mtp.cpp: forward + backward over a batch + AdamW, same protocol as
// bench_train_torch.py so bench/compare_train.sh can print the two side by side.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <omp.h>

#include "core/arena.h"
#include "core/error.h"
#include "core/gemm_bf16.h"
#include "core/blas_core.h"
#include "core/profile.h"
#include "core/rng.h"
#include "model/model.h"
#include "train/adamw.h"
#include "train/flops.h"

int main(int argc, char** argv) {
    std::string config;
    int seq = 128, batch = 4, steps = 5, threads = 0, pass_tokens = 4096;
    std::string precision = "fp32";
    bool profile = false, peak_json = false;
    const char* usage = "usage: bench_train --config C [--seq T --batch B --steps N --threads P] [--precision fp32|bf16] "
                        "[--pass-tokens N] [--profile] [--peak] | --bf16-kernel\n";
    for (int i = 1; i < argc; i += 2) {
        std::string k = argv[i];
        if (k == "--help" || k == "-h") { std::printf("%s", usage); return 0; }
        if (k == "--profile") { profile = true; --i; continue; }
        if (k == "--peak") { peak_json = true; --i; continue; }
        if (k == "--bf16-kernel") { std::printf("%s\n", mtp::bf16_kernel_name(mtp::gemm_bf16_kernel())); return 0; }
        if (i + 1 >= argc) { std::fprintf(stderr, "error: %s needs a value\n", k.c_str()); return 1; }
        std::string v = argv[i + 1];
        if (k == "--config") config = v;
        else if (k == "--seq") seq = std::atoi(v.c_str());
        else if (k == "--batch") batch = std::atoi(v.c_str());
        else if (k == "--steps") steps = std::atoi(v.c_str());
        else if (k == "--threads") threads = std::atoi(v.c_str());
        else if (k == "--precision") precision = v;
        else if (k == "--pass-tokens") pass_tokens = std::atoi(v.c_str());
        else { std::fprintf(stderr, "error: unknown flag %s\n", k.c_str()); return 1; }
    }
    if (config.empty()) {
        std::fprintf(stderr, "%s", usage);
        return 1;
    }
    try {
        if (threads > 0) omp_set_num_threads(threads);
        if (precision != "fp32" && precision != "bf16") mtp::fail("--precision", "expected fp32 or bf16, got " + precision);
        if (precision == "bf16" && !mtp::gemm_bf16_native())
            mtp::fail("--precision", "bf16 needs a CPU with AVX-512 BF16 (this one has none)");
        if (precision == "bf16") mtp::set_matmul_precision(mtp::matmul_precision::bf16);
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
            const int per_pass = std::max(1, pass_tokens / seq);      // as the trainer's pass_tokens
            for (int b = 0; b < batch; b += per_pass) {
                const int nb = std::min(per_pass, batch - b);
                a.reset();
                mtp::model_forward(c, L, W.data(), s, tokens.data() + size_t(b) * seq, seq, 0.0f, a, nullptr, -1, nb);
                loss += mtp::model_backward(c, L, W.data(), G.data(), s, 0.3f, 0.0f, 1.0f / batch, a).total * nb / batch;
            }
            mtp::prof_scope ps(mtp::prof::optimizer);
            mtp::adamw_step(oc, opt, L, W.data(), G.data(), 1e-3f);
        };
        for (int i = 0; i < 2; ++i) step();                      // warm-up (arena growth, BLAS init)
        mtp::prof_enable(profile);
        mtp::prof_take();
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < steps; ++i) step();
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
        mtp::prof_enable(false);
        std::printf("{\"impl\":\"mtp.cpp\",\"ms_per_step\":%.2f,\"tokens_per_s\":%.1f,\"params\":%zu,\"loss\":%.4f,"
                    "\"threads\":%d,\"precision\":\"%s\",\"blas\":\"%s\"",
                    ms, batch * seq / (ms / 1000.0), n_params, loss, omp_get_max_threads(), precision.c_str(),
                    mtp::blas_core_name().c_str());
        if (peak_json)   // the SGEMM peak with these threads and the step's model FLOPs, for MFU
            std::printf(",\"peak_gflops\":%.2f,\"flops_per_step\":%.6g", mtp::measure_peak_gflops(),
                        3.0 * mtp::model_forward_flops(c, seq) * batch);
        std::printf("}\n");
        if (profile) {
            // Per phase: wall ms per step (exclusive), share of the step, GEMM GFLOP/s and that rate against the
            // SGEMM peak measured now with the same threads.
            const double peak = mtp::measure_peak_gflops();
            const double step_flops = 3.0 * mtp::model_forward_flops(c, seq) * batch;
            std::printf("\nprofile: %s, seq %d x batch %d, %d threads, %.1f ms/step, SGEMM peak %.1f GFLOP/s "
                        "(OpenBLAS %s), step MFU %.1f%%\n",
                        config.c_str(), seq, batch, omp_get_max_threads(), ms, peak, mtp::blas_core_name().c_str(),
                        100.0 * step_flops / (ms / 1000.0) / (peak * 1e9));
            std::printf("%-30s %9s %7s %10s %9s %8s\n", "phase", "ms/step", "share", "GFLOP/step", "GFLOP/s", "of peak");
            double attributed = 0;
            for (const auto& r : mtp::prof_take()) {
                const double pms = 1000.0 * r.seconds / steps;
                attributed += pms;
                if (r.calls == 0) continue;
                if (r.flops > 0)
                    std::printf("%-30s %9.2f %6.1f%% %10.3f %9.1f %7.1f%%\n", mtp::prof_name(r.phase), pms,
                                100 * pms / ms, r.flops / steps / 1e9, r.flops / r.seconds / 1e9,
                                100 * r.flops / r.seconds / 1e9 / peak);
                else
                    std::printf("%-30s %9.2f %6.1f%% %10s %9s %8s\n", mtp::prof_name(r.phase), pms, 100 * pms / ms, "-",
                                "-", "-");
            }
            std::printf("%-30s %9.2f %6.1f%%   (loops, copies, residual adds, zeroing outside the phases)\n",
                        "unattributed", ms - attributed, 100 * (ms - attributed) / ms);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
