// The process group of a distributed run: MPI (OpenMPI) when the process was started by mpirun, else a group of
// one. Blocking collectives over MPI_COMM_WORLD, each deterministic for a given rank count; the trainer's data,
// optimizer-state and expert parallelism are built on these and on nothing else.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mtp {

struct comm_info {
    int rank = 0, size = 1;
    bool mpi = false;          // MPI was initialised (started by mpirun, built with MPI)
};

// Initialises MPI when the environment says the process was started by mpirun (OMPI_COMM_WORLD_SIZE or PMI_SIZE
// set) and the build has MPI; otherwise the group has one rank. Call once, first thing in main.
void comm_init(int* argc, char*** argv);
void comm_finalize();
const comm_info& comm_world();
bool comm_built_with_mpi();
// Ends every rank of the job at once (MPI_Abort) with this exit status; a plain exit when there is one rank.
[[noreturn]] void comm_abort(int code);

// Seconds spent inside the collectives below since the start (for the communication share in logs).
double comm_seconds();

void comm_barrier();
// In place: x[i] = Σ over ranks.
void comm_allreduce_sum(float* x, size_t n);
void comm_allreduce_sum(double* x, size_t n);
double comm_allreduce_max(double x);
// `in` holds the full vector on every rank; out = Σ over ranks of in[offset(rank) .. offset(rank) + counts[rank]).
void comm_reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& counts);
// In place: x[offset(r) ..] on rank r is sent to every rank (offsets are the prefix sums of counts).
void comm_allgather(float* x, const std::vector<size_t>& counts);
// x[offset(r) .. offset(r) + counts[r]) of rank r gathered into x on `root` (other ranks' x are inputs only).
void comm_gather(float* x, const std::vector<size_t>& counts, int root);
void comm_broadcast(void* data, size_t bytes, int root);
// Expert-parallel groups: world ranks split into consecutive groups of `size` (collective over the world; size
// must divide the rank count). The all-to-alls below run inside the caller's group.
void comm_make_expert_groups(int size);
// This rank's group: rank inside it and its size (1 before comm_make_expert_groups).
comm_info comm_expert_group();
// All-to-all of sizes inside the expert group: send holds `per` values for each group rank in turn, recv likewise.
void comm_alltoall_sizes(const std::vector<size_t>& send, std::vector<size_t>& recv);
// Variable all-to-all of floats inside the expert group: consecutive runs of scount[r] floats go to group rank r,
// recv receives rcount[r] floats from each in turn.
void comm_alltoallv(const float* send, const std::vector<size_t>& scount, float* recv, const std::vector<size_t>& rcount);

// n split over `parts` into contiguous ranges whose sizes differ by at most `align` (multiples of align except the
// last): counts[r].
std::vector<size_t> comm_split(size_t n, int parts, size_t align = 16);

} // namespace mtp
