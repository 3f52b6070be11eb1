// collectives.h: the communication the trainers need between ranks (processes), behind one small
// interface with interchangeable back ends:
//   single: one process; every collective is a copy or nothing (always compiled in),
//   MPI:    the CPU trainer's multi-process back end (compiled when MDN_MPI is defined; the Makefile
//           defines it when mpicc exists), host buffers,
//   NCCL:   the GPU trainer's back end (common/collectives_nccl.cu, in the CUDA library; compiled
//           when nccl.h is found), device buffers, one process per GPU, bootstrapped by MPI for the
//           unique id. comm_nccl_init switches a single or MPI Comm over to it.
// Semantics follow NCCL's so that the NCCL back end is a direct mapping: every rank passes the same
// counts, reduce-scatter and allgather work on equal-sized per-rank blocks (rank r owns elements
// [r*count, (r+1)*count) of the full buffer), and the buffers live where the back end computes (host
// memory for single/MPI, device memory for NCCL; COMM_NCCL's stream goes in Comm.stream).
// Every failing call prints "error: <call>: <reason>" and exits: a collective that failed on one
// rank cannot be recovered from on the others.
#ifndef MDN_COLLECTIVES_H
#define MDN_COLLECTIVES_H

#include <stddef.h>

#include "real.h"

typedef enum { COMM_SINGLE, COMM_MPI, COMM_NCCL } CommBackend;
typedef enum { COMM_F32, COMM_F64 } CommDtype;

typedef struct Comm Comm;

// The NCCL back end's operations. They live in the CUDA library, so that the CPU programs link
// without CUDA or NCCL: comm_nccl_init points Comm.nccl_ops at them, and the functions below call
// through it when backend == COMM_NCCL.
typedef struct {
    void (*allreduce_sum)(Comm *comm, void *buf, size_t count, CommDtype dtype);
    void (*reduce_scatter_sum)(Comm *comm, const void *send, void *recv, size_t count, CommDtype dtype);
    void (*allgather)(Comm *comm, const void *send, void *recv, size_t count, CommDtype dtype);
    void (*broadcast)(Comm *comm, void *buf, size_t bytes, int root);
    void (*allreduce_sum_host)(Comm *comm, double *values, size_t count);
    void (*finalize)(Comm *comm);
} CommNcclOps;

struct Comm {
    CommBackend backend;
    int rank, world_size;
    int local_rank;             // rank among the processes on this host (the GPU to use, for NCCL)
    int initialized_mpi;        // 1 if comm_init called MPI_Init (so comm_finalize calls MPI_Finalize)
    const CommNcclOps *nccl_ops;// NCCL back end: its operations
    void *nccl;                 // NCCL back end: its state (communicator, scratch, timeout)
    void *stream;               // cudaStream_t the NCCL calls are queued on (NCCL back end)
};

// MPI when compiled in and launched under mpirun (or any MPI launcher), else single-process.
void comm_init(Comm *comm, int *argc, char ***argv);
void comm_finalize(Comm *comm);
const char *comm_backend_name(const Comm *comm);

// the CommDtype of `real` (float, or double in the -DMDN_DOUBLE build)
static inline CommDtype comm_real_dtype(void) { return sizeof(real) == sizeof(double) ? COMM_F64 : COMM_F32; }

// in place: buf[i] = sum over ranks of buf[i]; every rank gets the same values
void comm_allreduce_sum(Comm *comm, void *buf, size_t count, CommDtype dtype);
// send holds world_size blocks of `count` elements; recv (count elements) gets the sum over ranks
// of block `rank` (ZeRO-1's gradient reduction: each rank ends with the reduced slice it updates)
void comm_reduce_scatter_sum(Comm *comm, const void *send, void *recv, size_t count, CommDtype dtype);
// send holds `count` elements; recv (world_size * count) gets every rank's block in rank order
void comm_allgather(Comm *comm, const void *send, void *recv, size_t count, CommDtype dtype);
// bytes of buf on `root` are copied to every other rank
void comm_broadcast(Comm *comm, void *buf, size_t bytes, int root);
void comm_barrier(Comm *comm);
// in place: host float64 values summed over ranks, whatever the back end (NCCL stages them through
// a device buffer): losses, norms, votes
void comm_allreduce_sum_host(Comm *comm, double *values, size_t count);
// logical OR of a flag over ranks (so that every rank takes the same branch: stop, skip, fail)
int comm_any(Comm *comm, int flag);
// Every rank calls this with its own verdict: if any rank failed, all finalize and exit 1, and the
// lowest failing rank prints "error: MESSAGE" (one line, not one per rank). No rank is left
// waiting in a collective. Returns only if no rank failed.
void comm_exit_if_any_failed(Comm *comm, int failed, const char *message);

// The NCCL back end (defined in common/collectives_nccl.cu; programs that call it link
// build/libmdn_cuda.a and -lnccl). Called after comm_init, before any other CUDA call: selects this
// rank's GPU (cudaSetDevice(local_rank); a process that sees one GPU uses it), creates the stream
// the collectives are queued on (comm->stream: the trainer queues its kernels there too, so the
// reduction follows the backward in order), makes the communicator over all ranks (rank 0's
// ncclUniqueId is broadcast over MPI; one process needs no MPI) and switches comm to COMM_NCCL.
// From then on collectives take device buffers and return once they have completed, or, when one
// has not completed within timeout_s (a rank died or hangs), print "error: rank R: ..." on this
// rank, abort the communicator and exit(1): no silent hang. timeout_s <= 0 reads
// MDN_NCCL_TIMEOUT_S from the environment, else 600 s. comm_finalize destroys the communicator.
void comm_nccl_init(Comm *comm, double timeout_s);

#endif // MDN_COLLECTIVES_H
