// Training loop: step, log, evaluate, sample, checkpoint; deterministic for a given thread count.
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "core/arena.h"
#include "core/blas_core.h"
#include "core/comm.h"
#include "core/error.h"
#include "core/gemm_bf16.h"
#include "infer/naive_generate.h"
#include "io/atomic_file.h"
#include "io/tokenizer.h"
#include "model/expert_parallel.h"
#include "model/model.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/dataset.h"
#include "train/flops.h"
#include "train/plot.h"
#include "io/json_read.h"

namespace mtp {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// --mtp-depth and --mtp-style over a model config (no heads left: a plain next-token model).
void apply_mtp_overrides(model_config& c, const train_config& tc) {
    if (tc.mtp_depth >= 0) c.num_nextn_predict_layers = tc.mtp_depth;
    if (!tc.mtp_style.empty()) c.mtp_parallel = tc.mtp_style == "parallel";
    if (c.num_nextn_predict_layers == 0) c.mtp_parallel = false;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string fmt_time(double s) {
    char b[32];
    if (s >= 3600) std::snprintf(b, sizeof b, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
    else if (s >= 60) std::snprintf(b, sizeof b, "%dm%02ds", int(s / 60), int(s) % 60);
    else std::snprintf(b, sizeof b, "%.0fs", s);
    return b;
}

// Keeps the metrics lines of steps <= `step` (a resumed run continues the log exactly).
void truncate_metrics(const std::string& path, int step) {
    std::ifstream f(path);
    if (!f) return;
    std::string line, kept;
    while (std::getline(f, line)) {
        try {
            if (json_parse(line, path).value("step", 0) <= step) kept += line + "\n";
        } catch (...) {
        }
    }
    write_file_atomic(path, kept);
}

double unigram_entropy(const std::vector<uint32_t>& ids, int V) {
    std::vector<double> cnt(V, 0.0);
    for (auto t : ids) cnt[t] += 1;
    double n = double(ids.size()), h = 0;
    for (double x : cnt) if (x > 0) h -= x / n * std::log(x / n);
    return h;
}

struct evaluation {
    double main = 0;
    std::vector<double> mtp;
};

evaluation evaluate(const model_files& m, const dataset& data, const train_config& tc, double lambda, arena& a,
                    model_state& s, std::vector<int>& buf) {
    const auto& split = data.val.size() < size_t(tc.seq_len) ? data.train : data.val;   // tiny val: use train
    evaluation e;
    e.mtp.assign(m.config.n_mtp(), 0.0);
    for (int i = 0; i < tc.eval_batches; ++i) {
        eval_window(split, i, tc.eval_batches, tc.seq_len - 1, buf.data());
        a.reset();
        model_forward(m.config, m.layout, m.weights.data(), s, buf.data(), tc.seq_len, 0.0f, a);
        loss_stats ls = model_loss(m.config, s, float(lambda));
        e.main += ls.main / tc.eval_batches;
        for (size_t k = 0; k < ls.mtp.size(); ++k) e.mtp[k] += ls.mtp[k] / tc.eval_batches;
    }
    return e;
}

} // namespace

train_result train_run(const train_config& tc_in, const std::string& resume,
                       const std::vector<std::pair<std::string, std::string>>& overrides) {
    train_config tc = tc_in;
    model_files m;
    adamw_state opt;
    int start_step = 0;
    if (!resume.empty()) {
        train_checkpoint ck = checkpoint_load(resume);
        // Where a resumed run writes: the run folder the user pointed at (RUN, or RUN/checkpoints/step_N), never
        // the folder recorded inside the checkpoint (a copied run must not write into the original); --out-dir
        // to write elsewhere.
        const fs::path ck_dir = fs::absolute(ck.dir).lexically_normal();
        fs::path run_dir;
        if (fs::exists(fs::path(resume) / "state.json")) {
            if (ck_dir.parent_path().filename() == "checkpoints") run_dir = ck_dir.parent_path().parent_path();
        } else {
            run_dir = fs::path(resume);
        }
        bool out_given = false;
        for (const auto& [k, v] : overrides) out_given |= k == "out-dir" || k == "out_dir";
        if (run_dir.empty() && !out_given)
            fail("--resume", resume + " is a checkpoint outside a run folder (RUN/checkpoints/step_N): give --out-dir");
        // A model config given now must be the checkpoint's.
        if (!tc_in.model_config.empty()) {
            model_config given = config_load(tc_in.model_config);
            apply_mtp_overrides(given, tc_in);
            if (config_to_json(given) != config_to_json(ck.model.config))
                fail(resume, "checkpoint is from a different model config than " + tc_in.model_config);
        }
        tc = ck.config;
        tc.stop_at_step = 0;                 // an interruption point applies to one invocation only
        if (!run_dir.empty()) tc.out_dir = run_dir.string();
        for (const auto& [k, v] : overrides) train_config_apply_flag(tc, k, v);
        if (out_given && !run_dir.empty() && fs::weakly_canonical(tc.out_dir) != fs::weakly_canonical(run_dir) &&
            !list_checkpoint_dirs(tc.out_dir).empty())
            fail("--out-dir", tc.out_dir + " already holds checkpoints of another run");
        m = std::move(ck.model);
        opt = std::move(ck.opt);
        start_step = ck.step;
    }
    train_config_validate(tc);
    if (tc.threads > 0) omp_set_num_threads(tc.threads);
    else tc.threads = omp_get_max_threads();   // recorded in checkpoints: exact resume needs the same count
    if (!resume.empty() && tc.stop_at_step > 0 && tc.stop_at_step <= start_step)
        fail("--stop-at-step", "must be after the resumed step " + std::to_string(start_step));

    dataset data = dataset_load(tc.data);
    if (resume.empty() && !tc.init_model.empty()) {
        m = model_load_dir(tc.init_model);
        if (!tc.model_config.empty() && config_to_json(config_load(tc.model_config)) != config_to_json(m.config))
            fail("init_model", tc.init_model + " has another config than model_config " + tc.model_config +
                                   " (give one of them)");
        if (!tc.mtp_style.empty() && (tc.mtp_style == "parallel") != m.config.mtp_parallel)
            fail("mtp_style", tc.mtp_style + " differs from init_model " + tc.init_model + "'s MTP design");
        if (tc.mtp_depth >= 0) {
            if (tc.mtp_depth > m.config.n_mtp())
                fail("mtp_depth", std::to_string(tc.mtp_depth) + " exceeds the " + std::to_string(m.config.n_mtp()) +
                                      " MTP modules of init_model " + tc.init_model);
            m = model_keep_mtp(m, tc.mtp_depth);
        }
        m.storage = "f32";
    } else if (resume.empty()) {
        if (tc.model_config.empty()) fail("model_config", "required: the model's config.json (or init_model)");
        m.config = config_load(tc.model_config);
        apply_mtp_overrides(m.config, tc);
        m.layout = layout_build(m.config);
        weights_init(m.config, m.layout, m.weights, uint64_t(tc.seed));
    }
    const model_config& c = m.config;
    if (c.vocab_size < data.vocab_size)
        fail(tc.data, "dataset vocab_size " + std::to_string(data.vocab_size) + " exceeds the model's vocab_size " +
                          std::to_string(c.vocab_size));
    if (tc.seq_len > c.max_position_embeddings) fail("seq_len", "exceeds the model's max_position_embeddings");
    if (data.train.size() < size_t(tc.seq_len)) fail(tc.data, "train split shorter than one sequence (seq_len)");

    std::optional<tokenizer> tok;
    std::string tok_path = !tc.tokenizer.empty() ? tc.tokenizer : data.tokenizer;
    if (!tok_path.empty() && fs::exists(tok_path)) tok = tokenizer_load(tok_path);

    if (start_step == 0 && fs::is_directory(fs::path(tc.out_dir) / "checkpoints") &&
        !fs::is_empty(fs::path(tc.out_dir) / "checkpoints"))
        fail(tc.out_dir, "already holds checkpoints of another run: resume it with --resume, or choose another out_dir");
    // Under mpirun every rank computes and only rank 0 writes (logs, metrics, evaluation, samples, checkpoints).
    const comm_info& world = comm_world();
    const bool root = world.rank == 0;
    if (tc.batch_size < world.size)
        fail("batch_size", std::to_string(tc.batch_size) + " sequences cannot be split over " +
                               std::to_string(world.size) + " ranks (need batch_size >= ranks)");
    if (tc.expert_parallel > 1) {
        const int E = c.n_routed_experts;
        if (E == 0 || E % tc.expert_parallel != 0)
            fail("expert_parallel", std::to_string(E) + " routed experts do not split over " +
                                        std::to_string(tc.expert_parallel) + " ranks");
        if (world.size % tc.expert_parallel != 0)
            fail("expert_parallel", std::to_string(tc.expert_parallel) + " does not divide the " +
                                        std::to_string(world.size) + " ranks");
        if (tc.batch_size % world.size != 0)   // every rank runs the same number of sequences, in lockstep
            fail("batch_size", "must be a multiple of the " + std::to_string(world.size) + " ranks with expert_parallel");
    }
    comm_barrier();   // every rank has checked the folder before rank 0 writes into it
    const std::string metrics_path = (fs::path(tc.out_dir) / "metrics.jsonl").string();
    std::ofstream metrics;
    if (root) {
        fs::create_directories(tc.out_dir);
        remove_stale_temps(tc.out_dir);
        if (start_step == 0) fs::remove(metrics_path);
        else truncate_metrics(metrics_path, start_step);
        metrics.open(metrics_path, std::ios::app);
        if (!metrics) fail(metrics_path, "cannot open for writing");
    }
    auto say = [root](const char* fmt, auto... a) {
        if (root) std::printf(fmt, a...);
    };

    const int D = c.n_mtp(), B = tc.batch_size, T = tc.seq_len, A = tc.grad_accum, E = c.n_routed_experts;
    size_t n_params = 0;
    for (const auto& p : m.layout.params) n_params += p.size;
    const double peak = measure_peak_gflops();
    const double flops_step = 3.0 * model_forward_flops(c, T) * A * B;
    const bool tty = root && tc.progress && isatty(fileno(stderr));
    dp_plan dp = dp_make(m.layout, tc.zero_stage == 1);
    dp_adopt_state(dp, opt);
    struct ep_guard { ~ep_guard() { expert_parallel_enable(false); } } ep_off_at_exit;
    if (tc.expert_parallel > 1) {
        comm_make_expert_groups(tc.expert_parallel);
        expert_parallel_enable(true);
    }
    // Matrix-product precision for this run (restored at exit); checkpoints stay fp32 either way.
    const matmul_precision_scope precision(tc.precision == "bf16");
    const bool bf16 = precision.bf16;
    if (tc.precision == "bf16" && !bf16)
        say("precision: bf16 asked, but no AMX-BF16 or AVX-512 BF16 kernel runs here (CPU, build or MTP_BF16_KERNEL): training in fp32\n");
    else if (bf16)
        say("precision: bf16 matrix products (%s kernel), fp32 accumulation, master weights and optimizer\n",
            bf16_kernel_name(gemm_bf16_kernel()));
    say("model: %zu parameters, %d layers (+%d MTP), vocab %d | data: %zu train / %zu val tokens\n",
                n_params, c.num_hidden_layers, D, c.vocab_size, data.train.size(), data.val.size());
    const std::string narrow = blas_narrowed_warning(cpu_detect(), blas_core_name(), std::getenv("OPENBLAS_CORETYPE"),
                                                     blas_dynamic_arch());
    if (!narrow.empty()) say("%s\n", narrow.c_str());
    say("train: %d steps of %d x %d x %d tokens, lr %.2g, λ %.2g, γ %.2g, α %.2g, %d threads, peak %.1f GFLOP/s "
        "(OpenBLAS %s kernels)\n",
                tc.max_steps, A, B, T, tc.lr, tc.mtp_lambda, tc.bias_update_speed, tc.bal_alpha,
                omp_get_max_threads(), peak, blas_core_name().c_str());
    if (world.size > 1)
        say("distributed: %d ranks (data parallel%s), %d sequences per rank per micro-batch\n", world.size,
            dp.zero1 ? ", ZeRO-1 optimizer shards" : "", tc.batch_size / world.size);
    if (expert_parallel_active())
        say("expert parallel: groups of %d ranks, %d of the %d routed experts computed per rank\n", tc.expert_parallel,
            c.n_routed_experts / tc.expert_parallel, c.n_routed_experts);
    if (start_step > 0) say("resumed from step %d, writing to %s\n", start_step, tc.out_dir.c_str());
    std::fflush(stdout);

    train_result res;
    res.unigram_entropy = unigram_entropy(data.val.empty() ? data.train : data.val, c.vocab_size);
    arena a;
    model_state s;
    std::vector<float> G(m.layout.n_floats);
    std::vector<int> batch(size_t(B) * T), buf(T);
    std::vector<double> load, load_since_eval(size_t(c.n_layers_total()) * std::max(E, 1), 0.0);
    adamw_config oc{float(tc.beta1), float(tc.beta2), float(tc.eps), float(tc.weight_decay)};
    std::vector<const layer_offsets*> moe_layers;
    for (const auto& l : m.layout.layers) if (l.moe) moe_layers.push_back(&l);
    for (const auto& l : m.layout.mtp) if (l.moe) moe_layers.push_back(&l);

    // Test hook: every training window, as int32 [steps][grad_accum][batch][seq_len], appended to this file
    // (tests/train/train_ref_test.py feeds the same batches to the PyTorch reference).
    std::FILE* dump = nullptr;
    if (const char* p = std::getenv("MTP_TRAIN_TEST_DUMP_BATCHES"); root && p && *p) {
        dump = std::fopen(p, start_step == 0 ? "wb" : "ab");
        if (!dump) fail(p, "cannot open (MTP_TRAIN_TEST_DUMP_BATCHES)");
    }
    struct file_closer { std::FILE* f; ~file_closer() { if (f) std::fclose(f); } } dump_closer{dump};

    // Collective under ZeRO-1 (the optimizer shards are gathered to rank 0); written by rank 0 only.
    auto save_checkpoint = [&](int at_step) {
        adamw_state full = dp_full_state(dp, opt, m.layout);
        if (!root) return;
        metrics.flush();
        checkpoint_save(tc.out_dir, m, full, tc, at_step);
        checkpoint_prune(tc.out_dir, tc.keep_checkpoints);
    };

    auto t_start = std::chrono::steady_clock::now();
    double tok_per_s = 0;
    int step = start_step;
    bool evaluated_last = false;
    auto do_eval = [&](int at_step) {
        // rank 0 alone, on its full copy of the weights (they are replicated): no expert all-to-all here
        const bool ep = expert_parallel_active();
        expert_parallel_enable(false);
        struct restore { bool on; ~restore() { expert_parallel_enable(on); } } restore_ep{ep};
        double lam = mtp_lambda_at(tc, at_step);
        evaluation ev = evaluate(m, data, tc, lam, a, s, buf);
        res.val_main = ev.main;
        res.val_mtp = ev.mtp;
        json rec = {{"type", "eval"}, {"step", at_step}, {"val_main", ev.main}, {"val_mtp", ev.mtp}};
        if (tty) std::fprintf(stderr, "\r\033[K");
        std::printf("eval step %d | val main %.4f", at_step, ev.main);
        for (int k = 0; k < D; ++k) std::printf(" | val mtp%d %.4f", k + 1, ev.mtp[k]);
        std::printf(" | unigram entropy %.4f\n", res.unigram_entropy);
        if (!moe_layers.empty()) {
            json loads = json::array();
            std::printf("expert load max/mean:");
            for (const auto* l : moe_layers) {
                const double* ld = load_since_eval.data() + size_t(l->index) * E;
                double mx = *std::max_element(ld, ld + E), mean = 0;
                for (int e = 0; e < E; ++e) mean += ld[e] / E;
                double r = mean > 0 ? mx / mean : 0;
                std::printf(" L%d %.2f", l->index, r);
                loads.push_back({{"layer", l->index}, {"max_over_mean", r}});
            }
            std::printf("\n");
            rec["expert_load"] = loads;
            std::fill(load_since_eval.begin(), load_since_eval.end(), 0.0);
        }
        if (tc.sample_tokens > 0) {
            std::vector<int> ids;
            if (tok) ids = tokenizer_encode(*tok, tc.sample_prompt, false);
            if (ids.empty()) ids.push_back(c.bos_token_id);
            size_t n0 = ids.size();
            for (int& id : ids) if (id >= c.vocab_size) id = c.bos_token_id;
            generate_naive(c, m.layout, m.weights.data(), ids, tc.sample_tokens, 0.8f, 40, uint64_t(tc.seed) + at_step,
                           T, data.eos_id, a);
            const int tok_vocab = tok ? tokenizer_vocab_size(*tok) : c.vocab_size;
            for (int& id : ids) if (id >= tok_vocab) id = data.eos_id >= 0 ? data.eos_id : 0;   // padded model vocab
            std::string text;
            if (tok) text = tc.sample_prompt + tokenizer_decode(*tok, std::vector<int>(ids.begin() + long(n0), ids.end()));
            else for (int id : ids) text += std::to_string(id) + " ";
            std::printf("sample: %s\n", text.c_str());
            rec["sample"] = text;
        }
        metrics << rec.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
        metrics.flush();
        std::fflush(stdout);
    };

    double comm_total = 0;
    for (; step < tc.max_steps; ++step) {
        // the time limit is decided together, so that every rank leaves the loop at the same step
        if (tc.max_time > 0 && comm_allreduce_max(seconds_since(t_start) >= tc.max_time ? 1.0 : 0.0) > 0) break;
        if (tc.stop_at_step > 0 && step >= tc.stop_at_step) break;
        auto t0 = std::chrono::steady_clock::now();
        const double comm0 = comm_seconds();
        const double lr = lr_at(tc, step), lam = mtp_lambda_at(tc, step);
        std::fill(G.begin(), G.end(), 0.0f);
        load.assign(size_t(c.n_layers_total()) * std::max(E, 1), 0.0);
        double l_total = 0, l_main = 0, l_bal = 0;
        std::vector<double> l_mtp(D, 0.0);
        const float w = 1.0f / float(A * B);
        const auto [b_first, b_last] = dp_rows(dp, B);
        for (int micro = 0; micro < A; ++micro) {
            sample_windows(data.train, uint64_t(tc.seed), uint64_t(step) * A + micro, B, T - 1, batch.data());
            if (dump && std::fwrite(batch.data(), sizeof(int), batch.size(), dump) != batch.size())
                fail("MTP_TRAIN_TEST_DUMP_BATCHES", "write failed");
            // The rank's sequences in passes of up to pass_tokens tokens: one forward/backward over all of them.
            const int per_pass = std::max(1, tc.pass_tokens / T);
            for (int b = b_first; b < b_last; b += per_pass) {
                const int nb = std::min(per_pass, b_last - b);
                a.reset();
                model_forward(c, m.layout, m.weights.data(), s, batch.data() + size_t(b) * T, T, float(tc.bal_alpha), a,
                              &load, -1, nb);
                loss_stats ls = model_backward(c, m.layout, m.weights.data(), G.data(), s, float(lam),
                                               float(tc.bal_alpha), w, a);
                l_total += ls.total * w * nb;                              // the pass's losses are means
                l_main += ls.main * w * nb;
                l_bal += ls.bal * w * nb;
                for (int k = 0; k < D; ++k) l_mtp[k] += ls.mtp[k] * w * nb;
            }
        }
        // Waiting for the slowest rank is timed apart from the transfer itself (wait_s vs comm_s in metrics).
        double wait_dt = 0;
        if (world.size > 1) {
            const double w0 = comm_seconds();
            comm_barrier();
            wait_dt = comm_seconds() - w0;
        }
        if (world.size > 1) {   // the step's statistics and expert loads over all ranks' sequences
            std::vector<double> stats = {l_total, l_main, l_bal};
            stats.insert(stats.end(), l_mtp.begin(), l_mtp.end());
            comm_allreduce_sum(stats.data(), stats.size());
            l_total = stats[0], l_main = stats[1], l_bal = stats[2];
            std::copy(stats.begin() + 3, stats.end(), l_mtp.begin());
            comm_allreduce_sum(load.data(), load.size());
        }
        dp_reduce_gradients(dp, G);
        // Test hook: the first step's summed gradient (before clipping), in the model's tensor layout, by rank 0
        // (tests/train/mpi_test.py compares it across data / expert parallelism; not under ZeRO-1's shards).
        if (const char* p = std::getenv("MTP_TRAIN_TEST_DUMP_GRAD"); p && *p && root && step == start_step && !dp.zero1)
            weights_save(c, m.layout, G, p);
        const double gnorm = dp_grad_norm(dp, m.layout, G);
        if (!std::isfinite(gnorm) || !std::isfinite(l_total))
            fail("train", "diverged at step " + std::to_string(step + 1) + ": loss or gradient is not finite (lower lr?)");
        if (tc.grad_clip > 0 && gnorm > tc.grad_clip) dp_scale_gradients(dp, G, float(tc.grad_clip / gnorm));
        dp_adamw(dp, oc, opt, m.layout, m.weights, G, float(lr));
        // Auxiliary-loss-free balancing: bias_e += γ sign(mean load - load_e), over the whole step's batch.
        for (const auto* l : moe_layers) {
            const double* ld = load.data() + size_t(l->index) * E;
            double mean = 0;
            for (int e = 0; e < E; ++e) mean += ld[e] / E;
            if (l->router_bias != no_param && tc.bias_update_speed > 0)
                for (int e = 0; e < E; ++e) {
                    double sg = (mean - ld[e]) > 0 ? 1.0 : (mean - ld[e]) < 0 ? -1.0 : 0.0;
                    m.weights[l->router_bias + e] += float(tc.bias_update_speed * sg);
                }
        }
        for (size_t i = 0; i < load.size(); ++i) load_since_eval[i] += load[i];

        const double dt = seconds_since(t0);
        const double comm_dt = comm_seconds() - comm0;
        comm_total += comm_dt;
        tok_per_s = double(A) * B * T / dt;
        const double mfu = flops_step / dt / (peak * 1e9 * world.size);
        const int done = step + 1;
        json rec = {{"type", "train"}, {"step", done}, {"loss", l_total}, {"main", l_main}, {"mtp", l_mtp},
                    {"bal", l_bal}, {"lr", lr}, {"lambda", lam}, {"grad_norm", gnorm}, {"tokens_per_s", tok_per_s},
                    {"mfu", mfu}, {"time", seconds_since(t_start)}};
        rec["step_s"] = dt;
        if (world.size > 1) rec["comm_s"] = comm_dt, rec["wait_s"] = wait_dt;
        if (root) metrics << rec.dump() << "\n";
        if (root && (done % tc.log_every == 0 || done == tc.max_steps)) {
            if (tty) std::fprintf(stderr, "\r\033[K");
            std::printf("step %d/%d | loss %.4f | main %.4f", done, tc.max_steps, l_total, l_main);
            for (int k = 0; k < D; ++k) std::printf(" | mtp%d %.4f", k + 1, l_mtp[k]);
            std::printf(" | lr %.2e | gnorm %.3f | %.0f tok/s | MFU %.1f%%\n", lr, gnorm, tok_per_s, 100 * mfu);
            std::fflush(stdout);
        }
        if (tty) {
            double el = seconds_since(t_start), frac = double(done - start_step) / std::max(1, tc.max_steps - start_step);
            double eta = frac > 0 ? el / frac - el : 0;
            if (tc.max_time > 0) eta = std::min(eta, tc.max_time - el);
            int bar = int(30 * double(done) / tc.max_steps);
            std::fprintf(stderr, "\r[%s%s] %d/%d  loss %.3f  ETA %s", std::string(bar, '#').c_str(),
                         std::string(30 - bar, '.').c_str(), done, tc.max_steps, l_total, fmt_time(eta).c_str());
            std::fflush(stderr);
        }
        evaluated_last = false;
        if (tc.eval_every > 0 && done % tc.eval_every == 0) {
            if (root) do_eval(done);
            evaluated_last = true;
        }
        if (tc.ckpt_every > 0 && done % tc.ckpt_every == 0 && done < tc.max_steps &&
            !(tc.stop_at_step > 0 && done == tc.stop_at_step))
            save_checkpoint(done);
    }
    if (tty) std::fprintf(stderr, "\r\033[K");
    if (root) metrics.flush();
    res.steps_done = step;
    if (world.size > 1 && step > start_step)
        say("communication: %.1f%% of the training time (%.2f s in collectives)\n",
            100.0 * comm_total / std::max(1e-9, seconds_since(t_start)), comm_total);
    if (tc.stop_at_step > 0 && step == tc.stop_at_step && step < tc.max_steps) {
        save_checkpoint(step);                                           // as if interrupted: resume continues
        say("stopped at step %d (stop_at_step); resume with --resume %s\n", step, tc.out_dir.c_str());
        return res;
    }
    if (root && !evaluated_last) do_eval(step);
    save_checkpoint(step);
    res.model_dir = (fs::path(tc.out_dir) / "model").string();
    res.tokens_per_s = tok_per_s;
    if (!root) return res;
    model_save_dir(m, res.model_dir, "F32");
    if (tok) fs::copy_file(tok_path, fs::path(res.model_dir) / "tokenizer.json", fs::copy_options::overwrite_existing);
    metrics.close();
    if (tc.plot) {
        std::string png = (fs::path(tc.out_dir) / "loss.png").string();
        std::string err = plot_losses(metrics_path, png, D);
        if (err.empty()) std::printf("plot: %s\n", png.c_str());
        else std::printf("plot: skipped (%s)\n", err.c_str());
    }
    std::printf("done: %d steps, final model in %s\n", step, res.model_dir.c_str());
    return res;
}

} // namespace mtp
