// The only thing the generation loop and the speculator know about a model (design: "run these tokens at these
// positions, give logits and hidden states, truncate caches to n"), so a CUDA or distributed model can replace the
// CPU one. Stage 0 is the main model (trunk + lm_head); stage k = 1..n_mtp() is MTP module k (spec §5), each with
// its own KV cache. Positions are absolute; every stage's cache holds positions 0..n_cached(stage)-1.
#pragma once
#include <vector>

namespace mtp {

struct infer_model {
    virtual ~infer_model() = default;

    virtual int n_vocab() const = 0;
    virtual int n_embd() const = 0;          // width of the hidden states h
    virtual int n_mtp() const = 0;           // D
    virtual int n_ctx() const = 0;           // positions available (max_position_embeddings)
    // Parallel heads (spec §8) instead of the sequential chain: stage k is then fed the trunk's h_p (stage 0) and
    // reads no token (tokens may be null for k >= 1); head k still predicts t_{p+k+1}.
    virtual bool mtp_parallel() const = 0;

    virtual int n_cached(int stage) const = 0;
    // Rolls the stage's cache back to its first n positions (never grows it).
    virtual void truncate(int stage, int n) = 0;

    // Runs m tokens at positions pos0..pos0+m-1 of `stage`; pos0 must equal n_cached(stage) (the cache is appended
    // to) and pos0+m <= n_ctx(). Stage 0: tokens[i] is the token at pos0+i, hprev is ignored. Stage k: row i is
    // module k at position p = pos0+i, fed hprev[i] = h^{k-1}_p [n_embd] and tokens[i] = t_{p+k}.
    // Writes h[m, n_embd] (post-norm hidden state of this stage) and, when logits is non-null,
    // logits[m - logits_from, n_vocab] for rows logits_from..m-1 (rows before logits_from are not computed).
    // draft_vocab: the logits are over the draft vocabulary only, [m - logits_from, draft_vocab().size()] in the
    // order of draft_vocab() (requires one to be set). A row's values do not depend on m (nor on logits_from).
    virtual void eval(int stage, int pos0, int m, const int* tokens, const float* hprev, float* h, float* logits,
                      int logits_from = 0, bool draft_vocab = false) = 0;

    // Token trees (speculation verifying several candidate continuations in one pass). Row i becomes cache entry
    // s = n_cached(stage) + i and extends entry parent[i] (< s; -1: none): its position is the parent's + 1 (0
    // without one) and it attends to itself and the chain of entries ending at its parent. With parent[i] = s - 1
    // for every row this is eval at pos0 = n_cached(stage), bitwise. Other arguments as in eval; m <= tree_rows_max().
    virtual void eval_tree(int stage, int m, const int* tokens, const int* parent, const float* hprev, float* h,
                           float* logits, int logits_from = 0, bool draft_vocab = false) = 0;
    // Entries `slots` (each one's parent the previous, the first's from - 1) become positions from, from + 1, .. of
    // the stage's cache; every entry after them is dropped.
    virtual void keep_path(int stage, int from, const std::vector<int>& slots) = 0;
    virtual int tree_rows_max() const = 0;

    // Distinct routed experts the last eval of `stage` read, summed over its MoE layers (-1: not reported; 0 for
    // a dense model). A verify pass over m rows of an MoE model reads more expert weights than one row.
    virtual long long experts_read(int stage) const { return -1; }

    // FR-Spec draft vocabulary: token ids (ascending, distinct, < n_vocab) the draft head scores; empty: none.
    virtual void set_draft_vocab(const std::vector<int>& ids) = 0;
    virtual const std::vector<int>& draft_vocab() const = 0;
};

} // namespace mtp
