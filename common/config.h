// config.h: the model config, fla's MomentumDeltaNetConfig JSON (mdn-spec.md §1).
// Missing keys take fla's defaults, unknown keys are ignored with a warning on stderr, and values
// the model cannot have (non-integer value dim, num_v_heads != num_heads, sizes <= 0, another
// model_type, hybrid `attn` layers, ...) are errors that name the file.
#ifndef MDN_CONFIG_H
#define MDN_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

typedef struct {
    // the model's shape
    int hidden_size;             // D
    int num_hidden_layers;       // number of blocks
    int num_heads;               // H
    int head_dim;                // K
    double expand_v;             // Vh = K * expand_v (must come out an integer)
    int value_dim;               // Vh, derived
    int conv_size;               // W of the short causal conv
    int intermediate_size;       // I (derived from hidden_ratio when the JSON has null)
    int intermediate_size_given; // 1 if the JSON set intermediate_size (kept for export)
    double hidden_ratio;
    int vocab_size;              // N
    // switches
    int use_short_conv, use_gate, use_output_correction, use_p_times_alpha, tie_word_embeddings;
    int allow_neg_eigval;        // stored, unused by the MDN layer (as in the release)
    int use_l2warp;              // must be false: not part of the model here
    // numbers
    int has_min_log_mu;          // 0: "min_log_mu": null, no clamp
    double min_log_mu;
    double tau_factor;           // tau = sqrt(D / tau_factor) divides the eta logit
    double norm_eps;
    double initializer_range;
    // HF bookkeeping, kept only to write it back on export (-1: null)
    int max_position_embeddings, bos_token_id, eos_token_id, pad_token_id;
    int use_cache;
} MdnConfig;

// fla's defaults (the table of mdn-spec.md §1).
void config_defaults(MdnConfig *c);
// parse JSON text; `path` is only used in messages. 0 on success, -1 with err = "PATH: problem".
// Warnings (unknown keys) go to stderr unless quiet is set.
int config_parse(MdnConfig *c, const char *text, size_t len, const char *path, int quiet, char *err, size_t errlen);
// read and parse a file; same contract.
int config_load(MdnConfig *c, const char *path, char *err, size_t errlen);
// the exact number of parameters (417,537,012 for the 400M config, 1,462,646,004 for the 1B).
int64_t config_num_params(const MdnConfig *c);
// the model summary of --dry-run (needs no allocation): the shapes, then "params: N".
void config_print_summary(const MdnConfig *c, FILE *out);
// the config as fla's config.json text (every §1 key, model_type, architectures); malloc'd.
char *config_to_json(const MdnConfig *c);

#ifdef __cplusplus
}
#endif

#endif // MDN_CONFIG_H
