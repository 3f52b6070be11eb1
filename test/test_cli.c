// test_cli.c: the trainers' flags: defaults (the paper's recipe), both spellings, and every kind of
// bad input giving an error that names the flag.
#include <stdio.h>
#include <string.h>

#include "../common/cli.h"
#include "../common/json.h"
#include "../common/utils.h"

static int failures = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static int parse(TrainArgs *args, char *err, size_t errlen, const char *a1, const char *a2, const char *a3, const char *a4) {
    char *argv[6] = {"train", (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    int argc = 1;
    while (argc < 5 && argv[argc] != NULL) argc++;
    return cli_parse(args, argc, argv, err, errlen);
}

static void expect_error(const char *a1, const char *a2, const char *a3, const char *a4, const char *fragment) {
    TrainArgs args;
    char err[256] = "";
    int rc = parse(&args, err, sizeof(err), a1, a2, a3, a4);
    EXPECT(rc == -1 && strstr(err, fragment) != NULL, "%s %s %s %s: rc %d, error '%s', expected '%s'", a1, a2 ? a2 : "",
           a3 ? a3 : "", a4 ? a4 : "", rc, err, fragment);
}

int main(void) {
    TrainArgs args;
    char err[256] = "";
    EXPECT(parse(&args, err, sizeof(err), "--config", "c.json", NULL, NULL) == 0, "%s", err);
    EXPECT(args.lr == 3e-4 && args.min_lr_ratio == 0.1 && args.warmup_steps == 1024 && args.weight_decay == 0.1 &&
           args.beta1 == 0.9 && args.beta2 == 0.95 && args.eps == 1e-15 && args.max_norm == 1.0 && args.seed == 42 &&
           args.checkpoint_interval == 2048 && args.keep_latest_k == 2 && !args.resume && !args.no_decay_set,
           "defaults are not the paper's recipe");
    EXPECT(parse(&args, err, sizeof(err), "--config=c.json", "--lr=1e-3", "--steps", "7") == 0, "%s", err);
    EXPECT(args.lr == 1e-3 && args.steps == 7 && strcmp(args.config, "c.json") == 0, "--name=value form");
    EXPECT(parse(&args, err, sizeof(err), "--config", "c", "--dry-run", "--no-decay-set") == 0 && args.dry_run && args.no_decay_set, "switches");

    expect_error("--config", "c", "--bogus", "1", "--bogus: unknown flag");
    expect_error("--config", "c", "--steps", NULL, "--steps: missing value");
    expect_error("--steps", "5", NULL, NULL, "--config: missing");
    expect_error("--config", "c", "--batch-size", "0", "--batch-size: must be");
    expect_error("--config", "c", "--seq-len", "-4", "--seq-len: must be");
    expect_error("--config", "c", "--grad-accum", "0", "--grad-accum: must be");
    expect_error("--config", "c", "--steps", "0", "--steps: must be");
    expect_error("--config", "c", "--lr", "abc", "--lr: expected a number");
    expect_error("--config", "c", "--lr", "-1", "--lr: must be");
    expect_error("--config", "c", "--batch-size", "4x", "--batch-size: expected an integer");
    expect_error("--config", "c", "--batch-size", "1.5", "--batch-size: expected an integer");
    expect_error("--config", "c", "--lr", "nan", "--lr: expected a number");
    expect_error("--config", "c", "--min-lr-ratio", "2", "--min-lr-ratio: must be in");
    expect_error("--config", "c", "--beta2", "1", "--beta2: must be in");
    expect_error("--config", "c", "--batch-size", "99999999999", "--batch-size: must be");
    expect_error("--config", "c", "--resume", NULL, "--resume: needs --out");
    expect_error("--config", "c", "--dry-run=1", NULL, "--dry-run: takes no value");
    expect_error("--config", "c", "stray", NULL, "stray: unexpected argument");
    expect_error("--config", "c", "--reset-state-at-eot", NULL, "--reset-state-at-eot: not implemented");
    expect_error("--config", "c", "--dtype", "fp16", "--dtype: expected bf16 or f32");
    EXPECT(parse(&args, err, sizeof(err), "--config", "c", NULL, NULL) == 0 && strcmp(args.dtype, "bf16") == 0, "--dtype default");
    EXPECT(parse(&args, err, sizeof(err), "--config", "c", "--dtype", "f32") == 0 && strcmp(args.dtype, "f32") == 0, "--dtype f32");
    expect_error("--config", "c", "--recompute", "3", "--recompute: must be");
    expect_error("--config", "c", "--recompute", "0", "--recompute: must be");
    EXPECT(parse(&args, err, sizeof(err), "--config", "c", NULL, NULL) == 0 && args.recompute == 2,
           "--recompute default");
    EXPECT(parse(&args, err, sizeof(err), "--config", "c", "--recompute", "1") == 0 && args.recompute == 1,
           "--recompute 1");

    // the JSON saved in checkpoints parses and holds the values
    EXPECT(parse(&args, err, sizeof(err), "--config", "dir/\"q\".json", "--lr", "0.001") == 0, "%s", err);
    char *json = cli_to_json(&args);
    JsonValue *root = json_parse(json, strlen(json), err, sizeof(err));
    EXPECT(root != NULL, "cli_to_json is not JSON: %s: %s", err, json);
    if (root) {
        const JsonValue *lr = json_get(root, "lr"), *config = json_get(root, "config"), *resume = json_get(root, "resume");
        EXPECT(lr && lr->type == JSON_NUMBER && lr->number == 0.001, "lr in JSON");
        EXPECT(config && config->type == JSON_STRING && strcmp(config->string, "dir/\"q\".json") == 0, "config in JSON");
        EXPECT(resume && resume->type == JSON_BOOL && !resume->boolean, "resume in JSON");
        json_free(root);
    }
    free(json);
    printf("%s: %d failures\n", failures ? "FAIL" : "OK", failures);
    return failures ? 1 : 0;
}
