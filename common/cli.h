// cli.h: the command line of both trainers (train_mdn_cpu and train_mdn take the same flags).
// Long options are named after flame/torchtitan's where those have one (--lr, --warmup-steps,
// --steps, --batch-size, --seq-len, --max-norm, --checkpoint-interval, --keep-latest-k, ...);
// defaults are the paper's recipe (mdn-spec.md §9). `--name value` and `--name=value` both work.
// Any problem (unknown flag, missing value, bad number, size <= 0) is one line naming the flag.
#ifndef MDN_CLI_H
#define MDN_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    // model and data
    const char *config;              // --config: model JSON (fla's MomentumDeltaNetConfig)
    const char *init_from;           // --init-from: HF directory to start from (else a fresh init)
    const char *train_data;          // --train-data: glob of token shards
    const char *val_data;            // --val-data: glob of token shards ("" : no validation)
    int shuffle;                     // --shuffle: permute shards and rows (seeded); off: sequential
    // batch
    int batch_size;                  // --batch-size: micro-batch rows per rank
    int seq_len;                     // --seq-len: tokens per row
    int grad_accum;                  // --grad-accum: micro-batches per optimizer step
    int64_t steps;                   // --steps: optimizer steps of the whole run (the schedule's S)
    // optimizer and schedule
    double lr, min_lr_ratio;         // --lr, --min-lr-ratio
    int64_t warmup_steps;            // --warmup-steps
    double weight_decay, beta1, beta2, eps, max_norm;
    int no_decay_set;                // --no-decay-set: deviation, see cli.c
    int max_nan_steps;               // --max-nan-steps: abort after this many non-finite steps in a row
    int64_t seed;                    // --seed
    // evaluation, samples, output
    int64_t val_interval;            // --val-interval: steps between validations (0: never)
    int val_batches;                 // --val-batches
    int64_t sample_interval;         // --sample-interval: steps between text samples (0: never)
    int sample_tokens;               // --sample-tokens
    const char *out;                 // --out: directory for log.jsonl and checkpoints ("" : none)
    int64_t checkpoint_interval;     // --checkpoint-interval (0: only at the end and on a signal)
    int keep_latest_k;               // --keep-latest-k (0: keep all)
    int resume;                      // --resume: continue from the latest valid checkpoint in --out
    const char *export_hf;           // --export-hf: write an HF directory at the end ("" : no)
    int reset_state_at_eot;          // --reset-state-at-eot (not implemented: rejected)
    int dry_run;                     // --dry-run: print the model summary and exit
    const char *dtype;               // --dtype: train_mdn's activation precision, "bf16" or "f32" (float32
                                     // everywhere: the multi-GPU equality tests); train_mdn_cpu computes in
                                     // float32 whatever it says (accepted so that both take the same flags)
    int recompute;                   // --recompute: train_mdn's activation plan (model_cuda.cuh: 2 recomputes
                                     // each block's mixer output in the backward, 1 keeps it); the CPU
                                     // trainer accepts and ignores it
} TrainArgs;

// Parse argv into args (defaults first). Returns 0 on success, 1 if --help was given (usage already
// printed to stdout), -1 with err = "--flag: problem" otherwise.
int cli_parse(TrainArgs *args, int argc, char **argv, char *err, size_t errlen);
void cli_print_usage(FILE *out, const char *program);
// the startup table: every setting and its value
void cli_print_settings(const TrainArgs *args, FILE *out);
// the settings as one JSON object {"lr": 0.0003, ...} (saved in checkpoints); malloc'd
char *cli_to_json(const TrainArgs *args);

#endif // MDN_CLI_H
