// checkpoint.h: the training state, saved and restored so that a run continues bit-exactly.
// One safetensors file per checkpoint, DIR/checkpoint_<step:08d>.safetensors:
//   tensors  "params", "adam_m", "adam_v": the full flat vectors (float32; float64 in the double build)
//   metadata "format" = "mdn.c training state", "version", "step", AdamW's counters, the
//            dataloader position, the sample RNG, "world_size" (of the writer), "num_params",
//            "config" (config_to_json), "flags" (cli_to_json), and "checksum" (see checkpoint.c).
// ZeRO-1 shards the moments over ranks, but the file always holds the whole vectors: the trainer
// gathers them to rank 0, which writes one file. A run can then resume on any number of ranks (each
// takes its new slice of the full vectors), and the file is the same whatever wrote it; the price
// is one gather per checkpoint, small next to the thousands of steps between checkpoints.
// Writing goes through st_writer_save (PATH.tmp, fflush, fsync, rename) plus an fsync of the
// directory, so a crash or a full disk never leaves a half-written file under a checkpoint's name.
#ifndef MDN_CHECKPOINT_H
#define MDN_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "../dataloader/dataloader.h"
#include "real.h"

typedef struct {
    int64_t step;                     // optimizer steps completed
    int64_t num_updates;              // AdamW updates applied (bias correction); < step if some were skipped
    int64_t nan_steps_total, nan_steps_in_row;
    DataLoaderPosition data_position; // where the training data continues
    uint64_t sample_rng;              // the text sampler's RNG state
    int world_size;                   // ranks of the run that wrote it (any number can resume it)
    char *config_json;                // the model config (config_to_json): resuming another model is an error
    char *flags_json;                 // the flags of the run that wrote it (cli_to_json)
    size_t num_params;
    real *params, *adam_m, *adam_v;   // [num_params] each
} TrainState;

// DIR/checkpoint_<step>.safetensors (malloc'd)
char *checkpoint_path(const char *dir, int64_t step);
// write the state (its pointers are only read). 0, or -1 with err = "PATH: problem".
int checkpoint_save(const char *path, const TrainState *state, char *err, size_t errlen);
// read and verify a checkpoint (format, every field, tensor shapes, checksum); allocates the
// vectors and strings of *state (free with checkpoint_state_free). 0, or -1 with err = "PATH: problem".
int checkpoint_load(const char *path, TrainState *state, char *err, size_t errlen);
void checkpoint_state_free(TrainState *state);
// the steps of the checkpoints in DIR, newest first (*steps malloc'd); the count, or -1 if DIR is unreadable
int checkpoint_list(const char *dir, int64_t **steps);
// Load the newest valid checkpoint of DIR. A checkpoint that fails to load (truncated, corrupt) is
// reported on stderr, renamed to PATH.invalid (so that it no longer counts as the latest) and the
// previous one is tried. Returns 1 with *state and path_out filled, 0 if DIR has no valid checkpoint.
int checkpoint_load_latest(const char *dir, TrainState *state, char *path_out, size_t path_len);
// delete all but the newest keep_latest_k checkpoints of DIR (0: keep all)
void checkpoint_prune(const char *dir, int keep_latest_k);
// On resume: keep the lines of a log.jsonl whose "step" is <= last_step (the resumed run writes
// the steps after the checkpoint again). A missing file is left missing; dies on a write failure.
void checkpoint_truncate_log(const char *path, int64_t last_step);

#endif // MDN_CHECKPOINT_H
