// The helper-thread pool behind run_tasks (task_pool.h): one job at a time, tasks claimed from an atomic counter.
#include "core/task_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <omp.h>

namespace mtp {
namespace {

thread_local int t_in_task = 0;
thread_local int t_worker = 0;                                        // within the running job

class helper_pool {
public:
    static helper_pool& get() {
        static helper_pool* p = new helper_pool();                 // never destroyed: helpers are detached
        return *p;
    }

    void run(int n, int helpers, void (*fn)(void*, int), void* ctx) {
        std::lock_guard<std::mutex> one(run_mu_);                   // one job at a time
        while (int(threads_.size()) < helpers) {
            const int id = int(threads_.size());
            threads_.emplace_back([this, id] { work(id); });
            threads_.back().detach();
            started_.fetch_add(1);
        }
        const uint64_t gen = (state_.load() >> 32) + 1;
        park_.store(false);
        n_.store(n);
        fn_.store(fn);
        ctx_.store(ctx);
        done_.store(0);
        want_.store(helpers);
        state_.store(gen << 32);                                      // publish: task 0 of job `gen`
        if (sleeping_.load() > 0) {
            { std::lock_guard<std::mutex> lk(mu_); }
            cv_.notify_all();
        }
        claim(gen, 0);
        while (done_.load() < n) cpu_relax();
        state_.store((gen << 32) | closed);                           // no stale claim can succeed any more
        if (err_) {
            std::exception_ptr e;
            std::swap(e, err_);
            std::rethrow_exception(e);
        }
    }

private:
    static constexpr uint64_t closed = 0xffffffffu;

    static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }

    // Claims and runs tasks of job `gen` until none is left.
    void claim(uint64_t gen, int worker) {
        for (;;) {
            uint64_t s = state_.load();
            if ((s >> 32) != gen) return;
            const uint64_t idx = s & closed;
            if (idx >= uint64_t(n_.load())) return;
            if (!state_.compare_exchange_weak(s, s + 1)) continue;
            // A successful claim means job `gen` is still open, so fn_/ctx_ are its own.
            ++t_in_task;
            t_worker = worker;
            try {
                fn_.load()(ctx_.load(), int(idx));
            } catch (...) {                                           // kept for the caller, first one wins
                std::lock_guard<std::mutex> lk(err_mu_);
                if (!err_) err_ = std::current_exception();
            }
            --t_in_task;
            done_.fetch_add(1);
        }
    }

public:
    void park() { park_.store(true); }
    int awake() const { return started_.load() - sleeping_.load(); }
    void set_spin(long long us) { spin_us_.store(us); }

private:
    void work(int id) {
        uint64_t seen = state_.load() >> 32;
        for (;;) {
            // Wait for a new job: spin ~200 µs (or until park()), then sleep.
            const auto t0 = std::chrono::steady_clock::now();
            int spins = 0;
            while ((state_.load() >> 32) == seen) {
                cpu_relax();
                if (++spins % 256 == 0 &&
                    (park_.load() || std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(spin_us_.load()))) {
                    std::unique_lock<std::mutex> lk(mu_);
                    sleeping_.fetch_add(1);
                    cv_.wait(lk, [&] { return (state_.load() >> 32) != seen; });
                    sleeping_.fetch_sub(1);
                }
            }
            seen = state_.load() >> 32;
            if (id < want_.load()) claim(seen, id + 1);
        }
    }

    std::mutex run_mu_, mu_, err_mu_;
    std::exception_ptr err_;                                          // a task's exception, rethrown by run
    std::condition_variable cv_;
    std::vector<std::thread> threads_;
    std::atomic<uint64_t> state_{closed};                             // job generation << 32 | next task
    std::atomic<int> n_{0}, done_{0}, want_{0}, sleeping_{0}, started_{0};
    std::atomic<bool> park_{false};                                   // helpers sleep now instead of spinning
    std::atomic<long long> spin_us_{200};
    std::atomic<void (*)(void*, int)> fn_{nullptr};
    std::atomic<void*> ctx_{nullptr};
};

} // namespace

bool in_task() { return t_in_task > 0; }

void park_helpers() { helper_pool::get().park(); }

int helpers_awake() { return helper_pool::get().awake(); }

void set_helper_spin(long long us) { helper_pool::get().set_spin(us); }

int task_worker() { return t_worker; }

int task_helpers() { return (in_task() || omp_in_parallel()) ? 0 : omp_get_max_threads() - 1; }

void run_tasks(int n, void (*fn)(void*, int), void* ctx, int helpers) {
    if (n <= 0) return;
    const int most = task_helpers();
    helpers = helpers < 0 ? most : std::min(helpers, most);
    if (n == 1 && helpers > 0) {
        // One task: run it on the caller outside task mode, so that the kernels it calls can still share their
        // work with the helpers (nothing else runs on them meanwhile).
        const int worker = t_worker;
        t_worker = 0;
        try {
            fn(ctx, 0);
        } catch (...) {
            t_worker = worker;
            throw;
        }
        t_worker = worker;
        return;
    }
    if (helpers <= 0) {
        struct scope {
            int worker = t_worker;
            scope() { ++t_in_task; t_worker = 0; }
            ~scope() { --t_in_task; t_worker = worker; }
        } in;
        std::exception_ptr err;
        for (int t = 0; t < n; ++t) {
            try {
                fn(ctx, t);
            } catch (...) {
                if (!err) err = std::current_exception();
            }
        }
        if (err) std::rethrow_exception(err);
        return;
    }
    helper_pool::get().run(n, helpers, fn, ctx);
}

} // namespace mtp
