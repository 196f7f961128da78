// The whole model over one sequence: trunk + D chained MTP modules, the training loss
// L = L_main + (λ/D) Σ_k L_MTP^k + L_bal (spec §5), and its backward.
#pragma once
#include <vector>

#include "model/mtp.h"

namespace mtp {

// B sequences of T tokens each, stacked: sequence b is rows b·T..b·T+T-1 of every [B·T, ...] tensor, and depth k's
// rows are [B, T-k]. The shapes below say T for B·T.
struct model_state {
    int T = 0;                           // tokens per sequence
    int B = 1;                           // sequences
    std::vector<int> tokens;             // [T] inputs t_0..t_{T-1}
    std::vector<int> pos;                // [T] 0..T-1
    std::vector<double> freqs;           // RoPE frequencies (computed once)
    float* cos = nullptr;                // [T, rope/2]
    float* sin = nullptr;
    float* x = nullptr;                  // [T, d] residual stream (trunk output before model.norm)
    std::vector<layer_cache> layers;     // [num_hidden_layers]
    float* h = nullptr;                  // [T, d] main hidden state after model.norm
    float* h_rstd = nullptr;             // [T]
    int rows = 0;                        // rows of the stacked heads: B·(T + Σ over the depths that ran of (T - k))
    float* logits = nullptr;             // [rows, V]: the main head's T rows, then each depth's (mtp[k].logits)
    std::vector<mtp_cache> mtp;          // [D]; depth k has T-k rows (0 rows: not run)
    double bal_loss = 0;                 // Σ over MoE layers of α Σ_e f_e P_e (mean over the sequences)
};

// Losses of one forward: each the mean over its B sequences.
struct loss_stats {
    double total = 0;                    // L_main + (λ/D) Σ_k L_MTP^k + L_bal
    double main = 0;                     // mean CE of the main head over T-1 targets
    std::vector<double> mtp;             // [D] mean CE of each depth over T-k-1 targets (0 if none)
    double bal = 0;
};

// Forward over B sequences tokens[b·T .. b·T+T) at once (every matrix product over all their rows; all arena memory
// is from `a`, valid until a.reset()). alpha > 0 computes the sequence-wise balance loss; load (optional,
// [n_layers_total * E]) += tokens routed per layer and expert. n_mtp_run limits how many MTP depths run (-1: all D).
// The result for each sequence is that of a forward over it alone (within rounding: the products sum in another
// order).
void model_forward(const model_config& c, const model_layout& L, const float* W, model_state& s, const int* tokens,
                   int T, float alpha, arena& a, std::vector<double>* load = nullptr, int n_mtp_run = -1, int B = 1);

// Losses of the last forward, without touching its logits.
loss_stats model_loss(const model_config& c, const model_state& s, float lambda);

// Losses, then backward of weight * Σ_b L_b into G (G += weight * Σ_b dL_b/dW over the B sequences; the router bias
// gets nothing). Consumes the state's logits (turned into their gradients in place).
loss_stats model_backward(const model_config& c, const model_layout& L, const float* W, float* G, model_state& s,
                          float lambda, float alpha, float weight, arena& a);

} // namespace mtp
