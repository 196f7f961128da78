// Helper threads shared by the decode kernels: a job of n independent tasks run by the calling thread together with
// up to omp_get_max_threads() - 1 helpers (work stealing from an atomic counter, not an OpenMP team).
#pragma once
#include <type_traits>

namespace mtp {

// Runs fn(ctx, task) for every task in [0, n), each exactly once, on the calling thread and up to `helpers` helper
// threads (helpers < 0: omp_get_max_threads() - 1), and returns when all have finished. The caller takes tasks too
// and waits only for tasks a helper has actually started, so a helper the OS has descheduled (a shared machine)
// costs nothing instead of stalling a barrier. Inside a task, inside an OpenMP team, or with no helper, the tasks
// run on the calling thread in order: a task may itself call run_tasks (or a kernel that does) without deadlock.
// A job of one task runs on the caller as plain code (not in task mode), so the kernels it calls still share
// their work with the helpers.
// If tasks throw, every task still runs and the first exception is rethrown to the caller.
// Helpers spin ~200 µs after a job (decode issues jobs microseconds apart), then sleep.
void run_tasks(int n, void (*fn)(void*, int), void* ctx, int helpers = -1);

// Helpers spinning for the next job go to sleep now instead (the next job wakes them, as after a long idle). For a
// caller about to leave the CPU to other threads of its own (a batch runner waking its sequences' threads), so that a
// spinning helper does not hold a core they need.
void park_helpers();
// Helpers not asleep now (working or spinning), and how long they spin after a job before they sleep (200 µs unless
// set): for tests.
int helpers_awake();
void set_helper_spin(long long microseconds);

// True on a thread that is running a task of run_tasks (nested parallel work then runs inline).
bool in_task();

// Inside a task: which of the job's threads runs it, 0 (the caller) to helpers, so that a job can hand each thread
// its own scratch (task_helpers() + 1 slots, sized before the call).
int task_worker();

// The helpers run_tasks would use here: 0 inside a task or an OpenMP team, else omp_get_max_threads() - 1.
int task_helpers();

// run_tasks over a callable f(int task).
template <class F>
void for_tasks(int n, F&& f, int helpers = -1) {
    using fn_t = std::remove_reference_t<F>;
    run_tasks(n, [](void* c, int t) { (*static_cast<fn_t*>(c))(t); },
              const_cast<void*>(static_cast<const void*>(&f)), helpers);
}

} // namespace mtp
