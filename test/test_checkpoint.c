// test_checkpoint.c: the training-state file: exact round trip, a flipped bit and a truncation
// caught, the fallback to the previous checkpoint, keep-latest-k, and a write failure (full disk,
// via a .tmp that is a link to /dev/full) leaving the previous file intact.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/checkpoint.h"
#include "../common/utils.h"

static int failures = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

#define N 1003

static TrainState make_state(int64_t step) {
    TrainState s;
    memset(&s, 0, sizeof(s));
    s.step = step;
    s.num_updates = step - 1;
    s.nan_steps_total = 1;
    s.nan_steps_in_row = 0;
    s.data_position = (DataLoaderPosition){.shard_index = 2, .row_index = 17 + step, .epoch = 3, .rng_state = 0xfedcba9876543210ULL};
    s.sample_rng = 0x8000000000000001ULL;
    s.world_size = 2;
    s.config_json = xstrdup("{\"hidden_size\": 8, \"note\": \"q\\\"uote\"}");
    s.flags_json = xstrdup("{\"lr\":0.0003}");
    s.num_params = N;
    s.params = xmalloc(N * sizeof(real));
    s.adam_m = xmalloc(N * sizeof(real));
    s.adam_v = xmalloc(N * sizeof(real));
    for (int i = 0; i < N; i++) {
        s.params[i] = (real)(i * 0.001 + step);
        s.adam_m[i] = (real)(-i * 1e-7);
        s.adam_v[i] = (real)(i * 1e-9);
    }
    return s;
}

static int same_state(const TrainState *a, const TrainState *b) {
    return a->step == b->step && a->num_updates == b->num_updates && a->nan_steps_total == b->nan_steps_total &&
           a->nan_steps_in_row == b->nan_steps_in_row && memcmp(&a->data_position, &b->data_position, sizeof(DataLoaderPosition)) == 0 &&
           a->sample_rng == b->sample_rng && a->world_size == b->world_size && strcmp(a->config_json, b->config_json) == 0 &&
           strcmp(a->flags_json, b->flags_json) == 0 && a->num_params == b->num_params &&
           memcmp(a->params, b->params, N * sizeof(real)) == 0 && memcmp(a->adam_m, b->adam_m, N * sizeof(real)) == 0 &&
           memcmp(a->adam_v, b->adam_v, N * sizeof(real)) == 0;
}

static void save(const char *dir, int64_t step) {
    TrainState s = make_state(step);
    char *path = checkpoint_path(dir, step), err[512];
    EXPECT(checkpoint_save(path, &s, err, sizeof(err)) == 0, "save: %s", err);
    free(path);
    checkpoint_state_free(&s);
}

int main(void) {
    char dir[] = "/tmp/mdn_test_checkpoint_XXXXXX";
    if (mkdtemp(dir) == NULL) die("mkdtemp failed");
    char err[1024], path_out[1024];

    // round trip, every field to the bit
    save(dir, 10);
    TrainState want = make_state(10), got;
    char *path10 = checkpoint_path(dir, 10);
    EXPECT(checkpoint_load(path10, &got, err, sizeof(err)) == 0, "load: %s", err);
    EXPECT(same_state(&want, &got), "round trip changed the state");
    checkpoint_state_free(&got);

    // a flipped bit in the data: checksum mismatch naming the file
    save(dir, 20);
    save(dir, 30);
    char *path30 = checkpoint_path(dir, 30), *path20 = checkpoint_path(dir, 20);
    FILE *f = fopen(path30, "r+b");
    fseek(f, -100, SEEK_END);
    int c = fgetc(f);
    fseek(f, -100, SEEK_END);
    fputc(c ^ 4, f);
    fclose(f);
    EXPECT(checkpoint_load(path30, &got, err, sizeof(err)) == -1 && strstr(err, path30) && strstr(err, "checksum"), "flipped bit: %s", err);
    // truncated: safetensors' size check
    EXPECT(truncate(path20, 5000) == 0, "truncate");
    EXPECT(checkpoint_load(path20, &got, err, sizeof(err)) == -1 && strstr(err, path20), "truncated: %s", err);
    // not a checkpoint at all
    char junk[1100];
    snprintf(junk, sizeof(junk), "%s/junk", dir);
    f = fopen(junk, "wb"); fputs("hello", f); fclose(f);
    EXPECT(checkpoint_load(junk, &got, err, sizeof(err)) == -1 && strstr(err, junk), "junk: %s", err);

    // latest valid: 30 (corrupt) and 20 (truncated) are moved aside, 10 is loaded
    int64_t *steps;
    EXPECT(checkpoint_list(dir, &steps) == 3 && steps[0] == 30 && steps[2] == 10, "list");
    free(steps);
    EXPECT(checkpoint_load_latest(dir, &got, path_out, sizeof(path_out)) == 1 && got.step == 10 && strcmp(path_out, path10) == 0,
           "fallback to the previous checkpoint: got %s", path_out);
    checkpoint_state_free(&got);
    EXPECT(checkpoint_list(dir, &steps) == 1, "invalid checkpoints should be moved aside");
    free(steps);
    snprintf(path_out, sizeof(path_out), "%s.invalid", path30);
    EXPECT(access(path_out, F_OK) == 0, "%s missing", path_out);

    // keep-latest-k
    save(dir, 40);
    save(dir, 50);
    checkpoint_prune(dir, 2);
    EXPECT(checkpoint_list(dir, &steps) == 2 && steps[0] == 50 && steps[1] == 40, "prune to 2");
    free(steps);

    // a full disk: the write fails with a message naming the file, the old checkpoint stays intact
    // and no temporary is left behind
    char *path50 = checkpoint_path(dir, 50), tmp[1100];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path50);
    EXPECT(symlink("/dev/full", tmp) == 0, "symlink");
    TrainState s60 = make_state(60);
    EXPECT(checkpoint_save(path50, &s60, err, sizeof(err)) == -1 && strstr(err, path50), "full disk: %s", err);
    printf("full disk gives: %s\n", err);
    checkpoint_state_free(&s60);
    TrainState want50 = make_state(50);
    EXPECT(checkpoint_load(path50, &got, err, sizeof(err)) == 0 && same_state(&want50, &got), "old checkpoint damaged: %s", err);
    checkpoint_state_free(&got);
    checkpoint_state_free(&want50);
    struct stat sb;
    EXPECT(lstat(tmp, &sb) != 0, "temporary left behind");
    // an unwritable place
    char *nowhere = checkpoint_path("/nonexistent/dir", 1);
    TrainState s1 = make_state(1);
    EXPECT(checkpoint_save(nowhere, &s1, err, sizeof(err)) == -1 && strstr(err, "/nonexistent/dir"), "unwritable: %s", err);
    checkpoint_state_free(&s1);
    // an empty directory has no checkpoint
    char empty[1100];
    snprintf(empty, sizeof(empty), "%s/empty", dir);
    mkdir(empty, 0755);
    EXPECT(checkpoint_load_latest(empty, &got, path_out, sizeof(path_out)) == 0, "empty dir");

    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", dir);
    checkpoint_state_free(&want);
    free(path10); free(path20); free(path30); free(path50); free(nowhere);
    printf("%s: %d failures\n", failures ? "FAIL" : "OK", failures);
    return failures ? 1 : 0;
}
