// Generation loop: prefill, plain steps, and MTP draft / verify / accept / rollback rounds (spec §6).
#include "infer/speculative.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/error.h"

namespace mtp {

namespace {
using clk = std::chrono::steady_clock;
double since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }
} // namespace

void spec_params_check(const spec_params& p, int D, bool parallel) {
    if (p.n_draft < 0) fail("--draft", "must be >= 1");
    if (p.enabled && D > 0 && parallel && p.reuse)
        fail("--draft-reuse", "needs sequential MTP modules; this model's are parallel heads (mtp_style \"parallel\"), "
                              "which have no recurrence to continue");
    if (p.enabled && D > 0 && parallel && !p.tree.empty())
        fail("--draft-tree", "needs sequential MTP modules; this model's are parallel heads (mtp_style \"parallel\"), "
                             "which draft the chain");
    if (p.enabled && D > 0 && p.n_draft > D && !p.reuse)
        fail("--draft", std::to_string(p.n_draft) + " exceeds the model's " + std::to_string(D) +
                            " MTP modules; add --draft-reuse to continue with the last module");
    if (p.n_draft > 64) fail("--draft", "must be <= 64");
    if (!(p.p_min >= 0.0f && p.p_min <= 1.0f)) fail("--draft-p-min", "must be in [0, 1]");
    if (p.n_batch < 1) fail("--batch", "must be >= 1");
    if (!p.tree.empty()) {
        if (p.tree.size() > 16 || draft_tree_nodes(p.tree) > 60)
            fail("--draft-tree", "at most 16 depths and 60 nodes");
        for (int b : p.tree)
            if (b < 1 || b > 8) fail("--draft-tree", "branch counts must be 1..8");
        if (p.enabled && D > 0 && int(p.tree.size()) > D && !p.reuse)
            fail("--draft-tree", std::to_string(p.tree.size()) + " depths exceed the model's " + std::to_string(D) +
                                     " MTP modules; add --draft-reuse to continue with the last module");
        if (p.p_min > 0) fail("--draft-tree", "cannot be combined with --draft-p-min");
    }
    for (size_t i = 0; i < p.draft_vocab.size(); ++i)
        if (p.draft_vocab[i] < 0 || (i > 0 && p.draft_vocab[i] <= p.draft_vocab[i - 1]))
            fail("--draft-vocab", "draft vocabulary ids must be ascending, distinct and >= 0");
}

int draft_tree_nodes(const std::vector<int>& tree) {
    long long total = 0, level = 1;
    for (int b : tree) {
        level *= std::max(0, b);
        total += level;
        if (total > 1000000) break;
    }
    return int(std::min<long long>(total, 1000000));
}

std::vector<int> parse_draft_tree(const std::string& spec) {
    std::vector<int> t;
    size_t i = 0;
    const auto bad = [&] {
        fail("--draft-tree", "expected branch counts per depth like 2,2,1, got " + quoted(spec));
    };
    if (spec.empty()) bad();
    while (i <= spec.size()) {
        size_t j = spec.find(',', i);
        if (j == std::string::npos) j = spec.size();
        const std::string f = spec.substr(i, j - i);
        if (f.empty() || f.size() > 2 || f.find_first_not_of("0123456789") != std::string::npos) bad();
        t.push_back(std::stoi(f));
        i = j + 1;
    }
    for (int b : t)
        if (b < 1 || b > 8) fail("--draft-tree", "branch counts must be 1..8, got " + quoted(spec));
    if (t.size() > 16 || draft_tree_nodes(t) > 60)
        fail("--draft-tree", quoted(spec) + " has " + std::to_string(draft_tree_nodes(t)) +
                                 " nodes; at most 16 depths and 60 nodes");
    return t;
}

double gen_stats::accept_rate(int j) const {
    if (j < 0 || j >= int(reached.size()) || reached[j] == 0) return 0;
    return double(accepted_at[j]) / double(reached[j]);
}

double gen_stats::mean_accept_len() const { return n_drafts ? 1.0 + double(n_accepted) / double(n_drafts) : 1.0; }

void gen_stats::add(const gen_stats& o) {
    n_prompt += o.n_prompt;
    t_prompt += o.t_prompt;
    n_gen += o.n_gen;
    n_steps_tokens += o.n_steps_tokens;
    t_gen += o.t_gen;
    n_rounds += o.n_rounds;
    n_drafts += o.n_drafts;
    n_draft_tokens += o.n_draft_tokens;
    n_accepted += o.n_accepted;
    t_draft += o.t_draft;
    t_verify += o.t_verify;
    t_sample += o.t_sample;
    t_rollback += o.t_rollback;
    n_module_passes += o.n_module_passes;
    n_refill_rows += o.n_refill_rows;
    n_verify_rows += o.n_verify_rows;
    if (reached.size() < o.reached.size()) {
        reached.resize(o.reached.size(), 0);
        accepted_at.resize(o.reached.size(), 0);
    }
    for (size_t j = 0; j < o.reached.size(); ++j) {
        reached[j] += o.reached[j];
        accepted_at[j] += o.accepted_at[j];
    }
}

std::string gen_stats::summary() const {
    char b[256];
    std::snprintf(b, sizeof b, "prompt %d tokens %.2f t/s | generated %d tokens %.2f t/s", n_prompt, prompt_tps(),
                  n_gen, gen_tps());
    std::string s = b;
    if (!reached.empty()) {                       // speculation on (even when nothing was drafted)
        std::snprintf(b, sizeof b, " | drafts %lld, draft tokens %lld, accepted %lld, acceptance", (long long)n_drafts,
                      (long long)n_draft_tokens, (long long)n_accepted);
        s += b;
        for (size_t j = 0; j < reached.size(); ++j) {
            std::snprintf(b, sizeof b, "%s%.3f", j ? "/" : " ", accept_rate(int(j)));
            s += b;
        }
        std::snprintf(b, sizeof b, ", mean acceptance length %.3f", mean_accept_len());
        s += b;
    }
    return s;
}

generator::generator(infer_model& m, sampler& s, const spec_params& p) : m_(m), sp_(&s), p_(p) {
    D_ = m.n_mtp();
    d_ = m.n_embd();
    V_ = m.n_vocab();
    par_ = D_ > 0 && m.mtp_parallel();
    spec_params_check(p, D_, par_);
    spec_ = p.enabled && D_ > 0;
    K_ = spec_ ? (p.n_draft > 0 ? p.n_draft : (p.reuse ? D_ + 1 : D_)) : 0;
    if (spec_ && !p.reuse) K_ = std::min(K_, D_);
    if (spec_ && !p.tree.empty()) K_ = int(p.tree.size());   // sampling drafts the chain of the tree's depth
    dv_ = spec_ && !p.draft_vocab.empty();
    if (dv_) {
        if (p.draft_vocab.back() >= V_)
            fail("--draft-vocab", "token id " + std::to_string(p.draft_vocab.back()) + " is not below the vocabulary " +
                                      std::to_string(V_));
        m.set_draft_vocab(p.draft_vocab);
    }
    hist_.resize(D_ + 1);
    v_.assign(D_ + 1, 0);
}

int generator::refill_rows(int k) const {
    if (!spec_) return 0;
    const int n = int(toks_.size()) - 1;
    int r = 0;
    for (int j = 1; j <= std::min(k, D_); ++j) r += std::max(0, n - v_[size_t(j)] - 1);
    return r;
}

void generator::ensure_rows(int k, int rows) {
    if (hist_[k].size() < size_t(rows) * d_) hist_[k].resize(std::max(hist_[k].size() * 2, size_t(rows) * d_));
}

// Module k over positions v_k..end-1 (tokens t_{j+k} from toks_, which holds the committed tokens followed by the
// current drafts), reading h^{k-1} from hist_[k-1] (parallel heads: h from hist_[0], no token) and writing h^k into
// hist_[k]; logits of the last row into dlog_ when wanted. Afterwards v_k = the entries computed from committed
// inputs only: min(end, n-lag(k)+1), and never past the main model's n entries.
void generator::run_module(int k, int n, int end, bool want_logits) {
    // The frontier row gives the draft logits: computed again when its entry is still valid (a parallel head whose
    // inputs were all committed, e.g. a prompt-cache hit covering the whole prompt); bitwise the same entry.
    const int start = want_logits ? std::max(0, std::min(v_[k], end - 1)) : v_[k];
    m_.truncate(k, start);
    ensure_rows(k, end);
    // Broken rule 4 (tests) needs the full-vocabulary logits of the draft as well.
    const bool full_too = dv_ && p_.test_broken_rule == 4;
    for (int j0 = start; j0 < end; j0 += p_.n_batch) {
        const int cnt = std::min(p_.n_batch, end - j0);
        const bool last = j0 + cnt == end;
        m_.eval(k, j0, cnt, par_ ? nullptr : toks_.data() + j0 + k, hrow(in_stage(k), j0), hrow(k, j0),
                want_logits && last ? (full_too ? flog_.data() : dlog_.data()) : nullptr, cnt - 1, dv_ && !full_too);
    }
    v_[k] = std::max(0, std::min({end, n - lag(k) + 1, n}));
}

// d_{n+j} from the draft logits in dlog_ (over the draft vocabulary when dv_). Greedy: the argmax; conf = its
// temperature-1 probability (for adaptive drafting). Sampling: q_[j-1] = the distribution the draft is drawn from,
// over the full vocabulary (zero outside the draft vocabulary); conf = q(d).
int generator::draft_token(int j, double& conf) {
    const int hn = int(toks_.size());
    const bool greedy = sp_->greedy();
    if (!dv_) {
        if (greedy) {
            const int d = sp_->argmax(dlog_.data(), V_, toks_.data(), hn);
            conf = p_.p_min > 0 ? sp_->prob_t1(dlog_.data(), V_, toks_.data(), hn, d) : 1.0;
            return d;
        }
        if (q_.size() < size_t(j)) q_.resize(j);
        sp_->dist(dlog_.data(), V_, toks_.data(), hn, q_[j - 1]);
        const int d = sp_->draw(q_[j - 1]);
        conf = q_[j - 1][d];
        return d;
    }
    const std::vector<int>& ids = p_.draft_vocab;
    const int N = int(ids.size());
    if (p_.test_broken_rule == 4)                  // restricted logits gathered from the full ones
        for (int i = 0; i < N; ++i) dlog_[i] = flog_[ids[i]];
    if (greedy) {
        const int i = sp_->argmax(dlog_.data(), N, toks_.data(), hn, ids.data());
        conf = p_.p_min > 0 ? sp_->prob_t1(dlog_.data(), N, toks_.data(), hn, i, ids.data()) : 1.0;
        return ids[i];
    }
    if (q_.size() < size_t(j)) q_.resize(j);
    sp_->dist(dlog_.data(), N, toks_.data(), hn, qs_, ids.data());
    const int i = sp_->draw(qs_);
    std::vector<double>& q = q_[j - 1];
    if (p_.test_broken_rule == 4) {                // WRONG on purpose: q of the unrestricted head
        sp_->dist(flog_.data(), V_, toks_.data(), hn, q);
    } else {
        q.assign(V_, 0.0);
        for (int t = 0; t < N; ++t) q[ids[t]] = qs_[t];
    }
    conf = qs_[i];
    return ids[i];
}

int generator::start(const std::vector<int>& prompt, bool reuse_prefix) {
    auto t0 = clk::now();
    const int P = int(prompt.size());
    if (P == 0) fail("prompt", "empty");
    if (P > m_.n_ctx())
        fail("prompt", std::to_string(P) + " tokens exceed the context of " + std::to_string(m_.n_ctx()));
    // Kept: main positions 0..keep-1 (their h rows in hist_[0] too) and, for module k, its valid entries whose
    // inputs t_{j+k} lie in the common prefix c (j < c - k; parallel heads: j < c).
    int c = 0;
    if (reuse_prefix) {
        const int n_main = std::min(m_.n_cached(0), int(toks_.size()));
        while (c < n_main && c < P && toks_[size_t(c)] == prompt[size_t(c)]) ++c;
    }
    const int keep = std::min(c, P - 1);
    m_.truncate(0, keep);
    v_[0] = 0;
    for (int k = 1; k <= D_; ++k) {
        v_[size_t(k)] = spec_ ? std::max(0, std::min({v_[size_t(k)], m_.n_cached(k), c - lag(k)})) : 0;
        m_.truncate(k, v_[size_t(k)]);
    }
    reused_ = keep;
    st_ = gen_stats{};
    st_.reached.assign(K_, 0);
    st_.accepted_at.assign(K_, 0);
    toks_ = prompt;
    vlog_.resize(size_t(V_) * (K_ + 1));
    dlog_.resize(V_);
    if (dv_ && p_.test_broken_rule == 4) flog_.resize(V_);
    ensure_rows(0, P);
    for (int j0 = keep; j0 < P; j0 += p_.n_batch) {
        const int cnt = std::min(p_.n_batch, P - j0);
        const bool last = j0 + cnt == P;
        m_.eval(0, j0, cnt, toks_.data() + j0, nullptr, hrow(0, j0), last ? vlog_.data() : nullptr, cnt - 1);
    }
    const int first = sp_->sample(vlog_.data(), V_, toks_.data(), P);
    toks_.push_back(first);
    const int n = P;
    // MTP modules over the positions whose inputs are all committed, except the one at n-k that the first
    // round's draft computes (it yields that depth's frontier logits): positions 0..n-k-1 (parallel heads:
    // 0..n-2, the frontier n-1 being every head's draft row).
    // With a draft cap of 0 (a server with a draft policy) this waits: the first round that drafts catches up.
    if (spec_ && cap_ > 0)
        for (int k = 1; k <= D_; ++k) run_module(k, n, std::max(0, n - std::max(1, lag(k))), false);
    st_.n_prompt = P;
    st_.t_prompt = since(t0);
    st_.n_gen = 1;
    return first;
}

int generator::step(int max_new, std::vector<int>& out) {
    const int n = int(toks_.size()) - 1;          // t_n committed, not yet fed
    if (max_new <= 0 || n < 0 || n >= m_.n_ctx()) return 0;
    if (spec_ && !p_.tree.empty() && sp_->greedy() && cap_ >= K_) return step_tree(max_new, out);
    auto t0 = clk::now();
    const int ctx = m_.n_ctx();
    const int m_max = spec_ ? std::max(0, std::min({K_, cap_, ctx - 1 - n, max_new - 1})) : 0;
    const bool greedy = sp_->greedy();
    const bool full_too = dv_ && p_.test_broken_rule == 4;

    // Draft: drafts are appended to toks_ as they are made (so toks_[n+j] = d_{n+j}) and removed before commit.
    drafts_.clear();
    for (int j = 1; j <= m_max; ++j) {
        auto ta = clk::now();
        if (j <= D_) {
            const int rows = n - v_[j];
            run_module(j, n, n, true);            // positions v_j..n-1; its frontier row gives d_{n+j}
            ++st_.n_module_passes;
            st_.n_refill_rows += std::max(0, rows - 1);
        } else {                                  // reuse module D at position n+j-D-1, fed its own h^D
            const int pos = n + j - D_ - 1;
            ensure_rows(D_, pos + 1);
            m_.eval(D_, pos, 1, toks_.data() + n + j - 1, hrow(D_, pos - 1), hrow(D_, pos),
                    full_too ? flog_.data() : dlog_.data(), 0, dv_ && !full_too);
            ++st_.n_module_passes;
        }
        auto tb = clk::now();
        double conf;
        const int d = draft_token(j, conf);
        st_.t_draft += std::chrono::duration<double>(tb - ta).count();
        st_.t_sample += since(tb);
        if (conf < p_.p_min) break;
        if (!greedy && p_.p_min > 0 && p_.test_broken_rule != 3) {
            // A kept draft is distributed as q restricted to {q >= p_min} (the others stop drafting), so that is
            // the proposal the acceptance rule must use; with q itself the output would not follow p.
            auto tc = clk::now();
            std::vector<double>& q = q_[j - 1];
            double mass = 0;
            for (double& x : q) mass += x = x >= p_.p_min ? x : 0.0;
            for (double& x : q) x /= mass;
            st_.t_sample += since(tc);
        }
        drafts_.push_back(d);
        toks_.push_back(d);
    }
    const int m = int(drafts_.size());

    // Verify: [t_n, d_{n+1..n+m}] at positions n..n+m.
    auto tv = clk::now();
    ensure_rows(0, n + m + 1);
    if (vlog_.size() < size_t(m + 1) * V_) vlog_.resize(size_t(m + 1) * V_);
    m_.eval(0, n, m + 1, toks_.data() + n, nullptr, hrow(0, n), vlog_.data(), 0);
    st_.n_verify_rows += m + 1;
    auto ts = clk::now();
    st_.t_verify += std::chrono::duration<double>(ts - tv).count();

    // Accept.
    int a = 0, next = -1;
    for (int j = 0; j < m && next < 0; ++j) {
        const float* row = vlog_.data() + size_t(j) * V_;
        const int hn = n + 1 + j;                  // history: committed + drafts before this slot
        const int dj = drafts_[j];
        if (p_.test_broken_rule == 1) {
            ++a;
            continue;
        }
        if (greedy) {
            const int target = sp_->argmax(row, V_, toks_.data(), hn);
            if (target == dj) ++a;
            else next = target;
        } else {
            sp_->dist(row, V_, toks_.data(), hn, pd_);
            const std::vector<double>& q = q_[j];
            if (sp_->uniform() * q[dj] < pd_[dj]) {
                ++a;
            } else {                               // residual distribution normalize(max(0, p - q))
                rd_.resize(V_);
                double mass = 0;
                for (int i = 0; i < V_; ++i) mass += rd_[i] = std::max(0.0, pd_[i] - q[i]);
                next = sp_->draw(mass > 0 && p_.test_broken_rule != 2 ? rd_ : pd_);
            }
        }
    }
    if (next < 0) {                                // every draft accepted: bonus token from the last slot
        const float* row = vlog_.data() + size_t(m) * V_;
        next = greedy ? sp_->argmax(row, V_, toks_.data(), n + 1 + m)
                      : (sp_->dist(row, V_, toks_.data(), n + 1 + m, pd_), sp_->draw(pd_));
    }
    auto tr = clk::now();
    st_.t_sample += std::chrono::duration<double>(tr - ts).count();

    // Commit t_{n+1..n+a} = accepted drafts, t_{n+a+1} = next; roll every cache back.
    toks_.resize(n + 1 + a);
    toks_.push_back(next);
    m_.truncate(0, n + a + 1);
    if (spec_)
        for (int k = 1; k <= D_; ++k) m_.truncate(k, v_[k]);
    const int produced = a + 1;
    out.insert(out.end(), toks_.end() - produced, toks_.end());

    ++st_.n_rounds;
    if (m > 0) {
        ++st_.n_drafts;
        st_.n_draft_tokens += m;
        st_.n_accepted += a;
        for (int j = 0; j < m; ++j) ++st_.reached[j];
        for (int j = 0; j < a; ++j) ++st_.accepted_at[j];
    }
    st_.n_gen += produced;
    st_.n_steps_tokens += produced;
    const auto te = clk::now();
    st_.t_rollback += std::chrono::duration<double>(te - tr).count();
    st_.t_gen += std::chrono::duration<double>(te - t0).count();
    return produced;
}

std::vector<int> generate(infer_model& m, sampler& s, const spec_params& p, const std::vector<int>& prompt, int n_new,
                          int stop_id, const std::function<void(const int*, int)>& on_tokens, gen_stats* stats) {
    generator g(m, s, p);
    std::vector<int> out;
    if (n_new > 0) {
        const int first = g.start(prompt);
        out.push_back(first);
        if (on_tokens) on_tokens(&first, 1);
        bool stop = first == stop_id;
        std::vector<int> buf;
        while (!stop && int(out.size()) < n_new) {
            buf.clear();
            const int got = g.step(n_new - int(out.size()), buf);
            if (got == 0) break;
            int keep = got;
            for (int i = 0; i < got; ++i)
                if (buf[i] == stop_id) { keep = i + 1; stop = true; break; }
            out.insert(out.end(), buf.begin(), buf.begin() + keep);
            if (on_tokens) on_tokens(buf.data(), keep);
        }
    }
    if (stats) {
        *stats = g.stats();
        const int cut = stats->n_gen - int(out.size());   // tokens committed past the stop token
        if (n_new > 0 && cut > 0) {
            stats->n_gen -= cut;
            stats->n_steps_tokens -= cut;
        }
    }
    return out;
}

} // namespace mtp
