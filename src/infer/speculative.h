// KV-cached generation with optional lossless MTP speculative decoding (spec §6). Talks to the model only through
// infer_model (eval / truncate / n_cached), so the same loop can drive another backend.
//
// State between rounds: committed tokens t_0..t_n (t_n sampled, not yet fed), the main cache holding positions
// 0..n-1, the main hidden states h_0..h_{n-1}, and for each module k a cache whose first v_k entries are valid
// (computed from valid h^{k-1} and committed t_{j+k}; v_k <= n-k+1).
// A round: (draft) for k = 1..D module k runs positions v_k..n-1 (the ones past n-k with draft tokens) and its
// row at the frontier n-1 gives d_{n+k}; past D, with reuse, module D runs at n, n+1, .. fed its own h^D of the
// previous position. (verify) one main-model pass over [t_n, d_{n+1..n+m}] at positions n..n+m. (accept) greedy:
// longest prefix equal to the main model's argmax, then its token; sampling: accept d with min(1, p(d)/q(d)),
// else draw from normalize(max(0, p - q)) and stop; all accepted: a bonus token from the last slot. (rollback)
// main cache to n+a+1, module k to its v_k; the next round's draft recomputes the rest from the stored hidden
// states, at most D + a positions per module.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/infer_model.h"
#include "infer/sampler.h"

namespace mtp {

struct spec_params {
    bool enabled = true;          // false: plain decoding (one main-model token per step)
    int n_draft = 0;              // max draft tokens per round; 0: D (D+1 with reuse)
    float p_min = 0.0f;           // adaptive: stop drafting at a draft whose probability is below p_min (0: off)
    bool reuse = false;           // continue past D by reusing the last module recurrently
    int n_batch = 256;            // prompt (and MTP catch-up) tokens per forward
    std::vector<int> draft_vocab; // FR-Spec: drafts only consider these token ids (ascending; empty: all). Greedy:
                                  // the draft is the argmax over them; sampling: q is the processed distribution
                                  // restricted to them and renormalised, the distribution drafts are drawn from
    std::vector<int> tree;        // token tree, greedy only: branches per depth (2,2,1: the top 2 drafts at depth 1,
                                  // the top 2 after each at depth 2, the top 1 after each of those), verified in one
                                  // main-model pass with a tree attention mask; the longest path that matches the
                                  // main model's argmax is accepted. Sampling drafts the chain of that depth.
    int test_broken_rule = 0;     // TESTS ONLY, deliberately wrong acceptance: 1 accept every draft, 2 on
                                  // rejection draw from p instead of normalize(max(0, p - q)), 3 adaptive drafting
                                  // judged against the unrestricted q, 4 drafts drawn from the restricted draft
                                  // vocabulary but judged against the full-vocabulary q
};

// Throws mtp::error naming the flag for bad values; D = the model's MTP modules, parallel: they are parallel heads
// (spec §8), which draft the chain only (no --draft-reuse, no --draft-tree).
void spec_params_check(const spec_params& p, int D, bool parallel = false);

// "2,2,1" -> {2, 2, 1}: branch counts 1..8 per depth, at most 16 depths and 60 tree nodes; throws mtp::error naming
// --draft-tree otherwise.
std::vector<int> parse_draft_tree(const std::string& spec);
int draft_tree_nodes(const std::vector<int>& tree);       // nodes below the root: b1 + b1*b2 + ...

struct gen_stats {
    int n_prompt = 0;
    double t_prompt = 0;          // seconds: prompt forward(s) incl. MTP prefill, and the first token's sampling
    int n_gen = 0;                // generated tokens, the first (from the prompt pass) included
    int n_steps_tokens = 0;       // tokens produced by decode steps (n_gen minus the first)
    double t_gen = 0;             // seconds spent in decode steps
    int64_t n_rounds = 0;         // decode steps
    int64_t n_drafts = 0;         // rounds that drafted >= 1 token
    int64_t n_draft_tokens = 0;
    int64_t n_accepted = 0;
    std::vector<int64_t> reached; // [j]: drafts with a token at draft position j+1
    std::vector<int64_t> accepted_at;
    // Where the decode time goes (seconds, summed over rounds; t_gen - the parts = loop overhead).
    double t_draft = 0;           // MTP module forwards: refill rows + frontier rows + draft head
    double t_verify = 0;          // main-model forwards (the verify pass; plain decoding: the one-token step)
    double t_sample = 0;          // sampler work: draft argmax / q, target argmax / p, acceptance, residual draws
    double t_rollback = 0;        // commit and cache truncation
    int64_t n_module_passes = 0;  // MTP module forwards
    int64_t n_refill_rows = 0;    // rows of those passes before the frontier (cache refill for accepted positions)
    int64_t n_verify_rows = 0;    // rows of the main-model decode forwards

    double prompt_tps() const { return t_prompt > 0 ? n_prompt / t_prompt : 0; }
    double gen_tps() const { return t_gen > 0 ? n_steps_tokens / t_gen : 0; }
    double accept_rate(int j) const;          // accepted at position j+1 / drafts that reached it
    double mean_accept_len() const;           // 1 + accepted / drafts (vLLM); 1 when no drafts
    std::string summary() const;              // one line
    void add(const gen_stats& o);
};

class generator {
public:
    generator(infer_model& m, sampler& s, const spec_params& p);

    // Runs the prompt (chunks of n_batch; the MTP modules over its committed positions too when speculating) and
    // samples the first new token, which it returns. reuse_prefix false: every cache is cleared first. true (a
    // prompt cache): the entries of the longest common prefix of the prompt and the tokens this generator holds are
    // kept (all but the prompt's last position, which gives the first token's logits) and only the rest is run; the
    // result is bitwise what a fresh start gives, since a cache entry depends only on the tokens up to it.
    int start(const std::vector<int>& prompt, bool reuse_prefix = false);
    int n_reused() const { return reused_; }                     // prompt positions the last start kept
    // The sampler of the next rounds (a new request on a kept generator); its state is the caller's.
    void set_sampler(sampler& s) { sp_ = &s; }
    // At most k draft tokens per round from now on (0: plain rounds; capped at draft_max()). Below the tree's
    // depth, rounds draft the chain. Used by the server to adapt the draft length to its load.
    void set_draft_cap(int k) { cap_ = k < 0 ? 0 : k; }
    // Rows the MTP modules would recompute before a round drafting k tokens could draft (positions they skipped
    // while rounds did not draft), beyond the one frontier row per module.
    int refill_rows(int k) const;
    // One decode round; appends the newly committed tokens (at most max_new) to out and returns how many.
    // Returns 0 when max_new <= 0 or the context is full.
    int step(int max_new, std::vector<int>& out);

    const std::vector<int>& tokens() const { return toks_; }      // committed, prompt first
    int n_valid(int k) const { return v_.at(k); }                // valid entries of module k's cache
    bool speculating() const { return spec_; }
    int draft_max() const { return K_; }
    const gen_stats& stats() const { return st_; }
    const std::vector<int>& last_drafts() const { return drafts_; }   // the last round's draft tokens (a tree:
                                                                      // its first branch, the chain's drafts)

private:
    int step_tree(int max_new, std::vector<int>& out);   // a greedy round over a token tree (tree_draft.cpp)
    int tree_module_pass(int j, int n);                  // the depth-j module rows of a tree round; returns rows
    void ensure_rows(int k, int rows);
    float* hrow(int k, int pos) { return hist_[k].data() + size_t(pos) * d_; }
    void run_module(int k, int n, int end, bool want_logits);
    int draft_token(int j, double& conf);    // picks d_{n+j} from dlog_ (fills q_[j-1] when sampling)
    // The stage feeding MTP stage k and the token lag of its inputs: module k at position j reads h^{k-1}_j and
    // t_{j+k} (sequential), head k reads h_j only (parallel), so its entry j is valid once j + lag(k) <= n.
    int in_stage(int k) const { return par_ ? 0 : k - 1; }
    int lag(int k) const { return par_ ? 0 : k; }

    infer_model& m_;
    sampler* sp_;
    spec_params p_;
    bool spec_ = false;
    bool par_ = false;                       // parallel heads (infer_model::mtp_parallel)
    int D_ = 0, K_ = 0, d_ = 0, V_ = 0;
    int cap_ = 1 << 30;                      // set_draft_cap
    int reused_ = 0;
    std::vector<int> toks_;
    std::vector<std::vector<float>> hist_;   // [stage][pos * d]: h (stage 0) and h^k of the latest computation;
                                             // grows with the context: (D+1)·n·d floats (could be windowed)
    std::vector<int> v_;                     // [stage] valid cache entries (MTP stages)
    std::vector<float> vlog_, dlog_, flog_;  // verify logits [(m+1), V], a draft's logits [V or draft vocab],
                                             // full logits (broken rule 4 only)
    std::vector<std::vector<double>> q_;     // draft distributions over the full vocabulary (sampling)
    std::vector<double> qs_;                 // a draft's distribution over the draft vocabulary
    bool dv_ = false;                        // drafting over the restricted draft vocabulary
    std::vector<double> pd_, rd_;
    std::vector<int> drafts_, buf_;
    gen_stats st_;
    // Token tree of the current round: node 0 is t_n (the root), the others in breadth-first order.
    struct tree_node {
        int tok, parent, depth;
    };
    std::vector<tree_node> tn_;
    std::vector<std::vector<float>> th_;      // [stage][node * d]: h of the stage's row for the node
    std::vector<std::vector<int>> tslot_;     // [stage][node]: the cache entry of that row (-1: none)
    std::vector<int> trow_tok_, trow_par_, trow_node_;   // rows of a tree pass: token, parent entry, node (-1: refill)
    int tfrom_ = 0;                                      // first row of the last module pass with logits
    std::vector<float> trow_hin_, trow_h_, tlog_;
};

// Prompt + up to n_new tokens (stop after stop_id when >= 0); on_tokens sees each committed batch as produced.
std::vector<int> generate(infer_model& m, sampler& s, const spec_params& p, const std::vector<int>& prompt, int n_new,
                          int stop_id = -1, const std::function<void(const int*, int)>& on_tokens = {},
                          gen_stats* stats = nullptr);

} // namespace mtp
