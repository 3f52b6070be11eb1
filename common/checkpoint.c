// checkpoint.c: training-state checkpoints (see checkpoint.h).
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"
#include "utils.h"

#define CHECKPOINT_FORMAT "mdn.c training state"
#define CHECKPOINT_VERSION "1"

// The checksum: 64-bit FNV-1a over 8-byte little-endian words (bytes at the tail one at a time) of
// every metadata pair but "checksum" itself (in key order: "key\0value\0") and then of the three
// tensors' bytes. safetensors' own checks catch a truncated or garbled header; this catches a
// flipped bit in the data or in a metadata value. Words instead of bytes: 8x fewer multiplies, so
// hashing a 400M model's 5 GB state costs a few seconds, not tens.
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static uint64_t fnv1a_update(uint64_t hash, const void *data, size_t bytes) {
    const unsigned char *p = (const unsigned char *)data;
    size_t words = bytes / 8;
    for (size_t i = 0; i < words; i++) {
        uint64_t word = 0;
        for (int b = 0; b < 8; b++) word |= (uint64_t)p[8 * i + b] << (8 * b);
        hash = (hash ^ word) * FNV_PRIME;
    }
    for (size_t i = 8 * words; i < bytes; i++) hash = (hash ^ p[i]) * FNV_PRIME;
    return hash;
}

typedef struct { const char *key, *value; } MetaPair;

static int compare_pairs(const void *a, const void *b) {
    return strcmp(((const MetaPair *)a)->key, ((const MetaPair *)b)->key);
}

// the checksum of metadata pairs (sorted here; "checksum" skipped) and the tensors' data
static uint64_t state_checksum(MetaPair *pairs, int num_pairs, const void *const *datas, const size_t *bytes, int num_datas) {
    qsort(pairs, (size_t)num_pairs, sizeof(MetaPair), compare_pairs);
    uint64_t hash = FNV_OFFSET;
    for (int i = 0; i < num_pairs; i++) {
        if (strcmp(pairs[i].key, "checksum") == 0) continue;
        hash = fnv1a_update(hash, pairs[i].key, strlen(pairs[i].key) + 1);
        hash = fnv1a_update(hash, pairs[i].value, strlen(pairs[i].value) + 1);
    }
    for (int i = 0; i < num_datas; i++) hash = fnv1a_update(hash, datas[i], bytes[i]);
    return hash;
}

static const char *TENSOR_NAMES[3] = {"params", "adam_m", "adam_v"};

char *checkpoint_path(const char *dir, int64_t step) {
    size_t len = strlen(dir) + 64;
    char *path = (char *)xmalloc(len);
    snprintf(path, len, "%s/checkpoint_%08" PRId64 ".safetensors", dir, step);
    return path;
}

// make the rename that published a file durable: fsync its directory
static void fsync_directory_of(const char *path) {
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL) strcpy(dir, ".");
    else if (slash == dir) slash[1] = '\0';
    else *slash = '\0';
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        fsync(fd); // best effort: some file systems refuse fsync on directories
        close(fd);
    }
    free(dir);
}

// append metadata pair key = value (as decimal text kept in numbers[*n])
static void add_integer(MetaPair *pairs, char numbers[][32], int *n, const char *key, uint64_t value, int is_unsigned) {
    if (is_unsigned) snprintf(numbers[*n], 32, "%" PRIu64, value);
    else snprintf(numbers[*n], 32, "%" PRId64, (int64_t)value);
    pairs[*n] = (MetaPair){key, numbers[*n]};
    (*n)++;
}

int checkpoint_save(const char *path, const TrainState *state, char *err, size_t errlen) {
    enum { NUM_META = 16 };
    char numbers[NUM_META][32];
    MetaPair pairs[NUM_META];
    int n = 0;
    pairs[n++] = (MetaPair){"format", CHECKPOINT_FORMAT};
    pairs[n++] = (MetaPair){"version", CHECKPOINT_VERSION};
    add_integer(pairs, numbers, &n, "step", state->step, 0);
    add_integer(pairs, numbers, &n, "num_updates", state->num_updates, 0);
    add_integer(pairs, numbers, &n, "nan_steps_total", state->nan_steps_total, 0);
    add_integer(pairs, numbers, &n, "nan_steps_in_row", state->nan_steps_in_row, 0);
    add_integer(pairs, numbers, &n, "data_shard_index", state->data_position.shard_index, 0);
    add_integer(pairs, numbers, &n, "data_row_index", state->data_position.row_index, 0);
    add_integer(pairs, numbers, &n, "data_epoch", state->data_position.epoch, 0);
    add_integer(pairs, numbers, &n, "world_size", state->world_size, 0);
    add_integer(pairs, numbers, &n, "num_params", state->num_params, 0);
    // the two RNG states are full 64-bit unsigned values
    add_integer(pairs, numbers, &n, "data_rng_state", state->data_position.rng_state, 1);
    add_integer(pairs, numbers, &n, "sample_rng", state->sample_rng, 1);
    pairs[n++] = (MetaPair){"config", state->config_json};
    pairs[n++] = (MetaPair){"flags", state->flags_json};

    const void *datas[3] = {state->params, state->adam_m, state->adam_v};
    size_t bytes[3];
    for (int i = 0; i < 3; i++) bytes[i] = state->num_params * sizeof(real);
    uint64_t checksum = state_checksum(pairs, n, datas, bytes, 3);
    char checksum_text[32];
    snprintf(checksum_text, sizeof(checksum_text), "fnv1a64:%016" PRIx64, checksum);
    pairs[n++] = (MetaPair){"checksum", checksum_text};

    StWriter writer;
    st_writer_init(&writer);
    for (int i = 0; i < n; i++) st_writer_add_metadata(&writer, pairs[i].key, pairs[i].value);
    int64_t shape[1] = {(int64_t)state->num_params};
    StDtype dtype = sizeof(real) == sizeof(double) ? ST_F64 : ST_F32;
    for (int i = 0; i < 3; i++) st_writer_add(&writer, TENSOR_NAMES[i], dtype, 1, shape, datas[i]);
    int status = st_writer_save(&writer, path, err, errlen);
    st_writer_free(&writer);
    if (status == 0) fsync_directory_of(path);
    return status;
}

void checkpoint_state_free(TrainState *state) {
    free(state->config_json);
    free(state->flags_json);
    free(state->params);
    free(state->adam_m);
    free(state->adam_v);
    memset(state, 0, sizeof(*state));
}

// a metadata value as a signed (or, with is_unsigned, unsigned) 64-bit integer
static int meta_integer(const SafeTensors *st, const char *key, int is_unsigned, uint64_t *out, char *err, size_t errlen) {
    const char *text = st_metadata(st, key);
    if (text == NULL) return set_error(err, errlen, "%s: not a training checkpoint (no \"%s\" in its metadata)", st->path, key);
    char *end = NULL;
    errno = 0;
    if (is_unsigned) *out = strtoull(text, &end, 10);
    else *out = (uint64_t)strtoll(text, &end, 10);
    if (end == text || *end != '\0' || errno != 0 || (is_unsigned && text[0] == '-'))
        return set_error(err, errlen, "%s: metadata \"%s\" is not an integer: '%s'", st->path, key, text);
    return 0;
}

int checkpoint_load(const char *path, TrainState *state, char *err, size_t errlen) {
    memset(state, 0, sizeof(*state));
    SafeTensors st;
    if (st_read(&st, path, err, errlen) != 0) return -1;
    int status = -1;
    const char *format = st_metadata(&st, "format");
    const char *version = st_metadata(&st, "version");
    const char *checksum_text = st_metadata(&st, "checksum");
    const char *config = st_metadata(&st, "config");
    const char *flags = st_metadata(&st, "flags");
    uint64_t step, num_updates, nan_total, nan_in_row, shard, row, epoch, rng, world, num_params, sample_rng;
    if (format == NULL || strcmp(format, CHECKPOINT_FORMAT) != 0) {
        set_error(err, errlen, "%s: not a training checkpoint (metadata format is not \"%s\")", path, CHECKPOINT_FORMAT);
        goto done;
    }
    if (version == NULL || strcmp(version, CHECKPOINT_VERSION) != 0) {
        set_error(err, errlen, "%s: checkpoint version %s, this build reads version %s", path, version ? version : "(none)",
                  CHECKPOINT_VERSION);
        goto done;
    }
    if (checksum_text == NULL || config == NULL || flags == NULL) {
        set_error(err, errlen, "%s: checkpoint metadata lacks %s", path, checksum_text == NULL ? "checksum" : config == NULL ? "config" : "flags");
        goto done;
    }
    if (meta_integer(&st, "step", 0, &step, err, errlen) || meta_integer(&st, "num_updates", 0, &num_updates, err, errlen) ||
        meta_integer(&st, "nan_steps_total", 0, &nan_total, err, errlen) ||
        meta_integer(&st, "nan_steps_in_row", 0, &nan_in_row, err, errlen) ||
        meta_integer(&st, "data_shard_index", 0, &shard, err, errlen) || meta_integer(&st, "data_row_index", 0, &row, err, errlen) ||
        meta_integer(&st, "data_epoch", 0, &epoch, err, errlen) || meta_integer(&st, "data_rng_state", 1, &rng, err, errlen) ||
        meta_integer(&st, "sample_rng", 1, &sample_rng, err, errlen) || meta_integer(&st, "world_size", 0, &world, err, errlen) ||
        meta_integer(&st, "num_params", 0, &num_params, err, errlen))
        goto done;
    StDtype dtype = sizeof(real) == sizeof(double) ? ST_F64 : ST_F32;
    const void *datas[3];
    size_t bytes[3];
    for (int i = 0; i < 3; i++) {
        const StTensor *t = st_find(&st, TENSOR_NAMES[i]);
        if (t == NULL) { set_error(err, errlen, "%s: checkpoint lacks tensor %s", path, TENSOR_NAMES[i]); goto done; }
        if (t->dtype != dtype || t->ndim != 1 || (uint64_t)t->numel != num_params) {
            set_error(err, errlen, "%s: tensor %s is %s with %" PRId64 " elements, expected %s [%" PRIu64 "]", path,
                      TENSOR_NAMES[i], st_dtype_name(t->dtype), t->numel, st_dtype_name(dtype), num_params);
            goto done;
        }
        datas[i] = st.data + t->begin;
        bytes[i] = t->end - t->begin;
    }
    MetaPair *pairs = (MetaPair *)xmalloc((size_t)(st.metadata_count + 1) * sizeof(MetaPair));
    for (int i = 0; i < st.metadata_count; i++) pairs[i] = (MetaPair){st.metadata_keys[i], st.metadata_values[i]};
    uint64_t checksum = state_checksum(pairs, st.metadata_count, datas, bytes, 3);
    free(pairs);
    char expected[32];
    snprintf(expected, sizeof(expected), "fnv1a64:%016" PRIx64, checksum);
    if (strcmp(expected, checksum_text) != 0) {
        set_error(err, errlen, "%s: checksum mismatch (stored %s, computed %s): the file is corrupt", path, checksum_text, expected);
        goto done;
    }
    state->step = (int64_t)step;
    state->num_updates = (int64_t)num_updates;
    state->nan_steps_total = (int64_t)nan_total;
    state->nan_steps_in_row = (int64_t)nan_in_row;
    state->data_position.shard_index = (int64_t)shard;
    state->data_position.row_index = (int64_t)row;
    state->data_position.epoch = (int64_t)epoch;
    state->data_position.rng_state = rng;
    state->sample_rng = sample_rng;
    state->world_size = (int)world;
    state->num_params = (size_t)num_params;
    state->config_json = xstrdup(config);
    state->flags_json = xstrdup(flags);
    real **outs[3] = {&state->params, &state->adam_m, &state->adam_v};
    for (int i = 0; i < 3; i++) {
        *outs[i] = (real *)xmalloc(bytes[i]);
        memcpy(*outs[i], datas[i], bytes[i]);
    }
    status = 0;
done:
    st_free(&st);
    return status;
}

static int compare_steps_descending(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

int checkpoint_list(const char *dir, int64_t **steps) {
    *steps = NULL;
    DIR *d = opendir(dir);
    if (d == NULL) return -1;
    int count = 0, capacity = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        long long step;
        int consumed = 0;
        // exactly checkpoint_<digits>.safetensors (not .tmp, not .invalid)
        if (sscanf(entry->d_name, "checkpoint_%lld.safetensors%n", &step, &consumed) != 1 || consumed == 0 ||
            entry->d_name[consumed] != '\0' || step < 0)
            continue;
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            *steps = (int64_t *)xrealloc(*steps, (size_t)capacity * sizeof(int64_t));
        }
        (*steps)[count++] = step;
    }
    closedir(d);
    if (count > 0) qsort(*steps, (size_t)count, sizeof(int64_t), compare_steps_descending);
    return count;
}

int checkpoint_load_latest(const char *dir, TrainState *state, char *path_out, size_t path_len) {
    int64_t *steps;
    int count = checkpoint_list(dir, &steps);
    int found = 0;
    for (int i = 0; i < count && !found; i++) {
        char *path = checkpoint_path(dir, steps[i]);
        char err[1024];
        if (checkpoint_load(path, state, err, sizeof(err)) == 0) {
            snprintf(path_out, path_len, "%s", path);
            found = 1;
        } else {
            size_t len = strlen(path) + 16;
            char *aside = (char *)xmalloc(len);
            snprintf(aside, len, "%s.invalid", path);
            int moved = rename(path, aside) == 0;
            if (moved) fprintf(stderr, "warning: %s; moved it to %s, trying the previous checkpoint\n", err, aside);
            else fprintf(stderr, "warning: %s; skipping it, trying the previous checkpoint\n", err);
            free(aside);
        }
        free(path);
    }
    free(steps);
    return found;
}

void checkpoint_prune(const char *dir, int keep_latest_k) {
    if (keep_latest_k <= 0) return;
    int64_t *steps;
    int count = checkpoint_list(dir, &steps);
    for (int i = keep_latest_k; i < count; i++) {
        char *path = checkpoint_path(dir, steps[i]);
        if (remove(path) != 0) fprintf(stderr, "warning: %s: cannot delete old checkpoint (%s)\n", path, strerror(errno));
        free(path);
    }
    free(steps);
}

void checkpoint_truncate_log(const char *path, int64_t last_step) {
    size_t size;
    char err[512];
    char *text = read_file(path, &size, err, sizeof(err));
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
