// Trunk + MTP chain forward, the multi-depth cross-entropy loss, and the full backward.
#include "model/model.h"

#include <cstring>

#include "core/error.h"
#include "core/ops.h"
#include "core/profile.h"
#include "model/rope.h"

namespace mtp {

void model_forward(const model_config& c, const model_layout& L, const float* W, model_state& s, const int* tokens,
                   int T, float alpha, arena& a, std::vector<double>* load, int n_mtp_run) {
    const int d = c.hidden_size, V = c.vocab_size, E = c.n_routed_experts;
    for (int t = 0; t < T; ++t)
        if (tokens[t] < 0 || tokens[t] >= V)
            fail("tokens", "token id " + std::to_string(tokens[t]) + " at position " + std::to_string(t) +
                               " is outside the model's vocabulary [0, " + std::to_string(V) + ")");
    s.T = T;
    s.tokens.assign(tokens, tokens + T);
    s.pos.resize(T);
    for (int t = 0; t < T; ++t) s.pos[t] = t;
    if (s.freqs.empty()) s.freqs = rope_frequencies(c);
    const int half = c.qk_rope_head_dim / 2;
    s.cos = a.alloc(size_t(T) * half);
    s.sin = a.alloc(size_t(T) * half);
    rope_table(s.freqs, s.pos.data(), T, s.cos, s.sin, rope_attention_factor(c));
    if (load && load->size() != size_t(c.n_layers_total()) * E) load->assign(size_t(c.n_layers_total()) * E, 0.0);
    auto load_of = [&](int layer) { return load && E > 0 ? load->data() + size_t(layer) * E : nullptr; };

    s.x = a.alloc(size_t(T) * d);
    {
        prof_scope ps(prof::embed);
        for (int t = 0; t < T; ++t)
            std::memcpy(s.x + size_t(t) * d, W + L.embed + size_t(tokens[t]) * d, sizeof(float) * d);
    }
    s.layers.resize(c.num_hidden_layers);
    s.bal_loss = 0;
    for (int i = 0; i < c.num_hidden_layers; ++i)
        s.bal_loss += layer_forward(c, L.layers[i], W, s.layers[i], s.x, T, s.cos, s.sin, alpha, a, load_of(i));
    // The post-norm hidden rows of the trunk and of every depth that runs, stacked [rows, d], so that the head
    // is ONE product over all of them (rows = T + Σ_k (T - k)): a taller GEMM than one per depth.
    const auto runs = [&](int k) { return T - k > 0 && (n_mtp_run < 0 || k <= n_mtp_run); };
    int rows = T;
    for (int k = 1; k <= c.n_mtp(); ++k) rows += runs(k) ? T - k : 0;
    s.rows = rows;
    s.h = a.alloc(size_t(rows) * d);
    s.h_rstd = a.alloc(T);
    rmsnorm_forward(s.h, s.h_rstd, s.x, W + L.final_norm, T, d, float(c.rms_norm_eps));

    s.mtp.resize(c.n_mtp());
    const float* hprev = s.h;
    size_t off = size_t(T);
    for (int k = 1; k <= c.n_mtp(); ++k) {
        mtp_cache& m = s.mtp[k - 1];
        const int Tk = T - k;                       // positions 0..T-1-k, token t_{i+k}
        if (!runs(k)) { m = mtp_cache{}; continue; }
        mtp_forward(c, L, L.mtp[k - 1], W, m, hprev, s.tokens.data() + k, Tk, s.cos, s.sin, alpha, a,
                    s.h + off * d, load_of(c.num_hidden_layers + k - 1));
        m.head_row = off;
        off += size_t(Tk);
        s.bal_loss += m.bal_loss;
        hprev = c.mtp_parallel ? s.h : m.h;        // parallel heads all read the trunk's h
    }
    s.logits = a.alloc(size_t(rows) * V);          // [rows, V]: the main head's T rows first, then each depth's
    {
        prof_scope ps(prof::lm_head);
        linear_forward(s.logits, s.h, W + L.lm_head, rows, d, V);
    }
    for (auto& m : s.mtp)
        if (m.T > 0) m.logits = s.logits + m.head_row * V;
}

namespace {

// Target of row i at depth k (0 = main head): t_{i+k+1}, or -1 past the sequence.
void fill_targets(const model_state& s, int k, int rows, std::vector<int>& tgt) {
    tgt.resize(rows);
    for (int i = 0; i < rows; ++i) tgt[i] = i + k + 1 < s.T ? s.tokens[i + k + 1] : -1;
}

} // namespace

loss_stats model_loss(const model_config& c, const model_state& s, float lambda) {
    loss_stats r;
    std::vector<int> tgt;
    const int D = c.n_mtp();
    r.mtp.assign(D, 0.0);
    if (s.T >= 2) {
        fill_targets(s, 0, s.T, tgt);
        r.main = cross_entropy(nullptr, s.logits, tgt.data(), s.T, c.vocab_size, 0) / (s.T - 1);
    }
    for (int k = 1; k <= D; ++k) {
        const mtp_cache& m = s.mtp[k - 1];
        if (s.T - k - 1 <= 0) continue;
        fill_targets(s, k, m.T, tgt);
        r.mtp[k - 1] = cross_entropy(nullptr, m.logits, tgt.data(), m.T, c.vocab_size, 0) / (s.T - k - 1);
    }
    r.bal = s.bal_loss;
    r.total = r.main + r.bal;
    for (int k = 0; k < D; ++k) r.total += lambda / D * r.mtp[k];
    return r;
}

loss_stats model_backward(const model_config& c, const model_layout& L, const float* W, float* G, model_state& s,
                          float lambda, float alpha, float weight, arena& a) {
    const int d = c.hidden_size, V = c.vocab_size, T = s.T, D = c.n_mtp();
    loss_stats r;
    r.mtp.assign(D, 0.0);
    std::vector<int> tgt;
    auto mk = a.mark();
    // Every head's dL/dlogits in place (rows without a target: 0), then one product for dL/dh of all heads and
    // for lm_head's gradient, over the stacked rows of the forward.
    float* dh = a.alloc_zero(size_t(s.rows) * d);                       // [rows, d] dL/dh, main head first
    if (T >= 2) {
        fill_targets(s, 0, T, tgt);
        r.main = cross_entropy(s.logits, s.logits, tgt.data(), T, V, weight / (T - 1)) / (T - 1);
    } else {
        std::memset(s.logits, 0, sizeof(float) * size_t(T) * V);
    }
    for (int k = 1; k <= D; ++k) {
        mtp_cache& m = s.mtp[k - 1];
        if (m.T <= 0) continue;
        if (T - k - 1 > 0) {
            fill_targets(s, k, m.T, tgt);
            float sc = weight * lambda / D / (T - k - 1);
            r.mtp[k - 1] = cross_entropy(m.logits, m.logits, tgt.data(), m.T, V, sc) / (T - k - 1);
        } else {
            std::memset(m.logits, 0, sizeof(float) * size_t(m.T) * V);
        }
    }
    {
        prof_scope ps(prof::lm_head);
        linear_backward(dh, G + L.lm_head, s.logits, s.h, W + L.lm_head, s.rows, d, V);
    }
    // MTP depths, deepest first: dL/dh^k holds its own head's part and gets depth k+1's hnorm input (parallel
    // heads: every head's input gradient goes to the trunk's h).
    std::vector<float*> dhk(D + 1, nullptr);
    dhk[0] = dh;
    for (int k = 1; k <= D; ++k)
        if (s.mtp[k - 1].T > 0) dhk[k] = dh + s.mtp[k - 1].head_row * d;
    for (int k = D; k >= 1; --k) {
        mtp_cache& m = s.mtp[k - 1];
        if (m.T <= 0) continue;
        mtp_backward(c, L, L.mtp[k - 1], W, G, m, dhk[k], dhk[c.mtp_input_stage(k)], alpha, weight, a);
    }
    float* dx = a.alloc_zero(size_t(T) * d);
    rmsnorm_backward(dx, G + L.final_norm, dh, s.x, W + L.final_norm, s.h_rstd, T, d);
    for (int i = c.num_hidden_layers - 1; i >= 0; --i)
        layer_backward(c, L.layers[i], W, G, s.layers[i], dx, alpha, weight, a);
    {
        prof_scope ps(prof::embed);
        for (int t = 0; t < T; ++t) add_inplace(G + L.embed + size_t(s.tokens[t]) * d, dx + size_t(t) * d, d);
    }
    a.rewind(mk);
    r.bal = s.bal_loss;
    r.total = r.main + r.bal;
    for (int k = 0; k < D; ++k) r.total += lambda / D * r.mtp[k];
    return r;
}

} // namespace mtp
