// Tests core/task_pool: every task runs once, each running thread has its own worker slot, nesting runs inline
// (except under a one-task job, whose kernels may still use the helpers), a task's exception reaches the caller and
// leaves the pool usable, and parked helpers stop spinning at once.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include <omp.h>

#include "core/task_pool.h"

namespace {

// The pool sizes itself from omp_get_max_threads(); these tests want helpers even on a 1-core machine.
struct threads_scope {
    int old = omp_get_max_threads();
    explicit threads_scope(int n) { omp_set_num_threads(n); }
    ~threads_scope() { omp_set_num_threads(old); }
};

TEST(TaskPool, EveryTaskOnceAndWorkerSlotsNeverShared) {
    threads_scope ts(3);
    ASSERT_EQ(mtp::task_helpers(), 2);
    for (int rep = 0; rep < 50; ++rep) {
        const int n = 1 + rep * 7;
        std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
        std::atomic<int> busy[3] = {0, 0, 0};
        std::atomic<int> clash{0}, bad_worker{0}, not_in_task{0};
        mtp::for_tasks(n, [&](int t) {
            const int w = mtp::task_worker();
            if (w < 0 || w > 2) { bad_worker++; return; }
            if (busy[w].fetch_add(1) != 0) clash++;                  // two threads holding one slot at once
            if (mtp::in_task() != (n > 1)) not_in_task++;               // a one-task job runs as plain code
            runs[size_t(t)]++;
            volatile double s = 0;
            for (int i = 0; i < 2000; ++i) s = s + i;                // long enough for helpers to join
            busy[w].fetch_sub(1);
        });
        for (int t = 0; t < n; ++t) ASSERT_EQ(runs[size_t(t)].load(), 1) << "task " << t << " of " << n;
        EXPECT_EQ(clash.load(), 0);
        EXPECT_EQ(bad_worker.load(), 0);
        EXPECT_EQ(not_in_task.load(), 0);
    }
    EXPECT_FALSE(mtp::in_task());
}

TEST(TaskPool, HelpersTakeTasks) {
    threads_scope ts(2);
    const auto me = std::this_thread::get_id();
    std::atomic<int> elsewhere{0};
    for (int rep = 0; rep < 200 && elsewhere.load() == 0; ++rep)
        mtp::for_tasks(64, [&](int) {
            if (std::this_thread::get_id() != me) elsewhere++;
            volatile double s = 0;
            for (int i = 0; i < 20000; ++i) s = s + i;
        });
    EXPECT_GT(elsewhere.load(), 0) << "no task ever ran on a helper thread";
}

TEST(TaskPool, NestedJobsRunInlineOnTheTaskThread) {
    threads_scope ts(2);
    std::atomic<int> inner_total{0}, inner_elsewhere{0}, nested_helpers{0};
    mtp::for_tasks(8, [&](int) {
        const auto me = std::this_thread::get_id();
        const int w = mtp::task_worker();
        if (mtp::task_helpers() != 0) nested_helpers++;
        int order = 0;
        mtp::for_tasks(5, [&](int t) {
            if (std::this_thread::get_id() != me) inner_elsewhere++;
            if (t != order++) inner_elsewhere += 100;                // inline: in order
            if (mtp::task_worker() != 0) inner_elsewhere += 1000;    // the nested job's own slot 0
            inner_total++;
        });
        if (mtp::task_worker() != w) inner_elsewhere += 10000;       // restored after the nested job
    });
    EXPECT_EQ(inner_total.load(), 40);
    EXPECT_EQ(inner_elsewhere.load(), 0);
    EXPECT_EQ(nested_helpers.load(), 0);
}

TEST(TaskPool, AOneTaskJobLetsItsKernelsUseTheHelpers) {
    threads_scope ts(2);
    const auto me = std::this_thread::get_id();
    std::atomic<int> elsewhere{0}, helpers_seen{-1};
    for (int rep = 0; rep < 200 && elsewhere.load() == 0; ++rep)
        mtp::for_tasks(1, [&](int) {
            helpers_seen = mtp::task_helpers();
            mtp::for_tasks(64, [&](int) {
                if (std::this_thread::get_id() != me) elsewhere++;
                volatile double s = 0;
                for (int i = 0; i < 20000; ++i) s = s + i;
            });
        });
    EXPECT_EQ(helpers_seen.load(), 1);
    EXPECT_GT(elsewhere.load(), 0) << "the one task's nested job never reached a helper";
}

TEST(TaskPool, ZeroHelpersRunInOrderOnTheCaller) {
    threads_scope ts(4);
    const auto me = std::this_thread::get_id();
    std::vector<int> order;
    bool other = false;
    mtp::for_tasks(10, [&](int t) {
        order.push_back(t);
        other |= std::this_thread::get_id() != me;
    }, /*helpers=*/0);
    ASSERT_EQ(order.size(), 10u);
    for (int t = 0; t < 10; ++t) EXPECT_EQ(order[size_t(t)], t);
    EXPECT_FALSE(other);
}

TEST(TaskPool, ExceptionReachesTheCallerAndThePoolStaysUsable) {
    threads_scope ts(2);
    std::atomic<int> ran{0};
    EXPECT_THROW(mtp::for_tasks(32, [&](int t) {
        ran++;
        if (t == 5) throw std::runtime_error("task 5");
    }), std::runtime_error);
    EXPECT_EQ(ran.load(), 32);                                       // the others still ran
    std::atomic<int> again{0};
    mtp::for_tasks(32, [&](int) { again++; });
    EXPECT_EQ(again.load(), 32);
    EXPECT_FALSE(mtp::in_task());
}

// After a job the helpers spin for the next one (here made 60 s, so that only parking can end it), then sleep;
// park_helpers() sends them to sleep at once, and the next job still wakes them and runs every task.
TEST(TaskPool, ParkedHelpersSleepAtOnceAndWakeForTheNextJob) {
    threads_scope ts(3);
    struct spin_scope {                                              // restored however the test ends
        spin_scope() { mtp::set_helper_spin(60'000'000); }
        ~spin_scope() { mtp::set_helper_spin(200); }
    } spin;
    auto awake_within = [](bool want, int ms) {   // true if (helpers_awake() > 0) == want at some point within ms
        const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
        while ((mtp::helpers_awake() > 0) != want && std::chrono::steady_clock::now() < end)
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        return (mtp::helpers_awake() > 0) == want;
    };
    for (int rep = 0; rep < 3; ++rep) {
        std::atomic<int> ran{0};
        mtp::for_tasks(64, [&](int) { ran++; });
        ASSERT_EQ(ran.load(), 64);
        EXPECT_TRUE(awake_within(true, 1000)) << "no helper woke for the job";
        EXPECT_FALSE(awake_within(false, 50)) << "the helpers slept before they were parked";
        mtp::park_helpers();
        EXPECT_TRUE(awake_within(false, 5000)) << "parked helpers still awake: " << mtp::helpers_awake();
    }
    std::atomic<int> again{0};
    mtp::for_tasks(64, [&](int) { again++; });
    EXPECT_EQ(again.load(), 64);
}

} // namespace
