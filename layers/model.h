// model.h: the Momentum DeltaNet causal LM on the CPU (mdn-spec.md §2-§4, §7, §10), forward,
// backward and one-token inference. It is the reference every GPU kernel is checked against.
//
// Memory: the parameters are ONE allocation of `real` (model->params), their gradients another
// (model->grads, same layout), the activations of one forward (kept for the backward) a third.
// model->tensors describes the parameters: fla's names and shapes (mdn-spec.md §2) in fla's order
// (embeddings, then per layer attn_norm, attn.*, mlp_norm, mlp.*, then norm and lm_head), each an
// offset into params/grads. Checkpoints and the optimizer can treat params/grads as flat arrays.
//
// Typical training step:
//     MdnConfig cfg; config_load(&cfg, path, err, sizeof err)           (common/config.h)
//     Model *m = model_build(&cfg, B, T);  model_init_weights(m, 42);   (or model_load_hf)
//     model_zero_grad(m);
//     for each micro-batch: loss = model_forward(m, inputs, targets, B, T); model_backward(m, 1.0/accum);
//     ... AdamW on m->params with m->grads (m->tensors[i].no_decay for the no-decay option) ...
#ifndef MDN_MODEL_H
#define MDN_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../common/config.h"
#include "../common/real.h"

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

#define MODEL_MAX_NAME 80

typedef struct {
    char name[MODEL_MAX_NAME];  // fla's name, e.g. "model.layers.3.attn.q_proj.weight"
    int ndim;
    int64_t shape[3];           // e.g. [H*K, D]; conv weights are [C, 1, W]
    size_t offset;              // index of its first element in model->params / model->grads
    size_t numel;
    int no_decay;               // one of the six per-head gate parameters the layer marks no-decay
                                // (A_log, Mu_log, dt_bias, mu_bias, log_factor, D_log); the paper's
                                // runs decay every parameter anyway (mdn-spec.md §9)
} ParamTensor;

// pointers into params (or grads) of one block; NULL where the config has no such tensor
typedef struct {
    real *attn_norm;                                // [D]
    real *q_proj, *k_proj, *v_proj;                 // [H*K, D], [H*K, D], [H*Vh, D]
    real *a_proj, *b_proj, *m_proj, *e_proj;        // [H, D] each
    real *q_conv, *k_conv, *v_conv;                 // [H*K, W], [H*K, W], [H*Vh, W] (NULL: no short conv)
    real *A_log, *Mu_log, *dt_bias, *mu_bias, *log_factor, *D_log;  // [H] each (D_log NULL: no correction)
    real *g_proj;                                   // [H*Vh, D] (NULL: use_gate false)
    real *o_norm;                                   // [Vh]
    real *o_proj;                                   // [D, H*Vh]
    real *mlp_norm;                                 // [D]
    real *gate_proj, *up_proj, *down_proj;          // [I, D], [I, D], [D, I]
} BlockParams;

typedef struct {
    real *embeddings;           // [N, D]
    BlockParams *layers;        // [num_hidden_layers]
    real *norm;                 // [D]
    real *lm_head;              // [N, D] (== embeddings when tie_word_embeddings)
} ModelParams;

typedef struct ModelActs ModelActs;     // the forward's saved activations (model.c)
typedef struct ModelState ModelState;   // one-token inference state (model.c)

typedef struct {
    MdnConfig config;
    int num_tensors;
    ParamTensor *tensors;
    size_t num_params;          // == config_num_params(&config)
    real *params;               // [num_params]
    real *grads;                // [num_params], accumulated by model_backward
    ModelParams p, g;           // named views of params and grads
    int max_B, max_T;           // the activation buffers' capacity (model_build)
    int B, T;                   // the shape of the last forward
    ModelActs *acts;
    real *logits;               // [B, T, N] of the last forward (overwritten by dlogits in backward)
    real loss;                  // mean loss of the last forward over positions with a target (-1: no targets)
    int num_targets;            // positions with a target in the last forward
    ModelState *state;          // model_step's state (allocated on first use)
} Model;

// Allocate parameters, gradients (zeroed) and activations for up to B x T tokens per forward.
// Parameters are zero until model_init_weights or model_load_hf. Dies on an unsupported config.
Model *model_build(const MdnConfig *config, int B, int T);
void model_free(Model *m);

// mdn-spec.md §2 init from a seeded RNG (xorshift64* + Box-Muller, see model.c); same seed, same
// weights, whatever the number of OpenMP threads.
void model_init_weights(Model *m, uint64_t seed);
// the same into a flat vector in the layout of a model_param_table table (no Model needed)
void model_init_params(const MdnConfig *config, const ParamTensor *tensors, int num_tensors, real *params,
                       uint64_t seed);

// index of the tensor named `name`, or -1
int model_find_tensor(const Model *m, const char *name);

// The parameter table of a config (what model_build puts in m->tensors: names, shapes, offsets in
// the flat CPU layout, no_decay) without allocating a model: *tensors gets a malloc'd array of the
// returned number of entries (the caller frees it), *num_params the values they hold
// (== config_num_params). The GPU model lays out its own flat vectors from it (model_cuda.cu).
int model_param_table(const MdnConfig *config, ParamTensor **tensors, size_t *num_params);
// index of the tensor named `name` in such a table, or -1
int model_param_table_find(const ParamTensor *tensors, int num_tensors, const char *name);
// Whether AdamW decays the tensor `name` (its no_decay flag: `no_decay`). The paper decays every
// parameter; --no-decay-set (no_decay_set = 1, a documented deviation) spares the six per-head gate
// parameters and the norm weights. Both trainers' optimizers ask this, so that they agree.
int model_param_decayed(const char *name, int no_decay, int no_decay_set);

// The summary for --dry-run: shapes, then a line "params: N" with the exact count.
void model_print_summary(const Model *m, FILE *out);

// Forward over inputs [B,T] (token ids, 0 <= id < N), B <= max_B, T <= max_T, every row starting
// from zero state. targets [B,T] (targets[b,t] is the target of position t; -100 or any negative:
// none) may be NULL: then only logits are computed and -1 is returned. Returns the mean
// cross-entropy over positions with a target (0 when none has one), also stored in m->loss.
real model_forward(Model *m, const int *inputs, const int *targets, int B, int T);
void model_zero_grad(Model *m);
// Backward of loss_scale * (the last forward's loss): ACCUMULATES into m->grads (zero them with
// model_zero_grad; gradient accumulation passes loss_scale = 1/steps). Needs a forward with targets.
// Overwrites m->logits with dlogits.
void model_backward(Model *m, real loss_scale);

// One-token recurrent inference (mdn-spec.md §7): feeds tokens[b] for each of the B rows
// (B <= max_B; the same B until model_reset_state) and writes logits_out [B, N]. Per layer it keeps the conv inputs of the last
// W-1 tokens and the S, M states; it computes exactly what model_forward computes at that position.
void model_step(Model *m, const int *tokens, int B, real *logits_out);
void model_reset_state(Model *m);   // back to zero state (start of new rows)

// HF interop (mdn-spec.md §10): DIR/config.json + DIR/model.safetensors with fla's names, float32
// or bf16 (or f16/f64). model_load_hf builds a model from the directory (config from its
// config.json); model_load_hf_weights loads the weights into an existing model whose config must
// have the same shapes. Both return NULL / -1 with err set ("PATH: problem") on bad input.
Model *model_load_hf(const char *dir, int B, int T, char *err, size_t errlen);
int model_load_hf_weights(Model *m, const char *dir, char *err, size_t errlen);
// writes DIR/config.json and DIR/model.safetensors (float32); creates DIR if needed. 0 or -1.
int model_save_hf(const Model *m, const char *dir, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif // MDN_MODEL_H
