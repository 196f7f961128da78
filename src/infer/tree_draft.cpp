// Greedy speculation over a token tree: the MTP modules draft the top-b candidates at each depth, the main model
// verifies every node in one pass with a tree attention mask, and the longest path that matches its argmax is kept.
//
// Node 0 is t_n (depth 0); a node at depth e stands for the token at position n+e. Module k computes, for every node
// X at depth e <= k-1 of the tree, the row at position n+e-k fed X's token and h^{k-1} of module k-1's row for X's
// parent (for the root: the committed h^{k-1}_{n-k}); that row extends the row of X's parent in module k's cache, so
// it sees exactly what it would see in a chain through X. The rows of the depth-(k-1) nodes give the depth-k drafts.
// Past D (--draft-reuse) module D continues at positions n, n+1, .., fed its own h^D of the parent's row. The verify
// pass runs node X at position n+depth(X) extending its parent's entry. Every row is bitwise the row a chain through
// it computes, so the accepted path reproduces plain greedy decoding exactly.
#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/error.h"
#include "infer/speculative.h"

namespace mtp {

namespace {
using clk = std::chrono::steady_clock;
double secs(clk::time_point a, clk::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// The b best entries of logits[0..N) by value, best first; the first is `top` (the sampler's argmax).
void top_b(const float* logits, int N, int b, int top, std::vector<int>& out) {
    out.assign(1, top);
    for (int i = 0; b > 1 && i < N; ++i) {
        if (i == top) continue;
        if (int(out.size()) < b) {
            out.push_back(i);
        } else if (logits[i] > logits[out.back()]) {
            out.back() = i;
        } else {
            continue;
        }
        for (size_t j = out.size() - 1; j > 1 && logits[out[j]] > logits[out[j - 1]]; --j) std::swap(out[j], out[j - 1]);
    }
}
} // namespace

// Module rows for drafting depth j (see the top of the file); logits of the depth-(j-1) nodes' rows go to tlog_.
// Returns how many rows carry logits (the depth-(j-1) nodes, in node order).
int generator::tree_module_pass(int j, int n) {
    const int k = std::min(j, D_);
    const bool reuse = j > D_;
    const int nodes = int(tn_.size());
    th_[k].resize(size_t(nodes) * d_);
    if (reuse) tslot_[k].resize(nodes, -1);        // keeps the rows of module D's own pass
    else tslot_[k].assign(nodes, -1);
    trow_tok_.clear();
    trow_par_.clear();
    trow_node_.clear();
    trow_hin_.clear();
    int base = m_.n_cached(k);
    if (!reuse) {
        // Refill: committed positions v_k..n-k-1 (chunks through eval when they would not fit one tree pass).
        const int start = v_[k], end = std::max(0, n - k);
        m_.truncate(k, start);
        base = start;
        int p0 = start;
        ensure_rows(k, std::max(end, 1));
        while (end - p0 > 0 && end - p0 + nodes > m_.tree_rows_max()) {
            const int cnt = std::min(p_.n_batch, end - p0);
            m_.eval(k, p0, cnt, toks_.data() + p0 + k, hrow(k - 1, p0), hrow(k, p0), nullptr);
            ++st_.n_module_passes;
            st_.n_refill_rows += cnt;
            p0 += cnt;
        }
        base = p0;
        for (int p = p0; p < end; ++p) {
            trow_tok_.push_back(toks_[p + k]);
            trow_par_.push_back(p - 1);
            trow_node_.push_back(-1);
            trow_hin_.insert(trow_hin_.end(), hrow(k - 1, p), hrow(k - 1, p) + d_);
        }
        st_.n_refill_rows += end - p0;
        for (int x = 0; x < nodes; ++x) {
            const tree_node& t = tn_[x];
            if (t.depth > j - 1 || n + t.depth - k < 0) continue;   // no module-k row before position 0
            const int par = t.parent < 0 ? (n - k - 1 >= 0 ? n - k - 1 : -1) : tslot_[k][t.parent];
            trow_tok_.push_back(t.tok);
            trow_par_.push_back(par);
            trow_node_.push_back(x);
            const float* hin = t.parent < 0 ? hrow(k - 1, n - k) : th_[k - 1].data() + size_t(t.parent) * d_;
            trow_hin_.insert(trow_hin_.end(), hin, hin + d_);
            tslot_[k][x] = base + int(trow_tok_.size()) - 1;
        }
    } else {
        for (int x = 0; x < nodes; ++x) {
            const tree_node& t = tn_[x];
            if (t.depth != j - 1) continue;
            trow_tok_.push_back(t.tok);
            trow_par_.push_back(tslot_[k][t.parent]);
            trow_node_.push_back(x);
            const float* hin = th_[k].data() + size_t(t.parent) * d_;
            trow_hin_.insert(trow_hin_.end(), hin, hin + d_);
            tslot_[k][x] = base + int(trow_tok_.size()) - 1;
        }
    }
    const int rows = int(trow_tok_.size());
    int from = rows;                               // first row with logits: the depth-(j-1) nodes come last
    while (from > 0 && trow_node_[from - 1] >= 0 && tn_[trow_node_[from - 1]].depth == j - 1) --from;
    const int nv = dv_ ? int(p_.draft_vocab.size()) : V_;
    trow_h_.resize(size_t(rows) * d_);
    if (tlog_.size() < size_t(rows - from) * nv) tlog_.resize(size_t(rows - from) * nv);
    m_.eval_tree(k, rows, trow_tok_.data(), trow_par_.data(), trow_hin_.data(), trow_h_.data(), tlog_.data(), from,
                 dv_);
    ++st_.n_module_passes;
    for (int r = 0; r < rows; ++r) {
        const float* h = trow_h_.data() + size_t(r) * d_;
        const int x = trow_node_[r];
        if (x < 0) {
            std::memcpy(hrow(k, base + r), h, sizeof(float) * d_);                          // refill row
        } else {
            std::memcpy(th_[k].data() + size_t(x) * d_, h, sizeof(float) * d_);
            if (x == 0 && !reuse) std::memcpy(hrow(k, n - k), h, sizeof(float) * d_);       // committed inputs
        }
    }
    if (!reuse) v_[k] = std::max(0, n - k + 1);
    tfrom_ = from;
    return rows - from;
}

int generator::step_tree(int max_new, std::vector<int>& out) {
    const int n = int(toks_.size()) - 1;
    const auto t0 = clk::now();
    const int depth_max = std::max(0, std::min({int(p_.tree.size()), m_.n_ctx() - 1 - n, max_new - 1}));
    th_.resize(D_ + 1);
    tslot_.resize(D_ + 1);
    tn_.assign(1, tree_node{toks_[n], -1, 0});
    const int hn = int(toks_.size());
    const int nv = dv_ ? int(p_.draft_vocab.size()) : V_;
    std::vector<int> best;
    for (int k = 1; k <= D_; ++k) ensure_rows(k, n + 1);

    // Draft, depth by depth.
    for (int j = 1; j <= depth_max; ++j) {
        const auto ta = clk::now();
        const int with_logits = tree_module_pass(j, n);
        const auto tb = clk::now();
        const int b = p_.tree[j - 1];
        for (int r = 0; r < with_logits; ++r) {
            const float* lg = tlog_.data() + size_t(r) * nv;
            const int top = dv_ ? sp_->argmax(lg, nv, toks_.data(), hn, p_.draft_vocab.data())
                                : sp_->argmax(lg, nv, toks_.data(), hn);
            top_b(lg, nv, b, top, best);
            const int parent = trow_node_[tfrom_ + r];
            for (int i : best) tn_.push_back(tree_node{dv_ ? p_.draft_vocab[i] : i, parent, j});
        }
        st_.t_draft += secs(ta, tb);
        st_.t_sample += secs(tb, clk::now());
    }
    const int N = int(tn_.size());

    // Verify every node in one pass.
    const auto tv = clk::now();
    trow_tok_.resize(N);
    trow_par_.resize(N);
    for (int x = 0; x < N; ++x) {
        trow_tok_[x] = tn_[x].tok;
        trow_par_[x] = tn_[x].parent < 0 ? n - 1 : n + tn_[x].parent;
    }
    trow_h_.resize(size_t(N) * d_);
    if (vlog_.size() < size_t(N) * V_) vlog_.resize(size_t(N) * V_);
    m_.eval_tree(0, N, trow_tok_.data(), trow_par_.data(), nullptr, trow_h_.data(), vlog_.data(), 0);
    st_.n_verify_rows += N;
    const auto ts = clk::now();
    st_.t_verify += secs(tv, ts);

    // Accept: from the root, follow the child whose token is the main model's argmax.
    drafts_.clear();
    std::vector<int> path{0};
    int cur = 0, next = -1;
    while (next < 0) {
        const int target = sp_->argmax(vlog_.data() + size_t(cur) * V_, V_, toks_.data(), int(toks_.size()));
        int child = -1;
        for (int x = cur + 1; x < N && child < 0; ++x)
            if (tn_[x].parent == cur && tn_[x].tok == target) child = x;
        if (child < 0) {
            next = target;
        } else {
            path.push_back(child);
            toks_.push_back(target);
            cur = child;
        }
    }
    const int a = int(path.size()) - 1;
    const auto tr = clk::now();
    st_.t_sample += secs(ts, tr);

    // Commit: the path's entries become positions n..n+a of the main cache, its h rows the history.
    toks_.push_back(next);
    std::vector<int> slots(path.size());
    ensure_rows(0, n + a + 1);
    for (size_t i = 0; i < path.size(); ++i) {
        slots[i] = n + path[i];
        std::memcpy(hrow(0, n + int(i)), trow_h_.data() + size_t(path[i]) * d_, sizeof(float) * d_);
    }
    m_.keep_path(0, n, slots);
    for (int k = 1; k <= D_; ++k) m_.truncate(k, v_[k]);
    const int produced = a + 1;
    out.insert(out.end(), toks_.end() - produced, toks_.end());
    for (int x = 0;;) {                            // last_drafts(): the tree's first branch, the chain's drafts
        int c = x + 1;
        while (c < N && tn_[c].parent != x) ++c;
        if (c >= N) break;
        drafts_.push_back(tn_[c].tok);
        x = c;
    }

    ++st_.n_rounds;
    if (N > 1) {
        ++st_.n_drafts;
        st_.n_draft_tokens += N - 1;
        st_.n_accepted += a;
        for (int j = 0; j < depth_max && j < int(st_.reached.size()); ++j) ++st_.reached[j];
        for (int j = 0; j < a && j < int(st_.accepted_at.size()); ++j) ++st_.accepted_at[j];
    }
    st_.n_gen += produced;
    st_.n_steps_tokens += produced;
    const auto te = clk::now();
    st_.t_rollback += secs(tr, te);
    st_.t_gen += secs(t0, te);
    return produced;
}

} // namespace mtp
