// cli.c: one table describes every flag (name, type, default, allowed range, help); parsing,
// --help, the startup table and the JSON saved in checkpoints all read it, so they cannot disagree.
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "utils.h"

typedef enum { OPT_STRING, OPT_INT, OPT_INT64, OPT_DOUBLE, OPT_SWITCH } OptionType;

typedef struct {
    const char *name;           // without the leading "--"
    OptionType type;
    size_t offset;              // of the field in TrainArgs
    const char *default_value;  // as it would be typed (NULL: required; switches are off)
    double min, max;            // allowed range of numbers, inclusive
    int min_exclusive;          // 1: the value must be > min (sizes, lr, eps)
    const char *help;
} Option;

#define FIELD(name) offsetof(TrainArgs, name)
#define NO_LIMIT 1e300

static const Option OPTIONS[] = {
    {"config", OPT_STRING, FIELD(config), NULL, 0, 0, 0, "model config JSON (fla's MomentumDeltaNetConfig)"},
    {"init-from", OPT_STRING, FIELD(init_from), "", 0, 0, 0, "HF directory (config.json + model.safetensors) to start from"},
    {"train-data", OPT_STRING, FIELD(train_data), "data/tinyshakespeare/*train*.bin", 0, 0, 0, "glob of training token shards"},
    {"val-data", OPT_STRING, FIELD(val_data), "data/tinyshakespeare/*val*.bin", 0, 0, 0, "glob of validation shards (\"\": none)"},
    {"shuffle", OPT_SWITCH, FIELD(shuffle), NULL, 0, 1, 0, "read shards and rows in a seeded random order"},
    {"batch-size", OPT_INT, FIELD(batch_size), "8", 0, 1 << 20, 1, "micro-batch: rows per rank per micro-step"},
    {"seq-len", OPT_INT, FIELD(seq_len), "4096", 0, 1 << 24, 1, "tokens per row"},
    {"grad-accum", OPT_INT, FIELD(grad_accum), "1", 0, 1 << 20, 1, "micro-steps per optimizer step"},
    {"steps", OPT_INT64, FIELD(steps), "30720", 0, NO_LIMIT, 1, "optimizer steps of the run (the schedule's length)"},
    {"lr", OPT_DOUBLE, FIELD(lr), "3e-4", 0, 10, 1, "peak learning rate"},
    {"min-lr-ratio", OPT_DOUBLE, FIELD(min_lr_ratio), "0.1", 0, 1, 0, "cosine floor as a fraction of --lr (flame's lr_min)"},
    {"warmup-steps", OPT_INT64, FIELD(warmup_steps), "1024", 0, NO_LIMIT, 0, "linear warmup steps"},
    {"weight-decay", OPT_DOUBLE, FIELD(weight_decay), "0.1", 0, 10, 0, "decoupled AdamW weight decay"},
    {"beta1", OPT_DOUBLE, FIELD(beta1), "0.9", 0, 0.999999, 0, "AdamW beta1"},
    {"beta2", OPT_DOUBLE, FIELD(beta2), "0.95", 0, 0.999999, 0, "AdamW beta2"},
    {"eps", OPT_DOUBLE, FIELD(eps), "1e-15", 0, 1, 1, "AdamW epsilon"},
    {"max-norm", OPT_DOUBLE, FIELD(max_norm), "1.0", 0, NO_LIMIT, 1, "clip gradients to this global L2 norm"},
    {"no-decay-set", OPT_SWITCH, FIELD(no_decay_set), NULL, 0, 1, 0,
     "deviation from the paper: no weight decay on A_log, Mu_log, dt_bias, mu_bias, log_factor, D_log and norms"},
    {"max-nan-steps", OPT_INT, FIELD(max_nan_steps), "10", 0, 1 << 30, 1, "abort after this many non-finite steps in a row"},
    {"seed", OPT_INT64, FIELD(seed), "42", 0, NO_LIMIT, 0, "seed of the init, the data shuffle and the samples"},
    {"val-interval", OPT_INT64, FIELD(val_interval), "250", 0, NO_LIMIT, 0, "validate every N steps and at the end (0: never)"},
    {"val-batches", OPT_INT, FIELD(val_batches), "20", 0, 1 << 30, 1, "micro-batches per validation"},
    {"sample-interval", OPT_INT64, FIELD(sample_interval), "1000", 0, NO_LIMIT, 0, "print a text sample every N steps (0: never)"},
    {"sample-tokens", OPT_INT, FIELD(sample_tokens), "64", 0, 1 << 20, 1, "tokens per text sample"},
    {"out", OPT_STRING, FIELD(out), "", 0, 0, 0, "output directory: log.jsonl and checkpoints (\"\": none)"},
    {"checkpoint-interval", OPT_INT64, FIELD(checkpoint_interval), "2048", 0, NO_LIMIT, 0,
     "checkpoint every N steps (0: only at the end and on SIGINT/SIGTERM)"},
    {"keep-latest-k", OPT_INT, FIELD(keep_latest_k), "2", 0, 1 << 30, 0, "keep the latest K checkpoints (0: all)"},
    {"resume", OPT_SWITCH, FIELD(resume), NULL, 0, 1, 0, "continue from the latest valid checkpoint in --out"},
    {"export-hf", OPT_STRING, FIELD(export_hf), "", 0, 0, 0, "write an HF directory (config.json + model.safetensors) at the end"},
    {"reset-state-at-eot", OPT_SWITCH, FIELD(reset_state_at_eot), NULL, 0, 1, 0,
     "reset the recurrent state at end-of-text tokens (not implemented yet)"},
    {"dry-run", OPT_SWITCH, FIELD(dry_run), NULL, 0, 1, 0, "print the model summary (params: N) and exit"},
    {"dtype", OPT_STRING, FIELD(dtype), "bf16", 0, 0, 0,
     "train_mdn's activations and matmuls: bf16 or f32 (train_mdn_cpu is float32 and ignores it)"},
    {"recompute", OPT_INT, FIELD(recompute), "2", 1, 2, 0,
     "train_mdn: 2 recomputes each block's mixer output in the backward; 1 keeps it (batch x seq-len x hidden "
     "activations a layer more memory, faster) (train_mdn_cpu ignores it)"},
};
#define NUM_OPTIONS ((int)(sizeof(OPTIONS) / sizeof(OPTIONS[0])))

static const Option *find_option(const char *name, size_t len) {
    for (int i = 0; i < NUM_OPTIONS; i++)
        if (strlen(OPTIONS[i].name) == len && strncmp(OPTIONS[i].name, name, len) == 0) return &OPTIONS[i];
    return NULL;
}

static const char *type_hint(OptionType type) {
    switch (type) {
    case OPT_INT:
    case OPT_INT64: return "an integer";
    case OPT_DOUBLE: return "a number";
    default: return "a value";
    }
}

// store `text` into the field of `opt`, checking it
static int set_option(TrainArgs *args, const Option *opt, const char *text, char *err, size_t errlen) {
    char *field = (char *)args + opt->offset;
    if (opt->type == OPT_STRING) { *(const char **)field = text; return 0; }
    if (opt->type == OPT_SWITCH) { *(int *)field = 1; return 0; }
    double value;
    char *end = NULL;
    errno = 0;
    if (opt->type == OPT_DOUBLE) {
        value = strtod(text, &end);
        if (end == text || *end != '\0' || errno != 0 || !isfinite(value))
            return set_error(err, errlen, "--%s: expected %s, got '%s'", opt->name, type_hint(opt->type), text);
    } else {
        long long integer = strtoll(text, &end, 10);
        if (end == text || *end != '\0' || errno != 0)
            return set_error(err, errlen, "--%s: expected %s, got '%s'", opt->name, type_hint(opt->type), text);
        value = (double)integer;
        if (opt->type == OPT_INT64) *(int64_t *)field = integer;
        else *(int *)field = (int)integer;
    }
    int too_small = opt->min_exclusive ? !(value > opt->min) : !(value >= opt->min);
    if (too_small || value > opt->max) {
        // integers print as integers (1048576, not 1.04858e+06)
        const char *number_format = opt->type == OPT_DOUBLE ? "%g" : "%.0f";
        char low[64], high[64];
        snprintf(low, sizeof(low), number_format, opt->min);
        snprintf(high, sizeof(high), number_format, opt->max);
        if (opt->max >= NO_LIMIT)
            return set_error(err, errlen, "--%s: must be %s %s, got '%s'", opt->name, opt->min_exclusive ? ">" : ">=", low, text);
        return set_error(err, errlen, "--%s: must be in %s%s, %s], got '%s'", opt->name, opt->min_exclusive ? "(" : "[", low,
                         high, text);
    }
    if (opt->type == OPT_DOUBLE) *(double *)field = value;
    return 0;
}

int cli_parse(TrainArgs *args, int argc, char **argv, char *err, size_t errlen) {
    memset(args, 0, sizeof(*args));
    for (int i = 0; i < NUM_OPTIONS; i++)
        if (OPTIONS[i].default_value != NULL && OPTIONS[i].type != OPT_SWITCH &&
            set_option(args, &OPTIONS[i], OPTIONS[i].default_value, err, errlen) != 0)
            return -1;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            cli_print_usage(stdout, argv[0]);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) return set_error(err, errlen, "%s: unexpected argument (flags start with --)", arg);
        const char *name = arg + 2;
        const char *equals = strchr(name, '=');
        size_t name_len = equals ? (size_t)(equals - name) : strlen(name);
        const Option *opt = find_option(name, name_len);
        if (opt == NULL) return set_error(err, errlen, "--%.*s: unknown flag (see --help)", (int)name_len, name);
        const char *value;
        if (opt->type == OPT_SWITCH) {
            if (equals) return set_error(err, errlen, "--%s: takes no value", opt->name);
            value = "1";
        } else if (equals) {
            value = equals + 1;
        } else {
            if (i + 1 >= argc) return set_error(err, errlen, "--%s: missing value", opt->name);
            value = argv[++i];
        }
        if (set_option(args, opt, value, err, errlen) != 0) return -1;
    }
    if (args->config == NULL) return set_error(err, errlen, "--config: missing (required: the model config JSON)");
    if (args->config[0] == '\0') return set_error(err, errlen, "--config: empty path");
    if (args->resume && args->out[0] == '\0') return set_error(err, errlen, "--resume: needs --out DIR (where the checkpoints are)");
    if (strcmp(args->dtype, "bf16") != 0 && strcmp(args->dtype, "f32") != 0)
        return set_error(err, errlen, "--dtype: expected bf16 or f32, got '%s'", args->dtype);
    if (args->reset_state_at_eot)
        return set_error(err, errlen, "--reset-state-at-eot: not implemented (the model starts every row from zero state "
                                      "and does not reset inside a row)");
    return 0;
}

void cli_print_usage(FILE *out, const char *program) {
    fprintf(out, "usage: %s --config FILE [flags]\n\n", program);
    for (int i = 0; i < NUM_OPTIONS; i++) {
        const Option *o = &OPTIONS[i];
        char left[64];
        const char *placeholder = o->type == OPT_SWITCH ? "" : o->type == OPT_STRING ? " PATH" : o->type == OPT_DOUBLE ? " X" : " N";
        snprintf(left, sizeof(left), "--%s%s", o->name, placeholder);
        fprintf(out, "  %-26s %s", left, o->help);
        if (o->type != OPT_SWITCH) {
            if (o->default_value == NULL) fprintf(out, " (required)");
            else fprintf(out, " (default: %s)", o->default_value[0] ? o->default_value : "\"\"");
        }
        fprintf(out, "\n");
    }
}

// the value of an option as text (for the table and the JSON)
static void format_value(const TrainArgs *args, const Option *opt, char *buf, size_t len) {
    const char *field = (const char *)args + opt->offset;
    switch (opt->type) {
    case OPT_STRING: snprintf(buf, len, "%s", *(const char *const *)field ? *(const char *const *)field : ""); break;
    case OPT_INT:
    case OPT_SWITCH: snprintf(buf, len, "%d", *(const int *)field); break;
    case OPT_INT64: snprintf(buf, len, "%lld", (long long)*(const int64_t *)field); break;
    case OPT_DOUBLE: snprintf(buf, len, "%.17g", *(const double *)field); break;
    }
}

void cli_print_settings(const TrainArgs *args, FILE *out) {
    fprintf(out, "+---------------------------+--------------------------------------------------+\n");
    fprintf(out, "| %-25s | %-48s |\n", "setting", "value");
    fprintf(out, "+---------------------------+--------------------------------------------------+\n");
    for (int i = 0; i < NUM_OPTIONS; i++) {
        const Option *o = &OPTIONS[i];
        const char *field = (const char *)args + o->offset;
        char value[1024];
        if (o->type == OPT_DOUBLE) snprintf(value, sizeof(value), "%g", *(const double *)field);
        else if (o->type == OPT_SWITCH) snprintf(value, sizeof(value), "%s", *(const int *)field ? "on" : "off");
        else format_value(args, o, value, sizeof(value));
        fprintf(out, "| %-25s | %-48s |\n", OPTIONS[i].name, value);
    }
    fprintf(out, "+---------------------------+--------------------------------------------------+\n");
}

char *cli_to_json(const TrainArgs *args) {
    size_t cap = 256, len = 0;
    char *json = (char *)xmalloc(cap);
    json[len++] = '{';
    for (int i = 0; i < NUM_OPTIONS; i++) {
        const Option *o = &OPTIONS[i];
        char value[1024];
        format_value(args, o, value, sizeof(value));
        // worst case every character of a string is escaped as \u00XX
        size_t need = strlen(o->name) + 6 * strlen(value) + 16;
        if (len + need + 2 > cap) { cap = 2 * (len + need + 2); json = (char *)xrealloc(json, cap); }
        len += (size_t)sprintf(json + len, "%s\"%s\":", i ? "," : "", o->name);
        if (o->type == OPT_SWITCH) {
            len += (size_t)sprintf(json + len, "%s", value[0] == '1' ? "true" : "false");
        } else if (o->type != OPT_STRING) {
            len += (size_t)sprintf(json + len, "%s", value);
        } else {
            json[len++] = '"';
            for (const unsigned char *c = (const unsigned char *)value; *c; c++) {
                if (*c == '"' || *c == '\\') { json[len++] = '\\'; json[len++] = (char)*c; }
                else if (*c < 0x20) len += (size_t)sprintf(json + len, "\\u%04x", *c);
                else json[len++] = (char)*c;
            }
            json[len++] = '"';
        }
    }
    json[len++] = '}';
    json[len] = '\0';
    return json;
}
