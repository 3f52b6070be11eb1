// collectives.c: the single-process and MPI back ends of collectives.h; the NCCL back end's
// operations (common/collectives_nccl.cu) are called through comm->nccl_ops.
#include "collectives.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "utils.h"

#ifdef MDN_MPI
#include <mpi.h>

static void mpi_check(int code, const char *call) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(code, text, &len);
    die("%s: %s", call, text);
}

static MPI_Datatype mpi_type(CommDtype dtype) { return dtype == COMM_F64 ? MPI_DOUBLE : MPI_FLOAT; }

// MPI counts are int: larger buffers go in pieces of at most this many elements
#define MPI_MAX_CHUNK ((size_t)1 << 30)

// Launched by an MPI launcher? mpirun, srun and hydra set one of these. Without a launcher we stay
// single-process instead of calling MPI_Init, which would start a "singleton" MPI job: slow, and
// Open MPI's refusal to run as root would then break the plain `./train_mdn_cpu` run too.
static int launched_by_mpi(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        if (getenv(vars[i]) != NULL) return 1;
    return 0;
}
#endif

static size_t dtype_size(CommDtype dtype) { return dtype == COMM_F64 ? sizeof(double) : sizeof(float); }

void comm_init(Comm *comm, int *argc, char ***argv) {
    memset(comm, 0, sizeof(*comm));
    comm->backend = COMM_SINGLE;
    comm->rank = 0;
    comm->world_size = 1;
    comm->local_rank = 0;
#ifdef MDN_MPI
    if (!launched_by_mpi()) return;
    mpi_check(MPI_Init(argc, argv), "MPI_Init");
    comm->initialized_mpi = 1;
    // errors come back as codes (checked by mpi_check) instead of MPI's default abort without a message
    mpi_check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &comm->rank), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &comm->world_size), "MPI_Comm_size");
    MPI_Comm node_comm;
    mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, comm->rank, MPI_INFO_NULL, &node_comm),
              "MPI_Comm_split_type");
    mpi_check(MPI_Comm_rank(node_comm, &comm->local_rank), "MPI_Comm_rank");
    mpi_check(MPI_Comm_free(&node_comm), "MPI_Comm_free");
    comm->backend = COMM_MPI;
#else
    (void)argc;
    (void)argv;
#endif
}

void comm_finalize(Comm *comm) {
    if (comm->backend == COMM_NCCL) comm->nccl_ops->finalize(comm);   // back to single/MPI
#ifdef MDN_MPI
    if (comm->initialized_mpi) mpi_check(MPI_Finalize(), "MPI_Finalize");
#endif
    comm->initialized_mpi = 0;
}

const char *comm_backend_name(const Comm *comm) {
    switch (comm->backend) {
    case COMM_MPI: return "MPI";
    case COMM_NCCL: return "NCCL";
    default: return "single process";
    }
}

void comm_allreduce_sum(Comm *comm, void *buf, size_t count, CommDtype dtype) {
    if (comm->backend == COMM_NCCL) { comm->nccl_ops->allreduce_sum(comm, buf, count, dtype); return; }
    if (comm->backend == COMM_SINGLE || comm->world_size == 1) return;
#ifdef MDN_MPI
    char *p = (char *)buf;
    for (size_t done = 0; done < count;) {
        size_t n = count - done < MPI_MAX_CHUNK ? count - done : MPI_MAX_CHUNK;
        mpi_check(MPI_Allreduce(MPI_IN_PLACE, p + done * dtype_size(dtype), (int)n, mpi_type(dtype), MPI_SUM,
                                MPI_COMM_WORLD), "MPI_Allreduce");
        done += n;
    }
#else
    die("comm_allreduce_sum: %s back end is not built in", comm_backend_name(comm));
#endif
}

void comm_reduce_scatter_sum(Comm *comm, const void *send, void *recv, size_t count, CommDtype dtype) {
    if (comm->backend == COMM_NCCL) { comm->nccl_ops->reduce_scatter_sum(comm, send, recv, count, dtype); return; }
    size_t esize = dtype_size(dtype);
    if (comm->backend == COMM_SINGLE || comm->world_size == 1) {
        if (send != recv) memmove(recv, send, count * esize);
        return;
    }
#ifdef MDN_MPI
    if (count <= MPI_MAX_CHUNK) {
        mpi_check(MPI_Reduce_scatter_block(send, recv, (int)count, mpi_type(dtype), MPI_SUM, MPI_COMM_WORLD),
                  "MPI_Reduce_scatter_block");
        return;
    }
    // a block too large for one int count: reduce each rank's block to its owner in pieces
    const char *s = (const char *)send;
    for (int r = 0; r < comm->world_size; r++) {
        for (size_t done = 0; done < count;) {
            size_t n = count - done < MPI_MAX_CHUNK ? count - done : MPI_MAX_CHUNK;
            const char *src = s + ((size_t)r * count + done) * esize;
            char *dst = (char *)recv + done * esize;
            mpi_check(MPI_Reduce(src, r == comm->rank ? dst : NULL, (int)n, mpi_type(dtype), MPI_SUM, r, MPI_COMM_WORLD),
                      "MPI_Reduce");
            done += n;
        }
    }
#else
    die("comm_reduce_scatter_sum: %s back end is not built in", comm_backend_name(comm));
#endif
}

void comm_allgather(Comm *comm, const void *send, void *recv, size_t count, CommDtype dtype) {
    if (comm->backend == COMM_NCCL) { comm->nccl_ops->allgather(comm, send, recv, count, dtype); return; }
    size_t esize = dtype_size(dtype);
    if (comm->backend == COMM_SINGLE || comm->world_size == 1) {
        if (send != recv) memmove(recv, send, count * esize);
        return;
    }
#ifdef MDN_MPI
    // send may alias this rank's block of recv (the in-place form)
    const void *src = (const char *)send == (const char *)recv + (size_t)comm->rank * count * esize ? MPI_IN_PLACE : send;
    if (count <= MPI_MAX_CHUNK) {
        mpi_check(MPI_Allgather(src, (int)count, mpi_type(dtype), recv, (int)count, mpi_type(dtype), MPI_COMM_WORLD),
                  "MPI_Allgather");
        return;
    }
    if (src != MPI_IN_PLACE) memcpy((char *)recv + (size_t)comm->rank * count * esize, send, count * esize);
    for (int r = 0; r < comm->world_size; r++)
        comm_broadcast(comm, (char *)recv + (size_t)r * count * esize, count * esize, r);
#else
    die("comm_allgather: %s back end is not built in", comm_backend_name(comm));
#endif
}

void comm_broadcast(Comm *comm, void *buf, size_t bytes, int root) {
    if (comm->backend == COMM_NCCL) { comm->nccl_ops->broadcast(comm, buf, bytes, root); return; }
    if (comm->backend == COMM_SINGLE || comm->world_size == 1) return;
#ifdef MDN_MPI
    char *p = (char *)buf;
    for (size_t done = 0; done < bytes;) {
        size_t n = bytes - done < MPI_MAX_CHUNK ? bytes - done : MPI_MAX_CHUNK;
        mpi_check(MPI_Bcast(p + done, (int)n, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
        done += n;
    }
#else
    die("comm_broadcast: %s back end is not built in", comm_backend_name(comm));
#endif
}

void comm_barrier(Comm *comm) {
    if (comm->backend == COMM_NCCL) {   // a one-value allreduce that every rank must join
        double zero = 0.0;
        comm->nccl_ops->allreduce_sum_host(comm, &zero, 1);
        return;
    }
    if (comm->backend == COMM_SINGLE || comm->world_size == 1) return;
#ifdef MDN_MPI
    mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
#endif
}

void comm_allreduce_sum_host(Comm *comm, double *values, size_t count) {
    if (comm->backend == COMM_NCCL) comm->nccl_ops->allreduce_sum_host(comm, values, count);
    else comm_allreduce_sum(comm, values, count, COMM_F64);
}

int comm_any(Comm *comm, int flag) {
    double value = flag ? 1.0 : 0.0;
    comm_allreduce_sum_host(comm, &value, 1);
    return value > 0.0;
}

void comm_exit_if_any_failed(Comm *comm, int failed, const char *message) {
    if (!comm_any(comm, failed)) return;
    double *failed_ranks = (double *)xcalloc((size_t)comm->world_size, sizeof(double));
    failed_ranks[comm->rank] = failed ? 1.0 : 0.0;
    comm_allreduce_sum_host(comm, failed_ranks, (size_t)comm->world_size);
    int first = 0;
    while (failed_ranks[first] == 0.0) first++;
    if (comm->rank == first) fprintf(stderr, "error: %s\n", message);
    free(failed_ranks);
    comm_finalize(comm);
    exit(EXIT_FAILURE);
}
