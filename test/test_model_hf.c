// test_model_hf.c: HF interop and init of layers/model.c.
// 1. export -> import round trip is exact (config and every parameter), for the paper's layer
//    and for a tied-embedding model without conv/gate/correction;
// 2. a bf16 model.safetensors loads as the bf16 values;
// 3. bad directories are errors that name the file (missing config, missing tensor, wrong shape);
// 4. init: the same seed gives the same weights, another seed others; §2's distributions
//    (norms 1, normal std = initializer_range, A_log/Mu_log in log (0,16], dt_bias == mu_bias = softplus^-1(dt)
//    with dt in [1e-3, 0.1], log_factor <= log 4, D_log <= 0).
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/config.h"
#include "../common/safetensors.h"
#include "../layers/model.h"

static int failures = 0;

static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) failures++;
}

static Model *build(const char *json, uint64_t seed) {
    MdnConfig c;
    char err[512];
    if (config_parse(&c, json, strlen(json), "test", 0, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s\n", err);
        exit(1);
    }
    Model *m = model_build(&c, 1, 4);
    model_init_weights(m, seed);
    return m;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) { perror(path); exit(1); }
}

static void round_trip(const char *label, const char *json, const char *dir) {
    Model *m = build(json, 11);
    char err[512], what[700];
    int rc = model_save_hf(m, dir, err, sizeof err);
    snprintf(what, sizeof what, "%s: export to %s%s%s", label, dir, rc ? ": " : "", rc ? err : "");
    check(rc == 0, what);
    Model *back = model_load_hf(dir, 1, 4, err, sizeof err);
    snprintf(what, sizeof what, "%s: import%s%s", label, back ? "" : ": ", back ? "" : err);
    check(back != NULL, what);
    if (back != NULL) {
        snprintf(what, sizeof what, "%s: config and all %zu parameters identical after the round trip", label, m->num_params);
        check(memcmp(&m->config, &back->config, sizeof m->config) == 0 && back->num_params == m->num_params &&
              memcmp(m->params, back->params, m->num_params * sizeof(real)) == 0, what);
        model_free(back);
    }
    model_free(m);
}

int main(void) {
    const char *paper = "{\"hidden_size\": 32, \"num_hidden_layers\": 2, \"num_heads\": 2, \"head_dim\": 8, \"expand_v\": 2,"
                        " \"intermediate_size\": 48, \"vocab_size\": 300, \"tau_factor\": 2, \"min_log_mu\": -1.0}";
    const char *off = "{\"hidden_size\": 32, \"num_hidden_layers\": 1, \"num_heads\": 2, \"head_dim\": 8, \"expand_v\": 1,"
                      " \"vocab_size\": 300, \"min_log_mu\": null, \"use_short_conv\": false, \"use_gate\": false,"
                      " \"use_output_correction\": false, \"tie_word_embeddings\": true}";
    char base[] = "/tmp/test_model_hf_XXXXXX";
    if (mkdtemp(base) == NULL) { perror("mkdtemp"); return 1; }
    char dir[256], path[512], err[512], what[700];

    snprintf(dir, sizeof dir, "%s/paper", base);
    round_trip("paper layer", paper, dir);
    snprintf(dir, sizeof dir, "%s/off", base);
    round_trip("tied, no conv/gate/correction", off, dir);

    // bf16 weights
    Model *m = build(paper, 5);
    snprintf(dir, sizeof dir, "%s/bf16", base);
    if (model_save_hf(m, dir, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 1; }
    uint16_t *half = (uint16_t *)malloc(m->num_params * sizeof(uint16_t));
    for (size_t i = 0; i < m->num_params; i++) half[i] = float_to_bf16(m->params[i]);
    StWriter w;
    st_writer_init(&w);
    for (int i = 0; i < m->num_tensors; i++)
        st_writer_add(&w, m->tensors[i].name, ST_BF16, m->tensors[i].ndim, m->tensors[i].shape, half + m->tensors[i].offset);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (st_writer_save(&w, path, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 1; }
    st_writer_free(&w);
    Model *b = model_load_hf(dir, 1, 4, err, sizeof err);
    int same = b != NULL;
    for (size_t i = 0; same && i < m->num_params; i++) same = b->params[i] == bf16_to_float(half[i]);
    check(same, "bf16 model.safetensors loads as its bf16 values");
    model_free(b);
    free(half);

    // bad directories
    snprintf(dir, sizeof dir, "%s/missing", base);
    b = model_load_hf(dir, 1, 4, err, sizeof err);
    snprintf(what, sizeof what, "missing directory: %s", b ? "(accepted)" : err);
    check(b == NULL && strstr(err, "config.json") != NULL, what);
    // a model.safetensors from another config: a missing tensor, then a wrong shape
    const char *noconv = "{\"hidden_size\": 32, \"num_hidden_layers\": 2, \"num_heads\": 2, \"head_dim\": 8, \"expand_v\": 2,"
                         " \"intermediate_size\": 48, \"vocab_size\": 300, \"use_short_conv\": false}";
    Model *other = build(noconv, 5);
    snprintf(dir, sizeof dir, "%s/other", base);
    if (model_save_hf(other, dir, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 1; }
    model_free(other);
    int rc = model_load_hf_weights(m, dir, err, sizeof err);
    snprintf(what, sizeof what, "weights without the conv tensors: %s", rc ? err : "(accepted)");
    check(rc != 0 && strstr(err, "model.safetensors") != NULL && strstr(err, "missing") != NULL, what);
    const char *wider = "{\"hidden_size\": 32, \"num_hidden_layers\": 2, \"num_heads\": 2, \"head_dim\": 8, \"expand_v\": 2,"
                        " \"intermediate_size\": 64, \"vocab_size\": 300, \"tau_factor\": 2, \"min_log_mu\": -1.0}";
    other = build(wider, 5);
    snprintf(dir, sizeof dir, "%s/wider", base);
    if (model_save_hf(other, dir, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 1; }
    model_free(other);
    rc = model_load_hf_weights(m, dir, err, sizeof err);
    snprintf(what, sizeof what, "weights with another MLP width: %s", rc ? err : "(accepted)");
    check(rc != 0 && strstr(err, "model.safetensors") != NULL, what);
    snprintf(path, sizeof path, "%s/wider/config.json", base);
    write_text(path, "{\"hidden_size\": 32,");
    b = model_load_hf(dir, 1, 4, err, sizeof err);
    snprintf(what, sizeof what, "malformed config.json: %s", b ? "(accepted)" : err);
    check(b == NULL && strstr(err, "config.json") != NULL, what);

    // init
    Model *again = build(paper, 5), *seed6 = build(paper, 6);
    check(memcmp(m->params, again->params, m->num_params * sizeof(real)) == 0, "same seed, same weights");
    check(memcmp(m->params, seed6->params, m->num_params * sizeof(real)) != 0, "another seed, other weights");
    model_free(again);
    model_free(seed6);
    // the init fills blocks of 65536 values in parallel, each from its own stream: the weights must
    // not depend on the thread count, and no two blocks may repeat each other
    {
        const char *wide = "{\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_heads\": 16, \"head_dim\": 4, \"vocab_size\": 5000}";
        omp_set_num_threads(1);
        Model *one = build(wide, 7);
        omp_set_num_threads(3);
        Model *three = build(wide, 7);
        check(memcmp(one->params, three->params, one->num_params * sizeof(real)) == 0,
              "init: 1 thread and 3 threads give the same weights");
        check(memcmp(one->p.embeddings, one->p.embeddings + 65536, 1024 * sizeof(real)) != 0,
              "init: the second block of a tensor is not a copy of the first");
        // every tensor has its own streams: same-shaped tensors must not get the same values
        const BlockParams *lp = &one->p.layers[0];
        check(memcmp(lp->q_proj, lp->k_proj, 64 * sizeof(real)) != 0 && memcmp(lp->A_log, lp->Mu_log, 16 * sizeof(real)) != 0,
              "init: q_proj differs from k_proj, A_log from Mu_log");
        model_free(one);
        model_free(three);
    }
    Model *big = build("{\"hidden_size\": 64, \"num_hidden_layers\": 1, \"num_heads\": 16, \"head_dim\": 4, \"vocab_size\": 5000}", 42);
    double sum = 0, sum2 = 0;
    size_t n = (size_t)5000 * 64;
    for (size_t i = 0; i < n; i++) { sum += big->p.embeddings[i]; sum2 += big->p.embeddings[i] * big->p.embeddings[i]; }
    double mean = sum / n, std = sqrt(sum2 / n - mean * mean);
    snprintf(what, sizeof what, "embeddings ~ N(0, 0.02): mean %.2e, std %.5f", mean, std);
    check(fabs(mean) < 2e-4 && fabs(std - 0.02) < 2e-4, what);
    const BlockParams *p = &big->p.layers[0];
    int ok = 1;
    for (int h = 0; h < 16; h++) {
        double dt = log1p(exp(p->dt_bias[h]));   // softplus(dt_bias) = dt
        ok &= p->A_log[h] <= log(16.0) + 1e-6 && p->Mu_log[h] <= log(16.0) + 1e-6 && p->dt_bias[h] == p->mu_bias[h] &&
              dt >= 1e-3 * (1 - 1e-4) && dt <= 0.1 * (1 + 1e-4) && p->log_factor[h] <= log(4.0) + 1e-6 && p->D_log[h] <= 0 &&
              p->attn_norm[h] == 1 && p->o_norm[h % 8] == 1;
    }
    check(ok, "per-head gate parameters and norms follow mdn-spec.md §2");
    model_free(big);
    model_free(m);

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", base);
    printf("%s\n", failures ? "FAILED" : "all HF/init checks passed");
    return failures ? 1 : 0;
}
