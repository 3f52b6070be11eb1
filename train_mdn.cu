// train_mdn: the GPU trainer (one GPU for now). Same flags (common/cli.h), data, log.jsonl and
// checkpoints (common/checkpoint.h) as train_mdn_cpu: a checkpoint written by one resumes on the other
// (float32 params, AdamW m and v in the CPU model's flat order, counters, data position).
//
// One step: for each micro-batch, the dataloader's (inputs, targets) → forward through the blocks →
// fused classifier (loss and dlogits over token blocks) → backward through the blocks, gradients
// accumulated in float32; then the global gradient norm (skip the update if it is not finite) →
// clip factor and AdamW in one kernel, which also writes the bf16 weights → log, validate,
// checkpoint. bf16 activations and matmul operands; float32 masters, gradients, moments, gates,
// residual stream and MDN states.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

extern "C" {   // C headers without their own guards
#include "common/checkpoint.h"
#include "common/cli.h"
#include "common/schedule.h"
#include "dataloader/dataloader.h"
}
#include "common/config.h"
#include "common/cuda_common.cuh"
#include "common/utils.h"
#include "layers/linear.cuh"
#include "layers/model.h"
#include "layers/model_cuda.cuh"

// dense bf16 peak of the GPU (MFU's denominator), 0 if unknown
static double peak_flops(const char *device_name) {
    if (strstr(device_name, "H100") != NULL || strstr(device_name, "H200") != NULL) return 989e12;   // SXM, dense
    if (strstr(device_name, "A100") != NULL) return 312e12;
    return 0.0;
}

// the initial float32 parameters in the CPU layout: the HF directory of --init-from, or a fresh init
static float *initial_params(const MdnConfig *config, const TrainArgs *args) {
    char err[512];
    Model *cpu;
    if (args->init_from != NULL && args->init_from[0] != '\0') {
        cpu = model_load_hf(args->init_from, 1, 1, err, sizeof err);
        if (cpu == NULL) die("%s", err);
        if (cpu->num_params != (size_t)config_num_params(config))
            die("--init-from %s: the model does not match --config", args->init_from);
    } else {
        cpu = model_build(config, 1, 1);
        model_init_weights(cpu, (uint64_t)args->seed);
    }
    float *params = (float *)xmalloc(cpu->num_params * sizeof(float));
    memcpy(params, cpu->params, cpu->num_params * sizeof(float));
    model_free(cpu);
    return params;
}

// mean loss over val_batches micro-batches of the validation data (from its start)
static double validate(GpuModel *gm, DataLoader *val, int val_batches, int32_t *inputs, int32_t *targets) {
    char err[512];
    dataloader_reset(val);
    double sum = 0.0;
    for (int i = 0; i < val_batches; i++) {
        if (dataloader_next_batch(val, inputs, targets, err, sizeof err) != 0) die("%s", err);
        sum += gpu_model_forward_backward(gm, inputs, targets, val->B, 0.0f);
    }
    return sum / val_batches;
}

// keep the lines of log.jsonl with "step" <= last_step (a resumed run rewrites what follows), as train_mdn_cpu
static void truncate_log(const char *path, int64_t last_step) {
    size_t size;
    char err[512];
    char *text = read_file(path, &size, err, sizeof err);
    if (text == NULL) return;
    FILE *f = fopen(path, "wb");
    if (f == NULL) die("%s: cannot rewrite (%s)", path, strerror(errno));
    for (char *line = text; *line;) {
        char *newline = strchr(line, '\n');
        size_t len = newline ? (size_t)(newline - line) + 1 : strlen(line);
        long long step;
        if (sscanf(line, "{\"step\":%lld", &step) == 1 && step <= last_step) fwrite(line, 1, len, f);
        line += len;
    }
    if (fclose(f) != 0) die("%s: write failed (%s)", path, strerror(errno));
    free(text);
}

static void save_checkpoint(const TrainArgs *args, GpuModel *gm, const MdnConfig *config, int64_t step,
                            int64_t num_updates, int64_t nan_total, int64_t nan_in_row, uint64_t sample_rng,
                            const DataLoader *train) {
    TrainState st;
    memset(&st, 0, sizeof st);
    st.step = step;
    st.num_updates = num_updates;
    st.nan_steps_total = nan_total;
    st.nan_steps_in_row = nan_in_row;
    st.data_position = dataloader_get_position(train);
    st.sample_rng = sample_rng;
    st.world_size = 1;
    st.config_json = config_to_json(config);
    st.flags_json = cli_to_json(args);
    st.num_params = gm->num_params;
    st.params = (real *)xmalloc(gm->num_params * sizeof(float));
    st.adam_m = (real *)xmalloc(gm->num_params * sizeof(float));
    st.adam_v = (real *)xmalloc(gm->num_params * sizeof(float));
    gpu_model_get_vector(gm, 0, st.params);
    gpu_model_get_vector(gm, 2, st.adam_m);
    gpu_model_get_vector(gm, 3, st.adam_v);
    char *path = checkpoint_path(args->out, step);
    char err[512];
    if (checkpoint_save(path, &st, err, sizeof err) != 0) die("%s", err);
    printf("checkpoint %s\n", path);
    checkpoint_prune(args->out, args->keep_latest_k);
    free(path);
    checkpoint_state_free(&st);
}

int main(int argc, char **argv) {
    TrainArgs args;
    char err[512];
    int rc = cli_parse(&args, argc, argv, err, sizeof err);
    if (rc == 1) return 0;
    if (rc != 0) die("%s", err);
    MdnConfig config;
    if (config_load(&config, args.config, err, sizeof err) != 0) die("%s", err);
    if (args.dry_run) {
        config_print_summary(&config, stdout);
        return 0;
    }
    if (args.reset_state_at_eot) die("--reset-state-at-eot: not implemented");
    int num_devices = 0;
    if (cudaGetDeviceCount(&num_devices) != cudaSuccess || num_devices == 0) die("train_mdn: no CUDA device found");
    cudaCheck(cudaSetDevice(0));
    const cudaDeviceProp *props = cuda_device_props();
    cli_print_settings(&args, stdout);
    printf("device: %s, %d SMs, %.1f GiB\n", props->name, props->multiProcessorCount,
           props->totalGlobalMem / (1024.0 * 1024.0 * 1024.0));

    int B = args.batch_size, T = args.seq_len;
    cudaStream_t stream;
    cudaCheck(cudaStreamCreate(&stream));
    GpuModel *gm = gpu_model_build(&config, B, T, 1, stream);
    gpu_model_alloc_optimizer(gm, args.no_decay_set);
    printf("params: %zu, activations %.2f GiB\n", gm->num_params, gm->acts_bytes / (1024.0 * 1024.0 * 1024.0));

    // the starting point: the latest checkpoint in --out (--resume), else --init-from or a fresh init
    int64_t start_step = 0, num_updates = 0, nan_total = 0, nan_in_row = 0;
    uint64_t sample_rng = (uint64_t)args.seed;   // kept for train_mdn_cpu (the GPU trainer prints no samples yet)
    int resumed = 0;
    TrainState st;
    char ckpt_path[1024];
    if (args.resume && args.out[0] != '\0' && checkpoint_load_latest(args.out, &st, ckpt_path, sizeof ckpt_path)) {
        char *cfg_json = config_to_json(&config);
        if (strcmp(cfg_json, st.config_json) != 0) die("%s: written for another model config than --config", ckpt_path);
        free(cfg_json);
        if (st.num_params != gm->num_params) die("%s: %zu params, the model has %zu", ckpt_path, st.num_params, gm->num_params);
        gpu_model_set_params(gm, st.params);
        gpu_model_set_optimizer(gm, st.adam_m, st.adam_v);
        start_step = st.step;
        num_updates = st.num_updates;
        nan_total = st.nan_steps_total;
        nan_in_row = st.nan_steps_in_row;
        sample_rng = st.sample_rng;
        resumed = 1;
        printf("resumed from %s at step %lld\n", ckpt_path, (long long)start_step);
    } else {
        float *params = initial_params(&config, &args);
        gpu_model_set_params(gm, params);
        free(params);
    }

    DataLoader train, val;
    if (dataloader_init(&train, args.train_data, B, T, 0, 1, args.shuffle, (uint64_t)args.seed, config.vocab_size, err,
                        sizeof err) != 0)
        die("%s", err);
    if (resumed) {
        if (dataloader_set_position(&train, st.data_position, err, sizeof err) != 0) die("%s", err);
        checkpoint_state_free(&st);
    }
    int have_val = args.val_data[0] != '\0' && args.val_interval > 0;
    if (have_val && dataloader_init(&val, args.val_data, B, T, 0, 1, 0, 0, config.vocab_size, err, sizeof err) != 0)
        die("%s", err);

    FILE *log = NULL;
    if (args.out[0] != '\0') {
        if (mkdir(args.out, 0755) != 0 && errno != EEXIST) die("--out %s: cannot create the directory", args.out);
        char path[1024];
        snprintf(path, sizeof path, "%s/log.jsonl", args.out);
        if (resumed) truncate_log(path, start_step);
        log = fopen(path, "a");
        if (log == NULL) die("%s: cannot open for appending", path);
    }

    int32_t *inputs = (int32_t *)xmalloc((size_t)B * T * sizeof(int32_t));
    int32_t *targets = (int32_t *)xmalloc((size_t)B * T * sizeof(int32_t));
    double flops_per_token = gpu_model_flops_per_token(&config), peak = peak_flops(props->name);
    size_t tokens_per_step = (size_t)B * T * args.grad_accum;
    printf("model FLOPs per token (6·N_nonembedding + op): %.4g; MFU against %.0f TFLOP/s\n", flops_per_token,
           peak / 1e12);
    cudaEvent_t t0, t1;
    cudaCheck(cudaEventCreate(&t0));
    cudaCheck(cudaEventCreate(&t1));
    double ema_tokens_per_s = 0.0;
    for (int64_t step = start_step; step < args.steps; step++) {
        cudaCheck(cudaEventRecord(t0, stream));
        gpu_model_zero_grad(gm);
        double loss = 0.0;
        for (int micro = 0; micro < args.grad_accum; micro++) {
            if (dataloader_next_batch(&train, inputs, targets, err, sizeof err) != 0) die("%s", err);
            loss += gpu_model_forward_backward(gm, inputs, targets, B, 1.0f / args.grad_accum) / args.grad_accum;
        }
        double grad_norm = gpu_model_grad_norm(gm);
        double lr = lr_at_step(step, args.lr, args.warmup_steps, args.steps, args.min_lr_ratio);
        if (!isfinite(grad_norm)) {
            // skipped: moments and weights untouched, the schedule and the data move on (mdn-spec.md §9)
            nan_total++;
            nan_in_row++;
            printf("step %lld: gradient norm is not finite, update skipped (%lld in a row)\n", (long long)step + 1,
                   (long long)nan_in_row);
            if (nan_in_row >= args.max_nan_steps) die("train_mdn: %lld non-finite steps in a row", (long long)nan_in_row);
        } else {
            nan_in_row = 0;
            num_updates++;
            double scale = args.max_norm / (grad_norm + 1e-6);
            gpu_model_adamw(gm, (float)lr, (float)args.beta1, (float)args.beta2, (float)args.eps,
                            (float)args.weight_decay, (float)(scale < 1.0 ? scale : 1.0), num_updates);
        }
        cudaCheck(cudaEventRecord(t1, stream));
        cudaCheck(cudaEventSynchronize(t1));
        float ms;
        cudaCheck(cudaEventElapsedTime(&ms, t0, t1));
        double tokens_per_s = tokens_per_step / (ms / 1000.0);
        // bias-corrected moving average; the first step (plans, warm-up) left out
        if (step > start_step) ema_tokens_per_s = ema_tokens_per_s == 0.0 ? tokens_per_s : 0.9 * ema_tokens_per_s + 0.1 * tokens_per_s;
        double shown = ema_tokens_per_s > 0.0 ? ema_tokens_per_s : tokens_per_s;
        double mfu = peak > 0.0 ? flops_per_token * shown / peak : -1.0;
        printf("step %5lld/%lld | loss %.6f | norm %.4f | lr %.3e | %.1f ms | %.1f%% MFU | %.0f tok/s\n",
               (long long)step + 1, (long long)args.steps, loss, grad_norm, lr, ms, 100.0 * mfu, shown);
        double val_loss = NAN;
        int last = step + 1 == args.steps;
        if (have_val && ((step + 1) % args.val_interval == 0 || last)) {
            val_loss = validate(gm, &val, args.val_batches, inputs, targets);
            printf("step %5lld | val loss %.6f\n", (long long)step + 1, val_loss);
        }
        if (log != NULL) {
            // the same fields and formats as train_mdn_cpu (%.9g: a float's exact value)
            if (isfinite(loss)) fprintf(log, "{\"step\":%lld,\"loss\":%.9g", (long long)step + 1, loss);
            else fprintf(log, "{\"step\":%lld,\"loss\":null", (long long)step + 1);
            fprintf(log, ",\"lr\":%.9g,\"grad_norm\":%.9g,\"tokens_per_s\":%.1f,\"mfu\":%.5f", lr,
                    isfinite(grad_norm) ? grad_norm : -1.0, shown, mfu);
            if (!isfinite(grad_norm)) fprintf(log, ",\"skipped\":true");
            if (!isnan(val_loss)) fprintf(log, ",\"val_loss\":%.9g", val_loss);
            fprintf(log, "}\n");
            fflush(log);
        }
        if (args.out[0] != '\0' && (last || (args.checkpoint_interval > 0 && (step + 1) % args.checkpoint_interval == 0)))
            save_checkpoint(&args, gm, &config, step + 1, num_updates, nan_total, nan_in_row, sample_rng, &train);
    }
    if (args.export_hf != NULL && args.export_hf[0] != '\0') {
        Model *cpu = model_build(&config, 1, 1);
        gpu_model_get_vector(gm, 0, cpu->params);
        if (model_save_hf(cpu, args.export_hf, err, sizeof err) != 0) die("%s", err);
        printf("exported %s\n", args.export_hf);
        model_free(cpu);
    }
    size_t free_bytes, total_bytes;
    cudaCheck(cudaMemGetInfo(&free_bytes, &total_bytes));
    printf("device memory in use: %.2f GiB\n", (total_bytes - free_bytes) / (1024.0 * 1024.0 * 1024.0));
    if (log != NULL) fclose(log);
    free(inputs);
    free(targets);
    dataloader_free(&train);
    if (have_val) dataloader_free(&val);
    gpu_model_free(gm);
    linear_cuda_free();
    cudaCheck(cudaStreamDestroy(stream));
    return 0;
}
