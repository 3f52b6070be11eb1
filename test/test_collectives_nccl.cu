// test_collectives_nccl.cu: the NCCL back end (common/collectives_nccl.cu) on device buffers, alone,
// under `mpirun -np 1` and under `mpirun -np 2` (two GPUs): allreduce, reduce-scatter, allgather
// (separate buffers and in place), broadcast, host sums and votes against values computed on the
// CPU; then one ZeRO-1 optimizer step (reduce-scatter of the gradients, AdamW on this rank's slice,
// allgather of the float32 masters) against the update of the whole vector with the summed
// gradients. Values are small multiples of powers of two, so every sum is exact in any order and
// the comparisons are bitwise. Outputs are poisoned (NaN) before each collective.
//
// Usage: test_collectives_nccl [EXPECTED_WORLD_SIZE]   (default 1)
//        test_collectives_nccl --hang   one rank never joins a collective (with one rank: the stream
//        is held by a kernel); the wrapper must end the run with "error: rank 0 ..." after
//        MDN_NCCL_TIMEOUT_S seconds, exit status 1.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern "C" {   // C header without its own guards
#include "../common/collectives.h"
}
#include "../common/cuda_common.cuh"
#include "../common/utils.h"
#include "../layers/adamw.cuh"

static Comm comm;
static int failures = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { failures++; printf("FAIL rank %d %s:%d: ", comm.rank, __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static void *device_copy(const void *host, size_t bytes) {
    void *d;
    cudaCheck(cudaMalloc(&d, bytes));
    cudaCheck(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
}
static void *device_poisoned(size_t bytes) {   // all bytes 0xff: NaN as float and double
    void *d;
    cudaCheck(cudaMalloc(&d, bytes));
    cudaCheck(cudaMemset(d, 0xff, bytes));
    return d;
}
static void download(void *host, const void *device, size_t bytes) {
    cudaCheck(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost));
}

// holds the stream for `seconds` (the --hang test with one rank)
__global__ void spin_kernel(unsigned long long nanoseconds) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        __nanosleep(100000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < nanoseconds);
}

static void test_allreduce(int R, int r) {
    const size_t n = 100003;
    float *f = (float *)xmalloc(n * sizeof(float));
    double *d = (double *)xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        f[i] = (float)((r + 1) * (int)(i % 1000)) + 0.5f;
        d[i] = (r + 1) * (double)i + 0.25;
    }
    float *f_dev = (float *)device_copy(f, n * sizeof(float));
    double *d_dev = (double *)device_copy(d, n * sizeof(double));
    comm_allreduce_sum(&comm, f_dev, n, COMM_F32);
    comm_allreduce_sum(&comm, d_dev, n, COMM_F64);
    download(f, f_dev, n * sizeof(float));
    download(d, d_dev, n * sizeof(double));
    int ok_f = 1, ok_d = 1;
    for (size_t i = 0; i < n; i++) {
        ok_f &= f[i] == (float)((int)(i % 1000) * R * (R + 1) / 2) + 0.5f * R;
        ok_d &= d[i] == (double)i * R * (R + 1) / 2 + 0.25 * R;
    }
    EXPECT(ok_f, "allreduce sum float32");
    EXPECT(ok_d, "allreduce sum float64");
    cudaCheck(cudaFree(f_dev));
    cudaCheck(cudaFree(d_dev));
    free(f);
    free(d);
}

// block b of rank q holds b*8 + q + (i % 512): rank r's reduced block is R*(r*8 + i%512) + R(R-1)/2
static void test_reduce_scatter(int R, int r) {
    const size_t count = 262147;
    float *send = (float *)xmalloc(R * count * sizeof(float)), *recv = (float *)xmalloc(count * sizeof(float));
    for (int b = 0; b < R; b++)
        for (size_t i = 0; i < count; i++) send[b * count + i] = (float)(b * 8 + r + (int)(i % 512));
    float *send_dev = (float *)device_copy(send, R * count * sizeof(float));
    float *recv_dev = (float *)device_poisoned(count * sizeof(float));
    for (int in_place = 0; in_place <= 1; in_place++) {
        float *out = in_place ? send_dev + (size_t)r * count : recv_dev;
        comm_reduce_scatter_sum(&comm, send_dev, out, count, COMM_F32);
        download(recv, out, count * sizeof(float));
        int ok = 1;
        for (size_t i = 0; i < count; i++) ok &= recv[i] == (float)(R * (r * 8 + (int)(i % 512)) + R * (R - 1) / 2);
        EXPECT(ok, "reduce-scatter (%s)", in_place ? "in place" : "separate buffers");
    }
    cudaCheck(cudaFree(send_dev));
    cudaCheck(cudaFree(recv_dev));
    free(send);
    free(recv);
}

static void test_allgather(int R, int r) {
    const size_t count = 131075;
    float *mine = (float *)xmalloc(count * sizeof(float)), *all = (float *)xmalloc(R * count * sizeof(float));
    for (size_t i = 0; i < count; i++) mine[i] = (float)(1000 * r + (int)(i % 997));
    float *mine_dev = (float *)device_copy(mine, count * sizeof(float));
    for (int in_place = 0; in_place <= 1; in_place++) {
        float *all_dev = (float *)device_poisoned(R * count * sizeof(float));
        const float *src = mine_dev;
        if (in_place) {
            cudaCheck(cudaMemcpy(all_dev + (size_t)r * count, mine, count * sizeof(float), cudaMemcpyHostToDevice));
            src = all_dev + (size_t)r * count;
        }
        comm_allgather(&comm, src, all_dev, count, COMM_F32);
        download(all, all_dev, R * count * sizeof(float));
        int ok = 1;
        for (int b = 0; b < R; b++)
            for (size_t i = 0; i < count; i++) ok &= all[b * count + i] == (float)(1000 * b + (int)(i % 997));
        EXPECT(ok, "allgather (%s)", in_place ? "in place" : "separate buffers");
        cudaCheck(cudaFree(all_dev));
    }
    cudaCheck(cudaFree(mine_dev));
    free(mine);
    free(all);
}

static void test_broadcast_and_host(int R, int r) {
    const size_t bytes = 1000003;
    const int root = R - 1;
    unsigned char *h = (unsigned char *)xmalloc(bytes);
    for (size_t i = 0; i < bytes; i++) h[i] = (unsigned char)(r == root ? (i * 7 + 3) & 255 : 0);
    unsigned char *h_dev = (unsigned char *)device_copy(h, bytes);
    comm_broadcast(&comm, h_dev, bytes, root);
    download(h, h_dev, bytes);
    int ok = 1;
    for (size_t i = 0; i < bytes; i++) ok &= h[i] == (unsigned char)((i * 7 + 3) & 255);
    EXPECT(ok, "broadcast from rank %d", root);
    cudaCheck(cudaFree(h_dev));
    free(h);

    double values[3] = {(double)r, 1.5, -2.0 * r};
    comm_allreduce_sum_host(&comm, values, 3);
    EXPECT(values[0] == R * (R - 1) / 2.0 && values[1] == 1.5 * R && values[2] == -1.0 * R * (R - 1),
           "host sums %g %g %g", values[0], values[1], values[2]);
    EXPECT(comm_any(&comm, r == R - 1) == 1, "comm_any(one rank's flag)");
    EXPECT(comm_any(&comm, 0) == 0, "comm_any(no flag)");
    comm_barrier(&comm);
}

// ZeRO-1 as the GPU trainer does it: flat vectors padded to R*shard, rank r owns
// [r*shard, min((r+1)*shard, N)); its m and v hold only that slice.
static void test_zero1_step(int R, int r) {
    const size_t N = 100003;
    const size_t shard = (N + R - 1) / R, padded = shard * R;
    const size_t begin = (size_t)r * shard < N ? (size_t)r * shard : N, end = begin + shard < N ? begin + shard : N;
    const size_t seg_end_host[3] = {40000, 70001, N};
    const unsigned char seg_decay_host[3] = {1, 0, 1};
    size_t *seg_end = (size_t *)device_copy(seg_end_host, sizeof seg_end_host);
    unsigned char *seg_decay = (unsigned char *)device_copy(seg_decay_host, sizeof seg_decay_host);

    float *params = (float *)xcalloc(padded, sizeof(float));
    float *grads_mine = (float *)xcalloc(padded, sizeof(float)), *grads_sum = (float *)xcalloc(N, sizeof(float));
    for (size_t i = 0; i < N; i++) {
        params[i] = (float)((int)((i * 13) % 101) - 50) / 128.0f;
        for (int q = 0; q < R; q++) {
            float g = (float)((int)((i * 31 + q * 17) % 64) - 32) / 64.0f;
            grads_sum[i] += g;
            if (q == r) grads_mine[i] = g;
        }
    }
    // the reference: one process, the whole vector, the summed gradients
    float *ref_params = (float *)device_copy(params, N * sizeof(float));
    float *ref_grads = (float *)device_copy(grads_sum, N * sizeof(float));
    float *ref_m = (float *)device_copy(grads_mine, N * sizeof(float)), *ref_v = (float *)device_copy(grads_mine, N * sizeof(float));
    cudaCheck(cudaMemset(ref_m, 0, N * sizeof(float)));
    cudaCheck(cudaMemset(ref_v, 0, N * sizeof(float)));
    bf16 *ref_copy = (bf16 *)device_poisoned(N * sizeof(bf16));
    // the sharded run
    float *z_params = (float *)device_copy(params, padded * sizeof(float));
    float *z_grads = (float *)device_poisoned(padded * sizeof(float));
    float *z_m = (float *)device_poisoned(padded * sizeof(float)), *z_v = (float *)device_poisoned(padded * sizeof(float));
    cudaCheck(cudaMemset(z_m + (size_t)r * shard, 0, shard * sizeof(float)));
    cudaCheck(cudaMemset(z_v + (size_t)r * shard, 0, shard * sizeof(float)));
    bf16 *z_copy = (bf16 *)device_poisoned(padded * sizeof(bf16));
    cudaStream_t stream = (cudaStream_t)comm.stream;
    for (int64_t t = 1; t <= 3; t++) {
        const float lr = 1e-3f * (float)t, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, clip = 0.5f;
        adamw_update_cuda<bf16>(ref_params, ref_copy, ref_grads, ref_m, ref_v, 0, N, lr, beta1, beta2, eps, wd, clip, t,
                                seg_end, seg_decay, 3, stream);
        // this step's local gradients (the backward's output), the sum of this rank's block in place
        cudaCheck(cudaMemcpyAsync(z_grads, grads_mine, padded * sizeof(float), cudaMemcpyHostToDevice, stream));
        comm_reduce_scatter_sum(&comm, z_grads, z_grads + (size_t)r * shard, shard, COMM_F32);
        adamw_update_cuda<bf16>(z_params, z_copy, z_grads, z_m + (size_t)r * shard, z_v + (size_t)r * shard, begin, end, lr,
                                beta1, beta2, eps, wd, clip, t, seg_end, seg_decay, 3, stream);
        comm_allgather(&comm, z_params + (size_t)r * shard, z_params, shard, COMM_F32);
        convert_params_cuda<bf16>(z_copy, z_params, N, stream);
    }
    // the checkpoint's gather of the moments
    comm_allgather(&comm, z_m + (size_t)r * shard, z_m, shard, COMM_F32);
    comm_allgather(&comm, z_v + (size_t)r * shard, z_v, shard, COMM_F32);
    cudaCheck(cudaStreamSynchronize(stream));
    const char *names[4] = {"params", "m", "v", "bf16 copy"};
    const void *ref[4] = {ref_params, ref_m, ref_v, ref_copy}, *zero[4] = {z_params, z_m, z_v, z_copy};
    size_t bytes[4] = {N * sizeof(float), N * sizeof(float), N * sizeof(float), N * sizeof(bf16)};
    for (int k = 0; k < 4; k++) {
        char *a = (char *)xmalloc(bytes[k]), *b = (char *)xmalloc(bytes[k]);
        download(a, ref[k], bytes[k]);
        download(b, zero[k], bytes[k]);
        EXPECT(memcmp(a, b, bytes[k]) == 0, "ZeRO-1 step: %s differ from the one-process update", names[k]);
        free(a);
        free(b);
    }
    void *bufs[] = {seg_end, seg_decay, ref_params, ref_grads, ref_m, ref_v, ref_copy, z_params, z_grads, z_m, z_v, z_copy};
    for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++) cudaCheck(cudaFree(bufs[k]));
    free(params);
    free(grads_mine);
    free(grads_sum);
}

int main(int argc, char **argv) {
    comm_init(&comm, &argc, &argv);
    int hang = argc > 1 && strcmp(argv[1], "--hang") == 0;
    int expect_world = argc > 1 && !hang ? atoi(argv[1]) : comm.world_size;
    comm_nccl_init(&comm, 0.0);
    int R = comm.world_size, r = comm.rank;
    if (hang) {
        // the rank with the highest number never joins; rank 0 (the one that waits) must give up
        double timeout = getenv("MDN_NCCL_TIMEOUT_S") != NULL ? atof(getenv("MDN_NCCL_TIMEOUT_S")) : 600.0;
        if (R == 1) spin_kernel<<<1, 1, 0, (cudaStream_t)comm.stream>>>((unsigned long long)((timeout + 10.0) * 1e9));
        else if (r == R - 1) { sleep((unsigned)timeout + 10); return 0; }
        comm_barrier(&comm);
        printf("rank %d: the barrier returned although a rank never joined it\n", r);
        return 1;
    }
    EXPECT(R == expect_world, "world size %d, expected %d", R, expect_world);
    EXPECT(strcmp(comm_backend_name(&comm), "NCCL") == 0, "backend %s", comm_backend_name(&comm));
    test_allreduce(R, r);
    test_reduce_scatter(R, r);
    test_allgather(R, r);
    test_broadcast_and_host(R, r);
    test_zero1_step(R, r);
    int any_failed = comm_any(&comm, failures > 0);
    comm_finalize(&comm);
    if (failures == 0) printf("rank %d of %d: every NCCL collective matched the CPU%s\n", r, R,
                              any_failed ? " (another rank failed)" : "");
    return failures > 0 || any_failed ? 1 : 0;
}
