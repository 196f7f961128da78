// The load-adaptive draft length (src/infer/draft_policy.h): on a cost curve where extra rows are nearly free it
// drafts at every batch size; where rows cost what they cost (compute-bound) it drafts alone and stops drafting in a
// batch; with no acceptance it never drafts; it still probes every probe_every-th round, less often while the probes
// keep measuring slower than the choice, and at once again when one measures faster; measured costs are sane.
#include <gtest/gtest.h>

#include "infer/draft_policy.h"
#include "infer_test_util.h"

using namespace mtp;
using namespace mtp::test;

namespace {
pass_cost_table table(double main0, double main_slope, double mtp0, double mtp_slope) {
    pass_cost_table t;
    for (int r : {1, 2, 4, 8, 16, 32, 64}) {
        t.rows.push_back(r);
        t.main_s.push_back(main0 + main_slope * (r - 1));
        t.mtp_s.push_back(mtp0 + mtp_slope * (r - 1));
    }
    return t;
}
void accept_all(draft_policy& p, int K, double rate, int rounds) {
    for (int i = 0; i < rounds; ++i) {
        // accepted prefix: depth j accepted with probability rate^(j+1), deterministic pattern
        int a = 0;
        while (a < K && double((i * 7919 + a * 104729) % 1000) / 1000.0 < rate) ++a;
        p.observe(K, a);
    }
}
} // namespace

TEST(DraftPolicy, MemoryBoundDraftsAtEveryBatch) {
    draft_policy p(table(1.0, 0.01, 0.1, 0.001), 2, 2);
    accept_all(p, 2, 0.8, 2000);
    EXPECT_NEAR(p.acceptance()[0], 0.8, 0.05);
    for (int b : {1, 2, 4, 8, 16}) EXPECT_EQ(p.choose(b), 2) << "batch " << b;
    int plain = 0;                                // probes: one plain round in probe_every
    for (int i = 0; i < 10 * draft_policy::probe_every; ++i) plain += p.next(1) == 0;
    EXPECT_EQ(plain, 10);
}

TEST(DraftPolicy, ComputeBoundStopsDraftingInABatch) {
    // the default model's shape: 3 rows cost 1.5 plain steps
    draft_policy p(table(1.0, 0.25, 0.2, 0.05), 2, 2);
    accept_all(p, 2, 0.8, 2000);
    EXPECT_GT(p.choose(1), 0);
    EXPECT_EQ(p.choose(8), 0);
    EXPECT_EQ(p.choose(16), 0);
    // expected tokens and round time as documented
    const double e1 = p.expected_tokens(1);
    EXPECT_NEAR(e1, 1.0 + p.acceptance()[0], 1e-12);
    EXPECT_NEAR(p.round_seconds(4, 1), p.costs().main(8) + p.costs().mtp(4 * e1), 1e-12);
    EXPECT_NEAR(p.round_seconds(4, 0), p.costs().main(4), 1e-12);
}

// Rounds measured slower with drafts than without at this load veto the model's choice (and only at that load).
TEST(DraftPolicy, MeasuredRoundsVetoDrafting) {
    draft_policy p(table(1.0, 0.01, 0.1, 0.001), 2, 2);
    accept_all(p, 2, 0.8, 2000);
    ASSERT_EQ(p.choose(1), 2);
    for (int i = 0; i < 10; ++i) {
        p.observe_round(1, 0, 1, 1.0);            // 1 token/s without drafts
        p.observe_round(1, 2, 2, 2.5);            // 0.8 token/s with them
    }
    EXPECT_EQ(p.choose(1), 0);
    EXPECT_EQ(p.choose(8), 2);                    // another load bucket: nothing measured there
    for (int i = 0; i < 40; ++i) p.observe_round(1, 2, 3, 1.0);   // drafting got faster: 3 tokens/s
    EXPECT_EQ(p.choose(1), 2);
}

// A choice between 0 and K is compared with plain rounds too: the probes alternate between plain and K, so rounds
// measured slower than not drafting veto it as they veto K.
TEST(DraftPolicy, MeasuredRoundsVetoAPartialDraft) {
    draft_policy p(table(1.0, 0.01, 0.1, 0.001), 3, 2);
    for (int i = 0; i < 2000; ++i) p.observe(3, i % 10 < 9 ? 1 : 0);   // depth 1 accepted 90%, deeper never
    const int B = 2;
    ASSERT_EQ(p.choose(B), 1);
    int plain = 0;
    for (int i = 0; i < 64 * draft_policy::probe_every * B; ++i) {
        const int k = p.next(B);
        plain += k == 0;
        // as measured: a plain round gives 1 token in 1 s, drafting 1 gives 2 tokens in 2.2 s, drafting K 2 in 3 s
        if (k == 0) p.observe_round(B, 0, 1, 1.0);
        else p.observe_round(B, k, 2, k == 1 ? 2.2 : 3.0);
        if (p.choose(B) == 0) break;
    }
    EXPECT_GE(plain, 8);                          // the plain probe calls that fed the veto (8 measured)
    EXPECT_EQ(p.choose(B), 0);
    EXPECT_EQ(p.choose(1), 1);                    // another load bucket: nothing measured there
    // The veto lifts: probes draft the vetoed choice again, and drafting 1 now measures 2 tokens in 1.2 s.
    for (int i = 0; i < 256 * draft_policy::probe_every * B && p.choose(B) == 0; ++i) {
        const int k = p.next(B);
        if (k == 0) p.observe_round(B, 0, 1, 1.0);
        else p.observe_round(B, k, 2, k == 1 ? 1.2 : 3.0);
    }
    EXPECT_EQ(p.choose(B), 1);
}

TEST(DraftPolicy, NoAcceptanceNoDraftsButProbes) {
    draft_policy p(table(1.0, 0.01, 0.1, 0.001), 3, 2);
    for (int i = 0; i < 3000; ++i) p.observe(3, 0);
    EXPECT_EQ(p.choose(1), 0);
    int probes = 0;
    for (int i = 0; i < 10 * draft_policy::probe_every; ++i) probes += p.next(1) == 3;
    EXPECT_EQ(probes, 10);
    // where drafting cannot pay even with every draft accepted (rows cost what they cost), no probes
    draft_policy q(table(1.0, 1.0, 0.5, 0.5), 3, 2);
    for (int i = 0; i < 3000; ++i) q.observe(3, 0);
    probes = 0;
    for (int i = 0; i < 10 * draft_policy::probe_every; ++i) probes += q.next(8) != 0;
    EXPECT_EQ(probes, 0);
}

// Probes that keep confirming the choice (plain rounds faster than drafting K at this load) come less and less often,
// down to one in probe_every << max_backoff rounds, and never stop; once drafting measures faster, they come every
// probe_every-th round again and the choice turns to drafting.
TEST(DraftPolicy, ProbesBackOffWhileTheyConfirmTheChoice) {
    draft_policy p(table(1.0, 0.01, 0.1, 0.001), 3, 2);
    for (int i = 0; i < 3000; ++i) p.observe(3, 0);                   // no acceptance: the choice is plain
    ASSERT_EQ(p.choose(1), 0);
    auto run = [&](int rounds, double probe_tps) {
        int probes = 0;
        for (int i = 0; i < rounds; ++i) {
            const int k = p.next(1);
            if (k == 0) {
                p.observe_round(1, 0, 1, 1.0);                           // plain: 1 token/s
            } else {
                ++probes;
                p.observe_round(1, k, 2, 2.0 / probe_tps);
                p.observe(k, probe_tps > 1.0 ? k : 0);
            }
        }
        return probes;
    };
    const int longest = draft_policy::probe_every << draft_policy::max_backoff;
    run(64 * draft_policy::probe_every, 0.5);                            // warm-up: 8 of each measured, backing off
    EXPECT_EQ(p.probe_interval(1), longest);
    EXPECT_EQ(p.probe_interval(8), draft_policy::probe_every) << "another load bucket backs off on its own";
    const int late = run(8 * longest, 0.5);
    EXPECT_EQ(late, 8) << "one probe per longest interval";
    // Drafting now measures 3 tokens/s: once its running rate passes plain's, the interval resets, and drafting wins.
    int rounds = 0;
    for (; p.choose(1) == 0 && rounds < 64 * longest; ++rounds) run(1, 3.0);
    EXPECT_GT(p.choose(1), 0) << "drafting never resumed";
    EXPECT_LT(rounds, 8 * longest) << "the probes did not come back to every probe_every-th round";
    std::printf("drafting resumed after %d rounds\n", rounds);
}

// With 4 sequences a round is 4 calls: every call of a probe round gets the probe's draft length, and the interval
// doubles once per probe round, not once per call.
TEST(DraftPolicy, ProbesComeInWholeRoundsAndBackOffPerRound) {
    draft_policy p(table(1.0, 0.01, 0.1, 0.001), 3, 2);
    for (int i = 0; i < 3000; ++i) p.observe(3, 0);
    const int B = 4;
    ASSERT_EQ(p.choose(B), 0);
    for (int i = 0; i < 16; ++i) {                                       // 8 of each measured: the next probe backs off
        p.observe_round(B, 0, 1, 1.0);
        p.observe_round(B, 3, 1, 2.0);
    }
    std::vector<int> intervals;
    for (int round = 0; round < 20 * draft_policy::probe_every; ++round) {
        std::vector<int> ks;
        for (int s = 0; s < B; ++s) ks.push_back(p.next(B));
        for (int s = 1; s < B; ++s) EXPECT_EQ(ks[size_t(s)], ks[0]) << "round " << round << " sequence " << s;
        if (ks[0] != 0) intervals.push_back(p.probe_interval(B));
    }
    ASSERT_GE(intervals.size(), 3u);
    EXPECT_EQ(intervals[0], 2 * draft_policy::probe_every);
    EXPECT_EQ(intervals[1], 4 * draft_policy::probe_every);
    EXPECT_EQ(intervals[2], 8 * draft_policy::probe_every);
}

TEST(DraftPolicy, MeasuredCostsAreOrdered) {
    single_thread_scope one_thread;
    const model_files m = random_model(small_config(2, true, true, false, 40, 160), 3);
    cpu_engine e(m);
    const pass_cost_table t = measure_pass_costs(e, 24, 32);
    ASSERT_GE(t.rows.size(), 5u);
    EXPECT_EQ(t.rows.front(), 1);
    EXPECT_EQ(t.rows.back(), 24);
    for (size_t i = 0; i < t.rows.size(); ++i) {
        EXPECT_GT(t.main_s[i], 0);
        EXPECT_GT(t.mtp_s[i], 0);
        if (i) {
            EXPECT_GT(t.rows[i], t.rows[i - 1]);
            EXPECT_GE(t.main_s[i], t.main_s[i - 1]);
        }
    }
    EXPECT_GE(t.main(48), t.main(24));   // extrapolated past the last entry, never down
}

// Two sequences share each pass: one drafts the choice (K = 2), the other is held at 0 (not caught up, no tokens left
// to repay its backlog), so every round is mixed, and the held sequence waits for its batch-mate's drafts. Those
// rounds are a cost of drafting: counted under the round's longest cap, they measure the batch's drafting against
// the probes' truly plain rounds and veto it when it is slower; counted under the held sequence's own cap, they made
// plain look slow and kept drafting on. Where drafting is faster for the batch, no veto.
TEST(DraftPolicy, MixedRoundsCountAsDrafting) {
    auto simulate = [](double mixed_seconds) {
        draft_policy p(table(1.0, 0.01, 0.1, 0.001), 2, 2);
        accept_all(p, 2, 0.8, 2000);
        const int B = 2;
        EXPECT_EQ(p.choose(B), 2);
        for (int i = 0; i < 64 * draft_policy::probe_every; ++i) {
            long long ra = -1, rb = -1;
            const int ka = p.next(B, 0, 1 << 20, &ra);
            const int kb = p.next(B, 4, 0, &rb);                   // held: a backlog and nothing left to repay it
            EXPECT_EQ(ra, rb);
            const double s = std::max(ka, kb) > 0 ? mixed_seconds : 1.0;   // everybody waits for the pass
            p.observe_round(B, ka, ka > 0 ? 3 : 1, s, ra);
            p.observe_round(B, kb, kb > 0 ? 3 : 1, s, rb);
            if (ka > 0) p.observe(ka, ka);
        }
        EXPECT_GT(p.mixed_rounds(), 0);
        return p.choose(B);
    };
    EXPECT_EQ(simulate(2.5), 0) << "the batch's drafting rounds (4 tokens in 2.5 s) are slower than plain (2 in 1 s)";
    EXPECT_EQ(simulate(1.2), 2) << "drafting pays for the batch (4 tokens in 1.2 s)";
}
