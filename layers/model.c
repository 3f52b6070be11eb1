// model.c: the MDN causal LM on the CPU (see model.h; mdn-spec.md §2-§4, §7, §10).
// One block is: x → attn_norm → MDN mixer (projections, short convs, gates, output correction,
// the op, gated o_norm, o_proj) → + x → mlp_norm → SwiGLU MLP → + . Forward and backward of a
// block are written side by side below, calling the layer functions of layers/*.h; the CUDA model
// calls the same functions with _cuda appended, in the same order.
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/safetensors.h"
#include "../common/utils.h"
#include "../mdn_kernels/mdn_cpu.h"
#include "conv.h"
#include "crossentropy.h"
#include "embedding.h"
#include "linear.h"
#include "mdn_gates.h"
#include "residual.h"
#include "rmsnorm.h"
#include "swiglu.h"

// ------------------------------------------------------------------------------------------------
// activations: one allocation, carved into named arrays sized for max_B x max_T tokens

typedef struct {
    real *ln1, *ln1_rstd;           // [BT, D], [BT]
    real *qp, *kp, *vp;             // projections (conv inputs) [BT, HK], [BT, HK], [BT, HV]
    real *qz, *kz, *vz;             // conv outputs before SiLU
    real *q, *k, *v;                // after SiLU
    real *qc;                       // q after the output correction (the op's q)
    real *ga, *gb, *gm, *ge;        // gate projections [BT, H]
    real *log_alpha, *log_mu, *beta, *eta;   // the op's gates [BT, H]
    real *o;                        // op output [BT, HV]
    real *g;                        // g_proj output [BT, HV] (NULL without use_gate)
    real *on, *on_rstd;             // gated norm output [BT, HV], its rstd [BT*H]
    real *h;                        // the residual stream after the mixer [BT, D]
    real *ln2, *ln2_rstd;           // [BT, D], [BT]
    real *mg, *mu, *mact;           // MLP gate, up, silu(gate)*up [BT, I]
} BlockActs;

struct ModelActs {
    real *memory;
    size_t num_values;
    real **residual;                // [L+1] each [BT, D]: residual[0] embeddings, residual[l+1] block l's output
    BlockActs *layers;
    real *lnf, *lnf_rstd;           // final norm [BT, D], [BT]
    real *losses, *lse;             // per-position loss and logsumexp of the logits [BT]
    int *inputs, *targets;          // copies of the last forward's [B, T]
    // backward scratch, shared by all layers (they run one after the other)
    real *dres, *dnorm_in, *dtmp;   // [BT, D]
    real *dmact, *dmg, *dmu;        // [BT, I]
    real *don, *d_o, *dg;           // [BT, HV]
    real *dq, *dk, *dv;             // the op's input gradients [BT, HK], [BT, HK], [BT, HV]
    real *dqp, *dkp, *dvp;          // projection gradients
    real *dla, *dlm, *dbeta, *deta; // [BT, H]
    real *dga, *dgb, *dgm, *dge;    // [BT, H]
};

// one-token inference state
struct ModelState {
    real *memory;
    int B;
    real **conv_q, **conv_k, **conv_v;  // per layer [B, W-1, C]
    real **S, **M;                      // per layer [B, H, K, V]
    real *S_next, *M_next;              // [B, H, K, V] scratch for the op's final states
};

// hands out consecutive arrays of one block of memory; with base NULL it only counts (to size the block)
typedef struct {
    real *base;
    size_t used;
} Carver;

static real *take(Carver *c, size_t count) {
    real *p = c->base != NULL ? c->base + c->used : NULL;
    c->used += count;
    return p;
}

static size_t layout_acts(ModelActs *a, const MdnConfig *c, size_t BT, real *base) {
    size_t D = c->hidden_size, H = c->num_heads, HK = H * c->head_dim, HV = H * c->value_dim;
    size_t I = c->intermediate_size;
    int L = c->num_hidden_layers;
    Carver cv = {base, 0};
    for (int l = 0; l <= L; l++) a->residual[l] = take(&cv, BT * D);
    for (int l = 0; l < L; l++) {
        BlockActs *b = &a->layers[l];
        b->ln1 = take(&cv, BT * D); b->ln1_rstd = take(&cv, BT);
        b->qp = take(&cv, BT * HK); b->kp = take(&cv, BT * HK); b->vp = take(&cv, BT * HV);
        b->qz = take(&cv, BT * HK); b->kz = take(&cv, BT * HK); b->vz = take(&cv, BT * HV);
        b->q = take(&cv, BT * HK); b->k = take(&cv, BT * HK); b->v = take(&cv, BT * HV);
        b->qc = c->use_output_correction ? take(&cv, BT * HK) : b->q;
        b->ga = take(&cv, BT * H); b->gb = take(&cv, BT * H); b->gm = take(&cv, BT * H); b->ge = take(&cv, BT * H);
        b->log_alpha = take(&cv, BT * H); b->log_mu = take(&cv, BT * H); b->beta = take(&cv, BT * H); b->eta = take(&cv, BT * H);
        b->o = take(&cv, BT * HV);
        b->g = c->use_gate ? take(&cv, BT * HV) : NULL;
        b->on = take(&cv, BT * HV); b->on_rstd = take(&cv, BT * H);
        b->h = take(&cv, BT * D);
        b->ln2 = take(&cv, BT * D); b->ln2_rstd = take(&cv, BT);
        b->mg = take(&cv, BT * I); b->mu = take(&cv, BT * I); b->mact = take(&cv, BT * I);
    }
    a->lnf = take(&cv, BT * D); a->lnf_rstd = take(&cv, BT);
    a->losses = take(&cv, BT); a->lse = take(&cv, BT);
    a->dres = take(&cv, BT * D); a->dnorm_in = take(&cv, BT * D); a->dtmp = take(&cv, BT * D);
    a->dmact = take(&cv, BT * I); a->dmg = take(&cv, BT * I); a->dmu = take(&cv, BT * I);
    a->don = take(&cv, BT * HV); a->d_o = take(&cv, BT * HV); a->dg = take(&cv, BT * HV);
    a->dq = take(&cv, BT * HK); a->dk = take(&cv, BT * HK); a->dv = take(&cv, BT * HV);
    a->dqp = take(&cv, BT * HK); a->dkp = take(&cv, BT * HK); a->dvp = take(&cv, BT * HV);
    a->dla = take(&cv, BT * H); a->dlm = take(&cv, BT * H); a->dbeta = take(&cv, BT * H); a->deta = take(&cv, BT * H);
    a->dga = take(&cv, BT * H); a->dgb = take(&cv, BT * H); a->dgm = take(&cv, BT * H); a->dge = take(&cv, BT * H);
    return cv.used;
}

// ------------------------------------------------------------------------------------------------
// the parameter table (fla's names, shapes and order, mdn-spec.md §2)

// the table being filled: tensors in order, each starting where the previous one ends
typedef struct {
    ParamTensor *tensors;
    int count, capacity;
    size_t num_params;
} ParamTable;

static void add_tensor(ParamTable *t, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, int no_decay) {
    if (t->count == t->capacity) {
        t->capacity = t->capacity ? 2 * t->capacity : 64;
        t->tensors = (ParamTensor *)xrealloc(t->tensors, (size_t)t->capacity * sizeof(ParamTensor));
    }
    ParamTensor *p = &t->tensors[t->count++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0; p->shape[1] = d1; p->shape[2] = d2;
    p->numel = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1) * (ndim > 2 ? (size_t)d2 : 1);
    p->offset = t->num_params;
    p->no_decay = no_decay;
    t->num_params += p->numel;
}

static const char *layer_name(char *buf, size_t n, int layer, const char *suffix) {
    snprintf(buf, n, "model.layers.%d.%s", layer, suffix);
    return buf;
}

int model_param_table(const MdnConfig *c, ParamTensor **tensors, size_t *num_params) {
    int64_t D = c->hidden_size, H = c->num_heads, HK = H * c->head_dim, HV = H * c->value_dim;
    int64_t I = c->intermediate_size, N = c->vocab_size, W = c->conv_size;
    ParamTable t = {NULL, 0, 0, 0};
    char name[MODEL_MAX_NAME];
    add_tensor(&t, "model.embeddings.weight", 2, N, D, 0, 0);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        add_tensor(&t, layer_name(name, sizeof name, l, "attn_norm.weight"), 1, D, 0, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.q_proj.weight"), 2, HK, D, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.k_proj.weight"), 2, HK, D, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.v_proj.weight"), 2, HV, D, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.a_proj.weight"), 2, H, D, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.b_proj.weight"), 2, H, D, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.m_proj.weight"), 2, H, D, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.e_proj.weight"), 2, H, D, 0, 0);
        if (c->use_short_conv) {
            add_tensor(&t, layer_name(name, sizeof name, l, "attn.q_conv1d.weight"), 3, HK, 1, W, 0);
            add_tensor(&t, layer_name(name, sizeof name, l, "attn.k_conv1d.weight"), 3, HK, 1, W, 0);
            add_tensor(&t, layer_name(name, sizeof name, l, "attn.v_conv1d.weight"), 3, HV, 1, W, 0);
        }
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.A_log"), 1, H, 0, 0, 1);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.Mu_log"), 1, H, 0, 0, 1);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.dt_bias"), 1, H, 0, 0, 1);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.mu_bias"), 1, H, 0, 0, 1);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.log_factor"), 1, H, 0, 0, 1);
        if (c->use_output_correction) add_tensor(&t, layer_name(name, sizeof name, l, "attn.D_log"), 1, H, 0, 0, 1);
        if (c->use_gate) add_tensor(&t, layer_name(name, sizeof name, l, "attn.g_proj.weight"), 2, HV, D, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.o_norm.weight"), 1, c->value_dim, 0, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "attn.o_proj.weight"), 2, D, HV, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "mlp_norm.weight"), 1, D, 0, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "mlp.gate_proj.weight"), 2, I, D, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "mlp.up_proj.weight"), 2, I, D, 0, 0);
        add_tensor(&t, layer_name(name, sizeof name, l, "mlp.down_proj.weight"), 2, D, I, 0, 0);
    }
    add_tensor(&t, "model.norm.weight", 1, D, 0, 0, 0);
    if (!c->tie_word_embeddings) add_tensor(&t, "lm_head.weight", 2, N, D, 0, 0);
    if ((int64_t)t.num_params != config_num_params(c))
        die("model_param_table: the table has %zu values but the config counts %lld (bug)", t.num_params,
            (long long)config_num_params(c));
    *tensors = t.tensors;
    *num_params = t.num_params;
    return t.count;
}

int model_param_table_find(const ParamTensor *tensors, int num_tensors, const char *name) {
    for (int i = 0; i < num_tensors; i++)
        if (strcmp(tensors[i].name, name) == 0) return i;
    return -1;
}

int model_param_decayed(const char *name, int no_decay, int no_decay_set) {
    return !(no_decay_set && (no_decay || strstr(name, "norm.weight") != NULL));
}

int model_find_tensor(const Model *m, const char *name) {
    return model_param_table_find(m->tensors, m->num_tensors, name);
}

// the named views of a flat array laid out as the table says (params or grads)
static real *tensor_in(const Model *m, real *base, int layer, const char *suffix) {
    char name[MODEL_MAX_NAME];
    if (layer >= 0) snprintf(name, sizeof name, "model.layers.%d.%s", layer, suffix);
    else snprintf(name, sizeof name, "%s", suffix);
    int i = model_find_tensor(m, name);
    return i < 0 ? NULL : base + m->tensors[i].offset;
}

static void point_views(const Model *m, real *base, ModelParams *v) {
    int L = m->config.num_hidden_layers;
    v->embeddings = tensor_in(m, base, -1, "model.embeddings.weight");
    v->norm = tensor_in(m, base, -1, "model.norm.weight");
    v->lm_head = m->config.tie_word_embeddings ? v->embeddings : tensor_in(m, base, -1, "lm_head.weight");
    v->layers = (BlockParams *)xcalloc((size_t)L, sizeof(BlockParams));
    for (int l = 0; l < L; l++) {
        BlockParams *b = &v->layers[l];
        b->attn_norm = tensor_in(m, base, l, "attn_norm.weight");
        b->q_proj = tensor_in(m, base, l, "attn.q_proj.weight");
        b->k_proj = tensor_in(m, base, l, "attn.k_proj.weight");
        b->v_proj = tensor_in(m, base, l, "attn.v_proj.weight");
        b->a_proj = tensor_in(m, base, l, "attn.a_proj.weight");
        b->b_proj = tensor_in(m, base, l, "attn.b_proj.weight");
        b->m_proj = tensor_in(m, base, l, "attn.m_proj.weight");
        b->e_proj = tensor_in(m, base, l, "attn.e_proj.weight");
        b->q_conv = tensor_in(m, base, l, "attn.q_conv1d.weight");
        b->k_conv = tensor_in(m, base, l, "attn.k_conv1d.weight");
        b->v_conv = tensor_in(m, base, l, "attn.v_conv1d.weight");
        b->A_log = tensor_in(m, base, l, "attn.A_log");
        b->Mu_log = tensor_in(m, base, l, "attn.Mu_log");
        b->dt_bias = tensor_in(m, base, l, "attn.dt_bias");
        b->mu_bias = tensor_in(m, base, l, "attn.mu_bias");
        b->log_factor = tensor_in(m, base, l, "attn.log_factor");
        b->D_log = tensor_in(m, base, l, "attn.D_log");
        b->g_proj = tensor_in(m, base, l, "attn.g_proj.weight");
        b->o_norm = tensor_in(m, base, l, "attn.o_norm.weight");
        b->o_proj = tensor_in(m, base, l, "attn.o_proj.weight");
        b->mlp_norm = tensor_in(m, base, l, "mlp_norm.weight");
        b->gate_proj = tensor_in(m, base, l, "mlp.gate_proj.weight");
        b->up_proj = tensor_in(m, base, l, "mlp.up_proj.weight");
        b->down_proj = tensor_in(m, base, l, "mlp.down_proj.weight");
    }
}

Model *model_build(const MdnConfig *config, int B, int T) {
    if (B <= 0 || T <= 0) die("model_build: batch %d x %d tokens must be positive", B, T);
    Model *m = (Model *)xcalloc(1, sizeof(Model));
    m->config = *config;
    m->num_tensors = model_param_table(config, &m->tensors, &m->num_params);
    m->params = (real *)xcalloc(m->num_params, sizeof(real));
    m->grads = (real *)xcalloc(m->num_params, sizeof(real));
    point_views(m, m->params, &m->p);
    point_views(m, m->grads, &m->g);
    m->max_B = B;
    m->max_T = T;
    size_t BT = (size_t)B * T;
    ModelActs *a = (ModelActs *)xcalloc(1, sizeof(ModelActs));
    a->residual = (real **)xcalloc((size_t)config->num_hidden_layers + 1, sizeof(real *));
    a->layers = (BlockActs *)xcalloc((size_t)config->num_hidden_layers, sizeof(BlockActs));
    a->num_values = layout_acts(a, config, BT, NULL);
    a->memory = (real *)xcalloc(a->num_values, sizeof(real));
    layout_acts(a, config, BT, a->memory);
    a->inputs = (int *)xcalloc(BT, sizeof(int));
    a->targets = (int *)xcalloc(BT, sizeof(int));
    m->acts = a;
    m->logits = (real *)xcalloc(BT * (size_t)config->vocab_size, sizeof(real));
    m->loss = -1;
    return m;
}

static void free_state(ModelState *s) {
    if (s == NULL) return;
    free(s->memory);
    free(s->conv_q); free(s->conv_k); free(s->conv_v); free(s->S); free(s->M);
    free(s);
}

void model_free(Model *m) {
    if (m == NULL) return;
    free(m->params); free(m->grads);
    free(m->p.layers); free(m->g.layers);
    free(m->tensors);
    free(m->acts->memory); free(m->acts->residual); free(m->acts->layers);
    free(m->acts->inputs); free(m->acts->targets); free(m->acts);
    free(m->logits);
    free_state(m->state);
    free(m);
}

// ------------------------------------------------------------------------------------------------
// init (mdn-spec.md §2): xorshift64* for uniform bits, Box-Muller for normals. Each tensor is cut
// into blocks of INIT_BLOCK values and every block draws from its own stream, seeded from (seed,
// tensor index, block index) by splitmix64: a seed fixes every weight whatever the thread count, and
// the blocks fill in parallel (one serial stream took 15 s for the 400M model and 60 s for the 1B
// one, most of train_mdn's start-up). PyTorch's stream is not reproduced.

typedef struct { uint64_t s; } Rng;

#define INIT_BLOCK 65536

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}
// the stream of block `block` of tensor `tensor`; never the all-zero state xorshift cannot leave
static Rng rng_for_block(uint64_t seed, int tensor, size_t block) {
    Rng r = {splitmix64(splitmix64(splitmix64(seed) ^ (uint64_t)tensor) ^ (uint64_t)block)};
    if (r.s == 0) r.s = 0x632BE59BD9B4E019ULL;
    return r;
}
static uint64_t rng_next(Rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1DULL;
}
// uniform in (0, 1]: never 0, so log(U) is finite
static double rng_uniform(Rng *r) { return ((rng_next(r) >> 11) + 1) * (1.0 / 9007199254740992.0); }

static int name_ends_with(const char *name, const char *suffix) {
    size_t n = strlen(name), k = strlen(suffix);
    return n >= k && strcmp(name + n - k, suffix) == 0;
}

// values [j0, j1) of tensor t (index ti) from the stream `rng`; dt_bias also writes mu_bias, the
// next tensor in the table
static void init_values(const ParamTensor *tensors, int ti, real *params, double std, Rng *rng, size_t j0, size_t j1) {
    const ParamTensor *t = &tensors[ti];
    real *w = params + t->offset;
    if (name_ends_with(t->name, "norm.weight")) {
        for (size_t j = j0; j < j1; j++) w[j] = 1;
    } else if (name_ends_with(t->name, "A_log") || name_ends_with(t->name, "Mu_log")) {
        for (size_t j = j0; j < j1; j++) w[j] = (real)log(16.0 * rng_uniform(rng));
    } else if (name_ends_with(t->name, "log_factor")) {
        for (size_t j = j0; j < j1; j++) w[j] = (real)log(4.0 * rng_uniform(rng));
    } else if (name_ends_with(t->name, "D_log")) {
        for (size_t j = j0; j < j1; j++) w[j] = (real)log(rng_uniform(rng));
    } else if (name_ends_with(t->name, "dt_bias")) {
        // dt log-uniform in [0.001, 0.1], clamped >= 1e-4; bias = softplus^-1(dt); mu_bias is a copy
        real *mu_bias = params + tensors[ti + 1].offset;
        for (size_t j = j0; j < j1; j++) {
            double dt = exp(rng_uniform(rng) * (log(0.1) - log(0.001)) + log(0.001));
            if (dt < 1e-4) dt = 1e-4;
            w[j] = (real)(dt + log(-expm1(-dt)));
            mu_bias[j] = w[j];
        }
    } else if (name_ends_with(t->name, "mu_bias")) {
        // written with dt_bias (the table keeps mu_bias right after dt_bias)
    } else {
        // Box-Muller, both outputs of each pair of uniforms
        for (size_t j = j0; j < j1; j += 2) {
            const double radius = std * sqrt(-2.0 * log(rng_uniform(rng))), angle = 2.0 * M_PI * rng_uniform(rng);
            w[j] = (real)(radius * cos(angle));
            if (j + 1 < j1) w[j + 1] = (real)(radius * sin(angle));
        }
    }
}

void model_init_params(const MdnConfig *config, const ParamTensor *tensors, int num_tensors, real *params,
                       uint64_t seed) {
    size_t total_blocks = 0;
    for (int i = 0; i < num_tensors; i++) total_blocks += (tensors[i].numel + INIT_BLOCK - 1) / INIT_BLOCK;
    #pragma omp parallel for schedule(dynamic, 16)
    for (size_t blk = 0; blk < total_blocks; blk++) {
        // which tensor and which of its blocks (a linear scan: a few hundred tensors)
        size_t first = 0;
        int ti = 0;
        for (;; ti++) {
            const size_t nb = (tensors[ti].numel + INIT_BLOCK - 1) / INIT_BLOCK;
            if (blk < first + nb) break;
            first += nb;
        }
        const size_t b = blk - first, j0 = b * INIT_BLOCK;
        const size_t j1 = j0 + INIT_BLOCK < tensors[ti].numel ? j0 + INIT_BLOCK : tensors[ti].numel;
        Rng rng = rng_for_block(seed, ti, b);
        init_values(tensors, ti, params, config->initializer_range, &rng, j0, j1);
    }
}

void model_init_weights(Model *m, uint64_t seed) {
    model_init_params(&m->config, m->tensors, m->num_tensors, m->params, seed);
}

// ------------------------------------------------------------------------------------------------
// forward and backward of one block

static real inv_tau(const MdnConfig *c) { return (real)(1.0 / sqrt(c->hidden_size / c->tau_factor)); }
static real min_log_mu(const MdnConfig *c) { return c->has_min_log_mu ? (real)c->min_log_mu : (real)-INFINITY; }

// x [B*T, D] → out [B*T, D]. With state (inference, T = 1) the convs and the op continue from it.
static void block_forward(Model *m, int l, int B, int T, const real *x, real *out, ModelState *state) {
    const MdnConfig *c = &m->config;
    const BlockParams *p = &m->p.layers[l];
    BlockActs *a = &m->acts->layers[l];
    int D = c->hidden_size, H = c->num_heads, K = c->head_dim, V = c->value_dim, I = c->intermediate_size;
    int W = c->conv_size, HK = H * K, HV = H * V, BT = B * T;

    // mixer: projections of the normed input
    rmsnorm_forward(a->ln1, a->ln1_rstd, x, p->attn_norm, BT, D, (real)c->norm_eps);
    linear_forward(a->qp, a->ln1, p->q_proj, BT, D, HK);
    linear_forward(a->kp, a->ln1, p->k_proj, BT, D, HK);
    linear_forward(a->vp, a->ln1, p->v_proj, BT, D, HV);
    linear_forward(a->ga, a->ln1, p->a_proj, BT, D, H);
    linear_forward(a->gb, a->ln1, p->b_proj, BT, D, H);
    linear_forward(a->gm, a->ln1, p->m_proj, BT, D, H);
    linear_forward(a->ge, a->ln1, p->e_proj, BT, D, H);
    if (p->g_proj != NULL) linear_forward(a->g, a->ln1, p->g_proj, BT, D, HV);
    // short causal convs + SiLU
    if (state == NULL) {
        shortconv_silu_forward(a->q, a->qz, a->qp, p->q_conv, B, T, HK, W);
        shortconv_silu_forward(a->k, a->kz, a->kp, p->k_conv, B, T, HK, W);
        shortconv_silu_forward(a->v, a->vz, a->vp, p->v_conv, B, T, HV, W);
    } else {
        shortconv_silu_step(a->q, state->conv_q[l], a->qp, p->q_conv, B, HK, W);
        shortconv_silu_step(a->k, state->conv_k[l], a->kp, p->k_conv, B, HK, W);
        shortconv_silu_step(a->v, state->conv_v[l], a->vp, p->v_conv, B, HV, W);
    }
    if (p->D_log != NULL) output_correction_forward(a->qc, a->q, a->k, p->D_log, BT, H, K);
    mdn_gates_forward(a->log_alpha, a->log_mu, a->beta, a->eta, a->ga, a->gb, a->gm, a->ge, p->A_log, p->Mu_log,
                      p->dt_bias, p->mu_bias, p->log_factor, BT, H, inv_tau(c), min_log_mu(c));
    // the op
    MdnShape shape = {B, T, H, K, V, c->use_p_times_alpha};
    MdnInputs in = {a->qc, a->k, a->v, a->log_alpha, a->log_mu, a->beta, a->eta, NULL, NULL};
    if (state == NULL) {
        mdn_chunk_forward(&shape, &in, a->o, NULL, NULL);
    } else {
        size_t state_size = (size_t)B * H * K * V;
        in.S0 = state->S[l];
        in.M0 = state->M[l];
        mdn_recurrent_forward(&shape, &in, a->o, state->S_next, state->M_next);
        memcpy(state->S[l], state->S_next, state_size * sizeof(real));
        memcpy(state->M[l], state->M_next, state_size * sizeof(real));
    }
    gated_rmsnorm_forward(a->on, a->on_rstd, a->o, a->g, p->o_norm, BT * H, V, (real)c->norm_eps);
    linear_forward(a->h, a->on, p->o_proj, BT, HV, D);
    residual_forward(a->h, a->h, x, (long)BT * D);

    // MLP
    rmsnorm_forward(a->ln2, a->ln2_rstd, a->h, p->mlp_norm, BT, D, (real)c->norm_eps);
    linear_forward(a->mg, a->ln2, p->gate_proj, BT, D, I);
    linear_forward(a->mu, a->ln2, p->up_proj, BT, D, I);
    swiglu_forward(a->mact, a->mg, a->mu, (long)BT * I);
    linear_forward(out, a->mact, p->down_proj, BT, I, D);
    residual_forward(out, out, a->h, (long)BT * D);
}

// dres [BT, D]: in, the gradient of the block's output; out, the gradient of its input x.
static void block_backward(Model *m, int l, int B, int T, const real *x, real *dres) {
    const MdnConfig *c = &m->config;
    const BlockParams *p = &m->p.layers[l];
    BlockParams *g = &m->g.layers[l];
    BlockActs *a = &m->acts->layers[l];
    ModelActs *s = m->acts;
    int D = c->hidden_size, H = c->num_heads, K = c->head_dim, V = c->value_dim, I = c->intermediate_size;
    int W = c->conv_size, HK = H * K, HV = H * V, BT = B * T;

    // MLP: out = h + down(silu(gate(ln2)) * up(ln2))
    linear_backward(s->dmact, g->down_proj, dres, a->mact, p->down_proj, BT, I, D);
    swiglu_backward(s->dmg, s->dmu, s->dmact, a->mg, a->mu, (long)BT * I);
    linear_backward(s->dnorm_in, g->gate_proj, s->dmg, a->ln2, p->gate_proj, BT, D, I);
    linear_backward(s->dtmp, g->up_proj, s->dmu, a->ln2, p->up_proj, BT, D, I);
    residual_forward(s->dnorm_in, s->dnorm_in, s->dtmp, (long)BT * D);
    rmsnorm_backward(dres, g->mlp_norm, s->dnorm_in, a->h, p->mlp_norm, a->ln2_rstd, BT, D);   // dres is now dh

    // mixer: h = x + o_proj(gated_norm(op(...)))
    linear_backward(s->don, g->o_proj, dres, a->on, p->o_proj, BT, HV, D);
    gated_rmsnorm_backward(s->d_o, s->dg, g->o_norm, s->don, a->o, a->g, p->o_norm, a->on_rstd, BT * H, V);
    MdnShape shape = {B, T, H, K, V, c->use_p_times_alpha};
    MdnInputs in = {a->qc, a->k, a->v, a->log_alpha, a->log_mu, a->beta, a->eta, NULL, NULL};
    MdnGrads grads = {s->dq, s->dk, s->dv, s->dla, s->dlm, s->dbeta, s->deta, NULL, NULL};
    mdn_chunk_backward(&shape, &in, s->d_o, NULL, NULL, &grads);
    if (p->D_log != NULL) output_correction_backward(s->dq, s->dk, g->D_log, s->dq, a->k, p->D_log, BT, H, K);
    mdn_gates_backward(s->dga, s->dgb, s->dgm, s->dge, g->A_log, g->Mu_log, g->dt_bias, g->mu_bias, g->log_factor,
                       s->dla, s->dlm, s->dbeta, s->deta, a->ga, a->gb, a->gm, a->ge, p->A_log, p->Mu_log,
                       p->dt_bias, p->mu_bias, p->log_factor, BT, H, inv_tau(c), min_log_mu(c));
    shortconv_silu_backward(s->dqp, g->q_conv, s->dq, a->qp, a->qz, p->q_conv, B, T, HK, W);
    shortconv_silu_backward(s->dkp, g->k_conv, s->dk, a->kp, a->kz, p->k_conv, B, T, HK, W);
    shortconv_silu_backward(s->dvp, g->v_conv, s->dv, a->vp, a->vz, p->v_conv, B, T, HV, W);
    // every projection reads ln1: sum their input gradients
    linear_backward(s->dnorm_in, g->q_proj, s->dqp, a->ln1, p->q_proj, BT, D, HK);
    linear_backward(s->dtmp, g->k_proj, s->dkp, a->ln1, p->k_proj, BT, D, HK);
    residual_forward(s->dnorm_in, s->dnorm_in, s->dtmp, (long)BT * D);
    linear_backward(s->dtmp, g->v_proj, s->dvp, a->ln1, p->v_proj, BT, D, HV);
    residual_forward(s->dnorm_in, s->dnorm_in, s->dtmp, (long)BT * D);
    linear_backward(s->dtmp, g->a_proj, s->dga, a->ln1, p->a_proj, BT, D, H);
    residual_forward(s->dnorm_in, s->dnorm_in, s->dtmp, (long)BT * D);
    linear_backward(s->dtmp, g->b_proj, s->dgb, a->ln1, p->b_proj, BT, D, H);
    residual_forward(s->dnorm_in, s->dnorm_in, s->dtmp, (long)BT * D);
    linear_backward(s->dtmp, g->m_proj, s->dgm, a->ln1, p->m_proj, BT, D, H);
    residual_forward(s->dnorm_in, s->dnorm_in, s->dtmp, (long)BT * D);
    linear_backward(s->dtmp, g->e_proj, s->dge, a->ln1, p->e_proj, BT, D, H);
    residual_forward(s->dnorm_in, s->dnorm_in, s->dtmp, (long)BT * D);
    if (p->g_proj != NULL) {
        linear_backward(s->dtmp, g->g_proj, s->dg, a->ln1, p->g_proj, BT, D, HV);
        residual_forward(s->dnorm_in, s->dnorm_in, s->dtmp, (long)BT * D);
    }
    rmsnorm_backward(dres, g->attn_norm, s->dnorm_in, x, p->attn_norm, a->ln1_rstd, BT, D);   // dres is now dx
}

// ------------------------------------------------------------------------------------------------
// the model

static void check_tokens(const Model *m, const int *tokens, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->config.vocab_size)
            die("model: %s token %d at position %zu is outside the vocabulary [0, %d)", what, tokens[i], i,
                m->config.vocab_size);
}

// embeddings → blocks → final norm → logits [B*T, N]; `state` as in block_forward
static void model_logits(Model *m, const int *inputs, int B, int T, ModelState *state) {
    const MdnConfig *c = &m->config;
    ModelActs *a = m->acts;
    int BT = B * T, D = c->hidden_size, L = c->num_hidden_layers;
    embedding_forward(a->residual[0], inputs, m->p.embeddings, BT, D);
    for (int l = 0; l < L; l++) block_forward(m, l, B, T, a->residual[l], a->residual[l + 1], state);
    rmsnorm_forward(a->lnf, a->lnf_rstd, a->residual[L], m->p.norm, BT, D, (real)c->norm_eps);
    linear_forward(m->logits, a->lnf, m->p.lm_head, BT, D, c->vocab_size);
}

real model_forward(Model *m, const int *inputs, const int *targets, int B, int T) {
    if (B <= 0 || T <= 0 || B > m->max_B || T > m->max_T)
        die("model_forward: batch %d x %d is outside the built %d x %d", B, T, m->max_B, m->max_T);
    size_t BT = (size_t)B * T;
    check_tokens(m, inputs, BT, "input");
    m->B = B;
    m->T = T;
    memcpy(m->acts->inputs, inputs, BT * sizeof(int));
    model_logits(m, inputs, B, T, NULL);
    if (targets == NULL) {
        m->loss = -1;
        m->num_targets = 0;
        for (size_t i = 0; i < BT; i++) m->acts->targets[i] = -100;
        return m->loss;
    }
    for (size_t i = 0; i < BT; i++)
        if (targets[i] >= m->config.vocab_size)
            die("model: target token %d at position %zu is outside the vocabulary [0, %d)", targets[i], i, m->config.vocab_size);
    memcpy(m->acts->targets, targets, BT * sizeof(int));
    m->num_targets = crossentropy_forward(m->acts->losses, m->acts->lse, m->logits, targets, (int)BT, m->config.vocab_size);
    double sum = 0;   // summed in double, in a fixed order
    for (size_t i = 0; i < BT; i++) sum += m->acts->losses[i];
    m->loss = m->num_targets > 0 ? (real)(sum / m->num_targets) : 0;
    return m->loss;
}

void model_zero_grad(Model *m) { memset(m->grads, 0, m->num_params * sizeof(real)); }

void model_backward(Model *m, real loss_scale) {
    if (m->loss < 0) die("model_backward: the last forward had no targets");
    const MdnConfig *c = &m->config;
    ModelActs *a = m->acts;
    int B = m->B, T = m->T, BT = B * T, D = c->hidden_size, L = c->num_hidden_layers, N = c->vocab_size;
    real dloss = m->num_targets > 0 ? loss_scale / m->num_targets : 0;
    crossentropy_backward(m->logits, m->logits, a->lse, a->targets, dloss, BT, N);   // logits now hold dlogits
    linear_backward(a->dnorm_in, m->g.lm_head, m->logits, a->lnf, m->p.lm_head, BT, D, N);
    memset(a->dres, 0, (size_t)BT * D * sizeof(real));
    rmsnorm_backward(a->dres, m->g.norm, a->dnorm_in, a->residual[L], m->p.norm, a->lnf_rstd, BT, D);
    for (int l = L - 1; l >= 0; l--) block_backward(m, l, B, T, a->residual[l], a->dres);
    embedding_backward(m->g.embeddings, a->dres, a->inputs, BT, D);
}

// ------------------------------------------------------------------------------------------------
// one-token inference (mdn-spec.md §7)

static ModelState *alloc_state(const Model *m) {
    const MdnConfig *c = &m->config;
    int L = c->num_hidden_layers, B = m->max_B;
    size_t HK = (size_t)c->num_heads * c->head_dim, HV = (size_t)c->num_heads * c->value_dim;
    size_t Wm1 = (size_t)(c->conv_size - 1), SM = (size_t)B * c->num_heads * c->head_dim * c->value_dim;
    ModelState *s = (ModelState *)xcalloc(1, sizeof(ModelState));
    s->B = B;
    size_t total = (size_t)L * ((size_t)B * Wm1 * (2 * HK + HV) + 2 * SM) + 2 * SM;
    s->memory = (real *)xcalloc(total, sizeof(real));
    s->conv_q = (real **)xcalloc((size_t)L, sizeof(real *));
    s->conv_k = (real **)xcalloc((size_t)L, sizeof(real *));
    s->conv_v = (real **)xcalloc((size_t)L, sizeof(real *));
    s->S = (real **)xcalloc((size_t)L, sizeof(real *));
    s->M = (real **)xcalloc((size_t)L, sizeof(real *));
    Carver cv = {s->memory, 0};
    for (int l = 0; l < L; l++) {
        s->conv_q[l] = take(&cv, (size_t)B * Wm1 * HK);
        s->conv_k[l] = take(&cv, (size_t)B * Wm1 * HK);
        s->conv_v[l] = take(&cv, (size_t)B * Wm1 * HV);
        s->S[l] = take(&cv, SM);
        s->M[l] = take(&cv, SM);
    }
    s->S_next = take(&cv, SM);
    s->M_next = take(&cv, SM);
    return s;
}

void model_reset_state(Model *m) {
    if (m->state == NULL) return;
    const MdnConfig *c = &m->config;
    size_t HK = (size_t)c->num_heads * c->head_dim, HV = (size_t)c->num_heads * c->value_dim;
    size_t total = (size_t)c->num_hidden_layers * ((size_t)m->state->B * (c->conv_size - 1) * (2 * HK + HV) +
                   2 * (size_t)m->state->B * c->num_heads * c->head_dim * c->value_dim);
    memset(m->state->memory, 0, total * sizeof(real));
}

void model_step(Model *m, const int *tokens, int B, real *logits_out) {
    if (B <= 0 || B > m->max_B) die("model_step: %d rows, the model was built for at most %d", B, m->max_B);
    check_tokens(m, tokens, (size_t)B, "input");
    if (m->state == NULL) m->state = alloc_state(m);
    // the activation buffers hold this step's values (a forward's activations are overwritten)
    model_logits(m, tokens, B, 1, m->state);
    memcpy(logits_out, m->logits, (size_t)B * m->config.vocab_size * sizeof(real));
    m->loss = -1;
}

// ------------------------------------------------------------------------------------------------
// summary

void model_print_summary(const Model *m, FILE *out) {
    config_print_summary(&m->config, out);
    fprintf(out, "tensors: %d, activations for %d x %d tokens: %.1f MiB\n", m->num_tensors, m->max_B, m->max_T,
            (double)(m->acts->num_values + (size_t)m->max_B * m->max_T * m->config.vocab_size) * sizeof(real) / 1048576.0);
}

// ------------------------------------------------------------------------------------------------
// HF interop

static void join_path(char *buf, size_t n, const char *dir, const char *file) {
    size_t len = strlen(dir);
    snprintf(buf, n, "%s%s%s", dir, len > 0 && dir[len - 1] == '/' ? "" : "/", file);
}

int model_load_hf_weights(Model *m, const char *dir, char *err, size_t errlen) {
    char path[4096];
    join_path(path, sizeof path, dir, "model.safetensors");
    SafeTensors st;
    if (st_read(&st, path, err, errlen) != 0) return -1;
    int rc = 0;
    for (int i = 0; i < m->num_tensors && rc == 0; i++) {
        const ParamTensor *t = &m->tensors[i];
        if (st_find(&st, t->name) == NULL) {
            rc = set_error(err, errlen, "%s: tensor %s is missing", path, t->name);
            break;
        }
#ifdef MDN_DOUBLE
        rc = st_get_f64(&st, t->name, t->ndim, t->shape, m->params + t->offset, err, errlen);
#else
        rc = st_get_f32(&st, t->name, t->ndim, t->shape, m->params + t->offset, err, errlen);
#endif
    }
    for (int i = 0; i < st.count && rc == 0; i++)
        if (model_find_tensor(m, st.tensors[i].name) < 0 &&
            !(m->config.tie_word_embeddings && strcmp(st.tensors[i].name, "lm_head.weight") == 0))
            fprintf(stderr, "warning: %s: tensor %s is not part of the model, ignored\n", path, st.tensors[i].name);
    st_free(&st);
    return rc;
}

Model *model_load_hf(const char *dir, int B, int T, char *err, size_t errlen) {
    char path[4096];
    join_path(path, sizeof path, dir, "config.json");
    MdnConfig config;
    if (config_load(&config, path, err, errlen) != 0) return NULL;
    Model *m = model_build(&config, B, T);
    if (model_load_hf_weights(m, dir, err, errlen) != 0) {
        model_free(m);
        return NULL;
    }
    return m;
}

int model_save_hf(const Model *m, const char *dir, char *err, size_t errlen) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return set_error(err, errlen, "%s: cannot create directory (%s)", dir, strerror(errno));
    char path[4096], tmp[4200];
    join_path(path, sizeof path, dir, "config.json");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    char *json = config_to_json(&m->config);
    FILE *f = fopen(tmp, "wb");
    if (f == NULL) { free(json); return set_error(err, errlen, "%s: cannot write", tmp); }
    int ok = fwrite(json, 1, strlen(json), f) == strlen(json);
    ok = (fclose(f) == 0) && ok;
    free(json);
    if (!ok || rename(tmp, path) != 0) return set_error(err, errlen, "%s: write failed", path);

    join_path(path, sizeof path, dir, "model.safetensors");
    StWriter w;
    st_writer_init(&w);
#ifdef MDN_DOUBLE
    float *copy = (float *)xmalloc(m->num_params * sizeof(float));   // safetensors gets float32
    for (size_t i = 0; i < m->num_params; i++) copy[i] = (float)m->params[i];
    const float *values = copy;
#else
    const float *values = m->params;
#endif
    for (int i = 0; i < m->num_tensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        st_writer_add(&w, t->name, ST_F32, t->ndim, t->shape, values + t->offset);
    }
    st_writer_add_metadata(&w, "format", "pt");
    int rc = st_writer_save(&w, path, err, errlen);
    st_writer_free(&w);
#ifdef MDN_DOUBLE
    free(copy);
#endif
    return rc;
}
