// bench_train: one GPU training step of a model config at a batch shape, timed.
//   dev/bench_train --config FILE --batch-size B --seq-len T [--steps N] [--recompute 1|2] [--profile]
// (--recompute: train_mdn's flag, 2 by default)
// Prints tokens/s, MFU (model FLOPs per token = 6·N_nonembedding + the MDN op's chunked arithmetic,
// forward + backward = 3× forward, against the GPU's dense bf16 peak: 989 TFLOP/s for H100/H200),
// peak device memory (the allocations of the model, optimizer and activations, and what the device
// reports in use, CUDA context included), and with --profile a table of the time each stage of one
// step takes (events between stages; the sum is the step time).
// Weights are random (the init's distributions for the small per-head tensors, uniform with the
// init's std for the matrices: the timing does not depend on them), tokens uniform over the vocabulary.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/config.h"
#include "../common/cuda_common.cuh"
#include "../common/utils.h"
#include "../layers/linear.cuh"
#include "../layers/model.h"
#include "../layers/model_cuda.cuh"

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static double uniform01(void) {
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

// the trainer's init (model.c, parallel over blocks of values): a second or two even at 1B
static float *random_params(const MdnConfig *config) {
    ParamTensor *table;
    size_t num_params;
    const int num_tensors = model_param_table(config, &table, &num_params);
    float *params = (float *)xmalloc(num_params * sizeof(float));
    model_init_params(config, table, num_tensors, params, 42);
    free(table);
    return params;
}

#define USAGE "bench_train --config FILE --batch-size B --seq-len T [--steps N] [--recompute 1|2] [--profile]"

int main(int argc, char **argv) {
    const char *config_path = NULL;
    int B = 8, T = 4096, steps = 5, profile = 0, recompute = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--profile") == 0) { profile = 1; continue; }
        if (i + 1 >= argc) die("%s: missing value", argv[i]);
        if (strcmp(argv[i], "--config") == 0) config_path = argv[++i];
        else if (strcmp(argv[i], "--batch-size") == 0) B = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seq-len") == 0) T = atoi(argv[++i]);
        else if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--recompute") == 0) recompute = atoi(argv[++i]);
        else die("%s: unknown flag (usage: %s)", argv[i], USAGE);
    }
    if (config_path == NULL || B <= 0 || T <= 0 || steps <= 0 || (recompute != 1 && recompute != 2))
        die("usage: %s", USAGE);
    char err[512];
    MdnConfig config;
    if (config_load(&config, config_path, err, sizeof err) != 0) die("%s", err);
    const cudaDeviceProp *props = cuda_device_props();
    cudaStream_t stream;
    cudaCheck(cudaStreamCreate(&stream));
    size_t free0, total;
    cudaCheck(cudaMemGetInfo(&free0, &total));
    GpuModel *m = gpu_model_build(&config, B, T, 1, recompute, stream);
    gpu_model_alloc_optimizer(m, 0, 0, 1);
    float *params = random_params(&config);
    gpu_model_set_params(m, params);
    free(params);
    size_t BT = (size_t)B * T;
    int *inputs = (int *)xmalloc(BT * sizeof(int)), *targets = (int *)xmalloc(BT * sizeof(int));
    for (size_t i = 0; i < BT; i++) {
        inputs[i] = (int)(uniform01() * config.vocab_size);
        targets[i] = (int)(uniform01() * config.vocab_size);
    }
    cudaEvent_t t0, t1;
    cudaCheck(cudaEventCreate(&t0));
    cudaCheck(cudaEventCreate(&t1));
    double flops_per_token = gpu_model_flops_per_token(&config);
    double peak = (strstr(props->name, "H100") || strstr(props->name, "H200")) ? 989e12 : 0.0;
    float *times = (float *)xmalloc((size_t)(steps + 1) * sizeof(float));
    float loss = 0.0f;
    for (int s = 0; s <= steps; s++) {   // step 0: warm-up (plans, first-touch)
        m->profile = profile && s == steps;
        gpu_model_profile_start(m);
        cudaCheck(cudaEventRecord(t0, stream));
        gpu_model_zero_grad(m);
        loss = gpu_model_forward_backward(m, inputs, targets, B, 1.0f);
        double norm = sqrt(gpu_model_grad_sum_squares(m));
        gpu_model_adamw(m, 1e-4f, 0.9f, 0.95f, 1e-15f, 0.1f, (float)(norm > 1.0 ? 1.0 / norm : 1.0), s + 1);
        cudaCheck(cudaEventRecord(t1, stream));
        cudaCheck(cudaEventSynchronize(t1));
        cudaCheck(cudaEventElapsedTime(&times[s], t0, t1));
    }
    // median of the timed steps
    int n = steps;
    float *sorted = times + 1;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (sorted[j] < sorted[i]) { float x = sorted[i]; sorted[i] = sorted[j]; sorted[j] = x; }
    float ms = sorted[n / 2];
    size_t free1;
    cudaCheck(cudaMemGetInfo(&free1, &total));
    double gib = 1024.0 * 1024.0 * 1024.0;
    size_t model_bytes = m->layout_numel * (4 * 4 + 2) + m->acts_bytes;   // params, grads, m, v (fp32), bf16 copy, acts
    double tok_s = BT / (ms / 1000.0);
    printf("%s | %s | B %d T %d | %d layers D %d | params %zu\n", config_path, props->name, B, T,
           config.num_hidden_layers, config.hidden_size, m->num_params);
    printf("step %.1f ms (median of %d) | %.0f tok/s | FLOPs/token %.4g | MFU %.1f%% of %.0f TFLOP/s | loss %.4f\n", ms,
           n, tok_s, flops_per_token, peak > 0 ? 100.0 * flops_per_token * tok_s / peak : -1.0, peak / 1e12, loss);
    printf("memory: model+optimizer+activations %.2f GiB (activations %.2f GiB); device in use %.2f GiB "
           "(%.2f GiB before the model: context)\n",
           model_bytes / gib, m->acts_bytes / gib, (total - free1) / gib, (total - free0) / gib);
    if (profile) {
        // aggregate the stages of the last step by label, in order of first appearance
        const char *labels[64];
        double sums[64];
        int counts[64], num = 0;
        double total_ms = 0.0;
        for (int i = 1; i < m->num_marks; i++) {
            float dt;
            cudaCheck(cudaEventElapsedTime(&dt, m->marks[i - 1], m->marks[i]));
            int k = 0;
            while (k < num && strcmp(labels[k], m->mark_labels[i]) != 0) k++;
            if (k == num && num < 64) { labels[num] = m->mark_labels[i]; sums[num] = 0; counts[num] = 0; num++; }
            if (k < 64) { sums[k] += dt; counts[k]++; }
            total_ms += dt;
        }
        printf("%-52s %9s %6s %6s\n", "stage (one step)", "ms", "%", "calls");
        for (int k = 0; k < num; k++)
            printf("%-52s %9.3f %6.1f %6d\n", labels[k], sums[k], 100.0 * sums[k] / total_ms, counts[k]);
        printf("%-52s %9.3f\n", "total between marks (step with events)", total_ms);
    }
    free(times);
    free(inputs);
    free(targets);
    gpu_model_free(m);
    linear_cuda_free();
    cudaCheck(cudaStreamDestroy(stream));
    return 0;
}
