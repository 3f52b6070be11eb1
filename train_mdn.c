// train_mdn.c: the CPU reference trainer for Momentum DeltaNet language models.
// The same flags and files as the GPU trainer (train_mdn.cu); small models, the ground truth for
// the tests, and the place to read one training step from top to bottom:
//   flags + config -> model -> data -> for each step: micro-steps (forward, backward of loss/accum)
//   -> gradient reduce-scatter over ranks -> global norm, clip -> AdamW on this rank's slice (ZeRO-1)
//   -> allgather of the parameters -> log, validate, sample, checkpoint.
// Precision: float32 throughout (the build's `real`); --dtype is the GPU trainer's flag, accepted
// here so that both take the same command lines, and ignored.
// Multi-process: `mpirun -np P ./train_mdn_cpu ...` (MPI back end of common/collectives.h). Rank r
// reads every P-th row window, so P ranks with batch B see the data of one process with batch P*B.
//
// Test hook: MDN_INJECT_NAN_AT="3,4,9" makes the gradient of those (1-based) optimizer steps
// non-finite on rank 0, to exercise the skip of non-finite steps and --max-nan-steps.
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/checkpoint.h"
#include "common/cli.h"
#include "common/collectives.h"
#include "common/config.h"
#include "common/json.h"
#include "common/sample.h"
#include "common/schedule.h"
#include "common/utils.h"
#include "dataloader/dataloader.h"
#include "dataloader/tokenizer.h"
#include "layers/adamw.h"
#include "layers/model.h"

// ----------------------------------------------------------------------------
// signals: SIGINT/SIGTERM finish the current step, write a checkpoint and exit 0

static volatile sig_atomic_t stop_signal = 0;

static void on_stop_signal(int signum) { stop_signal = signum; }

static void install_signal_handlers(void) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
}

// ----------------------------------------------------------------------------
// small helpers

// the steps listed in MDN_INJECT_NAN_AT ("3,4,9"); is `step` one of them?
static int nan_injected_at(int64_t step) {
    const char *list = getenv("MDN_INJECT_NAN_AT");
    if (list == NULL) return 0;
    for (const char *p = list; *p;) {
        char *end;
        long long s = strtoll(p, &end, 10);
        if (end == p) break;
        if (s == step) return 1;
        p = *end == ',' ? end + 1 : end;
    }
    return 0;
}

// the first key whose value differs between two config JSON texts (for the resume error)
static void describe_config_difference(const char *a_text, const char *b_text, char *out, size_t outlen) {
    char err[256];
    JsonValue *a = json_parse(a_text, strlen(a_text), err, sizeof(err));
    JsonValue *b = json_parse(b_text, strlen(b_text), err, sizeof(err));
    snprintf(out, outlen, "the configs differ");
    for (int i = 0; a && b && a->type == JSON_OBJECT && i < a->count; i++) {
        const JsonValue *x = &a->items[i], *y = json_get(b, a->keys[i]);
        int same = y != NULL && x->type == y->type &&
                   (x->type != JSON_NUMBER || x->number == y->number) &&
                   (x->type != JSON_BOOL || x->boolean == y->boolean) &&
                   (x->type != JSON_STRING || strcmp(x->string, y->string) == 0);
        if (!same) {
            snprintf(out, outlen, "\"%s\" differs", a->keys[i]);
            break;
        }
    }
    json_free(a);
    json_free(b);
}

// The data position counts rows of the token stream, so a resumed run may change how the global
// batch is split (ranks x batch-size x grad-accum); a different global batch or sequence length is
// allowed (e.g. to continue with other hardware) but no longer continues the same run: say so.
static void warn_if_batch_changed(const char *path, const TrainState *state, const TrainArgs *args, int world) {
    char err[256];
    JsonValue *flags = json_parse(state->flags_json, strlen(state->flags_json), err, sizeof(err));
    const JsonValue *B = json_get(flags, "batch-size"), *T = json_get(flags, "seq-len"), *accum = json_get(flags, "grad-accum");
    if (B && T && accum && B->type == JSON_NUMBER && T->type == JSON_NUMBER && accum->type == JSON_NUMBER) {
        double old_rows = B->number * accum->number * state->world_size;
        double new_rows = (double)args->batch_size * args->grad_accum * world;
        if (old_rows != new_rows || T->number != args->seq_len)
            fprintf(stderr, "warning: %s was written with %.0f rows of %.0f tokens per step, this run takes %.0f rows of %d: "
                            "the data continues, but the run is not the same as before\n", path, old_rows, T->number, new_rows,
                    args->seq_len);
    }
    json_free(flags);
}

// ----------------------------------------------------------------------------
// the training state that the ZeRO-1 update needs besides the model

typedef struct {
    size_t num_params;      // N
    size_t shard;           // ceil(N / world): elements per rank in the padded layout
    size_t begin, end;      // this rank's slice of the flat vector ([begin, end) may be empty)
    real *grads_padded;     // [shard * world] the local gradients, zero past N (reduce-scatter input)
    real *grad_slice;       // [shard] this rank's reduced slice
    real *params_padded;    // [shard * world] allgather buffer
    real *adam_m, *adam_v;  // [shard] this rank's moments
} Zero1;

static void zero1_init(Zero1 *z, size_t num_params, const Comm *comm) {
    z->num_params = num_params;
    z->shard = (num_params + (size_t)comm->world_size - 1) / (size_t)comm->world_size;
    size_t padded = z->shard * (size_t)comm->world_size;
    z->begin = (size_t)comm->rank * z->shard < num_params ? (size_t)comm->rank * z->shard : num_params;
    z->end = z->begin + z->shard < num_params ? z->begin + z->shard : num_params;
    z->grads_padded = (real *)xcalloc(padded, sizeof(real));
    z->params_padded = (real *)xcalloc(padded, sizeof(real));
    z->grad_slice = (real *)xcalloc(z->shard, sizeof(real));
    z->adam_m = (real *)xcalloc(z->shard, sizeof(real));
    z->adam_v = (real *)xcalloc(z->shard, sizeof(real));
}

static void zero1_free(Zero1 *z) {
    free(z->grads_padded);
    free(z->params_padded);
    free(z->grad_slice);
    free(z->adam_m);
    free(z->adam_v);
}

// every rank gathers the full moment vectors (rank 0 writes them); full_m/full_v: [shard * world]
static void zero1_gather_moments(Zero1 *z, Comm *comm, real *full_m, real *full_v) {
    comm_allgather(comm, z->adam_m, full_m, z->shard, comm_real_dtype());
    comm_allgather(comm, z->adam_v, full_v, z->shard, comm_real_dtype());
}

// ----------------------------------------------------------------------------
// validation

// mean loss over --val-batches micro-batches of every rank, from the start of the validation data
static double validate(Model *model, DataLoader *val, int val_batches, int32_t *inputs, int32_t *targets, Comm *comm) {
    char err[1024];
    dataloader_reset(val);
    double sum = 0.0;
    for (int i = 0; i < val_batches; i++) {
        if (dataloader_next_batch(val, inputs, targets, err, sizeof(err)) != 0) die("%s", err);
        sum += model_forward(model, inputs, targets, val->B, val->T);
    }
    comm_allreduce_sum(comm, &sum, 1, COMM_F64);
    return sum / ((double)val_batches * comm->world_size);
}

// ----------------------------------------------------------------------------

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);   // progress lines reach a pipe (tee, a log file) as they happen
    Comm comm;
    comm_init(&comm, &argc, &argv);
    const int rank0 = comm.rank == 0;
    char err[2048];

    // flags and config
    TrainArgs args;
    int parsed = cli_parse(&args, argc, argv, err, sizeof(err));
    if (parsed == 1) { comm_finalize(&comm); return 0; }  // --help
    comm_exit_if_any_failed(&comm, parsed == -1, err);
    MdnConfig config;
    comm_exit_if_any_failed(&comm, config_load(&config, args.config, err, sizeof(err)) != 0, err);
    if (args.dry_run) {
        // the summary needs no activations: a model for one token
        if (rank0) {
            Model *model = model_build(&config, 1, 1);
            model_print_summary(model, stdout);
            model_free(model);
        }
        comm_finalize(&comm);
        return 0;
    }
    const int B = args.batch_size, T = args.seq_len, accum = args.grad_accum, world = comm.world_size;
    const int64_t tokens_per_step = (int64_t)B * T * accum * world;
    if (rank0) {
        cli_print_settings(&args, stdout);
        printf("ranks: %d (%s), tokens per optimizer step: %lld (%d rows x %d tokens x %d micro-steps x %d ranks)\n", world,
               comm_backend_name(&comm), (long long)tokens_per_step, B, T, accum, world);
    }

    // output directory and log (rank 0 decides, everyone follows)
    FILE *log = NULL;
    char log_path[4096] = "";
    int out_failed = 0;
    if (args.out[0] != '\0' && rank0) {
        out_failed = make_directories(args.out, err, sizeof(err)) != 0;
        snprintf(log_path, sizeof(log_path), "%s/log.jsonl", args.out);
        if (!out_failed && access(args.out, W_OK) != 0) {
            set_error(err, sizeof(err), "%s: directory is not writable (%s)", args.out, strerror(errno));
            out_failed = 1;
        }
    }
    comm_exit_if_any_failed(&comm, out_failed, err);

    // data: every rank validates every shard up front
    DataLoader train_loader, val_loader;
    int have_val = args.val_data[0] != '\0' && args.val_interval > 0;
    int train_failed = dataloader_init(&train_loader, args.train_data, B, T, comm.rank, world, args.shuffle,
                                       (uint64_t)args.seed, config.vocab_size, err, sizeof(err)) != 0;
    int val_failed = !train_failed && have_val &&
                     dataloader_init(&val_loader, args.val_data, B, T, comm.rank, world, 0, (uint64_t)args.seed,
                                     config.vocab_size, err, sizeof(err)) != 0;
    if ((train_failed || val_failed) && strstr(err, "no shard matches") && strncmp(err, "data/tinyshakespeare/", 21) == 0)
        strncat(err, " (the default data: make it with scripts/prepare_tinyshakespeare.sh)", sizeof(err) - strlen(err) - 1);
    comm_exit_if_any_failed(&comm, train_failed || val_failed, err);

    // the model and its optimizer
    Model *model = model_build(&config, B, T);
    if (args.init_from[0] != '\0') {
        comm_exit_if_any_failed(&comm, model_load_hf_weights(model, args.init_from, err, sizeof(err)) != 0, err);
    } else {
        model_init_weights(model, (uint64_t)args.seed);
    }
    const size_t N = model->num_params;
    size_t *tensor_numel = (size_t *)xmalloc((size_t)model->num_tensors * sizeof(size_t));
    unsigned char *tensor_decay = (unsigned char *)xmalloc((size_t)model->num_tensors);
    for (int i = 0; i < model->num_tensors; i++) {
        const ParamTensor *t = &model->tensors[i];
        if (t->offset != (i == 0 ? 0 : model->tensors[i - 1].offset + model->tensors[i - 1].numel))
            die("%s: parameter tensors are not contiguous in model order", t->name);
        tensor_numel[i] = t->numel;
        // the paper decays everything (flame ignores the layer's no-decay marks); --no-decay-set
        // excludes the six per-head gate parameters and the norm weights
        tensor_decay[i] = (unsigned char)model_param_decayed(t->name, t->no_decay, args.no_decay_set);
    }
    AdamW opt;
    adamw_init(&opt, args.beta1, args.beta2, args.eps, args.weight_decay, args.max_norm, model->num_tensors, tensor_numel,
               tensor_decay);
    free(tensor_numel);
    free(tensor_decay);
    Zero1 zero;
    zero1_init(&zero, N, &comm);
    char *config_json = config_to_json(&config);
    char *flags_json = cli_to_json(&args);
    uint64_t sample_rng = sample_rng_init(args.seed);
    if (rank0) {
        size_t decayed = 0;
        for (int i = 0; i < model->num_tensors; i++) decayed += opt.segments.decay[i] ? model->tensors[i].numel : 0;
        printf("params: %zu (this rank updates [%zu, %zu)); weight decay on %zu of them%s\n", N, zero.begin, zero.end, decayed,
               args.no_decay_set ? " (--no-decay-set: not on the gate parameters and norms)" : "");
    }

    // resume: rank 0 finds the newest valid checkpoint and sends it to everyone
    int64_t start_step = 0;
    if (args.resume) {
        TrainState state;
        memset(&state, 0, sizeof(state));
        char path[4096] = "";
        int found = rank0 ? checkpoint_load_latest(args.out, &state, path, sizeof(path)) : 0;
        int bad = 0;
        if (rank0 && found) {
            if (strcmp(state.config_json, config_json) != 0) {
                char difference[256];
                describe_config_difference(config_json, state.config_json, difference, sizeof(difference));
                set_error(err, sizeof(err), "%s: checkpoint of another model config than %s (%s)", path, args.config, difference);
                bad = 1;
            } else if (state.num_params != N) {
                set_error(err, sizeof(err), "%s: %zu parameters, the model has %zu", path, state.num_params, N);
                bad = 1;
            }
        }
        comm_exit_if_any_failed(&comm, bad, err);
        found = comm_any(&comm, found);
        if (found) {
            int64_t scalars[9] = {state.step, state.num_updates, state.nan_steps_total, state.nan_steps_in_row,
                                  state.data_position.shard_index, state.data_position.row_index, state.data_position.epoch,
                                  (int64_t)state.data_position.rng_state, (int64_t)state.sample_rng};
            comm_broadcast(&comm, scalars, sizeof(scalars), 0);
            real *full_m = (real *)xmalloc(N * sizeof(real)), *full_v = (real *)xmalloc(N * sizeof(real));
            if (rank0) {
                memcpy(model->params, state.params, N * sizeof(real));
                memcpy(full_m, state.adam_m, N * sizeof(real));
                memcpy(full_v, state.adam_v, N * sizeof(real));
            }
            comm_broadcast(&comm, model->params, N * sizeof(real), 0);
            comm_broadcast(&comm, full_m, N * sizeof(real), 0);
            comm_broadcast(&comm, full_v, N * sizeof(real), 0);
            memcpy(zero.adam_m, full_m + zero.begin, (zero.end - zero.begin) * sizeof(real));
            memcpy(zero.adam_v, full_v + zero.begin, (zero.end - zero.begin) * sizeof(real));
            free(full_m);
            free(full_v);
            start_step = scalars[0];
            opt.num_updates = scalars[1];
            opt.nan_steps_total = scalars[2];
            opt.nan_steps_in_row = scalars[3];
            DataLoaderPosition position = {scalars[4], scalars[5], scalars[6], (uint64_t)scalars[7]};
            sample_rng = (uint64_t)scalars[8];
            comm_exit_if_any_failed(&comm, dataloader_set_position(&train_loader, position, err, sizeof(err)) != 0, err);
            if (rank0) {
                printf("resumed from %s at step %lld (written by %d rank%s)\n", path, (long long)start_step, state.world_size,
                       state.world_size == 1 ? "" : "s");
                warn_if_batch_changed(path, &state, &args, world);
                checkpoint_truncate_log(log_path, start_step);
            }
        } else if (rank0) {
            printf("no checkpoint in %s: starting from step 0\n", args.out);
        }
        if (rank0) checkpoint_state_free(&state);
    } else if (rank0 && args.out[0] != '\0') {
        int64_t *steps;
        if (checkpoint_list(args.out, &steps) > 0)
            fprintf(stderr, "warning: %s holds checkpoints of an earlier run (without --resume they are not used; the "
                            "newest by step is what a later --resume takes)\n", args.out);
        free(steps);
    }
    if (rank0 && args.out[0] != '\0') {
        log = fopen(log_path, start_step > 0 ? "ab" : "wb");
        if (log == NULL) die("%s: cannot open for writing (%s)", log_path, strerror(errno));
    }
    // the GPT-2 tokenizer decodes the samples (the files ship with the repository, read from its root)
    Tokenizer tokenizer_storage, *tokenizer = NULL;
    if (rank0 && args.sample_interval > 0) {
        if (tokenizer_init(&tokenizer_storage, "dataloader/gpt2", err, sizeof(err)) == 0) tokenizer = &tokenizer_storage;
        else fprintf(stderr, "warning: %s; samples will print token ids\n", err);
    }

    if (rank0 && start_step >= args.steps)
        printf("nothing to train: the run is already at step %lld of --steps %lld\n", (long long)start_step, (long long)args.steps);
    install_signal_handlers();
    int32_t *inputs = (int32_t *)xmalloc((size_t)B * T * sizeof(int32_t));
    int32_t *targets = (int32_t *)xmalloc((size_t)B * T * sizeof(int32_t));
    const real loss_scale = (real)(1.0 / ((double)accum * world));
    double step_ms_ema = 0.0;
    int64_t step = start_step;
    while (step < args.steps) {
        double t0 = wall_seconds();
        // forward and backward of every micro-batch; the gradient of each is scaled so that the
        // sum over micro-steps and ranks is the gradient of the mean loss of the whole step
        model_zero_grad(model);
        double loss_sum = 0.0;
        for (int micro = 0; micro < accum; micro++) {
            if (dataloader_next_batch(&train_loader, inputs, targets, err, sizeof(err)) != 0) die("%s", err);
            loss_sum += model_forward(model, inputs, targets, B, T);
            model_backward(model, loss_scale);
        }
        if (rank0 && nan_injected_at(step + 1)) {
            model->grads[0] = (real)NAN;
            loss_sum = NAN;
        }
        comm_allreduce_sum(&comm, &loss_sum, 1, COMM_F64);
        double loss = loss_sum / ((double)accum * world);

        // ZeRO-1: reduce-scatter the gradients, each rank clips and updates its slice, allgather
        memcpy(zero.grads_padded, model->grads, N * sizeof(real));
        comm_reduce_scatter_sum(&comm, zero.grads_padded, zero.grad_slice, zero.shard, comm_real_dtype());
        memcpy(model->grads + zero.begin, zero.grad_slice, (zero.end - zero.begin) * sizeof(real));
        double norm_squared = adamw_sum_squares(model->grads + zero.begin, zero.end - zero.begin);
        comm_allreduce_sum(&comm, &norm_squared, 1, COMM_F64);
        double grad_norm = sqrt(norm_squared);
        double lr = lr_at_step(step, args.lr, args.warmup_steps, args.steps, args.min_lr_ratio);
        int skipped = adamw_step(&opt, model->params, model->grads, zero.adam_m, zero.adam_v, zero.begin, zero.end, lr, grad_norm);
        if (!skipped) {
            memcpy(zero.params_padded + zero.begin, model->params + zero.begin, (zero.end - zero.begin) * sizeof(real));
            comm_allgather(&comm, zero.params_padded + (size_t)comm.rank * zero.shard, zero.params_padded, zero.shard,
                           comm_real_dtype());
            memcpy(model->params, zero.params_padded, N * sizeof(real));
        }
        step++;
        double step_seconds = wall_seconds() - t0;

        // progress line (the first step's time, with its warm-up costs, is kept out of the average)
        if (step <= start_step + 2) step_ms_ema = 1000.0 * step_seconds;
        else step_ms_ema = 0.9 * step_ms_ema + 0.1 * 1000.0 * step_seconds;
        double tokens_per_s = (double)tokens_per_step / step_seconds;
        double eta_s = step_ms_ema / 1000.0 * (double)(args.steps - step);
        if (rank0) {
            printf("step %6lld/%lld | loss %.6f | lr %.3e | norm %.4f | %.1f ms | %.0f tok/s | ETA %dh%02dm%02ds%s\n",
                   (long long)step, (long long)args.steps, loss, lr, grad_norm, 1000.0 * step_seconds, tokens_per_s,
                   (int)(eta_s / 3600), (int)fmod(eta_s / 60, 60), (int)fmod(eta_s, 60), skipped ? " | SKIPPED (non-finite)" : "");
            if (skipped)
                fprintf(stderr, "warning: step %lld: gradient norm is not finite; update skipped (%lld in a row, %lld in all)\n",
                        (long long)step, (long long)opt.nan_steps_in_row, (long long)opt.nan_steps_total);
            fflush(stdout);
        }
        if (opt.nan_steps_in_row >= args.max_nan_steps) {
            snprintf(err, sizeof(err), "--max-nan-steps: %lld non-finite steps in a row (steps %lld to %lld); stopping "
                     "(no checkpoint written: the last one in %s is the last good state)",
                     (long long)opt.nan_steps_in_row, (long long)(step - opt.nan_steps_in_row + 1), (long long)step,
                     args.out[0] ? args.out : "(no --out)");
            comm_exit_if_any_failed(&comm, 1, err);
        }

        int last = step == args.steps;
        double val_loss = NAN;
        if (have_val && (step % args.val_interval == 0 || last))
            val_loss = validate(model, &val_loader, args.val_batches, inputs, targets, &comm);
        if (rank0 && log != NULL) {
            // %.9g: a float's exact value, so that runs can be compared bit for bit
            if (isfinite(loss)) fprintf(log, "{\"step\":%lld,\"loss\":%.9g", (long long)step, loss);
            else fprintf(log, "{\"step\":%lld,\"loss\":null", (long long)step);
            fprintf(log, ",\"lr\":%.9g,\"grad_norm\":%.9g,\"tokens_per_s\":%.1f,\"mfu\":0", lr, isfinite(grad_norm) ? grad_norm : -1.0,
                    tokens_per_s);
            if (skipped) fprintf(log, ",\"skipped\":true");
            if (!isnan(val_loss)) fprintf(log, ",\"val_loss\":%.9g", val_loss);
            fprintf(log, "}\n");
            fflush(log);
        }
        if (rank0 && !isnan(val_loss)) printf("step %6lld | val loss %.6f\n", (long long)step, val_loss);
        if (rank0 && args.sample_interval > 0 && step % args.sample_interval == 0)
            sample_print(model, tokenizer, args.sample_tokens, &sample_rng, stdout);

        // checkpoint at the interval, at the end, and when a signal asks us to stop
        int stopping = comm_any(&comm, stop_signal != 0);
        int checkpoint_now = args.out[0] != '\0' &&
                             (last || stopping || (args.checkpoint_interval > 0 && step % args.checkpoint_interval == 0));
        if (checkpoint_now) {
            size_t padded = zero.shard * (size_t)world;
            real *full_m = (real *)xmalloc(padded * sizeof(real)), *full_v = (real *)xmalloc(padded * sizeof(real));
            zero1_gather_moments(&zero, &comm, full_m, full_v);
            int failed = 0;
            char *path = checkpoint_path(args.out, step);
            if (rank0) {
                TrainState state = {
                    .step = step, .num_updates = opt.num_updates, .nan_steps_total = opt.nan_steps_total,
                    .nan_steps_in_row = opt.nan_steps_in_row, .data_position = dataloader_get_position(&train_loader),
                    .sample_rng = sample_rng, .world_size = world, .config_json = config_json, .flags_json = flags_json,
                    .num_params = N, .params = model->params, .adam_m = full_m, .adam_v = full_v};
                failed = checkpoint_save(path, &state, err, sizeof(err)) != 0;
                if (!failed) {
                    checkpoint_prune(args.out, args.keep_latest_k);
                    printf("checkpoint: %s\n", path);
                }
            }
            free(full_m);
            free(full_v);
            free(path);
            comm_exit_if_any_failed(&comm, failed, err);
        }
        if (stopping) {
            if (rank0)
                printf("stopped by %s after step %lld%s\n", stop_signal == SIGINT ? "SIGINT" : stop_signal == SIGTERM ? "SIGTERM" : "a signal", (long long)step,
                       args.out[0] ? "; checkpoint written, continue with --resume" : " (no --out: nothing saved)");
            break;
        }
    }

    if (rank0 && args.export_hf[0] != '\0') {
        if (model_save_hf(model, args.export_hf, err, sizeof(err)) != 0) die("%s", err);
        printf("exported %s (config.json + model.safetensors)\n", args.export_hf);
    }
    if (log != NULL && fclose(log) != 0) die("%s: write failed (%s)", log_path, strerror(errno));
    free(inputs);
    free(targets);
    free(config_json);
    free(flags_json);
    zero1_free(&zero);
    adamw_free(&opt);
    model_free(model);
    dataloader_free(&train_loader);
    if (have_val) dataloader_free(&val_loader);
    if (tokenizer != NULL) tokenizer_free(tokenizer);
    comm_finalize(&comm);
    return 0;
}
