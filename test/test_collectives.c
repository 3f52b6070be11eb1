// test_collectives.c: every collective of collectives.h, run alone (single-process back end) and
// under `mpirun -np 2` (MPI back end); values are chosen so that each rank's contribution is visible.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/collectives.h"
#include "../common/utils.h"

static int failures = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { failures++; printf("FAIL rank %d %s:%d: ", comm.rank, __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

int main(int argc, char **argv) {
    Comm comm;
    comm_init(&comm, &argc, &argv);
    int R = comm.world_size, r = comm.rank;
    int expect_world = argc > 1 ? atoi(argv[1]) : 1;
    EXPECT(R == expect_world, "world size %d, expected %d (backend %s)", R, expect_world, comm_backend_name(&comm));
    EXPECT(r >= 0 && r < R && comm.local_rank >= 0, "rank %d local %d", r, comm.local_rank);

    // allreduce: element i of rank q holds (q+1) * i, the sum is i * R(R+1)/2
    const size_t n = 1000;
    float *f = xmalloc(n * sizeof(float));
    double *d = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) { f[i] = (float)((r + 1) * i); d[i] = (r + 1) * (double)i + 0.25; }
    comm_allreduce_sum(&comm, f, n, COMM_F32);
    comm_allreduce_sum(&comm, d, n, COMM_F64);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= f[i] == (float)(i * R * (R + 1) / 2) && d[i] == (double)i * R * (R + 1) / 2 + 0.25 * R;
    EXPECT(ok, "allreduce sum");

    // reduce-scatter: block b of every rank holds b*100 + q; rank r gets block r summed over q
    const size_t count = 37;
    float *send = xmalloc(R * count * sizeof(float)), *recv = xmalloc(count * sizeof(float));
    for (int b = 0; b < R; b++)
        for (size_t i = 0; i < count; i++) send[b * count + i] = (float)(b * 100 + r + i);
    comm_reduce_scatter_sum(&comm, send, recv, count, COMM_F32);
    ok = 1;
    for (size_t i = 0; i < count; i++) ok &= recv[i] == (float)(R * (r * 100 + (int)i) + R * (R - 1) / 2);
    EXPECT(ok, "reduce-scatter");

    // allgather, separate buffers and in place (send = this rank's block of recv)
    float *mine = xmalloc(count * sizeof(float)), *all = xmalloc(R * count * sizeof(float));
    for (size_t i = 0; i < count; i++) mine[i] = (float)(1000 * r + i);
    comm_allgather(&comm, mine, all, count, COMM_F32);
    ok = 1;
    for (int b = 0; b < R; b++) for (size_t i = 0; i < count; i++) ok &= all[b * count + i] == (float)(1000 * b + i);
    EXPECT(ok, "allgather");
    for (size_t i = 0; i < R * count; i++) all[i] = -1;
    for (size_t i = 0; i < count; i++) all[r * count + i] = (float)(7 * r + i);
    comm_allgather(&comm, all + r * count, all, count, COMM_F32);
    ok = 1;
    for (int b = 0; b < R; b++) for (size_t i = 0; i < count; i++) ok &= all[b * count + i] == (float)(7 * b + i);
    EXPECT(ok, "allgather in place");

    // broadcast from the last rank
    char text[32];
    snprintf(text, sizeof(text), "from rank %d", r);
    comm_broadcast(&comm, text, sizeof(text), R - 1);
    char want[32];
    snprintf(want, sizeof(want), "from rank %d", R - 1);
    EXPECT(strcmp(text, want) == 0, "broadcast: '%s'", text);

    // any: only the last rank raises the flag, every rank sees it
    EXPECT(comm_any(&comm, r == R - 1) == 1 && comm_any(&comm, 0) == 0, "any");
    comm_barrier(&comm);

    // every rank's verdict decides: exit 1 everywhere if any rank failed
    int failed = comm_any(&comm, failures > 0);
    if (r == 0) printf("%s: %d ranks (%s), %d failures on rank 0\n", failed ? "FAIL" : "OK", R, comm_backend_name(&comm), failures);
    free(f); free(d); free(send); free(recv); free(mine); free(all);
    comm_finalize(&comm);
    return failed ? 1 : 0;
}
