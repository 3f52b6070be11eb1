// collectives.h: the communication the trainers need between ranks (processes), behind one small
// interface with interchangeable back ends:
//   single: one process; every collective is a copy or nothing (always compiled in),
//   MPI:    the CPU trainer's multi-process back end (compiled when MDN_MPI is defined; the Makefile
//           defines it when mpicc exists), host buffers,
//   NCCL:   (to come, in the GPU trainer) device buffers, bootstrapped by MPI for the unique id.
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

typedef struct {
    CommBackend backend;
    int rank, world_size;
    int local_rank;             // rank among the processes on this host (the GPU to use, for NCCL)
    int initialized_mpi;        // 1 if comm_init called MPI_Init (so comm_finalize calls MPI_Finalize)
    void *nccl_comm;            // ncclComm_t (NCCL back end)
    void *stream;               // cudaStream_t the NCCL calls are queued on (NCCL back end)
} Comm;

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
// logical OR of a flag over ranks (so that every rank takes the same branch: stop, skip, fail)
int comm_any(Comm *comm, int flag);

#endif // MDN_COLLECTIVES_H
