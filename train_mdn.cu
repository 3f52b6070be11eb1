// train_mdn: the GPU trainer, one binary for 1..N GPUs: `./train_mdn ...` on one GPU, or
// `mpirun -np N ./train_mdn ...` with one process per GPU (NCCL, bootstrapped over MPI:
// common/collectives.h). Same flags (common/cli.h), data, log.jsonl and checkpoints
// (common/checkpoint.h) as train_mdn_cpu: a checkpoint written by either, on any number of ranks,
// resumes on the other, on any number of ranks (float32 params, AdamW m and v in the CPU model's
// flat order, counters, data position, sample RNG).
//
// One step: for each micro-batch, this rank's rows of the dataloader → forward through the blocks →
// fused classifier (loss and dlogits over token blocks) → backward through the blocks, gradients
// accumulated in float32 with the loss scaled by 1/(grad_accum · world_size), so that the sum over
// micro-steps and ranks is the gradient of the step's mean loss and N GPUs with batch B run the same
// schedule as one GPU with batch N·B → ZeRO-1: reduce-scatter of the gradients (each rank gets the
// sum of its slice), global norm from the slices' sums of squares (every rank takes the same
// skip/clip decision), clip factor and AdamW on the rank's slice of the float32 masters with its
// slice of m and v, allgather of the masters, the bf16 copy refreshed locally → log, validate,
// sample, checkpoint (rank 0). bf16 activations and matmul operands (--dtype f32: float32
// throughout); float32 masters, gradients, moments, gates, residual stream and MDN states.
// All kernels and collectives run on the one stream comm_nccl_init creates, so each collective
// follows the kernels before it in stream order.
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

extern "C" {   // C headers without their own guards
#include "common/checkpoint.h"
#include "common/cli.h"
#include "common/collectives.h"
#include "common/sample.h"
#include "common/schedule.h"
#include "dataloader/dataloader.h"
}
#include "common/config.h"
#include "common/cuda_common.cuh"
#include "common/utils.h"
#include "layers/linear.cuh"
#include "layers/model.h"
#include "layers/model_cuda.cuh"

// SIGINT/SIGTERM: finish the current step, write a checkpoint, exit 0 (as train_mdn_cpu)
static volatile sig_atomic_t stop_signal = 0;
static void on_stop_signal(int signum) { stop_signal = signum; }

// dense bf16 peak of the GPU (MFU's denominator), 0 if unknown
static double peak_flops(const char *device_name) {
    if (strstr(device_name, "H100") != NULL || strstr(device_name, "H200") != NULL) return 989e12;   // SXM, dense
    if (strstr(device_name, "A100") != NULL) return 312e12;
    return 0.0;
}

// the initial float32 parameters in the CPU layout: the HF directory of --init-from, or a fresh
// init; NULL with err on a bad --init-from
static float *initial_params(const MdnConfig *config, const TrainArgs *args, char *err, size_t errlen) {
    if (args->init_from[0] == '\0') {
        ParamTensor *table;
        size_t num_params;
        const int num_tensors = model_param_table(config, &table, &num_params);
        float *params = (float *)xmalloc(num_params * sizeof(float));
        model_init_params(config, table, num_tensors, params, (uint64_t)args->seed);
        free(table);
        return params;
    }
    Model *cpu = model_load_hf(args->init_from, 1, 1, err, errlen);
    if (cpu == NULL) return NULL;
    if (cpu->num_params != (size_t)config_num_params(config)) {
        set_error(err, errlen, "--init-from %s: the model does not match --config", args->init_from);
        model_free(cpu);
        return NULL;
    }
    float *params = (float *)xmalloc(cpu->num_params * sizeof(float));
    memcpy(params, cpu->params, cpu->num_params * sizeof(float));
    model_free(cpu);
    return params;
}

// bytes of a host buffer from rank 0 to every rank, staged through `device_scratch` (NCCL moves
// device memory only)
static void broadcast_host(Comm *comm, void *host, size_t bytes, void *device_scratch) {
    cudaCheck(cudaMemcpy(device_scratch, host, bytes, cudaMemcpyHostToDevice));
    comm_broadcast(comm, device_scratch, bytes, 0);
    cudaCheck(cudaMemcpy(host, device_scratch, bytes, cudaMemcpyDeviceToHost));
}

// mean loss over --val-batches micro-batches of every rank, from the start of the validation data
static double validate(GpuModel *gm, DataLoader *val, int val_batches, int32_t *inputs, int32_t *targets, Comm *comm) {
    char err[512];
    dataloader_reset(val);
    double sum = 0.0;
    for (int i = 0; i < val_batches; i++) {
        if (dataloader_next_batch(val, inputs, targets, err, sizeof err) != 0) die("%s", err);
        sum += gpu_model_forward_backward(gm, inputs, targets, val->B, 0.0f);
    }
    comm_allreduce_sum_host(comm, &sum, 1);
    return sum / ((double)val_batches * comm->world_size);
}

// The counters of a run that the checkpoint holds besides the vectors
typedef struct {
    int64_t num_updates, nan_total, nan_in_row;
    uint64_t sample_rng;
} RunCounters;

// m and v are gathered (through the gradient buffer, free between steps) so that rank 0 writes the
// same file as one process would: a run resumes on any number of GPUs, or on train_mdn_cpu
static void save_checkpoint(Comm *comm, const TrainArgs *args, GpuModel *gm, const MdnConfig *config, int64_t step,
                            const RunCounters *counters, const DataLoader *train) {
    int rank0 = comm->rank == 0;
    TrainState st;
    memset(&st, 0, sizeof st);
    if (rank0) {
        st.params = (real *)xmalloc(gm->num_params * sizeof(float));
        st.adam_m = (real *)xmalloc(gm->num_params * sizeof(float));
        st.adam_v = (real *)xmalloc(gm->num_params * sizeof(float));
    }
    comm_allgather(comm, gm->adam_m, gm->grads, gm->shard, COMM_F32);
    if (rank0) gpu_model_download(gm, gm->grads, st.adam_m);
    comm_allgather(comm, gm->adam_v, gm->grads, gm->shard, COMM_F32);
    if (rank0) gpu_model_download(gm, gm->grads, st.adam_v);
    char err[512] = "";
    int failed = 0;
    if (rank0) {
        gpu_model_get_vector(gm, 0, st.params);
        st.step = step;
        st.num_updates = counters->num_updates;
        st.nan_steps_total = counters->nan_total;
        st.nan_steps_in_row = counters->nan_in_row;
        st.data_position = dataloader_get_position(train);
        st.sample_rng = counters->sample_rng;
        st.world_size = comm->world_size;
        st.config_json = config_to_json(config);
        st.flags_json = cli_to_json(args);
        st.num_params = gm->num_params;
        char *path = checkpoint_path(args->out, step);
        failed = checkpoint_save(path, &st, err, sizeof err) != 0;
        if (!failed) {
            checkpoint_prune(args->out, args->keep_latest_k);
            printf("checkpoint: %s\n", path);
        }
        free(path);
        checkpoint_state_free(&st);
    }
    comm_exit_if_any_failed(comm, failed, err);
}

// The latest checkpoint in --out, read by rank 0 and broadcast: params, then m and v whole through
// the gradient buffer (each rank keeps its slice). Returns the step to start from (0: none found).
static int64_t resume(Comm *comm, const TrainArgs *args, GpuModel *gm, const MdnConfig *config, RunCounters *counters,
                      DataLoader *train, const char *log_path) {
    int rank0 = comm->rank == 0;
    TrainState st;
    memset(&st, 0, sizeof st);
    char path[1024] = "", err[1024] = "";
    int found = rank0 && checkpoint_load_latest(args->out, &st, path, sizeof path);
    int bad = 0;
    if (found) {
        char *config_json = config_to_json(config);
        if (strcmp(config_json, st.config_json) != 0) {
            set_error(err, sizeof err, "%s: checkpoint of another model config than %s", path, args->config);
            bad = 1;
        } else if (st.num_params != gm->num_params) {
            set_error(err, sizeof err, "%s: %zu parameters, the model has %zu", path, st.num_params, gm->num_params);
            bad = 1;
        }
        free(config_json);
    }
    comm_exit_if_any_failed(comm, bad, err);
    if (!comm_any(comm, found)) {
        if (rank0) printf("no checkpoint in %s: starting from step 0\n", args->out);
        return 0;
    }
    int64_t scalars[9] = {st.step, st.num_updates, st.nan_steps_total, st.nan_steps_in_row,
                          st.data_position.shard_index, st.data_position.row_index, st.data_position.epoch,
                          (int64_t)st.data_position.rng_state, (int64_t)st.sample_rng};
    broadcast_host(comm, scalars, sizeof scalars, gm->grads);
    size_t bytes = gm->layout_numel * sizeof(float);   // the whole GPU layout, its zero gaps included
    if (rank0) gpu_model_upload(gm, gm->params, st.params);
    comm_broadcast(comm, gm->params, bytes, 0);
    gpu_model_refresh_copy(gm);
    if (rank0) gpu_model_upload(gm, gm->grads, st.adam_m);
    comm_broadcast(comm, gm->grads, bytes, 0);
    gpu_model_set_moment_slice(gm, 2, gm->grads);
    if (rank0) gpu_model_upload(gm, gm->grads, st.adam_v);
    comm_broadcast(comm, gm->grads, bytes, 0);
    gpu_model_set_moment_slice(gm, 3, gm->grads);
    cudaCheck(cudaStreamSynchronize(gm->stream));
    counters->num_updates = scalars[1];
    counters->nan_total = scalars[2];
    counters->nan_in_row = scalars[3];
    counters->sample_rng = (uint64_t)scalars[8];
    DataLoaderPosition position = {scalars[4], scalars[5], scalars[6], (uint64_t)scalars[7]};
    comm_exit_if_any_failed(comm, dataloader_set_position(train, position, err, sizeof err) != 0, err);
    if (rank0) {
        printf("resumed from %s at step %lld (written by %d rank%s)\n", path, (long long)scalars[0], st.world_size,
               st.world_size == 1 ? "" : "s");
        checkpoint_truncate_log(log_path, scalars[0]);
        checkpoint_state_free(&st);
    }
    return scalars[0];
}

int main(int argc, char **argv) {
    const double launch_time = wall_seconds();
    setvbuf(stdout, NULL, _IOLBF, 0);   // progress lines reach a pipe (tee, a log file) as they happen
    Comm comm;
    comm_init(&comm, &argc, &argv);
    const int rank0 = comm.rank == 0;
    TrainArgs args;
    char err[1024] = "";
    int parsed = cli_parse(&args, argc, argv, err, sizeof err);
    if (parsed == 1) { comm_finalize(&comm); return 0; }   // --help
    comm_exit_if_any_failed(&comm, parsed != 0, err);
    MdnConfig config;
    comm_exit_if_any_failed(&comm, config_load(&config, args.config, err, sizeof err) != 0, err);
    if (args.dry_run) {
        if (rank0) config_print_summary(&config, stdout);
        comm_finalize(&comm);
        return 0;
    }
    // one GPU per process; from here on the collectives take device buffers
    comm_nccl_init(&comm, 0.0);
    cudaStream_t stream = (cudaStream_t)comm.stream;
    const cudaDeviceProp *props = cuda_device_props();
    const int B = args.batch_size, T = args.seq_len, accum = args.grad_accum, world = comm.world_size;
    const size_t tokens_per_step = (size_t)B * T * accum * world;
    if (rank0) {
        cli_print_settings(&args, stdout);
        printf("ranks: %d (%s), tokens per optimizer step: %zu (%d rows x %d tokens x %d micro-steps x %d ranks)\n",
               world, comm_backend_name(&comm), tokens_per_step, B, T, accum, world);
        printf("device: %s, %d SMs, %.1f GiB\n", props->name, props->multiProcessorCount,
               props->totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    }

    // output directory (rank 0 makes it, everyone follows)
    char log_path[1024] = "";
    int out_failed = 0;
    if (rank0 && args.out[0] != '\0') {
        snprintf(log_path, sizeof log_path, "%s/log.jsonl", args.out);
        out_failed = make_directories(args.out, err, sizeof err) != 0;
    }
    comm_exit_if_any_failed(&comm, out_failed, err);

    // data: rank r reads every world-th row window (dataloader.h), every rank checks every shard
    DataLoader train, val;
    int have_val = args.val_data[0] != '\0' && args.val_interval > 0;
    int data_failed = dataloader_init(&train, args.train_data, B, T, comm.rank, world, args.shuffle, (uint64_t)args.seed,
                                      config.vocab_size, err, sizeof err) != 0;
    if (!data_failed && have_val)
        data_failed = dataloader_init(&val, args.val_data, B, T, comm.rank, world, 0, (uint64_t)args.seed,
                                      config.vocab_size, err, sizeof err) != 0;
    comm_exit_if_any_failed(&comm, data_failed, err);

    GpuModel *gm = gpu_model_build(&config, B, T, strcmp(args.dtype, "bf16") == 0, args.recompute, stream);
    gpu_model_alloc_optimizer(gm, args.no_decay_set, comm.rank, world);
    if (rank0)
        printf("params: %zu (this rank updates [%zu, %zu)), %s activations %.2f GiB\n", gm->num_params, gm->shard_begin,
               gm->shard_end, args.dtype, gm->acts_bytes / (1024.0 * 1024.0 * 1024.0));

    // the starting point: the latest checkpoint in --out (--resume), else --init-from or a fresh
    // init, made on rank 0 and broadcast (one reader; every rank starts from the same bits)
    RunCounters counters = {0, 0, 0, sample_rng_init(args.seed)};
    const double params_time = wall_seconds();
    int64_t start_step = args.resume ? resume(&comm, &args, gm, &config, &counters, &train, log_path) : 0;
    if (start_step == 0) {
        float *params = rank0 ? initial_params(&config, &args, err, sizeof err) : NULL;
        comm_exit_if_any_failed(&comm, rank0 && params == NULL, err);
        if (rank0) gpu_model_upload(gm, gm->params, params);
        comm_broadcast(&comm, gm->params, gm->layout_numel * sizeof(float), 0);
        gpu_model_refresh_copy(gm);
        free(params);
    }

    const double params_ready_time = wall_seconds();   // checkpoint read (--resume) or init, and upload
    FILE *log = NULL;
    if (rank0 && args.out[0] != '\0') {
        log = fopen(log_path, start_step > 0 ? "ab" : "wb");
        if (log == NULL) die("%s: cannot open for writing (%s)", log_path, strerror(errno));
    }
    // Samples: rank 0 copies the float32 masters into a CPU model and runs train_mdn_cpu's sampler
    // (common/sample.h), the recurrent one-token step of the CPU reference carrying the conv and S/M
    // states, so both trainers sample with the same function. Measured 5.6 s for 32 tokens of the 400M
    // model (H100 host, 16 cores; the copy of the masters included), every --sample-interval steps:
    // off the hot path.
    Model *sample_model = NULL;
    Tokenizer tokenizer_storage, *tokenizer = NULL;
    if (rank0 && args.sample_interval > 0) {
        sample_model = model_build(&config, 1, 1);
        if (tokenizer_init(&tokenizer_storage, "dataloader/gpt2", err, sizeof err) == 0) tokenizer = &tokenizer_storage;
        else fprintf(stderr, "warning: %s; samples will print token ids\n", err);
    }
    if (rank0 && start_step >= args.steps)
        printf("nothing to train: the run is already at step %lld of --steps %lld\n", (long long)start_step,
               (long long)args.steps);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);

    int32_t *inputs = (int32_t *)xmalloc((size_t)B * T * sizeof(int32_t));
    int32_t *targets = (int32_t *)xmalloc((size_t)B * T * sizeof(int32_t));
    double flops_per_token = gpu_model_flops_per_token(&config), peak = peak_flops(props->name);
    if (rank0)
        printf("model FLOPs per token (6·N_nonembedding + op): %.4g; MFU against %.0f TFLOP/s per GPU\n",
               flops_per_token, peak / 1e12);
    const float loss_scale = (float)(1.0 / ((double)accum * world));
    float *my_slice = gm->params + (size_t)comm.rank * gm->shard;
    cudaEvent_t t0, t1;
    cudaCheck(cudaEventCreate(&t0));
    cudaCheck(cudaEventCreate(&t1));
    double ema_tokens_per_s = 0.0;
    if (rank0)
        printf("start-up: %.1f s from launch (%s %.1f s)\n", wall_seconds() - launch_time,
               start_step > 0 ? "checkpoint read and upload" : "parameter init and upload", params_ready_time - params_time);
    for (int64_t step = start_step; step < args.steps; step++) {
        cudaCheck(cudaEventRecord(t0, stream));
        gpu_model_zero_grad(gm);
        double sums[2] = {0.0, 0.0};   // loss, squared gradient norm
        for (int micro = 0; micro < accum; micro++) {
            if (dataloader_next_batch(&train, inputs, targets, err, sizeof err) != 0) die("%s", err);
            sums[0] += gpu_model_forward_backward(gm, inputs, targets, B, loss_scale);
        }
        // ZeRO-1: each rank gets the sum over ranks of its slice, in place
        comm_reduce_scatter_sum(&comm, gm->grads, gm->grads + (size_t)comm.rank * gm->shard, gm->shard, COMM_F32);
        sums[1] = gpu_model_grad_sum_squares(gm);
        comm_allreduce_sum_host(&comm, sums, 2);
        double loss = sums[0] / ((double)accum * world), grad_norm = sqrt(sums[1]);
        double lr = lr_at_step(step, args.lr, args.warmup_steps, args.steps, args.min_lr_ratio);
        int skipped = !isfinite(grad_norm);
        if (skipped) {
            // moments and weights untouched, the schedule and the data move on (mdn-spec.md §9)
            counters.nan_total++;
            counters.nan_in_row++;
        } else {
            counters.nan_in_row = 0;
            counters.num_updates++;
            double scale = args.max_norm / (grad_norm + 1e-6);
            gpu_model_adamw(gm, (float)lr, (float)args.beta1, (float)args.beta2, (float)args.eps,
                            (float)args.weight_decay, (float)(scale < 1.0 ? scale : 1.0), counters.num_updates);
            if (world > 1) {
                comm_allgather(&comm, my_slice, gm->params, gm->shard, COMM_F32);
                gpu_model_refresh_copy(gm);
            }
        }
        cudaCheck(cudaEventRecord(t1, stream));
        cudaCheck(cudaEventSynchronize(t1));
        float ms;
        cudaCheck(cudaEventElapsedTime(&ms, t0, t1));
        double tokens_per_s = tokens_per_step / (ms / 1000.0);
        // bias-corrected moving average; the first step (plans, warm-up) left out
        if (step > start_step) ema_tokens_per_s = ema_tokens_per_s == 0.0 ? tokens_per_s : 0.9 * ema_tokens_per_s + 0.1 * tokens_per_s;
        double shown = ema_tokens_per_s > 0.0 ? ema_tokens_per_s : tokens_per_s;
        double mfu = peak > 0.0 ? flops_per_token * shown / (peak * world) : -1.0;
        double eta_s = (double)(args.steps - step - 1) * tokens_per_step / shown;
        if (rank0) {
            // the same fields as train_mdn_cpu's line, plus MFU
            printf("step %6lld/%lld | loss %.6f | lr %.3e | norm %.4f | %.1f ms | %.0f tok/s | %.1f%% MFU | ETA %dh%02dm%02ds%s\n",
                   (long long)step + 1, (long long)args.steps, loss, lr, grad_norm, ms, shown, 100.0 * mfu,
                   (int)(eta_s / 3600), (int)fmod(eta_s / 60, 60), (int)fmod(eta_s, 60), skipped ? " | SKIPPED (non-finite)" : "");
            fflush(stdout);
        }
        if (counters.nan_in_row >= args.max_nan_steps) {
            snprintf(err, sizeof err, "--max-nan-steps: %lld non-finite steps in a row; stopping (the last checkpoint "
                     "in %s is the last good state)", (long long)counters.nan_in_row, args.out[0] ? args.out : "(no --out)");
            comm_exit_if_any_failed(&comm, 1, err);
        }
        double val_loss = NAN;
        int last = step + 1 == args.steps;
        if (have_val && ((step + 1) % args.val_interval == 0 || last)) {
            val_loss = validate(gm, &val, args.val_batches, inputs, targets, &comm);
            if (rank0) printf("step %5lld | val loss %.6f\n", (long long)step + 1, val_loss);
        }
        if (log != NULL) {
            // the same fields and formats as train_mdn_cpu (%.9g: a float's exact value)
            if (isfinite(loss)) fprintf(log, "{\"step\":%lld,\"loss\":%.9g", (long long)step + 1, loss);
            else fprintf(log, "{\"step\":%lld,\"loss\":null", (long long)step + 1);
            fprintf(log, ",\"lr\":%.9g,\"grad_norm\":%.9g,\"tokens_per_s\":%.1f,\"mfu\":%.5f", lr,
                    isfinite(grad_norm) ? grad_norm : -1.0, shown, mfu);
            if (skipped) fprintf(log, ",\"skipped\":true");
            if (!isnan(val_loss)) fprintf(log, ",\"val_loss\":%.9g", val_loss);
            fprintf(log, "}\n");
            fflush(log);
        }
        if (sample_model != NULL && (step + 1) % args.sample_interval == 0) {
            double started = wall_seconds();
            gpu_model_get_vector(gm, 0, sample_model->params);
            sample_print(sample_model, tokenizer, args.sample_tokens, &counters.sample_rng, stdout);
            printf("(sampled on the CPU in %.1f s)\n", wall_seconds() - started);
            fflush(stdout);
        }
        int stopping = comm_any(&comm, stop_signal != 0);
        if (args.out[0] != '\0' &&
            (last || stopping || (args.checkpoint_interval > 0 && (step + 1) % args.checkpoint_interval == 0)))
            save_checkpoint(&comm, &args, gm, &config, step + 1, &counters, &train);
        if (stopping) {
            if (rank0)
                printf("stopped by %s after step %lld%s\n", stop_signal == SIGINT ? "SIGINT" : "SIGTERM", (long long)step + 1,
                       args.out[0] ? "; checkpoint written, continue with --resume" : " (no --out: nothing saved)");
            break;
        }
    }
    if (rank0 && args.export_hf[0] != '\0') {
        Model *cpu = model_build(&config, 1, 1);
        gpu_model_get_vector(gm, 0, cpu->params);
        if (model_save_hf(cpu, args.export_hf, err, sizeof err) != 0) die("%s", err);
        printf("exported %s (config.json + model.safetensors)\n", args.export_hf);
        model_free(cpu);
    }
    size_t free_bytes, total_bytes;
    cudaCheck(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (rank0) printf("device memory in use: %.2f GiB\n", (total_bytes - free_bytes) / (1024.0 * 1024.0 * 1024.0));
    if (log != NULL && fclose(log) != 0) die("%s: write failed (%s)", log_path, strerror(errno));
    free(inputs);
    free(targets);
    if (sample_model != NULL) model_free(sample_model);
    if (tokenizer != NULL) tokenizer_free(tokenizer);
    dataloader_free(&train);
    if (have_val) dataloader_free(&val);
    cudaCheck(cudaEventDestroy(t0));
    cudaCheck(cudaEventDestroy(t1));
    gpu_model_free(gm);
    linear_cuda_free();
    comm_finalize(&comm);
    return 0;
}
