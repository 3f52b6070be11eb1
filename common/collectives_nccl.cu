// collectives_nccl.cu: the NCCL back end of collectives.h: one process per GPU, device buffers,
// collectives queued on comm->stream and waited for with a deadline.
//
// Why the deadline: a collective that a peer never joins (the peer died, hangs, or took another
// branch) spins on the GPU forever, and NCCL has no timeout of its own. The communicator is created
// non-blocking (ncclConfig_t.blocking = 0), so every call returns at once and this file polls the
// communicator's asynchronous error and the stream; past the deadline, or on an error (a peer's
// connection closed), it prints one line naming this rank, calls ncclCommAbort (which also stops
// this rank's NCCL kernels) and exits 1. mpirun then ends the other ranks.
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern "C" {   // C headers without their own guards
#include "collectives.h"
}
#include "cuda_common.cuh"
#include "utils.h"

typedef struct {
    ncclComm_t comm;
    cudaStream_t own_stream;    // created by comm_nccl_init (destroyed by finalize)
    double timeout_s;
    double *scratch;            // device buffer for allreduce_sum_host
    double *scratch_host;       // its pinned host twin: copies from pageable memory may wait for the stream
    size_t scratch_count;
    int device;
    char host[64];
} NcclState;

static NcclState *state_of(Comm *comm) { return (NcclState *)comm->nccl; }

// one line on stderr naming this rank, then abort the communicator (ends its kernels) and exit(1)
static void nccl_fail(Comm *comm, const char *what, const char *problem) {
    NcclState *st = state_of(comm);
    fprintf(stderr, "error: rank %d of %d (%s, GPU %d): NCCL %s: %s; aborting the job\n", comm->rank,
            comm->world_size, st->host, st->device, what, problem);
    fflush(stderr);
    ncclCommAbort(st->comm);
    exit(EXIT_FAILURE);
}

static void nccl_fail_code(Comm *comm, const char *what, ncclResult_t result) {
    char problem[512];
    snprintf(problem, sizeof problem, "%s (%s)", ncclGetErrorString(result), ncclGetLastError(state_of(comm)->comm));
    nccl_fail(comm, what, problem);
}

// Waits until the communicator has finished the call just issued (`issued`: what the call returned)
// and the stream has run everything queued on it, or fails past the deadline.
static void nccl_wait(Comm *comm, const char *what, ncclResult_t issued) {
    NcclState *st = state_of(comm);
    if (issued != ncclSuccess && issued != ncclInProgress) nccl_fail_code(comm, what, issued);
    double deadline = wall_seconds() + st->timeout_s;
    for (;;) {
        ncclResult_t async_state;
        ncclResult_t result = ncclCommGetAsyncError(st->comm, &async_state);
        if (result != ncclSuccess) nccl_fail_code(comm, what, result);
        if (async_state != ncclSuccess && async_state != ncclInProgress) nccl_fail_code(comm, what, async_state);
        if (async_state == ncclSuccess) {   // the call is queued; has the stream got through it?
            cudaError_t query = comm->stream == NULL ? cudaSuccess : cudaStreamQuery((cudaStream_t)comm->stream);
            if (query == cudaSuccess) return;
            if (query != cudaErrorNotReady) nccl_fail(comm, what, cudaGetErrorString(query));
        }
        if (wall_seconds() > deadline) {
            char problem[256];
            snprintf(problem, sizeof problem,
                     "not complete after %.0f s (another rank died, hangs, or skipped it; MDN_NCCL_TIMEOUT_S sets the "
                     "limit)", st->timeout_s);
            nccl_fail(comm, what, problem);
        }
    }
}

static ncclDataType_t nccl_type(CommDtype dtype) { return dtype == COMM_F64 ? ncclFloat64 : ncclFloat32; }

static void nccl_allreduce_sum(Comm *comm, void *buf, size_t count, CommDtype dtype) {
    ncclResult_t r = ncclAllReduce(buf, buf, count, nccl_type(dtype), ncclSum, state_of(comm)->comm,
                                   (cudaStream_t)comm->stream);
    nccl_wait(comm, "allreduce", r);
}

static void nccl_reduce_scatter_sum(Comm *comm, const void *send, void *recv, size_t count, CommDtype dtype) {
    // in place when recv is this rank's block of send (NCCL's convention, as collectives.h's)
    ncclResult_t r = ncclReduceScatter(send, recv, count, nccl_type(dtype), ncclSum, state_of(comm)->comm,
                                       (cudaStream_t)comm->stream);
    nccl_wait(comm, "reduce-scatter", r);
}

static void nccl_allgather(Comm *comm, const void *send, void *recv, size_t count, CommDtype dtype) {
    ncclResult_t r = ncclAllGather(send, recv, count, nccl_type(dtype), state_of(comm)->comm, (cudaStream_t)comm->stream);
    nccl_wait(comm, "allgather", r);
}

static void nccl_broadcast(Comm *comm, void *buf, size_t bytes, int root) {
    ncclResult_t r = ncclBroadcast(buf, buf, bytes, ncclUint8, root, state_of(comm)->comm, (cudaStream_t)comm->stream);
    nccl_wait(comm, "broadcast", r);
}

// host values through the device scratch buffer. The count is the number of doubles: llm.c passed
// sizeof(float) as the count of its 1-float buffers, so NCCL read and wrote 3 values past the end.
static void nccl_allreduce_sum_host(Comm *comm, double *values, size_t count) {
    NcclState *st = state_of(comm);
    cudaStream_t stream = (cudaStream_t)comm->stream;
    if (count > st->scratch_count) {
        if (st->scratch != NULL) cudaCheck(cudaFree(st->scratch));
        if (st->scratch_host != NULL) cudaCheck(cudaFreeHost(st->scratch_host));
        cudaCheck(cudaMalloc((void **)&st->scratch, count * sizeof(double)));
        cudaCheck(cudaMallocHost((void **)&st->scratch_host, count * sizeof(double)));
        st->scratch_count = count;
    }
    memcpy(st->scratch_host, values, count * sizeof(double));
    cudaCheck(cudaMemcpyAsync(st->scratch, st->scratch_host, count * sizeof(double), cudaMemcpyHostToDevice, stream));
    ncclResult_t r = ncclAllReduce(st->scratch, st->scratch, count, ncclFloat64, ncclSum, st->comm, stream);
    nccl_wait(comm, "allreduce of host values", r);
    cudaCheck(cudaMemcpyAsync(st->scratch_host, st->scratch, count * sizeof(double), cudaMemcpyDeviceToHost, stream));
    cudaCheck(cudaStreamSynchronize(stream));   // the collective is done: nothing left to hang on
    memcpy(values, st->scratch_host, count * sizeof(double));
}

static void nccl_finalize(Comm *comm) {
    NcclState *st = state_of(comm);
    nccl_wait(comm, "finalize", ncclCommFinalize(st->comm));   // flushes outstanding work, every rank
    ncclResult_t r = ncclCommDestroy(st->comm);
    if (r != ncclSuccess) die("rank %d: ncclCommDestroy: %s", comm->rank, ncclGetErrorString(r));
    if (st->scratch != NULL) cudaCheck(cudaFree(st->scratch));
    if (st->scratch_host != NULL) cudaCheck(cudaFreeHost(st->scratch_host));
    cudaCheck(cudaStreamDestroy(st->own_stream));
    free(st);
    comm->nccl = NULL;
    comm->nccl_ops = NULL;
    comm->stream = NULL;
    comm->backend = comm->initialized_mpi ? COMM_MPI : COMM_SINGLE;
}

static const CommNcclOps nccl_ops = {nccl_allreduce_sum, nccl_reduce_scatter_sum, nccl_allgather, nccl_broadcast,
                                     nccl_allreduce_sum_host, nccl_finalize};

extern "C" void comm_nccl_init(Comm *comm, double timeout_s) {
    if (comm->backend == COMM_NCCL) die("comm_nccl_init: called twice");
    NcclState *st = (NcclState *)xcalloc(1, sizeof(NcclState));
    if (gethostname(st->host, sizeof st->host - 1) != 0) snprintf(st->host, sizeof st->host, "?");
    if (timeout_s <= 0.0) {
        const char *env = getenv("MDN_NCCL_TIMEOUT_S");
        char *end = NULL;
        timeout_s = env != NULL ? strtod(env, &end) : 600.0;
        if (env != NULL && (end == env || *end != '\0' || !(timeout_s > 0.0)))
            die("MDN_NCCL_TIMEOUT_S=%s: expected a positive number of seconds", env);
    }
    st->timeout_s = timeout_s;

    // this rank's GPU: its rank among the processes of this host, or the one GPU it is given
    // (a launcher that sets CUDA_VISIBLE_DEVICES per process)
    int num_devices = 0;
    cudaError_t err = cudaGetDeviceCount(&num_devices);
    if (err != cudaSuccess || num_devices == 0)
        die("rank %d (%s): no CUDA device (%s)", comm->rank, st->host, err != cudaSuccess ? cudaGetErrorString(err) : "none");
    st->device = num_devices == 1 ? 0 : comm->local_rank;
    if (st->device >= num_devices)
        die("rank %d (%s): local rank %d, but this host has %d GPUs: start at most one process per GPU", comm->rank,
            st->host, comm->local_rank, num_devices);
    cudaCheck(cudaSetDevice(st->device));
    cudaCheck(cudaStreamCreate(&st->own_stream));

    // rank 0 makes the id; the others get it over MPI (comm is still single or MPI here)
    ncclUniqueId id;
    if (comm->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) die("rank 0 (%s): ncclGetUniqueId: %s", st->host, ncclGetErrorString(r));
    }
    comm_broadcast(comm, &id, sizeof id, 0);

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;   // every call returns at once: nccl_wait polls with the deadline
    ncclResult_t r = ncclCommInitRankConfig(&st->comm, comm->world_size, id, comm->rank, &config);
    if (r != ncclSuccess && r != ncclInProgress)
        die("rank %d (%s): ncclCommInitRankConfig: %s", comm->rank, st->host, ncclGetErrorString(r));
    comm->nccl = st;
    comm->nccl_ops = &nccl_ops;
    comm->stream = st->own_stream;
    comm->backend = COMM_NCCL;
    nccl_wait(comm, "communicator setup", r);
}
