// Tree evaluation (infer_model::eval_tree / keep_path): every row of a token tree gives bitwise the hidden state and
// logits that the chain through it gives, for the trunk and an MTP module, at each weight type; keeping a path leaves
// the cache exactly as the chain builds it (later rows agree bitwise too); malformed trees are rejected.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "infer/cpu_model.h"
#include "infer_test_util.h"

namespace {

using namespace mtp;
using namespace mtp::test;

struct tree_case {
    std::vector<int> tok, parent;                  // parent: node index, -1 for the first row (extends the prefix)
};

// A random tree of n nodes: node 0 extends the prefix, node i > 0 a random earlier node.
tree_case random_tree(int n, int V, rng& r) {
    tree_case t;
    for (int i = 0; i < n; ++i) {
        t.tok.push_back(int(r.below(V)));
        t.parent.push_back(i == 0 ? -1 : int(r.below(i)));
    }
    return t;
}

std::vector<int> path_to(const tree_case& t, int x) {
    std::vector<int> p;
    for (; x >= 0; x = t.parent[x]) p.insert(p.begin(), x);
    return p;
}

void expect_rows_equal(const float* a, const float* b, int n, const std::string& what) {
    EXPECT_EQ(std::memcmp(a, b, sizeof(float) * size_t(n)), 0) << what << " differs from the chain";
}

// Stage `stage` (0: trunk, k: module k fed random hprev rows) after a prompt of P positions.
void check_stage(const model_files& m, wtype type, int stage, uint64_t seed) {
    const model_config& c = m.config;
    const int V = c.vocab_size, d = c.hidden_size, P = 11;
    rng r(seed);
    std::vector<int> prompt(P);
    for (int& x : prompt) x = int(r.below(V));
    std::vector<float> hp(size_t(P) * d);          // MTP stages: h^{k-1} rows of the prompt
    for (float& x : hp) x = float(r.normal());
    const auto prefill = [&](cpu_model& cm) {
        std::vector<float> h(size_t(P) * d);
        cm.eval(stage, 0, P, prompt.data(), stage ? hp.data() : nullptr, h.data(), nullptr);
    };
    const tree_case t = random_tree(14, V, r);
    const int N = int(t.tok.size());
    std::vector<float> hin(size_t(N) * d);          // hprev of each tree row
    for (float& x : hin) x = float(r.normal());
    cpu_model tree_m(m, 0, type);
    prefill(tree_m);
    std::vector<int> par(N);
    for (int i = 0; i < N; ++i) par[i] = t.parent[i] < 0 ? P - 1 : P + t.parent[i];
    std::vector<float> h(size_t(N) * d), lg(size_t(N) * V);
    tree_m.eval_tree(stage, N, t.tok.data(), par.data(), stage ? hin.data() : nullptr, h.data(), lg.data());
    int deep = 0;
    for (int x = 0; x < N; ++x) {
        const std::vector<int> path = path_to(t, x);
        const int L = int(path.size());
        deep = std::max(deep, L);
        std::vector<int> toks;
        std::vector<float> hpath;
        for (int y : path) {
            toks.push_back(t.tok[y]);
            hpath.insert(hpath.end(), hin.begin() + long(y) * d, hin.begin() + long(y + 1) * d);
        }
        cpu_model chain(m, 0, type);
        prefill(chain);
        std::vector<float> hc(size_t(L) * d), lc(size_t(L) * V);
        chain.eval(stage, P, L, toks.data(), stage ? hpath.data() : nullptr, hc.data(), lc.data());
        const std::string what = "stage " + std::to_string(stage) + " node " + std::to_string(x) + " (depth " +
                                 std::to_string(L) + ")";
        expect_rows_equal(h.data() + size_t(x) * d, hc.data() + size_t(L - 1) * d, d, what + " h");
        expect_rows_equal(lg.data() + size_t(x) * V, lc.data() + size_t(L - 1) * V, V, what + " logits");
    }
    // a 14-node random recursive tree has a path of < 4 nodes with probability ≈ 0.5% (simulated); the seeds are fixed
    EXPECT_GE(deep, 4) << "the random tree should have some depth";

    // Keep the path to the last node, then three more chain rows: as if the chain had been fed all along.
    const std::vector<int> path = path_to(t, N - 1);
    std::vector<int> slots;
    for (int y : path) slots.push_back(P + y);
    EXPECT_THROW(tree_m.eval(stage, P + N, 1, prompt.data(), hp.data(), h.data(), nullptr), mtp::error)
        << "a chain eval over tree entries must be refused";
    tree_m.keep_path(stage, P, slots);
    ASSERT_EQ(tree_m.n_cached(stage), P + int(path.size()));
    const int L = int(path.size()), pos = P + L;
    std::vector<int> more = {1 % V, 2 % V, 3 % V};
    std::vector<float> hm(3 * size_t(d), 0.5f), h1(3 * size_t(d)), l1(3 * size_t(V)), h2(3 * size_t(d)),
        l2(3 * size_t(V));
    tree_m.eval(stage, pos, 3, more.data(), stage ? hm.data() : nullptr, h1.data(), l1.data());
    cpu_model chain(m, 0, type);
    prefill(chain);
    std::vector<int> toks;
    std::vector<float> hpath;
    for (int y : path) {
        toks.push_back(t.tok[y]);
        hpath.insert(hpath.end(), hin.begin() + long(y) * d, hin.begin() + long(y + 1) * d);
    }
    std::vector<float> hc(size_t(L) * d);
    chain.eval(stage, P, L, toks.data(), stage ? hpath.data() : nullptr, hc.data(), nullptr);
    chain.eval(stage, pos, 3, more.data(), stage ? hm.data() : nullptr, h2.data(), l2.data());
    expect_rows_equal(h1.data(), h2.data(), 3 * d, "rows after keep_path, h");
    expect_rows_equal(l1.data(), l2.data(), 3 * V, "rows after keep_path, logits");
}

TEST(TreeEval, RowsEqualTheirChainBitwise) {
    single_thread_scope one_thread;
    for (bool moe : {true, false}) {
        const model_files m = random_model(small_config(2, moe, moe, true), 31 + moe);
        for (wtype t : {wtype::f32, wtype::bf16, wtype::q8_0})
            for (int stage : {0, 1, 2}) {
                SCOPED_TRACE(std::string(moe ? "MoE " : "dense ") + wtype_name(t) + " stage " + std::to_string(stage));
                check_stage(m, t, stage, 100 + stage + 10 * int(t));
            }
    }
}

TEST(TreeEval, RejectsMalformedTrees) {
    const model_files m = random_model(small_config(1, false, false, false), 33);
    cpu_model cm(m);
    const int d = m.config.hidden_size;
    std::vector<int> toks = {1, 2, 3, 4};
    std::vector<float> h(4 * size_t(d)), lg(4 * size_t(m.config.vocab_size));
    cm.eval(0, 0, 4, toks.data(), nullptr, h.data(), nullptr);
    std::vector<int> bad = {3, 5};                                    // row 1 = entry 5 cannot extend itself
    EXPECT_THROW(cm.eval_tree(0, 2, toks.data(), bad.data(), nullptr, h.data(), nullptr), mtp::error);
    std::vector<int> neg = {-2, 3};
    EXPECT_THROW(cm.eval_tree(0, 2, toks.data(), neg.data(), nullptr, h.data(), nullptr), mtp::error);
    std::vector<int> bad_tok = {-1, 2};
    std::vector<int> ok = {3, 3};
    EXPECT_THROW(cm.eval_tree(0, 2, bad_tok.data(), ok.data(), nullptr, h.data(), nullptr), mtp::error);
    EXPECT_EQ(cm.n_cached(0), 4);
    std::vector<int> many(81, 3), many_tok(81, 1);                    // 81 = decode_rows_max + 1
    std::vector<float> hh(81 * size_t(d));
    EXPECT_THROW(cm.eval_tree(0, 81, many_tok.data(), many.data(), nullptr, hh.data(), nullptr), mtp::error);
    cm.eval_tree(0, 2, toks.data(), ok.data(), nullptr, h.data(), lg.data());   // two siblings at position 4
    EXPECT_EQ(cm.n_cached(0), 6);
    EXPECT_THROW(cm.keep_path(0, 4, {4, 5}), mtp::error) << "siblings are not a path";
    EXPECT_THROW(cm.keep_path(0, 5, {5}), mtp::error) << "entry 4 is a tree entry, not the chain";
    std::vector<int> root = {-1};
    EXPECT_THROW(cm.eval_tree(1, 1, toks.data(), root.data(), nullptr, h.data(), nullptr), mtp::error)
        << "an MTP stage needs hprev";
    cm.keep_path(0, 4, {5});
    EXPECT_EQ(cm.n_cached(0), 5);
    cm.eval(0, 5, 1, toks.data(), nullptr, h.data(), nullptr);       // a chain again
}

} // namespace
