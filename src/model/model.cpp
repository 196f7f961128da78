// Trunk + MTP chain forward, the multi-depth cross-entropy loss, and the full backward.
#include "model/model.h"

#include <cstring>

#include "core/error.h"
#include "core/ops.h"
#include "core/profile.h"
#include "model/rope.h"

namespace mtp {

void model_forward(const model_config& c, const model_layout& L, const float* W, model_state& s, const int* tokens,
                   int T, float alpha, arena& a, std::vector<double>* load, int n_mtp_run, int B) {
    const int d = c.hidden_size, V = c.vocab_size, E = c.n_routed_experts, R = B * T;
    for (int t = 0; t < R; ++t)
        if (tokens[t] < 0 || tokens[t] >= V)
            fail("tokens", "token id " + std::to_string(tokens[t]) + " at position " + std::to_string(t % T) +
                               (B > 1 ? " of sequence " + std::to_string(t / T) : std::string()) +
                               " is outside the model's vocabulary [0, " + std::to_string(V) + ")");
    s.T = T;
    s.B = B;
    s.tokens.assign(tokens, tokens + R);
    s.pos.resize(T);
    for (int t = 0; t < T; ++t) s.pos[t] = t;
    if (s.freqs.empty()) s.freqs = rope_frequencies(c);
    const int half = c.qk_rope_head_dim / 2;
    s.cos = a.alloc(size_t(T) * half);                  // the same positions 0..T-1 in every sequence
    s.sin = a.alloc(size_t(T) * half);
    rope_table(s.freqs, s.pos.data(), T, s.cos, s.sin, rope_attention_factor(c));
    if (load && load->size() != size_t(c.n_layers_total()) * E) load->assign(size_t(c.n_layers_total()) * E, 0.0);
    auto load_of = [&](int layer) { return load && E > 0 ? load->data() + size_t(layer) * E : nullptr; };

    s.x = a.alloc(size_t(R) * d);
    {
        prof_scope ps(prof::embed);
        gather_rows(s.x, W + L.embed, tokens, R, d);
    }
    s.layers.resize(c.num_hidden_layers);
    s.bal_loss = 0;
    for (int i = 0; i < c.num_hidden_layers; ++i)
        s.bal_loss += layer_forward(c, L.layers[i], W, s.layers[i], s.x, T, s.cos, s.sin, alpha, a, load_of(i), B);
    // The post-norm hidden rows of the trunk and of every depth that runs, stacked [rows, d], so that the head
    // is ONE product over all of them (rows = B·(T + Σ_k (T - k))): a taller GEMM than one per depth.
    const auto runs = [&](int k) { return T - k > 0 && (n_mtp_run < 0 || k <= n_mtp_run); };
    int rows = R;
    for (int k = 1; k <= c.n_mtp(); ++k) rows += runs(k) ? B * (T - k) : 0;
    s.rows = rows;
    s.h = a.alloc(size_t(rows) * d);
    s.h_rstd = a.alloc(R);
    rmsnorm_forward(s.h, s.h_rstd, s.x, W + L.final_norm, R, d, float(c.rms_norm_eps));

    s.mtp.resize(c.n_mtp());
    const float* hsrc = s.h;                        // the stage depth k reads, with Tsrc rows per sequence
    int Tsrc = T;
    size_t off = size_t(R);
    for (int k = 1; k <= c.n_mtp(); ++k) {
        mtp_cache& m = s.mtp[k - 1];
        const int Tk = T - k;                       // positions 0..T-1-k, token t_{i+k}
        if (!runs(k)) { m = mtp_cache{}; continue; }
        // Rows 0..Tk-1 of each sequence of the input stage, and the tokens t_{i+k}: a prefix when B = 1.
        const float* hin = hsrc;
        const int* tok = s.tokens.data() + k;
        if (B > 1) {
            float* g = a.alloc(size_t(B) * Tk * d);
            int* tg = a.alloc_int(size_t(B) * Tk);
            for (int b = 0; b < B; ++b) {
                std::memcpy(g + size_t(b) * Tk * d, hsrc + size_t(b) * Tsrc * d, sizeof(float) * size_t(Tk) * d);
                std::memcpy(tg + size_t(b) * Tk, s.tokens.data() + size_t(b) * T + k, sizeof(int) * Tk);
            }
            hin = g;                                 // kept by the cache (m.hprev) for the backward
            tok = tg;
        }
        mtp_forward(c, L, L.mtp[k - 1], W, m, hin, tok, Tk, s.cos, s.sin, alpha, a, s.h + off * d,
                    load_of(c.num_hidden_layers + k - 1), B);
        m.head_row = off;
        off += size_t(B) * Tk;
        s.bal_loss += m.bal_loss;
        if (!c.mtp_parallel) hsrc = m.h, Tsrc = Tk;  // parallel heads all read the trunk's h
    }
    s.logits = a.alloc(size_t(rows) * V);          // [rows, V]: the main head's rows first, then each depth's
    {
        prof_scope ps(prof::lm_head);
        linear_forward(s.logits, s.h, W + L.lm_head, rows, d, V);
    }
    for (auto& m : s.mtp)
        if (m.T > 0) m.logits = s.logits + m.head_row * V;
}

namespace {

// Targets of depth k (0 = main head) for its rows [B, T-k] (k = 0: [B, T]): t_{i+k+1} of the row's sequence, or
// -1 past the sequence.
void fill_targets(const model_state& s, int k, std::vector<int>& tgt) {
    const int T = s.T, Tk = T - k;
    tgt.resize(size_t(s.B) * Tk);
    for (int b = 0; b < s.B; ++b)
        for (int i = 0; i < Tk; ++i) tgt[size_t(b) * Tk + i] = i + k + 1 < T ? s.tokens[size_t(b) * T + i + k + 1] : -1;
}

} // namespace

loss_stats model_loss(const model_config& c, const model_state& s, float lambda) {
    loss_stats r;
    std::vector<int> tgt;
    const int D = c.n_mtp(), B = s.B;
    r.mtp.assign(D, 0.0);
    if (s.T >= 2) {
        fill_targets(s, 0, tgt);
        r.main = cross_entropy(nullptr, s.logits, tgt.data(), B * s.T, c.vocab_size, 0) / (double(B) * (s.T - 1));
    }
    for (int k = 1; k <= D; ++k) {
        const mtp_cache& m = s.mtp[k - 1];
        if (s.T - k - 1 <= 0) continue;
        fill_targets(s, k, tgt);
        r.mtp[k - 1] = cross_entropy(nullptr, m.logits, tgt.data(), B * m.T, c.vocab_size, 0) / (double(B) * (s.T - k - 1));
    }
    r.bal = s.bal_loss;
    r.total = r.main + r.bal;
    for (int k = 0; k < D; ++k) r.total += lambda / D * r.mtp[k];
    return r;
}

loss_stats model_backward(const model_config& c, const model_layout& L, const float* W, float* G, model_state& s,
                          float lambda, float alpha, float weight, arena& a) {
    const int d = c.hidden_size, V = c.vocab_size, T = s.T, B = s.B, R = B * T, D = c.n_mtp();
    loss_stats r;
    r.mtp.assign(D, 0.0);
    std::vector<int> tgt;
    auto mk = a.mark();
    // Every head's dL/dlogits in place (rows without a target: 0), then one product for dL/dh of all heads and
    // for lm_head's gradient, over the stacked rows of the forward.
    float* dh = a.alloc_zero(size_t(s.rows) * d);                       // [rows, d] dL/dh, main head first
    if (T >= 2) {
        fill_targets(s, 0, tgt);
        r.main = cross_entropy(s.logits, s.logits, tgt.data(), R, V, weight / (T - 1)) / (double(B) * (T - 1));
    } else {
        std::memset(s.logits, 0, sizeof(float) * size_t(R) * V);
    }
    for (int k = 1; k <= D; ++k) {
        mtp_cache& m = s.mtp[k - 1];
        if (m.T <= 0) continue;
        if (T - k - 1 > 0) {
            fill_targets(s, k, tgt);
            float sc = weight * lambda / D / (T - k - 1);
            r.mtp[k - 1] = cross_entropy(m.logits, m.logits, tgt.data(), B * m.T, V, sc) / (double(B) * (T - k - 1));
        } else {
            std::memset(m.logits, 0, sizeof(float) * size_t(B) * m.T * V);
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
        const int stage = c.mtp_input_stage(k), Ts = T - stage, Tk = m.T;
        if (B == 1) {                                                    // the input rows are a prefix of the stage
            mtp_backward(c, L, L.mtp[k - 1], W, G, m, dhk[k], dhk[stage], alpha, weight, a);
            continue;
        }
        auto mk2 = a.mark();
        float* din = a.alloc_zero(size_t(B) * Tk * d);                   // dL/d(gathered input rows)
        mtp_backward(c, L, L.mtp[k - 1], W, G, m, dhk[k], din, alpha, weight, a);
        for (int b = 0; b < B; ++b)
            add_inplace(dhk[stage] + size_t(b) * Ts * d, din + size_t(b) * Tk * d, size_t(Tk) * d);
        a.rewind(mk2);
    }
    float* dx = a.alloc_zero(size_t(R) * d);
    rmsnorm_backward(dx, G + L.final_norm, dh, s.x, W + L.final_norm, s.h_rstd, R, d);
    for (int i = c.num_hidden_layers - 1; i >= 0; --i)
        layer_backward(c, L.layers[i], W, G, s.layers[i], dx, alpha, weight, a);
    {
        prof_scope ps(prof::embed);
        scatter_add_rows(G + L.embed, dx, s.tokens.data(), R, d);
    }
    a.rewind(mk);
    r.bal = s.bal_loss;
    r.total = r.main + r.bal;
    for (int k = 0; k < D; ++k) r.total += lambda / D * r.mtp[k];
    return r;
}

} // namespace mtp
