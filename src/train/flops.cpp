// FLOP counting by the same shapes the forward uses, and a SGEMM peak probe.
#include "train/flops.h"

#include <cblas.h>
#include <chrono>
#include <vector>

namespace mtp {

namespace {
// 2 * in * out per row for a projection
double proj(double in, double out) { return 2.0 * in * out; }

double layer_flops_per_token(const model_config& c, int layer, double ctx) {
    const double d = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim(), dv = c.v_head_dim;
    const double kvl = c.kv_lora_rank, rope = c.qk_rope_head_dim, nope = c.qk_nope_head_dim;
    double f = 0;
    if (c.q_lora_rank > 0) f += proj(d, c.q_lora_rank) + proj(c.q_lora_rank, H * dq);
    else f += proj(d, H * dq);
    f += proj(d, kvl + rope) + proj(kvl, H * (nope + dv)) + proj(H * dv, d);
    f += 2.0 * ctx * H * (dq + dv);                          // scores + weighted values over `ctx` keys
    if (c.is_moe_layer(layer)) {
        f += proj(d, c.n_routed_experts);
        f += c.num_experts_per_tok * 3 * proj(d, c.moe_intermediate_size);
        f += 3 * proj(d, double(c.n_shared_experts) * c.moe_intermediate_size);
    } else {
        f += 3 * proj(d, c.intermediate_size);
    }
    return f;
}
} // namespace

double model_forward_flops(const model_config& c, int T) {
    const double avg_ctx = (T + 1) / 2.0;                    // causal: token i sees i+1 keys
    double per_tok = 0;
    for (int i = 0; i < c.num_hidden_layers; ++i) per_tok += layer_flops_per_token(c, i, avg_ctx);
    per_tok += proj(c.hidden_size, c.vocab_size);
    double total = per_tok * T;
    for (int k = 1; k <= c.n_mtp() && T - k > 0; ++k) {
        double tk = T - k;
        double f = (c.mtp_parallel ? 0.0 : proj(2.0 * c.hidden_size, c.hidden_size)) + layer_flops_per_token(c, c.num_hidden_layers + k - 1, (tk + 1) / 2) +
                   proj(c.hidden_size, c.vocab_size);
        total += f * tk;
    }
    return total;
}

double measure_peak_gflops() {
    const int n = 768;
    std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
    auto run = [&] { cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n); };
    run();
    double best = 0, spent = 0;
    for (int rep = 0; rep < 200 && (rep < 5 || spent < 0.5); ++rep) {   // best of ~0.5 s: robust to a busy machine
        auto t0 = std::chrono::steady_clock::now();
        run();
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        spent += s;
        best = std::max(best, 2.0 * n * n * n / s / 1e9);
    }
    return best;
}

} // namespace mtp
