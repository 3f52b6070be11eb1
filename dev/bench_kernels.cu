// bench_kernels: the trainer's memory-bound layer kernels at a model's shapes, timed one by one.
//   dev/bench_kernels --config FILE [--batch-size B] [--seq-len T]
// For each kernel (as model_cuda.cu calls it, bf16 activations) prints the median time of 10 runs
// after 2 warm-ups (CUDA events), the bytes it must move at least (each operand read or written
// once: the floor a fused kernel could reach), and the achieved rate against a device-to-device
// copy on the same GPU, the practical ceiling for such kernels. Values are random in [-1, 1]; the
// times do not depend on them. The step profile (dev/bench_train --profile) says how often each runs.
#include <algorithm>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "../common/config.h"
#include "../common/cuda_common.cuh"
#include "../common/utils.h"
#include "../layers/conv.cuh"
#include "../layers/mdn_gates.cuh"
#include "../layers/rmsnorm.cuh"
#include "../layers/swiglu.cuh"

// x[i] = a hash of i mapped to [-1, 1]
template <typename T> __global__ void fill_kernel(T *x, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        x[i] = from_float<T>((float)(h & 0xFFFFFF) / 8388608.0f - 1.0f);
    }
}

static uint32_t next_seed = 1;
template <typename T> static T *device_random(size_t n) {
    T *p;
    cudaCheck(cudaMalloc(&p, n * sizeof(T)));
    fill_kernel<T><<<1024, 256>>>(p, n, next_seed++ * 0x9E3779B9u);
    cudaCheck(cudaGetLastError());
    return p;
}

static cudaEvent_t ev_start, ev_stop;

// median milliseconds of `run` (which launches on stream 0)
template <typename F> static double time_ms(F run) {
    for (int i = 0; i < 2; i++) run();
    std::vector<float> ms(10);
    for (float &m : ms) {
        cudaCheck(cudaEventRecord(ev_start, 0));
        run();
        cudaCheck(cudaEventRecord(ev_stop, 0));
        cudaCheck(cudaEventSynchronize(ev_stop));
        cudaCheck(cudaEventElapsedTime(&m, ev_start, ev_stop));
    }
    std::sort(ms.begin(), ms.end());
    return 0.5 * (ms[4] + ms[5]);
}

static double copy_gbs;   // the device-to-device copy's rate, GB/s

static void report(const char *name, double ms, double bytes) {
    double gbs = bytes / (ms * 1e-3) / 1e9;
    printf("%-44s %8.3f ms %8.1f MB %7.0f GB/s %5.0f%% of copy\n", name, ms, bytes / 1e6, gbs, 100.0 * gbs / copy_gbs);
}

int main(int argc, char **argv) {
    const char *config_path = NULL;
    int B = 8, T = 4096;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) die("%s: missing value", argv[i]);
        if (strcmp(argv[i], "--config") == 0) config_path = argv[++i];
        else if (strcmp(argv[i], "--batch-size") == 0) B = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seq-len") == 0) T = atoi(argv[++i]);
        else die("%s: unknown flag (usage: bench_kernels --config FILE [--batch-size B] [--seq-len T])", argv[i]);
    }
    if (config_path == NULL || B <= 0 || T <= 0)
        die("usage: bench_kernels --config FILE [--batch-size B] [--seq-len T]");
    char err[512];
    MdnConfig c;
    if (config_load(&c, config_path, err, sizeof err) != 0) die("%s", err);
    const cudaDeviceProp *props = cuda_device_props();
    cudaCheck(cudaEventCreate(&ev_start));
    cudaCheck(cudaEventCreate(&ev_stop));
    const int H = c.num_heads, K = c.head_dim, V = c.value_dim, D = c.hidden_size, I = c.intermediate_size;
    const int W = c.conv_size, BT = B * T, HK = H * K, HV = H * V, PQ = 2 * HK + 2 * HV;
    const size_t X = sizeof(bf16), F = sizeof(float);
    const float eps = 1e-6f;
    printf("%s, %s: B %d T %d, D %d, H %d K %d V %d, I %d, conv %d, bf16 activations\n", props->name, config_path, B,
           T, D, H, K, V, I, W);

    // the practical ceiling: a 1 GiB device-to-device copy (reads and writes 1 GiB each)
    size_t copy_bytes = (size_t)1 << 30;
    char *src, *dst;
    cudaCheck(cudaMalloc(&src, copy_bytes));
    cudaCheck(cudaMalloc(&dst, copy_bytes));
    cudaCheck(cudaMemset(src, 1, copy_bytes));
    double ms = time_ms([&] { cudaCheck(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, 0)); });
    copy_gbs = 2.0 * copy_bytes / (ms * 1e-3) / 1e9;
    printf("%-44s %8.3f ms %8.1f MB %7.0f GB/s\n", "device-to-device copy", ms, 2.0 * copy_bytes / 1e6, copy_gbs);
    cudaCheck(cudaFree(src));
    cudaCheck(cudaFree(dst));

    // the mixer's projections q|k|v|g and the conv outputs
    bf16 *proj = device_random<bf16>((size_t)BT * PQ), *dproj = device_random<bf16>((size_t)BT * PQ);
    bf16 *q = device_random<bf16>((size_t)BT * HK), *k = device_random<bf16>((size_t)BT * HK);
    bf16 *v = device_random<bf16>((size_t)BT * HV);
    float *wq = device_random<float>((size_t)HK * W), *wk = device_random<float>((size_t)HK * W);
    float *wv = device_random<float>((size_t)HV * W), *dwq = device_random<float>((size_t)HK * W);
    float *dwk = device_random<float>((size_t)HK * W), *dwv = device_random<float>((size_t)HV * W);
    void *conv_scratch;
    cudaCheck(cudaMalloc(&conv_scratch, shortconv_silu_backward_scratch_bytes(B, T, HV, W)));
    float *D_log = device_random<float>(H), *dD_log = device_random<float>(H);
    double qkv_bytes = (double)BT * (2 * HK + HV) * X;
    ms = time_ms([&] {   // as model_cuda.cu: k, then q with the output correction (reads k), then v
        shortconv_silu_forward_cuda<bf16>(k, proj + HK, PQ, wk, B, T, HK, W, 0);
        shortconv_silu_corrected_forward_cuda<bf16>(q, proj, PQ, wq, k, D_log, H, B, T, HK, W, 0);
        shortconv_silu_forward_cuda<bf16>(v, proj + 2 * HK, PQ, wv, B, T, HV, W, 0);
    });
    report("conv+silu forward (k, q corrected, v)", ms, 2 * qkv_bytes + (double)BT * HK * X);
    ms = time_ms([&] {   // q, k, v stand in for their gradients
        shortconv_silu_backward_cuda<bf16>(dproj, PQ, dwq, conv_scratch, q, proj, PQ, wq, B, T, HK, W, 0);
        shortconv_silu_backward_cuda<bf16>(dproj + HK, PQ, dwk, conv_scratch, k, proj + HK, PQ, wk, B, T, HK, W, 0);
        shortconv_silu_backward_cuda<bf16>(dproj + 2 * HK, PQ, dwv, conv_scratch, v, proj + 2 * HK, PQ, wv, B, T, HV,
                                           W, 0);
    });
    report("conv+silu backward (q, k, v)", ms, 3 * qkv_bytes);

    void *corr_scratch;
    cudaCheck(cudaMalloc(&corr_scratch, output_correction_backward_scratch_bytes(BT, H)));
    ms = time_ms([&] { output_correction_backward_cuda<bf16>(q, k, dD_log, corr_scratch, q, k, D_log, BT, H, K, 0); });
    report("output correction backward (dq in place)", ms, 4.0 * BT * HK * X);

    // the gated output norm over B·T·H rows of V, its gate a column slice of proj
    bf16 *o = device_random<bf16>((size_t)BT * HV), *on = device_random<bf16>((size_t)BT * HV);
    bf16 *on2 = device_random<bf16>((size_t)BT * HV);
    float *orstd = device_random<float>((size_t)BT * H), *o_norm = device_random<float>(V);
    float *do_norm = device_random<float>(V);
    float *norm_scratch = device_random<float>((size_t)REDUCE_PARTS * std::max(D, V));
    const bf16 *gate = proj + 2 * HK + HV;
    ms = time_ms([&] { gated_rmsnorm_forward_cuda<bf16>(on, orstd, o, gate, o_norm, BT * H, V, H, PQ, eps, 0); });
    report("gated rmsnorm forward", ms, 3.0 * BT * HV * X + (double)BT * H * F);
    ms = time_ms([&] {
        gated_rmsnorm_backward_cuda<bf16>(o, dproj + 2 * HK + HV, NULL, do_norm, norm_scratch, on, o, gate, o_norm,
                                          orstd, BT * H, V, H, PQ, 0);
    });
    report("gated rmsnorm backward", ms, 5.0 * BT * HV * X + (double)BT * H * F);
    ms = time_ms([&] {
        gated_rmsnorm_backward_cuda<bf16>(o, dproj + 2 * HK + HV, on2, do_norm, norm_scratch, on, o, gate, o_norm,
                                          orstd, BT * H, V, H, PQ, 0);
    });
    report("gated rmsnorm backward (and recompute)", ms, 6.0 * BT * HV * X + (double)BT * H * F);

    // the residual stream's norms (float32 stream, bf16 normed output)
    float *resid = device_random<float>((size_t)BT * D), *h = device_random<float>((size_t)BT * D);
    float *dresid = device_random<float>((size_t)BT * D), *rstd = device_random<float>(BT);
    float *norm_w = device_random<float>(D), *dnorm_w = device_random<float>(D);
    bf16 *xn = device_random<bf16>((size_t)BT * D), *delta = device_random<bf16>((size_t)BT * D);
    bf16 *xn2 = device_random<bf16>((size_t)BT * D);
    bf16 *dres_x = device_random<bf16>((size_t)BT * D);
    ms = time_ms([&] { rmsnorm_forward_cuda<bf16>(xn, rstd, resid, norm_w, BT, D, eps, 0); });
    report("rmsnorm forward", ms, (double)BT * D * (F + X) + (double)BT * F);
    ms = time_ms([&] { residual_rmsnorm_forward_cuda<bf16>(h, xn, rstd, resid, delta, norm_w, BT, D, eps, 0); });
    report("residual add + rmsnorm forward", ms, (double)BT * D * (F + X + F + X) + (double)BT * F);
    ms = time_ms([&] {
        rmsnorm_backward_cuda<bf16>(dresid, dres_x, NULL, dnorm_w, norm_scratch, xn, resid, norm_w, rstd, BT, D, 0);
    });
    report("rmsnorm backward (dresid +=, bf16 copy)", ms, (double)BT * D * (X + F + F + F + X) + (double)BT * F);
    ms = time_ms([&] {
        rmsnorm_backward_cuda<bf16>(dresid, dres_x, xn2, dnorm_w, norm_scratch, xn, resid, norm_w, rstd, BT, D, 0);
    });
    report("rmsnorm backward (and recompute)", ms, (double)BT * D * (X + F + F + F + X + X) + (double)BT * F);
    ms = time_ms([&] {
        residual_rmsnorm_backward_cuda<bf16>(dresid, dres_x, xn2, dnorm_w, norm_scratch, xn, resid, delta, norm_w, BT,
                                             D, eps, 0);
    });
    report("residual + rmsnorm backward (and recompute)", ms, (double)BT * D * (X + F + X + F + F + X + X));

    // SwiGLU on the gate|up product
    bf16 *gu = device_random<bf16>((size_t)BT * 2 * I), *dgu = device_random<bf16>((size_t)BT * 2 * I);
    bf16 *act = device_random<bf16>((size_t)BT * I), *act2 = device_random<bf16>((size_t)BT * I);
    ms = time_ms([&] { swiglu_forward_cuda<bf16>(act, gu, gu + I, 2 * I, BT, I, 0); });
    report("swiglu forward", ms, 3.0 * BT * I * X);
    ms = time_ms([&] { swiglu_backward_cuda<bf16>(dgu, dgu + I, act2, act, gu, gu + I, 2 * I, BT, I, 0); });
    report("swiglu backward (and recompute)", ms, 6.0 * BT * I * X);

    cudaCheck(cudaDeviceSynchronize());
    return 0;
}
