// The self-distillation loop for MTP modules: frozen trunk forward as teacher, KL gradients into the module chain,
// AdamW on the module parameters only, evaluation of KL / agreement / CE per depth before and after.
#include "train/distill.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/arena.h"
#include "core/error.h"
#include "core/gemm_bf16.h"
#include "core/ops.h"
#include "model/model.h"
#include "train/adamw.h"
#include "train/dataset.h"

namespace mtp {

namespace fs = std::filesystem;

namespace {

// Row-wise KL(p ‖ q) with p = softmax(teacher row), q = softmax(z row); when grad is true z becomes
// scale * (q - p), its gradient. Also counts rows whose argmaxes agree. Returns the summed KL.
double kl_rows(float* z, const float* teacher, int rows, int V, float scale, bool grad, int& agree) {
    double total = 0;
    int ag = 0;
#pragma omp parallel for reduction(+ : total, ag) if (size_t(rows) * V > 65536)
    for (int i = 0; i < rows; ++i) {
        float* zr = z + size_t(i) * V;
        const float* tr = teacher + size_t(i) * V;
        int az = 0, at = 0;
        float mz = zr[0], mt = tr[0];
        for (int v = 1; v < V; ++v) {
            if (zr[v] > mz) { mz = zr[v]; az = v; }
            if (tr[v] > mt) { mt = tr[v]; at = v; }
        }
        ag += az == at;
        double sz = 0, st = 0;
        for (int v = 0; v < V; ++v) {
            sz += std::exp(double(zr[v]) - mz);
            st += std::exp(double(tr[v]) - mt);
        }
        const double lz = std::log(sz), lt = std::log(st);
        double kl = 0;
        for (int v = 0; v < V; ++v) {
            const double logp = double(tr[v]) - mt - lt, logq = double(zr[v]) - mz - lz, p = std::exp(logp);
            kl += p * (logp - logq);
            if (grad) zr[v] = float(scale * (std::exp(logq) - p));
        }
        total += kl;
    }
    agree += ag;
    return total;
}

// Forward of one window; then per depth the KL against the main logits (and its backward into G when training).
// kl/agree/rows accumulate per depth sums; ce (the modules' corpus cross-entropy) only when evaluating.
void window_pass(const model_files& m, model_state& s, const int* tokens, int T, bool train, float weight, float* G,
                 arena& a, std::vector<double>& kl, std::vector<double>& agree, std::vector<double>& ce,
                 std::vector<double>& rows) {
    const model_config& c = m.config;
    const model_layout& L = m.layout;
    const float* W = m.weights.data();
    const int D = c.n_mtp(), V = c.vocab_size, d = c.hidden_size;
    a.reset();
    model_forward(c, L, W, s, tokens, T, 0.0f, a);
    std::vector<int> tgt;
    for (int k = 1; k <= D && !train; ++k) {             // evaluation: corpus CE first (the KL pass overwrites logits)
        const mtp_cache& mk = s.mtp[k - 1];
        if (mk.T <= 1) continue;
        tgt.resize(mk.T);
        for (int i = 0; i < mk.T; ++i) tgt[i] = i + k + 1 < T ? tokens[i + k + 1] : -1;
        ce[k - 1] += cross_entropy(nullptr, mk.logits, tgt.data(), mk.T, V, 0);
    }
    std::vector<float*> dh(D + 1, nullptr);
    if (train)
        for (int k = 0; k <= D; ++k) dh[k] = a.alloc_zero(size_t(T) * d);
    for (int k = D; k >= 1; --k) {
        mtp_cache& mk = s.mtp[k - 1];
        if (mk.T <= 0) continue;
        int ag = 0;
        // Row i of depth k is taught by the main model's row i + k (both predict t_{i+k+1}).
        kl[k - 1] += kl_rows(mk.logits, s.logits + size_t(k) * V, mk.T, V, weight / (D * mk.T), train, ag);
        agree[k - 1] += ag;
        rows[k - 1] += mk.T;
        if (!train) continue;
        linear_backward(dh[k], nullptr, mk.logits, mk.h, W + L.lm_head, mk.T, d, V);
        mtp_backward(c, L, L.mtp[k - 1], W, G, mk, dh[k], dh[c.mtp_input_stage(k)], 0.0f, weight, a);
    }
}

distill_eval evaluate(const model_files& m, const dataset& data, const distill_options& o, model_state& s, arena& a,
                      std::vector<int>& buf) {
    const int D = m.config.n_mtp();
    const auto& split = data.val.size() < size_t(o.seq_len) ? data.train : data.val;
    std::vector<double> kl(D, 0), ag(D, 0), ce(D, 0), rows(D, 0);
    for (int i = 0; i < o.eval_batches; ++i) {
        eval_window(split, i, o.eval_batches, o.seq_len - 1, buf.data());
        window_pass(m, s, buf.data(), o.seq_len, false, 1.0f, nullptr, a, kl, ag, ce, rows);
    }
    distill_eval e;
    for (int k = 0; k < D; ++k) {
        e.kl.push_back(rows[k] > 0 ? kl[k] / rows[k] : 0);
        e.agree.push_back(rows[k] > 0 ? ag[k] / rows[k] : 0);
        e.ce.push_back(double(o.eval_batches) * (o.seq_len - k - 2) > 0
                           ? ce[k] / (double(o.eval_batches) * (o.seq_len - k - 2)) : 0);
    }
    return e;
}

void print_eval(const char* what, int step, const distill_eval& e) {
    std::printf("%s step %d", what, step);
    for (size_t k = 0; k < e.kl.size(); ++k)
        std::printf(" | depth %zu: KL %.4f agree %.3f CE %.4f", k + 1, e.kl[k], e.agree[k], e.ce[k]);
    std::printf("\n");
    std::fflush(stdout);
}

} // namespace

distill_result distill_run(const distill_options& o) {
    if (o.steps < 1) fail("--steps", "must be >= 1");
    if (o.batch_size < 1) fail("--batch-size", "must be >= 1");
    if (o.seq_len < 4) fail("--seq-len", "must be >= 4");
    if (!(o.lr > 0) || !(o.min_lr >= 0) || o.min_lr > o.lr) fail("--lr", "need lr > 0 and 0 <= min-lr <= lr");
    if (!(o.weight_decay >= 0)) fail("--weight-decay", "must be >= 0");
    if (!(o.grad_clip >= 0)) fail("--grad-clip", "must be >= 0");
    if (o.warmup_steps < 0) fail("--warmup-steps", "must be >= 0");
    if (o.eval_batches < 1) fail("--eval-batches", "must be >= 1");
    if (o.precision != "fp32" && o.precision != "bf16")
        fail("--precision", "expected fp32 or bf16, got '" + o.precision + "'");
    if (o.out_dir.empty() && !o.eval_only) fail("--out", "required (unless --eval-only)");
    std::error_code ec;
    if (!o.eval_only && fs::exists(o.out_dir) && fs::equivalent(o.out_dir, o.model_dir, ec))
        fail("--out", "must differ from --model (the distilled model is written next to the original)");
    if (!o.eval_only && fs::exists(o.out_dir) && !(fs::is_directory(o.out_dir) && fs::is_empty(o.out_dir)))
        fail("--out", o.out_dir + " exists and is not an empty folder");

    model_files m = model_load_dir(o.model_dir);
    const model_config& c = m.config;
    const int D = c.n_mtp();
    if (D == 0) fail(o.model_dir, "the model has no MTP modules (num_nextn_predict_layers = 0): nothing to distil");
    if (o.seq_len > c.max_position_embeddings) fail("--seq-len", "exceeds the model's max_position_embeddings");
    const dataset data = dataset_load(o.data_dir);
    if (data.vocab_size > c.vocab_size)
        fail(o.data_dir, "dataset vocab_size " + std::to_string(data.vocab_size) + " exceeds the model's " +
                             std::to_string(c.vocab_size));
    if (data.train.size() < size_t(o.seq_len)) fail(o.data_dir, "train split shorter than one sequence (--seq-len)");

    // Only the modules' own tensors train: everything named model.layers.<index of an MTP layer>.*.
    model_layout Lt = m.layout;
    size_t n_train = 0;
    for (auto& p : Lt.params) {
        bool mine = false;
        for (const auto& l : m.layout.mtp)
            mine |= p.name.rfind("model.layers." + std::to_string(l.index) + ".", 0) == 0;
        p.trainable = p.trainable && mine;
        if (p.trainable) n_train += p.size;
    }
    if (o.eval_only)
        std::printf("evaluate: %s, %d %s, %d validation windows of %d tokens\n", o.model_dir.c_str(), D,
                    c.mtp_parallel ? "parallel heads" : "MTP modules", o.eval_batches, o.seq_len);
    else
        std::printf("distil: %s, %d MTP modules, %zu trainable parameters (trunk, embeddings and heads frozen); "
                    "%d steps of %d x %d tokens, lr %.2g\n",
                    o.model_dir.c_str(), D, n_train, o.steps, o.batch_size, o.seq_len, o.lr);
    std::fflush(stdout);

    // Matrix-product precision for this run (restored at exit), as the trainer sets it; the model stays fp32.
    const matmul_precision_scope precision(o.precision == "bf16");
    const bool bf16 = precision.bf16;
    if (o.precision == "bf16" && !bf16)
        std::printf("precision: bf16 asked, but no AMX-BF16 or AVX-512 BF16 kernel runs here: distilling in fp32\n");
    else if (bf16)
        std::printf("precision: bf16 matrix products (%s kernel), fp32 accumulation, weights and optimizer\n",
                    bf16_kernel_name(gemm_bf16_kernel()));

    arena a;
    model_state s;
    std::vector<int> buf(o.seq_len), batch(size_t(o.batch_size) * o.seq_len);
    std::vector<float> G(m.layout.n_floats);
    adamw_state opt;
    const adamw_config oc{0.9f, 0.95f, 1e-8f, float(o.weight_decay)};
    distill_result res;
    res.before = evaluate(m, data, o, s, a, buf);
    print_eval("eval", 0, res.before);
    if (o.eval_only) return res;
    const auto t0 = std::chrono::steady_clock::now();
    auto lr_at = [&](int step) {
        if (step < o.warmup_steps) return o.lr * (step + 1) / o.warmup_steps;
        const double f = double(step - o.warmup_steps) / std::max(1, o.steps - o.warmup_steps);
        return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + std::cos(M_PI * std::min(1.0, f)));
    };
    int step = 0;
    for (; step < o.steps; ++step) {
        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (o.max_time > 0 && el >= o.max_time) break;
        std::fill(G.begin(), G.end(), 0.0f);
        sample_windows(data.train, o.seed, uint64_t(step), o.batch_size, o.seq_len - 1, batch.data());
        std::vector<double> kl(D, 0), ag(D, 0), ce(D, 0), rows(D, 0);
        const float w = 1.0f / float(o.batch_size);
        for (int b = 0; b < o.batch_size; ++b)
            window_pass(m, s, batch.data() + size_t(b) * o.seq_len, o.seq_len, true, w, G.data(), a, kl, ag, ce, rows);
        double gn2 = 0;
        for (const auto& p : Lt.params)
            if (p.trainable)
                for (size_t i = 0; i < p.size; ++i) gn2 += double(G[p.offset + i]) * G[p.offset + i];
        const double gnorm = std::sqrt(gn2);
        if (!std::isfinite(gnorm)) fail("distil", "diverged at step " + std::to_string(step + 1) + " (lower --lr?)");
        if (o.grad_clip > 0 && gnorm > o.grad_clip)
            for (const auto& p : Lt.params)
                if (p.trainable)
                    for (size_t i = 0; i < p.size; ++i) G[p.offset + i] *= float(o.grad_clip / gnorm);
        adamw_step(oc, opt, Lt, m.weights.data(), G.data(), float(lr_at(step)));
        const int done = step + 1;
        if (done % o.log_every == 0 || done == o.steps) {
            std::printf("step %d/%d | lr %.2e | gnorm %.3f", done, o.steps, lr_at(step), gnorm);
            for (int k = 0; k < D; ++k)
                std::printf(" | KL%d %.4f agree%d %.3f", k + 1, kl[k] / std::max(1.0, rows[k]), k + 1,
                            ag[k] / std::max(1.0, rows[k]));
            std::printf(" | %.0f s\n", el);
            std::fflush(stdout);
        }
        if (o.eval_every > 0 && done % o.eval_every == 0 && done < o.steps) print_eval("eval", done, evaluate(m, data, o, s, a, buf));
    }
    res.steps_done = step;
    res.after = evaluate(m, data, o, s, a, buf);
    print_eval("eval", step, res.after);
    // The distilled model: a complete model folder (tokenizer and draft vocabulary copied when present).
    model_save_dir(m, o.out_dir, "F32");
    for (const char* f : {"tokenizer.json", "draft_vocab.json"})
        if (fs::exists(fs::path(o.model_dir) / f))
            fs::copy_file(fs::path(o.model_dir) / f, fs::path(o.out_dir) / f, fs::copy_options::overwrite_existing);
    res.model_dir = o.out_dir;
    std::printf("done: %d steps, distilled model in %s\n", step, o.out_dir.c_str());
    return res;
}

} // namespace mtp
