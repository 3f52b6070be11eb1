// config.c: fla's MomentumDeltaNetConfig JSON -> MdnConfig (see config.h, mdn-spec.md §1).
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "utils.h"

void config_defaults(MdnConfig *c) {
    memset(c, 0, sizeof *c);
    c->hidden_size = 2048;
    c->num_hidden_layers = 21;
    c->num_heads = 6;
    c->head_dim = 256;
    c->expand_v = 2.0;
    c->conv_size = 4;
    c->hidden_ratio = 4.0;
    c->vocab_size = 32000;
    c->use_short_conv = 1;
    c->use_gate = 1;
    c->use_output_correction = 1;
    c->use_p_times_alpha = 1;
    c->has_min_log_mu = 1;
    c->min_log_mu = -2.0;
    c->tau_factor = 1.0;
    c->norm_eps = 1e-6;
    c->initializer_range = 0.02;
    c->max_position_embeddings = 2048;
    c->bos_token_id = 1;
    c->eos_token_id = 2;
    c->pad_token_id = -1;
    c->use_cache = 1;
}

// keys that only matter to fla's kernels or to HF bookkeeping: accepted silently
static int is_bookkeeping_key(const char *key) {
    static const char *names[] = {"attn_mode", "transformers_version", "architectures", "torch_dtype",
                                  "dtype", "_name_or_path", "model_type", NULL};
    if (strncmp(key, "fuse_", 5) == 0) return 1;
    for (int i = 0; names[i] != NULL; i++)
        if (strcmp(key, names[i]) == 0) return 1;
    return 0;
}

// The readers below return -1 with err set when the key has the wrong type. Absent keys keep the
// default. `allow_null`: JSON null is accepted and reported through *is_null.
static int read_number(const JsonValue *root, const char *key, const char *path, double *out,
                       int allow_null, int *is_null, char *err, size_t errlen) {
    const JsonValue *v = json_get(root, key);
    if (is_null != NULL) *is_null = 0;
    if (v == NULL) return 0;
    if (v->type == JSON_NULL && allow_null) {
        if (is_null != NULL) *is_null = 1;
        return 0;
    }
    if (v->type != JSON_NUMBER)
        return set_error(err, errlen, "%s: \"%s\" must be a number%s, not %s", path, key,
                         allow_null ? " or null" : "", json_type_name(v->type));
    if (!isfinite(v->number)) return set_error(err, errlen, "%s: \"%s\" is not finite", path, key);
    *out = v->number;
    return 0;
}

static int read_int(const JsonValue *root, const char *key, const char *path, int *out,
                    int allow_null, int *is_null, char *err, size_t errlen) {
    double x = *out;
    int null_here = 0;
    if (read_number(root, key, path, &x, allow_null, &null_here, err, errlen) != 0) return -1;
    if (is_null != NULL) *is_null = null_here;
    if (null_here || json_get(root, key) == NULL) return 0;
    if (x != floor(x) || fabs(x) > 2147483647.0)
        return set_error(err, errlen, "%s: \"%s\" must be an integer, not %g", path, key, x);
    *out = (int)x;
    return 0;
}

static int read_bool(const JsonValue *root, const char *key, const char *path, int *out, char *err, size_t errlen) {
    const JsonValue *v = json_get(root, key);
    if (v == NULL) return 0;
    if (v->type != JSON_BOOL)
        return set_error(err, errlen, "%s: \"%s\" must be true or false, not %s", path, key, json_type_name(v->type));
    *out = v->boolean;
    return 0;
}

// a positive integer size: the config's zero/negative sizes are errors
static int check_positive(int value, const char *key, const char *path, char *err, size_t errlen) {
    if (value <= 0) return set_error(err, errlen, "%s: \"%s\" must be positive, not %d", path, key, value);
    return 0;
}

int config_parse(MdnConfig *c, const char *text, size_t len, const char *path, int quiet, char *err, size_t errlen) {
    config_defaults(c);
    size_t n = 0;
    while (n < len && (text[n] == ' ' || text[n] == '\t' || text[n] == '\n' || text[n] == '\r')) n++;
    if (n == len) return set_error(err, errlen, "%s: empty file (expected a JSON object)", path);
    char jerr[200];
    JsonValue *root = json_parse(text, len, jerr, sizeof jerr);
    if (root == NULL) return set_error(err, errlen, "%s: malformed JSON: %s", path, jerr);
    int rc = -1;
    if (root->type != JSON_OBJECT) {
        set_error(err, errlen, "%s: expected a JSON object, got %s", path, json_type_name(root->type));
        goto done;
    }

    const JsonValue *mt = json_get(root, "model_type");
    if (mt != NULL && (mt->type != JSON_STRING || strcmp(mt->string, "momentum_deltanet") != 0)) {
        set_error(err, errlen, "%s: \"model_type\" must be \"momentum_deltanet\", not %s%s%s", path,
                  mt->type == JSON_STRING ? "\"" : "", mt->type == JSON_STRING ? mt->string : json_type_name(mt->type),
                  mt->type == JSON_STRING ? "\"" : "");
        goto done;
    }

    int is_null = 0, inter = 0, rank = 0, nvh = 0;
    if (read_int(root, "hidden_size", path, &c->hidden_size, 0, NULL, err, errlen) ||
        read_int(root, "num_hidden_layers", path, &c->num_hidden_layers, 0, NULL, err, errlen) ||
        read_int(root, "num_heads", path, &c->num_heads, 0, NULL, err, errlen) ||
        read_int(root, "head_dim", path, &c->head_dim, 0, NULL, err, errlen) ||
        read_number(root, "expand_v", path, &c->expand_v, 0, NULL, err, errlen) ||
        read_int(root, "conv_size", path, &c->conv_size, 0, NULL, err, errlen) ||
        read_number(root, "hidden_ratio", path, &c->hidden_ratio, 0, NULL, err, errlen) ||
        read_int(root, "vocab_size", path, &c->vocab_size, 0, NULL, err, errlen) ||
        read_bool(root, "use_short_conv", path, &c->use_short_conv, err, errlen) ||
        read_bool(root, "use_gate", path, &c->use_gate, err, errlen) ||
        read_bool(root, "use_output_correction", path, &c->use_output_correction, err, errlen) ||
        read_bool(root, "use_p_times_alpha", path, &c->use_p_times_alpha, err, errlen) ||
        read_bool(root, "tie_word_embeddings", path, &c->tie_word_embeddings, err, errlen) ||
        read_bool(root, "allow_neg_eigval", path, &c->allow_neg_eigval, err, errlen) ||
        read_bool(root, "use_l2warp", path, &c->use_l2warp, err, errlen) ||
        read_bool(root, "use_cache", path, &c->use_cache, err, errlen) ||
        read_number(root, "tau_factor", path, &c->tau_factor, 0, NULL, err, errlen) ||
        read_number(root, "norm_eps", path, &c->norm_eps, 0, NULL, err, errlen) ||
        read_number(root, "initializer_range", path, &c->initializer_range, 0, NULL, err, errlen) ||
        read_int(root, "max_position_embeddings", path, &c->max_position_embeddings, 0, NULL, err, errlen))
        goto done;
    if (read_number(root, "min_log_mu", path, &c->min_log_mu, 1, &is_null, err, errlen)) goto done;
    if (is_null) c->has_min_log_mu = 0;
    if (read_int(root, "intermediate_size", path, &inter, 1, &is_null, err, errlen)) goto done;
    c->intermediate_size_given = json_get(root, "intermediate_size") != NULL && !is_null;
    if (read_int(root, "bos_token_id", path, &c->bos_token_id, 1, &is_null, err, errlen)) goto done;
    if (is_null) c->bos_token_id = -1;
    if (read_int(root, "eos_token_id", path, &c->eos_token_id, 1, &is_null, err, errlen)) goto done;
    if (is_null) c->eos_token_id = -1;
    if (read_int(root, "pad_token_id", path, &c->pad_token_id, 1, &is_null, err, errlen)) goto done;
    if (is_null) c->pad_token_id = -1;

    // features this implementation does not have yet: refuse rather than train another model
    const JsonValue *attn = json_get(root, "attn");
    if (attn != NULL && attn->type != JSON_NULL) {
        set_error(err, errlen, "%s: \"attn\" (hybrid softmax-attention layers) is not supported yet; only pure MDN models (\"attn\": null)", path);
        goto done;
    }
    int lora = 0;
    if (read_bool(root, "use_lora_gate", path, &lora, err, errlen)) goto done;
    if (read_int(root, "lora_gate_rank", path, &rank, 1, NULL, err, errlen)) goto done;
    if (lora) {
        set_error(err, errlen, "%s: \"use_lora_gate\": true is not supported yet", path);
        goto done;
    }
    if (read_int(root, "num_v_heads", path, &nvh, 1, &is_null, err, errlen)) goto done;
    if (json_get(root, "num_v_heads") != NULL && !is_null && nvh != c->num_heads) {
        set_error(err, errlen, "%s: \"num_v_heads\" must be null or equal to num_heads (%d), not %d: the "
                  "layer's per-head parameters are sized by num_heads", path, c->num_heads, nvh);
        goto done;
    }
    const JsonValue *act = json_get(root, "hidden_act");
    if (act != NULL && (act->type != JSON_STRING || (strcmp(act->string, "swish") != 0 && strcmp(act->string, "silu") != 0))) {
        set_error(err, errlen, "%s: \"hidden_act\" must be \"swish\" (silu)", path);
        goto done;
    }
    if (c->use_l2warp) {
        set_error(err, errlen, "%s: \"use_l2warp\": true is not supported (false in every paper config)", path);
        goto done;
    }

    // impossible values
    if (check_positive(c->hidden_size, "hidden_size", path, err, errlen) ||
        check_positive(c->num_hidden_layers, "num_hidden_layers", path, err, errlen) ||
        check_positive(c->num_heads, "num_heads", path, err, errlen) ||
        check_positive(c->head_dim, "head_dim", path, err, errlen) ||
        check_positive(c->conv_size, "conv_size", path, err, errlen) ||
        check_positive(c->vocab_size, "vocab_size", path, err, errlen))
        goto done;
    double vh = c->head_dim * c->expand_v;
    if (!(c->expand_v > 0) || vh != floor(vh) || vh > 1e6) {
        set_error(err, errlen, "%s: \"expand_v\" %g gives a value dim head_dim*expand_v = %g, which must be a positive integer",
                  path, c->expand_v, vh);
        goto done;
    }
    c->value_dim = (int)vh;
    if (!(c->hidden_ratio > 0)) { set_error(err, errlen, "%s: \"hidden_ratio\" must be positive", path); goto done; }
    if (c->intermediate_size_given) {
        if (check_positive(inter, "intermediate_size", path, err, errlen)) goto done;
        c->intermediate_size = inter;
    } else {
        // fla: int(D * ratio * 2/3) rounded up to a multiple of 256
        long base = (long)(c->hidden_size * c->hidden_ratio * 2.0 / 3.0);
        c->intermediate_size = (int)(256 * ((base + 255) / 256));
        if (c->intermediate_size <= 0) { set_error(err, errlen, "%s: hidden_ratio gives no MLP width", path); goto done; }
    }
    if (!(c->tau_factor > 0)) { set_error(err, errlen, "%s: \"tau_factor\" must be positive, not %g", path, c->tau_factor); goto done; }
    if (!(c->norm_eps > 0)) { set_error(err, errlen, "%s: \"norm_eps\" must be positive, not %g", path, c->norm_eps); goto done; }
    if (c->initializer_range < 0) { set_error(err, errlen, "%s: \"initializer_range\" must not be negative", path); goto done; }
    if (c->has_min_log_mu && c->min_log_mu > 0) {
        set_error(err, errlen, "%s: \"min_log_mu\" must be <= 0 (log mu <= 0), not %g", path, c->min_log_mu);
        goto done;
    }

    static const char *known[] = {"hidden_size", "num_hidden_layers", "num_heads", "head_dim", "expand_v",
        "num_v_heads", "conv_size", "use_short_conv", "use_gate", "use_lora_gate", "lora_gate_rank",
        "use_output_correction", "use_p_times_alpha", "min_log_mu", "tau_factor", "allow_neg_eigval",
        "hidden_ratio", "intermediate_size", "hidden_act", "norm_eps", "vocab_size", "tie_word_embeddings",
        "initializer_range", "attn", "max_position_embeddings", "use_cache", "bos_token_id", "eos_token_id",
        "pad_token_id", "use_l2warp", NULL};
    for (int i = 0; i < root->count && !quiet; i++) {
        const char *key = root->keys[i];
        int found = is_bookkeeping_key(key);
        for (int j = 0; known[j] != NULL && !found; j++) found = strcmp(key, known[j]) == 0;
        if (!found) fprintf(stderr, "warning: %s: unknown key \"%s\" ignored\n", path, key);
    }
    rc = 0;
done:
    json_free(root);
    return rc;
}

int config_load(MdnConfig *c, const char *path, char *err, size_t errlen) {
    size_t len = 0;
    char *text = read_file(path, &len, err, errlen);
    if (text == NULL) return -1;
    int rc = config_parse(c, text, len, path, 0, err, errlen);
    free(text);
    return rc;
}

int64_t config_num_params(const MdnConfig *c) {
    int64_t D = c->hidden_size, H = c->num_heads, K = c->head_dim, Vh = c->value_dim;
    int64_t I = c->intermediate_size, W = c->conv_size, N = c->vocab_size;
    int64_t attn = 2 * H * K * D + H * Vh * D      // q_proj, k_proj, v_proj
                 + 4 * H * D                         // a, b, m, e projections
                 + (c->use_output_correction ? 6 : 5) * H   // A_log, Mu_log, dt_bias, mu_bias, log_factor, D_log
                 + (c->use_short_conv ? W * (2 * H * K + H * Vh) : 0)
                 + (c->use_gate ? H * Vh * D : 0)    // g_proj
                 + Vh                                // o_norm (shared by the heads)
                 + D * H * Vh;                       // o_proj
    int64_t block = attn + 3 * D * I + 2 * D;        // MLP, attn_norm, mlp_norm
    return c->num_hidden_layers * block + N * D * (c->tie_word_embeddings ? 1 : 2) + D;
}

void config_print_summary(const MdnConfig *c, FILE *out) {
    fprintf(out, "model: momentum_deltanet, %d layers, hidden %d, %d heads, head_dim %d, value dim %d, conv %d%s, "
            "MLP %d, vocab %d\n", c->num_hidden_layers, c->hidden_size, c->num_heads, c->head_dim, c->value_dim,
            c->conv_size, c->use_short_conv ? "" : " (off)", c->intermediate_size, c->vocab_size);
    char mu[32];
    if (c->has_min_log_mu) snprintf(mu, sizeof mu, "%g", c->min_log_mu);
    else snprintf(mu, sizeof mu, "none");
    fprintf(out, "gates: tau_factor %g, min_log_mu %s, gate %s, output correction %s, p = %s, tied embeddings %s\n",
            c->tau_factor, mu, c->use_gate ? "on" : "off", c->use_output_correction ? "on" : "off",
            c->use_p_times_alpha ? "alpha*k" : "k", c->tie_word_embeddings ? "yes" : "no");
    int64_t embed = (int64_t)c->vocab_size * c->hidden_size * (c->tie_word_embeddings ? 1 : 2);
    fprintf(out, "params in embeddings/lm_head: %lld, in blocks and final norm: %lld\n", (long long)embed,
            (long long)(config_num_params(c) - embed));
    fprintf(out, "params: %lld\n", (long long)config_num_params(c));
}

// shortest "%.Ng" that reads back as the same double; integral values get ".0" (Python's float repr)
static void format_double(char *buf, size_t n, double x) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, x);
        if (strtod(buf, NULL) == x) break;
    }
    if (strpbrk(buf, ".eEn") == NULL) strncat(buf, ".0", n - strlen(buf) - 1);
}

static const char *json_bool(int x) { return x ? "true" : "false"; }

static void format_int_or_null(char *buf, size_t n, int x) {
    if (x < 0) snprintf(buf, n, "null");
    else snprintf(buf, n, "%d", x);
}

char *config_to_json(const MdnConfig *c) {
    char minmu[40], eps[40], tau[40], ratio[40], init[40], inter[40], bos[20], eos[20], pad[20];
    format_double(minmu, sizeof minmu, c->min_log_mu);
    if (!c->has_min_log_mu) snprintf(minmu, sizeof minmu, "null");
    format_double(eps, sizeof eps, c->norm_eps);
    format_double(init, sizeof init, c->initializer_range);
    // tau_factor, hidden_ratio and expand_v are ints in every config we know: write them as such
    if (c->tau_factor == floor(c->tau_factor)) snprintf(tau, sizeof tau, "%d", (int)c->tau_factor);
    else format_double(tau, sizeof tau, c->tau_factor);
    if (c->hidden_ratio == floor(c->hidden_ratio)) snprintf(ratio, sizeof ratio, "%d", (int)c->hidden_ratio);
    else format_double(ratio, sizeof ratio, c->hidden_ratio);
    char expand[40];
    if (c->expand_v == floor(c->expand_v)) snprintf(expand, sizeof expand, "%d", (int)c->expand_v);
    else format_double(expand, sizeof expand, c->expand_v);
    if (c->intermediate_size_given) snprintf(inter, sizeof inter, "%d", c->intermediate_size);
    else snprintf(inter, sizeof inter, "null");
    format_int_or_null(bos, sizeof bos, c->bos_token_id);
    format_int_or_null(eos, sizeof eos, c->eos_token_id);
    format_int_or_null(pad, sizeof pad, c->pad_token_id);
    size_t cap = 4096;
    char *out = (char *)xmalloc(cap);
    snprintf(out, cap,
             "{\n"
             "  \"allow_neg_eigval\": %s,\n"
             "  \"architectures\": [\n    \"MomentumDeltaNetForCausalLM\"\n  ],\n"
             "  \"attn\": null,\n"
             "  \"attn_mode\": \"chunk\",\n"
             "  \"bos_token_id\": %s,\n"
             "  \"conv_size\": %d,\n"
             "  \"eos_token_id\": %s,\n"
             "  \"expand_v\": %s,\n"
             "  \"fuse_cross_entropy\": false,\n"
             "  \"fuse_linear_cross_entropy\": false,\n"
             "  \"fuse_norm\": true,\n"
             "  \"fuse_swiglu\": true,\n"
             "  \"head_dim\": %d,\n"
             "  \"hidden_act\": \"swish\",\n"
             "  \"hidden_ratio\": %s,\n"
             "  \"hidden_size\": %d,\n"
             "  \"initializer_range\": %s,\n"
             "  \"intermediate_size\": %s,\n"
             "  \"lora_gate_rank\": null,\n"
             "  \"max_position_embeddings\": %d,\n"
             "  \"min_log_mu\": %s,\n"
             "  \"model_type\": \"momentum_deltanet\",\n"
             "  \"norm_eps\": %s,\n"
             "  \"num_heads\": %d,\n"
             "  \"num_hidden_layers\": %d,\n"
             "  \"num_v_heads\": null,\n"
             "  \"pad_token_id\": %s,\n"
             "  \"tau_factor\": %s,\n"
             "  \"tie_word_embeddings\": %s,\n"
             "  \"torch_dtype\": \"float32\",\n"
             "  \"use_cache\": %s,\n"
             "  \"use_gate\": %s,\n"
             "  \"use_l2warp\": false,\n"
             "  \"use_lora_gate\": false,\n"
             "  \"use_output_correction\": %s,\n"
             "  \"use_p_times_alpha\": %s,\n"
             "  \"use_short_conv\": %s,\n"
             "  \"vocab_size\": %d\n"
             "}\n",
             json_bool(c->allow_neg_eigval), bos, c->conv_size, eos, expand, c->head_dim, ratio, c->hidden_size, init, inter,
             c->max_position_embeddings, minmu, eps, c->num_heads, c->num_hidden_layers, pad, tau,
             json_bool(c->tie_word_embeddings), json_bool(c->use_cache), json_bool(c->use_gate), json_bool(c->use_output_correction),
             json_bool(c->use_p_times_alpha), json_bool(c->use_short_conv), c->vocab_size);
    return out;
}
