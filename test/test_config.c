// test_config.c: the model config (common/config.h).
// 1. the paper configs load and the dry-run summary prints their exact parameter counts
//    (417,537,012 and 1,462,646,004, mdn-spec.md §1); fla's defaults and the derived sizes.
// 2. malformed configs are errors that name the file; unknown keys are only warnings.
// 3. config_to_json round-trips through config_parse.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/config.h"

static int failures = 0;

static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) failures++;
}

// the "params: N" line of the summary
static long long summary_params(const MdnConfig *c) {
    FILE *f = tmpfile();
    if (f == NULL) { perror("tmpfile"); exit(1); }
    config_print_summary(c, f);
    rewind(f);
    char line[512];
    long long n = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "params: ", 8) == 0) n = atoll(line + 8);
    fclose(f);
    return n;
}

static void paper_config(const char *path, long long expected, int D, int K, int I) {
    MdnConfig c;
    char err[512], what[600];
    int rc = config_load(&c, path, err, sizeof err);
    snprintf(what, sizeof what, "%s loads%s%s", path, rc ? ": " : "", rc ? err : "");
    check(rc == 0, what);
    if (rc != 0) return;
    long long n = summary_params(&c);
    snprintf(what, sizeof what, "%s: params: %lld (expected %lld)", path, n, expected);
    check(n == expected && config_num_params(&c) == expected, what);
    snprintf(what, sizeof what, "%s: D %d K %d Vh %d I %d", path, c.hidden_size, c.head_dim, c.value_dim, c.intermediate_size);
    check(c.hidden_size == D && c.head_dim == K && c.value_dim == 2 * K && c.intermediate_size == I &&
          c.num_hidden_layers == 21 && c.num_heads == 6 && c.vocab_size == 50257, what);
}

// parse `json` and expect an error that contains `needle` and the file name
static void expect_error(const char *json, const char *needle) {
    MdnConfig c;
    char err[512] = "", what[900];
    int rc = config_parse(&c, json, strlen(json), "bad.json", 1, err, sizeof err);
    snprintf(what, sizeof what, "rejects %-50s -> %s", json, rc ? err : "(accepted)");
    check(rc != 0 && strstr(err, "bad.json") != NULL && strstr(err, needle) != NULL, what);
}

int main(void) {
    paper_config("configs/momentum_deltanet_400M.json", 417537012LL, 1024, 128, 2816);
    paper_config("configs/momentum_deltanet_1B.json", 1462646004LL, 2048, 256, 5632);

    MdnConfig c;
    char err[512];
    int rc = config_parse(&c, "{}", 2, "empty.json", 1, err, sizeof err);
    check(rc == 0 && c.hidden_size == 2048 && c.num_hidden_layers == 21 && c.num_heads == 6 && c.head_dim == 256 &&
          c.value_dim == 512 && c.conv_size == 4 && c.vocab_size == 32000 && c.min_log_mu == -2.0 && c.has_min_log_mu &&
          c.tau_factor == 1.0 && c.norm_eps == 1e-6 && c.use_gate && c.use_short_conv && c.use_output_correction &&
          c.use_p_times_alpha && !c.tie_word_embeddings && c.intermediate_size == 5632,
          "{} gives fla's defaults");
    const char *odd = "{\"hidden_size\": 64, \"head_dim\": 16, \"expand_v\": 1.5, \"num_heads\": 2, \"min_log_mu\": null,"
                      " \"some_new_key\": 3, \"fuse_norm\": false, \"num_v_heads\": 2}";
    rc = config_parse(&c, odd, strlen(odd), "odd.json", 0, err, sizeof err);
    check(rc == 0 && c.value_dim == 24 && !c.has_min_log_mu && c.intermediate_size == 256,
          "expand_v 1.5, min_log_mu null, num_v_heads == num_heads, unknown key (warning above) accepted");

    expect_error("", "empty");
    expect_error("   \n", "empty");
    expect_error("{\"hidden_size\": 64,", "malformed JSON");
    expect_error("[1, 2]", "object");
    expect_error("{\"model_type\": \"llama\"}", "model_type");
    expect_error("{\"head_dim\": 16, \"expand_v\": 0.3}", "expand_v");
    expect_error("{\"expand_v\": 0}", "expand_v");
    expect_error("{\"num_heads\": 4, \"num_v_heads\": 2}", "num_v_heads");
    expect_error("{\"hidden_size\": 0}", "hidden_size");
    expect_error("{\"num_hidden_layers\": -3}", "num_hidden_layers");
    expect_error("{\"vocab_size\": 0}", "vocab_size");
    expect_error("{\"conv_size\": 0}", "conv_size");
    expect_error("{\"head_dim\": 12.5}", "integer");
    expect_error("{\"hidden_size\": \"big\"}", "number");
    expect_error("{\"use_gate\": 1}", "true or false");
    expect_error("{\"attn\": {\"layers\": [3, 7]}}", "not supported");
    expect_error("{\"use_lora_gate\": true}", "not supported");
    expect_error("{\"hidden_act\": \"gelu\"}", "hidden_act");
    expect_error("{\"tau_factor\": 0}", "tau_factor");
    expect_error("{\"min_log_mu\": 0.5}", "min_log_mu");
    expect_error("{\"intermediate_size\": -1}", "intermediate_size");

    // round trip through the exporter's JSON
    const char *paths[] = {"configs/momentum_deltanet_400M.json", "configs/mdn_tiny.json", "test/data/small/config.json"};
    for (int i = 0; i < 3; i++) {
        MdnConfig a, b;
        if (config_load(&a, paths[i], err, sizeof err) != 0) { check(0, err); continue; }
        char *json = config_to_json(&a);
        rc = config_parse(&b, json, strlen(json), "exported", 0, err, sizeof err);
        free(json);
        char what[600];
        snprintf(what, sizeof what, "%s: config_to_json round trip", paths[i]);
        check(rc == 0 && memcmp(&a, &b, sizeof a) == 0, what);
    }
    printf("%s\n", failures ? "FAILED" : "all config checks passed");
    return failures ? 1 : 0;
}
