// dataloader.h: llm.c-compatible token shards, read by the CPU and GPU trainers alike.
// Shard format: 256 little-endian int32 header ([0] = 20240520 magic, [1] = 1 version,
// [2] = number of tokens), then that many uint16 token ids.
// A glob of shards is read in sorted order. Each batch is B rows of T+1 consecutive tokens
// (inputs = row[0..T-1], targets = row[1..T]); rows start every T tokens of a shard. A step reads a
// global batch of R*B rows and rank r of R takes rows r*B .. r*B+B-1 of it, so R ranks together read
// exactly what one rank with R times the batch reads. The position (and the shuffle RNG) is a small
// plain struct that the training state saves and restores; it does not depend on R.
// Validation: a loader with shuffle 0, dataloader_reset() before each evaluation, then N batches.
#ifndef MDN_DATALOADER_H
#define MDN_DATALOADER_H

#include <stddef.h>
#include <stdint.h>

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256

// everything needed to continue reading exactly where we stopped (saved in checkpoints)
typedef struct {
    int64_t shard_index;      // which shard (in the possibly shuffled shard order)
    int64_t row_index;        // which row window of that shard is next for rank 0 of this step
    int64_t epoch;
    uint64_t rng_state;       // shuffle RNG state of this epoch (0 without shuffle)
} DataLoaderPosition;

typedef struct {
    int B, T;
    int rank, world_size;
    int shuffle;              // 0: sequential; 1: seeded permutation of shards and of row windows
    uint64_t seed;
    int vocab_size;
    int num_shards;
    char **shard_paths;
    int64_t *shard_tokens;    // tokens per shard
    int *shard_order;         // permutation of shards for this epoch
    int64_t *row_order;       // permutation of row windows of the current shard
    int64_t rows_in_shard;
    uint16_t *tokens;         // current shard's tokens
    int64_t tokens_capacity;
    int loaded_shard;         // the shard in `tokens` (-1: none) ...
    uint64_t loaded_epoch_state; // ... and the epoch RNG state its row_order was drawn with
    DataLoaderPosition pos;
} DataLoader;

// Validates every shard's header and size up front. -1 with err naming the shard (or the glob, if
// it matches nothing) on any problem. Token ids >= vocab_size are reported when a shard is loaded.
int dataloader_init(DataLoader *dl, const char *glob_pattern, int B, int T, int rank, int world_size,
                    int shuffle, uint64_t seed, int vocab_size, char *err, size_t errlen);
// fills inputs and targets, each B*T int32; 0 on success, -1 with err set (bad token id in a shard)
int dataloader_next_batch(DataLoader *dl, int32_t *inputs, int32_t *targets, char *err, size_t errlen);
void dataloader_reset(DataLoader *dl);
DataLoaderPosition dataloader_get_position(const DataLoader *dl);
int dataloader_set_position(DataLoader *dl, DataLoaderPosition pos, char *err, size_t errlen);
// global batches in one pass over the shards (each shard's tail of fewer than R*B rows is dropped)
int64_t dataloader_batches_per_epoch(const DataLoader *dl);
void dataloader_free(DataLoader *dl);

// write a shard (used by mdn_tokenize and the tests); -1 with err set on I/O failure
int write_shard(const char *path, const uint16_t *tokens, int64_t count, char *err, size_t errlen);

#endif // MDN_DATALOADER_H
