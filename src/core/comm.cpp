// The process group: MPI_COMM_WORLD when started by mpirun (built with MTP_MPI), else one rank; timed collectives.
#include "core/comm.h"

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "core/error.h"

#ifdef MTP_MPI
#include <mpi.h>
#endif

namespace mtp {

namespace {

comm_info g_world;
comm_info g_experts;
double g_comm_seconds = 0;
#ifdef MTP_MPI
MPI_Comm g_experts_comm = MPI_COMM_NULL;
#endif

struct timed {
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    ~timed() { g_comm_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
};

#ifdef MTP_MPI
constexpr size_t chunk = size_t(1) << 28;

int as_int(size_t n, const char* what) {
    if (n > size_t(INT_MAX)) fail("mpi", std::string(what) + ": " + std::to_string(n) + " elements exceed MPI's int count");
    return int(n);
}

void check(int rc, const char* what) {
    if (rc != MPI_SUCCESS) fail("mpi", std::string(what) + " failed (MPI error " + std::to_string(rc) + ")");
}

std::vector<int> ints(const std::vector<size_t>& v, const char* what) {
    std::vector<int> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = as_int(v[i], what);
    return r;
}

std::vector<int> displs(const std::vector<int>& counts) {
    std::vector<int> d(counts.size(), 0);
    for (size_t i = 1; i < counts.size(); ++i) d[i] = d[i - 1] + counts[i - 1];
    return d;
}
#endif

} // namespace

bool comm_built_with_mpi() {
#ifdef MTP_MPI
    return true;
#else
    return false;
#endif
}

void comm_init(int* argc, char*** argv) {
#ifdef MTP_MPI
    const char* n = std::getenv("OMPI_COMM_WORLD_SIZE");
    if (!n) n = std::getenv("PMI_SIZE");
    if (!n) return;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        std::fprintf(stderr, "error: mpi: MPI_Init failed\n");
        std::exit(1);
    }
    // Errors of collectives come back as return codes (turned into mtp::error), not as an abort inside MPI.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_world.size);
    g_world.mpi = true;
#else
    (void)argc;
    (void)argv;
#endif
}

void comm_finalize() {
#ifdef MTP_MPI
    if (g_experts_comm != MPI_COMM_NULL) MPI_Comm_free(&g_experts_comm);
    if (g_world.mpi) MPI_Finalize();
    g_world.mpi = false;
#endif
}

const comm_info& comm_world() { return g_world; }

void comm_abort(int code) {
    std::fflush(stdout);
    std::fflush(stderr);
#ifdef MTP_MPI
    if (g_world.mpi && g_world.size > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    std::exit(code);
}

double comm_seconds() { return g_comm_seconds; }

void comm_barrier() {
#ifdef MTP_MPI
    if (g_world.size < 2) return;
    timed t;
    check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
#endif
}

namespace {
template <class T>
void allreduce_sum(T* x, size_t n) {
#ifdef MTP_MPI
    if (g_world.size < 2) return;
    timed t;
    const MPI_Datatype type = sizeof(T) == 4 ? MPI_FLOAT : MPI_DOUBLE;
    for (size_t o = 0; o < n; o += chunk)
        check(MPI_Allreduce(MPI_IN_PLACE, x + o, int(std::min(chunk, n - o)), type, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
#else
    (void)x, (void)n;
#endif
}
} // namespace

void comm_allreduce_sum(float* x, size_t n) { allreduce_sum(x, n); }
void comm_allreduce_sum(double* x, size_t n) { allreduce_sum(x, n); }

double comm_allreduce_max(double x) {
#ifdef MTP_MPI
    if (g_world.size < 2) return x;
    timed t;
    check(MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
#endif
    return x;
}

void comm_reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& counts) {
#ifdef MTP_MPI
    if (g_world.size > 1) {
        timed t;
        std::vector<int> c = ints(counts, "reduce-scatter");
        check(MPI_Reduce_scatter(in, out, c.data(), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Reduce_scatter");
        return;
    }
#endif
    std::memcpy(out, in, sizeof(float) * counts[0]);
}

void comm_allgather(float* x, const std::vector<size_t>& counts) {
#ifdef MTP_MPI
    if (g_world.size < 2) return;
    timed t;
    std::vector<int> c = ints(counts, "all-gather"), d = displs(c);
    check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, c.data(), d.data(), MPI_FLOAT, MPI_COMM_WORLD),
          "MPI_Allgatherv");
#else
    (void)x, (void)counts;
#endif
}

void comm_gather(float* x, const std::vector<size_t>& counts, int root) {
#ifdef MTP_MPI
    if (g_world.size < 2) return;
    timed t;
    std::vector<int> c = ints(counts, "gather"), d = displs(c);
    const int r = g_world.rank;
    if (r == root)
        check(MPI_Gatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, c.data(), d.data(), MPI_FLOAT, root, MPI_COMM_WORLD),
              "MPI_Gatherv");
    else
        check(MPI_Gatherv(x + d[size_t(r)], c[size_t(r)], MPI_FLOAT, nullptr, nullptr, nullptr, MPI_FLOAT, root,
                          MPI_COMM_WORLD),
              "MPI_Gatherv");
#else
    (void)x, (void)counts, (void)root;
#endif
}

void comm_broadcast(void* data, size_t bytes, int root) {
#ifdef MTP_MPI
    if (g_world.size < 2) return;
    timed t;
    check(MPI_Bcast(data, as_int(bytes, "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
#else
    (void)data, (void)bytes, (void)root;
#endif
}

void comm_make_expert_groups(int size) {
    if (size < 1 || g_world.size % size != 0)
        fail("--expert-parallel", std::to_string(size) + " does not divide the " + std::to_string(g_world.size) + " ranks");
    g_experts = {g_world.rank % size, size, g_world.mpi};
#ifdef MTP_MPI
    if (g_world.size < 2) return;
    timed t;
    if (g_experts_comm != MPI_COMM_NULL) MPI_Comm_free(&g_experts_comm);
    check(MPI_Comm_split(MPI_COMM_WORLD, g_world.rank / size, g_world.rank, &g_experts_comm), "MPI_Comm_split");
    MPI_Comm_set_errhandler(g_experts_comm, MPI_ERRORS_RETURN);
#endif
}

comm_info comm_expert_group() { return g_experts; }

void comm_alltoall_sizes(const std::vector<size_t>& send, std::vector<size_t>& recv) {
    recv.assign(send.size(), 0);
#ifdef MTP_MPI
    if (g_experts.size > 1) {
        timed t;
        const int per = int(send.size() / size_t(g_experts.size));
        std::vector<unsigned long long> s(send.begin(), send.end()), r(send.size());
        check(MPI_Alltoall(s.data(), per, MPI_UNSIGNED_LONG_LONG, r.data(), per, MPI_UNSIGNED_LONG_LONG,
                           g_experts_comm),
              "MPI_Alltoall");
        for (size_t i = 0; i < r.size(); ++i) recv[i] = size_t(r[i]);
        return;
    }
#endif
    recv = send;
}

void comm_alltoallv(const float* send, const std::vector<size_t>& scount, float* recv, const std::vector<size_t>& rcount) {
#ifdef MTP_MPI
    if (g_experts.size > 1) {
        timed t;
        std::vector<int> sc = ints(scount, "all-to-all"), rc = ints(rcount, "all-to-all");
        std::vector<int> sd = displs(sc), rd = displs(rc);
        check(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(), MPI_FLOAT,
                            g_experts_comm),
              "MPI_Alltoallv");
        return;
    }
#endif
    if (scount[0]) std::memcpy(recv, send, sizeof(float) * scount[0]);
}

std::vector<size_t> comm_split(size_t n, int parts, size_t align) {
    std::vector<size_t> c(size_t(parts), 0);
    const size_t units = (n + align - 1) / align;
    size_t done = 0;
    for (int r = 0; r < parts; ++r) {
        const size_t u = units / size_t(parts) + (size_t(r) < units % size_t(parts) ? 1 : 0);
        c[size_t(r)] = std::min(n - done, u * align);
        done += c[size_t(r)];
    }
    return c;
}

} // namespace mtp
