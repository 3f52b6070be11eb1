// dataloader.c: llm.c token shards -> (inputs, targets) batches for one rank (see dataloader.h).
//
// The unit of data is a row window: window w of a shard is its tokens [w*T, w*T + T + 1), so a shard
// of n tokens has (n - 1) / T windows (the tail is dropped). A step consumes one global batch of
// B * world_size windows of the current shard, in order (or in the shard's shuffled order), and rank
// r takes windows r*B .. r*B + B - 1 of it. Nothing here depends on the rank or on how the global
// batch is split, so R ranks with B rows read exactly what one rank with R*B rows reads, and the
// position (shard, window, epoch, RNG state) can be restored on any number of ranks.
// A shard too small for one global batch is skipped (with a warning from rank 0).
// Shuffle: at each epoch the shard order is a permutation, and so is each shard's window order; both
// are drawn from the epoch's RNG state (pos.rng_state), which advances once per epoch.
// Shards are read whole when the loader reaches them, and every token is checked against the vocab.
#include "dataloader.h"

#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/utils.h"

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// an unbiased integer in [0, n) (Lemire's method would do too; rejection keeps it obvious)
static uint64_t random_below(uint64_t *state, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do r = splitmix64(state); while (r >= limit);
    return r % n;
}

static int compare_paths(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// reads and checks a shard's header and size; its token count goes to *tokens
static int check_shard(const char *path, int64_t *tokens, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return set_error(err, errlen, "%s: cannot open (%s)", path, strerror(errno));
    int32_t header[SHARD_HEADER_INTS];
    size_t got = fread(header, sizeof(int32_t), SHARD_HEADER_INTS, f);
    struct stat st;
    int stat_ok = fstat(fileno(f), &st) == 0;
    fclose(f);
    if (got != SHARD_HEADER_INTS)
        return set_error(err, errlen, "%s: too short for a %d-byte shard header", path, SHARD_HEADER_INTS * 4);
    if (header[0] != SHARD_MAGIC)
        return set_error(err, errlen, "%s: bad magic %d (an llm.c token shard has %d)", path, header[0], SHARD_MAGIC);
    if (header[1] != SHARD_VERSION)
        return set_error(err, errlen, "%s: unsupported shard version %d (expected %d: uint16 tokens)", path, header[1],
                         SHARD_VERSION);
    if (header[2] < 0) return set_error(err, errlen, "%s: negative token count %d in the header", path, header[2]);
    int64_t expected = (int64_t)sizeof header + 2 * (int64_t)header[2];
    if (!stat_ok) return set_error(err, errlen, "%s: cannot stat (%s)", path, strerror(errno));
    if ((int64_t)st.st_size != expected)
        return set_error(err, errlen, "%s: size %lld bytes does not match the header's %d tokens (%lld bytes)", path,
                         (long long)st.st_size, header[2], (long long)expected);
    *tokens = header[2];
    return 0;
}

static int64_t windows_in_shard(const DataLoader *dl, int shard) { return (dl->shard_tokens[shard] - 1) / dl->T; }
static int64_t global_rows(const DataLoader *dl) { return (int64_t)dl->B * dl->world_size; }

// the shard order of the epoch whose RNG state is pos.rng_state
static void make_shard_order(DataLoader *dl) {
    for (int i = 0; i < dl->num_shards; i++) dl->shard_order[i] = i;
    if (!dl->shuffle) return;
    uint64_t state = dl->pos.rng_state;
    for (int i = dl->num_shards - 1; i > 0; i--) {
        int j = (int)random_below(&state, (uint64_t)i + 1);
        int t = dl->shard_order[i]; dl->shard_order[i] = dl->shard_order[j]; dl->shard_order[j] = t;
    }
}

// reads the shard at pos.shard_index (in this epoch's order), checks its tokens, orders its windows
static int load_shard(DataLoader *dl, char *err, size_t errlen) {
    int shard = dl->shard_order[dl->pos.shard_index];
    if (shard == dl->loaded_shard && dl->loaded_epoch_state == dl->pos.rng_state) return 0;
    const char *path = dl->shard_paths[shard];
    int64_t n = dl->shard_tokens[shard];
    if (n > dl->tokens_capacity) {
        free(dl->tokens);
        dl->tokens = (uint16_t *)xmalloc((size_t)n * sizeof(uint16_t));
        dl->tokens_capacity = n;
    }
    dl->loaded_shard = -1;
    FILE *f = fopen(path, "rb");
    if (f == NULL) return set_error(err, errlen, "%s: cannot open (%s)", path, strerror(errno));
    int ok = fseeko(f, SHARD_HEADER_INTS * 4, SEEK_SET) == 0 && fread(dl->tokens, sizeof(uint16_t), (size_t)n, f) == (size_t)n;
    fclose(f);
    if (!ok) return set_error(err, errlen, "%s: read failed (changed since the loader started?)", path);
    for (int64_t i = 0; i < n; i++)
        if (dl->tokens[i] >= dl->vocab_size)
            return set_error(err, errlen, "%s: token id %d >= vocab size %d at token %lld", path, dl->tokens[i],
                             dl->vocab_size, (long long)i);
    int64_t rows = windows_in_shard(dl, shard);
    dl->rows_in_shard = rows;
    dl->row_order = (int64_t *)xrealloc(dl->row_order, (size_t)(rows > 0 ? rows : 1) * sizeof(int64_t));
    for (int64_t i = 0; i < rows; i++) dl->row_order[i] = i;
    if (dl->shuffle) {
        // a state of its own for each shard of the epoch, so the order does not depend on history
        uint64_t state = dl->pos.rng_state ^ (0xD1B54A32D192ED03ull * (uint64_t)(dl->pos.shard_index + 1));
        for (int64_t i = rows - 1; i > 0; i--) {
            int64_t j = (int64_t)random_below(&state, (uint64_t)i + 1);
            int64_t t = dl->row_order[i]; dl->row_order[i] = dl->row_order[j]; dl->row_order[j] = t;
        }
    }
    dl->loaded_shard = shard;
    dl->loaded_epoch_state = dl->pos.rng_state;
    return 0;
}

// moves the position forward to a shard with a global batch left (the next epoch after the last shard)
static void skip_to_batch(DataLoader *dl) {
    while (dl->pos.row_index + global_rows(dl) > windows_in_shard(dl, dl->shard_order[dl->pos.shard_index])) {
        dl->pos.row_index = 0;
        if (++dl->pos.shard_index == dl->num_shards) {
            dl->pos.shard_index = 0;
            dl->pos.epoch++;
            if (dl->shuffle) splitmix64(&dl->pos.rng_state);
            make_shard_order(dl);
        }
    }
}

int dataloader_init(DataLoader *dl, const char *glob_pattern, int B, int T, int rank, int world_size, int shuffle,
                    uint64_t seed, int vocab_size, char *err, size_t errlen) {
    memset(dl, 0, sizeof *dl);
    dl->loaded_shard = -1;
    if (B <= 0 || T <= 0 || world_size <= 0 || rank < 0 || rank >= world_size || vocab_size <= 0)
        return set_error(err, errlen, "%s: bad loader settings (B=%d T=%d rank %d of %d, vocab %d)", glob_pattern, B, T,
                         rank, world_size, vocab_size);
    dl->B = B;
    dl->T = T;
    dl->rank = rank;
    dl->world_size = world_size;
    dl->shuffle = shuffle;
    dl->seed = seed;
    dl->vocab_size = vocab_size;
    glob_t g;
    int rc = glob(glob_pattern, 0, NULL, &g);
    if (rc != 0 || g.gl_pathc == 0) {
        globfree(&g);
        return set_error(err, errlen, "%s: no shard matches", glob_pattern);
    }
    dl->num_shards = (int)g.gl_pathc;
    dl->shard_paths = (char **)xmalloc(g.gl_pathc * sizeof(char *));
    for (size_t i = 0; i < g.gl_pathc; i++) dl->shard_paths[i] = xstrdup(g.gl_pathv[i]);
    globfree(&g);
    qsort(dl->shard_paths, (size_t)dl->num_shards, sizeof(char *), compare_paths);
    dl->shard_tokens = (int64_t *)xmalloc((size_t)dl->num_shards * sizeof(int64_t));
    dl->shard_order = (int *)xmalloc((size_t)dl->num_shards * sizeof(int));
    int usable = 0;
    for (int i = 0; i < dl->num_shards; i++) {
        if (check_shard(dl->shard_paths[i], &dl->shard_tokens[i], err, errlen) != 0) { dataloader_free(dl); return -1; }
        if (dl->shard_tokens[i] >= 1 && windows_in_shard(dl, i) >= global_rows(dl)) usable++;
        else if (rank == 0)
            fprintf(stderr, "warning: %s: %lld tokens, fewer than one global batch of %lld x %d (+1); skipped\n",
                    dl->shard_paths[i], (long long)dl->shard_tokens[i], (long long)global_rows(dl), T);
    }
    if (usable == 0) {
        set_error(err, errlen, "%s: no shard holds one global batch of %lld x %d (+1) tokens", glob_pattern,
                  (long long)global_rows(dl), T);
        dataloader_free(dl);
        return -1;
    }
    dataloader_reset(dl);
    if (load_shard(dl, err, errlen) != 0) { dataloader_free(dl); return -1; }
    return 0;
}

void dataloader_reset(DataLoader *dl) {
    uint64_t state = dl->seed;
    dl->pos = (DataLoaderPosition){.shard_index = 0, .row_index = 0, .epoch = 0, .rng_state = dl->shuffle ? splitmix64(&state) : 0};
    make_shard_order(dl);
    skip_to_batch(dl);
}

int dataloader_next_batch(DataLoader *dl, int32_t *inputs, int32_t *targets, char *err, size_t errlen) {
    skip_to_batch(dl);
    if (load_shard(dl, err, errlen) != 0) return -1;
    int T = dl->T;
    int64_t first = dl->pos.row_index + (int64_t)dl->rank * dl->B;
    for (int b = 0; b < dl->B; b++) {
        const uint16_t *row = dl->tokens + dl->row_order[first + b] * T;
        for (int t = 0; t < T; t++) {
            inputs[(size_t)b * T + t] = row[t];
            targets[(size_t)b * T + t] = row[t + 1];
        }
    }
    dl->pos.row_index += global_rows(dl);
    return 0;
}

DataLoaderPosition dataloader_get_position(const DataLoader *dl) { return dl->pos; }

int dataloader_set_position(DataLoader *dl, DataLoaderPosition pos, char *err, size_t errlen) {
    if (pos.shard_index < 0 || pos.shard_index >= dl->num_shards || pos.row_index < 0 || pos.epoch < 0)
        return set_error(err, errlen, "%s: data position (shard %lld, row %lld, epoch %lld) is not in these %d shards",
                         dl->shard_paths[0], (long long)pos.shard_index, (long long)pos.row_index, (long long)pos.epoch,
                         dl->num_shards);
    if (!dl->shuffle) pos.rng_state = 0;
    dl->pos = pos;
    make_shard_order(dl);
    // a different global batch size may leave too few windows in this shard: then go on to the next
    skip_to_batch(dl);
    return load_shard(dl, err, errlen);
}

int64_t dataloader_batches_per_epoch(const DataLoader *dl) {
    int64_t n = 0;
    for (int i = 0; i < dl->num_shards; i++) n += windows_in_shard(dl, i) / global_rows(dl);
    return n;
}

void dataloader_free(DataLoader *dl) {
    for (int i = 0; i < dl->num_shards; i++) free(dl->shard_paths[i]);
    free(dl->shard_paths);
    free(dl->shard_tokens);
    free(dl->shard_order);
    free(dl->row_order);
    free(dl->tokens);
    memset(dl, 0, sizeof *dl);
}

int write_shard(const char *path, const uint16_t *tokens, int64_t count, char *err, size_t errlen) {
    if (count < 0 || count > INT32_MAX) return set_error(err, errlen, "%s: %lld tokens do not fit a shard", path, (long long)count);
    size_t n = strlen(path) + 8;
    char *tmp = (char *)xmalloc(n);
    snprintf(tmp, n, "%s.tmp", path);
    int32_t header[SHARD_HEADER_INTS] = {0};
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = (int32_t)count;
    FILE *f = fopen(tmp, "wb");
    if (f == NULL) { set_error(err, errlen, "%s: cannot create (%s)", tmp, strerror(errno)); free(tmp); return -1; }
    int ok = fwrite(header, sizeof header, 1, f) == 1 && fwrite(tokens, sizeof(uint16_t), (size_t)count, f) == (size_t)count;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        set_error(err, errlen, "%s: write failed (%s)", ok ? path : tmp, strerror(errno));
        remove(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}
