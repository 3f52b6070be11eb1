// test_dataloader.c: the shard loader. Shards hold distinct token ids (a running counter), so every
// row window can be identified by its first token. Checks: each bad shard is an error naming it;
// batches are the shard's consecutive windows with targets shifted by one; 2 ranks read disjoint
// rows that together are exactly what 1 rank with twice the batch reads (sequential and shuffled,
// across shards and epochs); an epoch reads every window once; get/set position resumes
// identically, also on another number of ranks; reset gives the first batch again; a too-small
// shard is skipped.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/utils.h"
#include "../dataloader/dataloader.h"

#define VOCAB 50257

static int failures = 0;
static char dir[256];

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                    \
            printf(__VA_ARGS__);                                           \
            printf("\n");                                                  \
            failures++;                                                    \
        }                                                                  \
    } while (0)

// a shard of n tokens first, first+1, ...
static void make_shard(const char *name, int first, int n) {
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    uint16_t *t = (uint16_t *)xmalloc((size_t)n * sizeof(uint16_t));
    for (int i = 0; i < n; i++) t[i] = (uint16_t)(first + i);
    if (write_shard(path, t, n, err, sizeof err) != 0) die("%s", err);
    free(t);
}

// raw bytes: header ints h0 h1 h2, then n tokens of value v
static void make_raw(const char *name, int h0, int h1, int h2, int n, int v) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = xfopen(path, "wb");
    int32_t header[SHARD_HEADER_INTS] = {h0, h1, h2};
    fwrite(header, sizeof header, 1, f);
    for (int i = 0; i < n; i++) { uint16_t x = (uint16_t)(i == n / 2 ? v : i); fwrite(&x, 2, 1, f); }
    fclose(f);
}

static void expect_init_error(const char *pattern, const char *fragment1, const char *fragment2) {
    char glob_path[512], err[512] = "";
    snprintf(glob_path, sizeof glob_path, "%s/%s", dir, pattern);
    DataLoader dl;
    int32_t in[64], tg[64];
    int rc = dataloader_init(&dl, glob_path, 2, 8, 0, 1, 0, 1, VOCAB, err, sizeof err);
    if (rc == 0) {  // errors found when a shard is loaded may come at the first batch
        rc = dataloader_next_batch(&dl, in, tg, err, sizeof err);
        dataloader_free(&dl);
    }
    CHECK(rc != 0 && strstr(err, fragment1) != NULL && strstr(err, fragment2) != NULL,
          "%s: expected an error with '%s' and '%s', got rc %d '%s'", pattern, fragment1, fragment2, rc, err);
    if (rc != 0) printf("ok   %s -> %s\n", pattern, err);
}

static DataLoader open_loader(const char *pattern, int B, int T, int rank, int world, int shuffle, uint64_t seed) {
    char glob_path[512], err[512];
    snprintf(glob_path, sizeof glob_path, "%s/%s", dir, pattern);
    DataLoader dl;
    if (dataloader_init(&dl, glob_path, B, T, rank, world, shuffle, seed, VOCAB, err, sizeof err) != 0) die("%s", err);
    return dl;
}

static void next(DataLoader *dl, int32_t *in, int32_t *tg) {
    char err[512];
    if (dataloader_next_batch(dl, in, tg, err, sizeof err) != 0) die("%s", err);
}

// 1 rank with 2B rows == ranks 0 and 1 with B rows each, for `steps` steps
static void check_two_ranks(const char *pattern, int B, int T, int shuffle, int steps) {
    DataLoader one = open_loader(pattern, 2 * B, T, 0, 1, shuffle, 7);
    DataLoader r0 = open_loader(pattern, B, T, 0, 2, shuffle, 7), r1 = open_loader(pattern, B, T, 1, 2, shuffle, 7);
    size_t n = (size_t)B * T;
    int32_t *in1 = xmalloc(2 * n * 4), *tg1 = xmalloc(2 * n * 4), *in0 = xmalloc(n * 4), *tg0 = xmalloc(n * 4),
            *inr = xmalloc(n * 4), *tgr = xmalloc(n * 4);
    int same = 1, disjoint = 1;
    for (int s = 0; s < steps; s++) {
        next(&one, in1, tg1);
        next(&r0, in0, tg0);
        next(&r1, inr, tgr);
        same &= memcmp(in1, in0, n * 4) == 0 && memcmp(tg1, tg0, n * 4) == 0 && memcmp(in1 + n, inr, n * 4) == 0 &&
                memcmp(tg1 + n, tgr, n * 4) == 0;
        for (int a = 0; a < B; a++)
            for (int b = 0; b < B; b++) disjoint &= in0[a * T] != inr[b * T];
    }
    CHECK(same, "%s shuffle %d: ranks 0+1 with B=%d differ from 1 rank with B=%d", pattern, shuffle, B, 2 * B);
    CHECK(disjoint, "%s shuffle %d: ranks 0 and 1 read the same row", pattern, shuffle);
    if (same && disjoint) printf("ok   2 ranks x B=%d == 1 rank x B=%d, disjoint (shuffle %d, %d steps)\n", B, 2 * B, shuffle, steps);
    dataloader_free(&one); dataloader_free(&r0); dataloader_free(&r1);
    free(in1); free(tg1); free(in0); free(tg0); free(inr); free(tgr);
}

// one epoch reads each window once: count the first tokens seen over batches_per_epoch steps
static void check_epoch_coverage(int shuffle, uint64_t seed, int32_t *first_tokens_out) {
    int B = 3, T = 10;
    DataLoader dl = open_loader("good_*.bin", B, T, 0, 1, shuffle, seed);
    int64_t steps = dataloader_batches_per_epoch(&dl);
    // windows per shard (300, 500, 701 tokens): 29, 49, 70 -> batches 9, 16, 23
    CHECK(steps == 9 + 16 + 23, "batches per epoch %lld, expected 48", (long long)steps);
    char *seen = xcalloc(4000, 1);
    int32_t in[30], tg[30];
    int dup = 0, bad_target = 0;
    for (int64_t s = 0; s < steps; s++) {
        next(&dl, in, tg);
        for (int b = 0; b < B; b++) {
            dup += seen[in[b * T]]++;
            for (int t = 0; t < T; t++) bad_target += tg[b * T + t] != in[b * T + t] + 1 || in[b * T + t] != in[b * T] + t;
            if (s < 16) first_tokens_out[s * B + b] = in[b * T];
        }
    }
    CHECK(dup == 0 && bad_target == 0, "shuffle %d: %d windows read twice in an epoch, %d bad tokens", shuffle, dup, bad_target);
    CHECK(dl.pos.epoch == 0 || dl.pos.row_index == 0, "epoch end");
    next(&dl, in, tg);
    CHECK(dl.pos.epoch == 1, "after %lld batches the loader should be in epoch 1, is in %lld", (long long)steps, (long long)dl.pos.epoch);
    if (dup == 0 && bad_target == 0) printf("ok   one epoch reads every window once (shuffle %d)\n", shuffle);
    free(seen);
    dataloader_free(&dl);
}

static void check_resume(int shuffle) {
    int B = 2, T = 16;
    DataLoader a = open_loader("good_*.bin", 2 * B, T, 0, 1, shuffle, 99);
    int32_t in[128], tg[128], in2[128], tg2[128];
    for (int s = 0; s < 23; s++) next(&a, in, tg);  // well into shard 2 (and past epochs for small shards)
    DataLoaderPosition pos = dataloader_get_position(&a);
    // same world size: a fresh loader set to pos continues identically
    DataLoader b = open_loader("good_*.bin", 2 * B, T, 0, 1, shuffle, 99);
    char err[512];
    if (dataloader_set_position(&b, pos, err, sizeof err) != 0) die("%s", err);
    // another world size: 2 ranks of B rows from the same position
    DataLoader r0 = open_loader("good_*.bin", B, T, 0, 2, shuffle, 99), r1 = open_loader("good_*.bin", B, T, 1, 2, shuffle, 99);
    if (dataloader_set_position(&r0, pos, err, sizeof err) != 0 || dataloader_set_position(&r1, pos, err, sizeof err) != 0) die("%s", err);
    int same = 1, same2 = 1;
    size_t n = (size_t)B * T;
    for (int s = 0; s < 40; s++) {  // crosses shards and an epoch
        next(&a, in, tg);
        next(&b, in2, tg2);
        same &= memcmp(in, in2, 2 * n * 4) == 0 && memcmp(tg, tg2, 2 * n * 4) == 0;
        next(&r0, in2, tg2);
        next(&r1, in2 + n, tg2 + n);
        same2 &= memcmp(in, in2, 2 * n * 4) == 0 && memcmp(tg, tg2, 2 * n * 4) == 0;
    }
    CHECK(same, "shuffle %d: set_position did not resume identically", shuffle);
    CHECK(same2, "shuffle %d: resuming on 2 ranks differs from 1 rank", shuffle);
    if (same && same2) printf("ok   get/set position resumes identically, on 1 and 2 ranks (shuffle %d)\n", shuffle);
    // reset: the first batch again
    DataLoader c = open_loader("good_*.bin", 2 * B, T, 0, 1, shuffle, 99);
    next(&c, in, tg);
    dataloader_reset(&a);
    next(&a, in2, tg2);
    CHECK(memcmp(in, in2, 2 * n * 4) == 0, "shuffle %d: reset does not give the first batch again", shuffle);
    // a position outside the shards is an error
    pos.shard_index = 17;
    CHECK(dataloader_set_position(&c, pos, err, sizeof err) != 0 && strstr(err, "not in these") != NULL,
          "a position outside the shards was accepted");
    dataloader_free(&a); dataloader_free(&b); dataloader_free(&c); dataloader_free(&r0); dataloader_free(&r1);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/mdn_test_dl.XXXXXX");
    if (mkdtemp(dir) == NULL) die("cannot make a temporary directory");
    // three good shards of distinct tokens, unsorted creation order: the glob is read sorted
    make_shard("good_002.bin", 800, 701);
    make_shard("good_000.bin", 0, 300);
    make_shard("good_001.bin", 300, 500);

    // the first batch: consecutive windows of shard 0, targets shifted by one
    DataLoader dl = open_loader("good_*.bin", 2, 8, 0, 1, 0, 1);
    int32_t in[16], tg[16];
    next(&dl, in, tg);
    int ok = 1;
    for (int i = 0; i < 16; i++) ok &= in[i] == i && tg[i] == i + 1;
    next(&dl, in, tg);
    ok &= in[0] == 16 && tg[15] == 32;
    CHECK(ok, "the first batches are not the first windows of good_000.bin");
    CHECK(dl.num_shards == 3 && strstr(dl.shard_paths[0], "good_000.bin") != NULL, "shards not in sorted order");
    if (ok) printf("ok   batches are consecutive windows, targets shifted\n");
    dataloader_free(&dl);

    // each error names the shard (or the glob)
    make_raw("badmagic_0.bin", 12345, 1, 100, 100, 0);
    make_raw("badversion_0.bin", SHARD_MAGIC, 7, 100, 100, 0);
    make_raw("short_0.bin", SHARD_MAGIC, 1, 100, 60, 0);
    make_raw("long_0.bin", SHARD_MAGIC, 1, 100, 101, 0);
    make_raw("bigtoken_0.bin", SHARD_MAGIC, 1, 100, 100, VOCAB);
    make_raw("tiny_0.bin", SHARD_MAGIC, 1, 10, 10, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/header_0.bin", dir);
    FILE *f = xfopen(path, "wb");
    fwrite("abc", 3, 1, f);
    fclose(f);
    expect_init_error("nothing_*.bin", "nothing_*.bin", "no shard matches");
    expect_init_error("badmagic_*.bin", "badmagic_0.bin", "bad magic 12345");
    expect_init_error("badversion_*.bin", "badversion_0.bin", "version 7");
    expect_init_error("short_*.bin", "short_0.bin", "does not match the header's 100 tokens");
    expect_init_error("long_*.bin", "long_0.bin", "does not match the header's 100 tokens");
    expect_init_error("bigtoken_*.bin", "bigtoken_0.bin", "token id 50257 >= vocab size 50257");
    expect_init_error("header_*.bin", "header_0.bin", "too short");
    expect_init_error("tiny_*.bin", "tiny_*.bin", "no shard holds one global batch");

    // a shard too small for a global batch is skipped; the others are read
    make_shard("skip_000.bin", 0, 300);
    make_shard("skip_001.bin", 1000, 10);
    make_shard("skip_002.bin", 2000, 300);
    dl = open_loader("skip_*.bin", 2, 8, 0, 1, 0, 1);
    int saw_small = 0;
    for (int s = 0; s < 40; s++) { next(&dl, in, tg); saw_small |= in[0] >= 1000 && in[0] < 2000; }
    CHECK(!saw_small, "the too-small shard was read");
    if (!saw_small) printf("ok   a shard smaller than a global batch is skipped\n");
    dataloader_free(&dl);

    check_two_ranks("good_*.bin", 3, 8, 0, 200);
    check_two_ranks("good_*.bin", 3, 8, 1, 200);
    check_two_ranks("good_*.bin", 1, 33, 1, 100);

    int32_t order_seq[48], order_shuf[48], order_shuf2[48], order_other_seed[48];
    check_epoch_coverage(0, 5, order_seq);
    check_epoch_coverage(1, 5, order_shuf);
    check_epoch_coverage(1, 5, order_shuf2);
    check_epoch_coverage(1, 6, order_other_seed);
    CHECK(memcmp(order_seq, order_shuf, sizeof order_seq) != 0, "shuffle did not change the order");
    CHECK(memcmp(order_shuf, order_shuf2, sizeof order_seq) == 0, "the same seed gave another order");
    CHECK(memcmp(order_shuf, order_other_seed, sizeof order_seq) != 0, "another seed gave the same order");

    check_resume(0);
    check_resume(1);

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", dir);
    printf("%s: %d failures\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
