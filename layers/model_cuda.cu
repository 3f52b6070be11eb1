// model_cuda.cu: the GPU model (see model_cuda.cuh). The forward and the backward read top to
// bottom like model.c's block_forward / block_backward, with the fused projections, the fused
// residual add + norm, the recomputations, and the fused classifier.
#include "model_cuda.cuh"

#include <math.h>
#include <string.h>

#include "../common/utils.h"
#include "../mdn_kernels/mdn_cuda.cuh"
#include "adamw.cuh"
#include "conv.cuh"
#include "crossentropy.cuh"
#include "embedding.cuh"
#include "linear.cuh"
#include "mdn_gates.cuh"
#include "rmsnorm.cuh"
#include "swiglu.cuh"

// pointers of one layer's parameters (or gradients), GPU layout
typedef struct {
    float *attn_norm, *qkvg, *abme, *q_conv, *k_conv, *v_conv;
    float *A_log, *Mu_log, *dt_bias, *mu_bias, *log_factor, *D_log;
    float *o_norm, *o_proj, *mlp_norm, *gate_up, *down;
} LayerParams;

struct GpuActs {
    // kept for the backward, per layer
    float **resid;          // [L+1][BT, D]: block inputs; resid[L] is the final residual stream
    float **rstd1;          // [L][BT]
    void **proj;            // [L][BT, 2HK+2HV]: q|k|v (before the conv) | g
    float **abme;           // [L][BT, 4H]: gate logits a|b|m|e
    float **gates;          // [L][4, BT, H]: log_alpha, log_mu, beta, eta
    void **o;               // [L][BT, HV]: the op's output
    void **op_saved;        // [L]: the op forward's per-chunk results its backward reuses (mdn_cuda.cuh)
    float **orstd;          // [L][BT*H]
    void **gate_up;         // [L][BT, 2I]
    void **mixer_out;       // [L][BT, D]: o_proj's output (recompute 1), else NULL
    void *xf;               // [BT, D] final normed
    float *rstdf;           // [BT]
    // recomputed or per-layer scratch
    float *h, *rstd2;       // [BT, D], [BT]: after the current block's mixer, the forward's (the
                            // backward's MLP norm recomputes both from resid[l] and o_proj's output:
                            // one matmul a layer instead of L fp32 copies)
    void *xn, *q, *k, *v, *on, *hn, *act, *tmpD;
    // backward scratch
    float *dresid;          // [BT, D] float32 gradient of the residual stream
    void *dres_x;           // the same in the activation type (matmul operand)
    void *dxn, *dact, *dgu, *don, *d_o, *dq, *dk, *dv, *dproj, *dabme;
    float *dgates;          // [4, BT, H]
    float *losses;          // [BT]
    void *logits;           // [block_rows, N]
    int *tokens, *targets;  // [BT]
    float *norm_partials;   // REDUCE_PARTS * max(D, Vh)
    void *scratch;          // the largest of the layer kernels' scratch needs
    void *op_workspace;
    size_t op_workspace_bytes;
    double *sumsq_partials; // [REDUCE_PARTS]
    int *host_tokens;       // pinned staging of inputs and targets [2, BT]
    float *host_losses;     // pinned [BT]
};

// ------------------------------------------------------------------------------------------------
// parameter layout

// Every tensor starts on a multiple of GPU_PARAM_ALIGN values, so (cudaMalloc's bases being
// 256-byte aligned) on a 256-byte boundary of the float32 vectors (masters, gradients, moments) and
// a 128-byte one of the bf16 copy. cuBLASLt's fast kernels need 16-byte aligned operands (linear.cu
// refuses others); packed back to back, the tensors after the [H]-sized gate parameters started at
// odd offsets. The exceptions are the tensors fused into one matmul (k|v|g_proj after q_proj,
// b|m|e_proj after a_proj, up_proj after gate_proj): the group is one [rows, D] matrix, so they
// follow its first tensor without a gap; only the group's start is a matmul operand.
// The padding is zero in every flat vector and stays zero: alloc_flat_vectors zeroes it,
// gpu_model_upload writes zeros there, no kernel writes outside a tensor, so its gradient stays zero,
// and AdamW leaves a zero weight with zero gradient and moments at zero (as it does an embedding row
// no token has reached). So the gradient norm, weight decay and the ZeRO-1 collectives, which run
// over the whole flat vector, see the parameters and nothing else.
#define GPU_PARAM_ALIGN 64

// what cuda_malloc_or_die suggests when the model's own buffers do not fit (the activations' hint
// is at their allocation)
#define MODEL_TOO_BIG "the model's weights and gradients alone do not fit this GPU"
#define MOMENTS_TOO_BIG "use more GPUs (ZeRO-1 shards the moments over the ranks) or a smaller --batch-size"

static size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// appends the CPU table's tensor `name` at *offset (aligned first unless it joins the previous tensor's
// matmul) and moves *offset past it
static void add_tensor(GpuModel *m, const ParamTensor *cpu, int cpu_count, const char *name, int fused,
                       size_t *offset) {
    int idx = model_param_table_find(cpu, cpu_count, name);
    if (idx < 0) die("model_cuda: the CPU model has no tensor %s", name);
    if (!fused) *offset = round_up(*offset, GPU_PARAM_ALIGN);
    GpuParamTensor *t = &m->tensors[m->num_tensors++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->offset = *offset;
    t->numel = cpu[idx].numel;
    t->cpu_offset = cpu[idx].offset;
    t->no_decay = cpu[idx].no_decay;
    *offset += t->numel;
}

void gpu_model_layout(GpuModel *m) {
    ParamTensor *cpu;
    size_t cpu_params;
    int cpu_count = model_param_table(&m->config, &cpu, &cpu_params);
    m->num_tensors = 0;
    m->tensors = (GpuParamTensor *)xcalloc((size_t)cpu_count, sizeof(GpuParamTensor));
    size_t offset = 0;
    char name[MODEL_MAX_NAME];
    add_tensor(m, cpu, cpu_count, "model.embeddings.weight", 0, &offset);
    // per layer, in the order layer_params indexes them; fused: one matmul with the tensor before
    static const struct {
        const char *suffix;
        int fused;
    } layer_order[] = {
        {"attn_norm.weight", 0}, {"attn.q_proj.weight", 0}, {"attn.k_proj.weight", 1}, {"attn.v_proj.weight", 1},
        {"attn.g_proj.weight", 1}, {"attn.a_proj.weight", 0}, {"attn.b_proj.weight", 1}, {"attn.m_proj.weight", 1},
        {"attn.e_proj.weight", 1}, {"attn.q_conv1d.weight", 0}, {"attn.k_conv1d.weight", 0},
        {"attn.v_conv1d.weight", 0}, {"attn.A_log", 0}, {"attn.Mu_log", 0}, {"attn.dt_bias", 0}, {"attn.mu_bias", 0},
        {"attn.log_factor", 0}, {"attn.D_log", 0}, {"attn.o_norm.weight", 0}, {"attn.o_proj.weight", 0},
        {"mlp_norm.weight", 0}, {"mlp.gate_proj.weight", 0}, {"mlp.up_proj.weight", 1}, {"mlp.down_proj.weight", 0}};
    for (int l = 0; l < m->config.num_hidden_layers; l++)
        for (size_t j = 0; j < sizeof(layer_order) / sizeof(layer_order[0]); j++) {
            snprintf(name, sizeof(name), "model.layers.%d.%s", l, layer_order[j].suffix);
            add_tensor(m, cpu, cpu_count, name, layer_order[j].fused, &offset);
        }
    add_tensor(m, cpu, cpu_count, "model.norm.weight", 0, &offset);
    add_tensor(m, cpu, cpu_count, "lm_head.weight", 0, &offset);
    size_t numel = 0;
    for (int i = 0; i < m->num_tensors; i++) numel += m->tensors[i].numel;
    if (m->num_tensors != cpu_count || numel != cpu_params)
        die("model_cuda: GPU layout has %d tensors / %zu params, the CPU model %d / %zu", m->num_tensors, numel,
            cpu_count, cpu_params);
    m->num_params = cpu_params;
    m->layout_numel = round_up(offset, GPU_PARAM_ALIGN);
    free(cpu);
}

// layer l's pointers into a flat vector in the GPU layout (params or grads)
static LayerParams layer_params(const GpuModel *m, float *base, int l) {
    const GpuParamTensor *t = m->tensors + 1 + (size_t)l * 24;
    LayerParams p;
    p.attn_norm = base + t[0].offset;
    p.qkvg = base + t[1].offset;
    p.abme = base + t[5].offset;
    p.q_conv = base + t[9].offset;
    p.k_conv = base + t[10].offset;
    p.v_conv = base + t[11].offset;
    p.A_log = base + t[12].offset;
    p.Mu_log = base + t[13].offset;
    p.dt_bias = base + t[14].offset;
    p.mu_bias = base + t[15].offset;
    p.log_factor = base + t[16].offset;
    p.D_log = base + t[17].offset;
    p.o_norm = base + t[18].offset;
    p.o_proj = base + t[19].offset;
    p.mlp_norm = base + t[20].offset;
    p.gate_up = base + t[21].offset;
    p.down = base + t[23].offset;
    return p;
}

static size_t embeddings_offset(const GpuModel *m) { return m->tensors[0].offset; }
static size_t norm_offset(const GpuModel *m) { return m->tensors[m->num_tensors - 2].offset; }
static size_t lm_head_offset(const GpuModel *m) { return m->tensors[m->num_tensors - 1].offset; }

// ------------------------------------------------------------------------------------------------
// allocation

typedef struct {
    char *base;
    size_t used;
} Carver;

// with base == NULL only counts
static void *carve(Carver *c, size_t bytes) {
    void *p = c->base != NULL ? c->base + c->used : NULL;
    c->used += (bytes + 255) & ~(size_t)255;
    return p;
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

// rows of the classifier's token block (see carve_acts): its own buffer holds CLASSIFIER_MIN_ROWS;
// in the op's workspace it takes up to CLASSIFIER_MAX_ROWS
#define CLASSIFIER_MIN_ROWS 2048
#define CLASSIFIER_MAX_ROWS 8192

static void carve_acts(GpuModel *m, Carver *c) {
    const MdnConfig *cf = &m->config;
    GpuActs *a = m->acts;
    size_t X = m->use_bf16 ? 2 : 4;
    int L = cf->num_hidden_layers, D = cf->hidden_size, H = cf->num_heads, K = cf->head_dim, V = cf->value_dim;
    int I = cf->intermediate_size, N = cf->vocab_size, W = cf->conv_size;
    size_t BT = (size_t)m->max_B * m->T, HK = (size_t)H * K, HV = (size_t)H * V, PQ = 2 * HK + 2 * HV;
    MdnCudaShape shape = {m->max_B, m->T, H, K, V, cf->use_p_times_alpha, m->use_bf16 ? MDN_DTYPE_BF16 : MDN_DTYPE_F32};
    for (int l = 0; l <= L; l++) a->resid[l] = (float *)carve(c, BT * D * 4);
    for (int l = 0; l < L; l++) {
        a->rstd1[l] = (float *)carve(c, BT * 4);
        a->proj[l] = carve(c, BT * PQ * X);
        a->abme[l] = (float *)carve(c, BT * 4 * H * 4);
        a->gates[l] = (float *)carve(c, 4 * BT * H * 4);
        a->o[l] = carve(c, BT * HV * X);
        a->orstd[l] = (float *)carve(c, BT * H * 4);
        a->gate_up[l] = carve(c, BT * 2 * I * X);
        a->op_saved[l] = carve(c, mdn_chunk_saved_size(&shape));
        a->mixer_out[l] = m->recompute == 1 ? carve(c, BT * D * X) : NULL;
    }
    a->h = (float *)carve(c, BT * D * 4);
    a->rstd2 = (float *)carve(c, BT * 4);
    a->xf = carve(c, BT * D * X);
    a->rstdf = (float *)carve(c, BT * 4);
    a->xn = carve(c, BT * D * X);
    a->q = carve(c, BT * HK * X);
    a->k = carve(c, BT * HK * X);
    a->v = carve(c, BT * HV * X);
    a->on = carve(c, BT * HV * X);
    a->hn = carve(c, BT * D * X);
    a->act = carve(c, BT * I * X);
    a->tmpD = carve(c, BT * D * X);
    a->dresid = (float *)carve(c, BT * D * 4);
    a->dres_x = carve(c, BT * D * X);
    a->dxn = carve(c, BT * D * X);
    a->dact = carve(c, BT * I * X);
    a->dgu = carve(c, BT * max_size(2 * (size_t)I, PQ) * X);   // also dproj, see below
    a->don = carve(c, BT * HV * X);
    a->d_o = carve(c, BT * HV * X);
    a->dq = carve(c, BT * HK * X);
    a->dk = carve(c, BT * HK * X);
    a->dv = carve(c, BT * HV * X);
    // the mixer's projection gradient is needed only after the MLP's gate|up gradient is consumed
    a->dproj = a->dgu;
    a->dabme = carve(c, BT * 4 * H * X);
    a->dgates = (float *)carve(c, 4 * BT * H * 4);
    a->losses = (float *)carve(c, BT * 4);
    a->tokens = (int *)carve(c, BT * 4);
    a->targets = (int *)carve(c, BT * 4);
    a->norm_partials = (float *)carve(c, (size_t)REDUCE_PARTS * (D > V ? D : V) * 4);
    size_t scratch = embedding_backward_scratch_bytes((int)BT);
    scratch = max_size(scratch, shortconv_silu_backward_scratch_bytes(m->max_B, m->T, (int)HV, W));
    scratch = max_size(scratch, mdn_gates_backward_scratch_bytes((int)BT, H));
    scratch = max_size(scratch, output_correction_backward_scratch_bytes((int)BT, H));
    a->scratch = carve(c, scratch);
    a->op_workspace_bytes = max_size(mdn_chunk_forward_workspace_size(&shape), mdn_chunk_backward_workspace_size(&shape));
    a->op_workspace = carve(c, a->op_workspace_bytes);
    // The classifier's logits block lives in the op's workspace where it fits: the classifier runs
    // between the last layer's forward and the first layer's backward, when no op call needs the
    // workspace. There the block takes as many rows as the workspace holds, up to
    // CLASSIFIER_MAX_ROWS: each block re-reads and re-writes the float32 lm_head gradient (206 MB at
    // 400M), 16 times a 400M step at 2048 rows (~2.2 ms), 4 times at 8192.
    size_t row_bytes = (size_t)classifier_logits_ld(N) * X;
    size_t fit_rows = a->op_workspace_bytes / row_bytes;
    size_t min_rows = BT < CLASSIFIER_MIN_ROWS ? BT : CLASSIFIER_MIN_ROWS;
    if (fit_rows >= min_rows) {
        size_t rows = fit_rows < CLASSIFIER_MAX_ROWS ? fit_rows / 256 * 256 : CLASSIFIER_MAX_ROWS;
        if (rows < min_rows) rows = min_rows;   // still fits: fit_rows >= min_rows
        m->block_rows = (int)(rows < BT ? rows : BT);
        a->logits = a->op_workspace;
    } else {
        m->block_rows = (int)min_rows;
        a->logits = carve(c, (size_t)m->block_rows * row_bytes);
    }
    a->sumsq_partials = (double *)carve(c, REDUCE_PARTS * sizeof(double));
}

// params, params_x and grads for shard·world_size values, zeroed (the padding, between tensors and
// past layout_numel, stays zero: see GPU_PARAM_ALIGN)
static void alloc_flat_vectors(GpuModel *m) {
    size_t n = m->shard * (size_t)m->world_size;
    m->params = (float *)cuda_malloc_or_die(n * sizeof(float), "the float32 parameters", MODEL_TOO_BIG);
    m->grads = (float *)cuda_malloc_or_die(n * sizeof(float), "the gradients", MODEL_TOO_BIG);
    cudaCheck(cudaMemsetAsync(m->params, 0, n * sizeof(float), m->stream));
    cudaCheck(cudaMemsetAsync(m->grads, 0, n * sizeof(float), m->stream));
    if (m->use_bf16) {
        m->params_x = cuda_malloc_or_die(n * sizeof(bf16), "the bf16 parameter copy", MODEL_TOO_BIG);
        cudaCheck(cudaMemsetAsync(m->params_x, 0, n * sizeof(bf16), m->stream));
    } else {
        m->params_x = m->params;
    }
}

static void free_flat_vectors(GpuModel *m) {
    cudaCheck(cudaStreamSynchronize(m->stream));
    cudaCheck(cudaFree(m->params));
    cudaCheck(cudaFree(m->grads));
    if (m->use_bf16) cudaCheck(cudaFree(m->params_x));
}

GpuModel *gpu_model_build(const MdnConfig *config, int B, int T, int use_bf16, int recompute, cudaStream_t stream) {
    if (!config->use_short_conv || !config->use_gate || !config->use_output_correction ||
        config->tie_word_embeddings)
        die("model_cuda: the GPU model needs use_short_conv, use_gate, use_output_correction true and "
            "tie_word_embeddings false (the paper's configs)");
    if (config->conv_size > CONV_MAX_W) die("model_cuda: conv_size %d > %d", config->conv_size, CONV_MAX_W);
    GpuModel *m = (GpuModel *)xcalloc(1, sizeof(GpuModel));
    m->config = *config;
    m->use_bf16 = use_bf16;
    if (recompute != 1 && recompute != 2) die("model_cuda: recompute must be 1 or 2, got %d", recompute);
    m->recompute = recompute;
    m->max_B = B;
    m->T = T;
    m->stream = stream;
    MdnCudaShape shape = {B, T, config->num_heads, config->head_dim, config->value_dim, config->use_p_times_alpha,
                          use_bf16 ? MDN_DTYPE_BF16 : MDN_DTYPE_F32};
    const char *why = mdn_cuda_check_shape(&shape);
    if (why != NULL) die("model_cuda: the MDN op does not support this shape: %s", why);
    gpu_model_layout(m);
    gpu_model_shard(m, 0, 1);
    alloc_flat_vectors(m);
    int L = config->num_hidden_layers;
    GpuActs *a = (GpuActs *)xcalloc(1, sizeof(GpuActs));
    m->acts = a;
    a->resid = (float **)xcalloc((size_t)L + 1, sizeof(float *));
    a->rstd1 = (float **)xcalloc((size_t)L, sizeof(float *));
    a->proj = (void **)xcalloc((size_t)L, sizeof(void *));
    a->abme = (float **)xcalloc((size_t)L, sizeof(float *));
    a->gates = (float **)xcalloc((size_t)L, sizeof(float *));
    a->o = (void **)xcalloc((size_t)L, sizeof(void *));
    a->orstd = (float **)xcalloc((size_t)L, sizeof(float *));
    a->gate_up = (void **)xcalloc((size_t)L, sizeof(void *));
    a->op_saved = (void **)xcalloc((size_t)L, sizeof(void *));
    a->mixer_out = (void **)xcalloc((size_t)L, sizeof(void *));
    Carver count = {NULL, 0};
    carve_acts(m, &count);
    m->acts_bytes = count.used;
    Carver c = {NULL, 0};
    c.base = (char *)cuda_malloc_or_die(m->acts_bytes, "the activations of --batch-size x --seq-len",
                                        "lower --batch-size (raise --grad-accum to keep the tokens per step) or --seq-len");
    carve_acts(m, &c);
    cudaCheck(cudaMallocHost((void **)&a->host_tokens, 2 * (size_t)B * T * sizeof(int)));
    cudaCheck(cudaMallocHost((void **)&a->host_losses, (size_t)B * T * sizeof(float)));
    return m;
}

void gpu_model_shard(GpuModel *m, int rank, int world_size) {
    if (world_size < 1 || rank < 0 || rank >= world_size) die("model_cuda: rank %d of %d", rank, world_size);
    m->rank = rank;
    m->world_size = world_size;
    // each rank's block starts aligned too (the collectives and AdamW run on it); layout_numel is a
    // multiple of GPU_PARAM_ALIGN, so one rank's shard is the whole layout
    m->shard = round_up((m->layout_numel + (size_t)world_size - 1) / (size_t)world_size, GPU_PARAM_ALIGN);
    size_t begin = (size_t)rank * m->shard;
    m->shard_begin = begin < m->layout_numel ? begin : m->layout_numel;
    m->shard_end = begin + m->shard < m->layout_numel ? begin + m->shard : m->layout_numel;
}

int gpu_model_decay_segments(const GpuModel *m, int no_decay_set, size_t *seg_end, unsigned char *seg_decay) {
    if (!no_decay_set) return 0;
    for (int i = 0; i < m->num_tensors; i++) {
        seg_end[i] = m->tensors[i].offset + m->tensors[i].numel;
        seg_decay[i] = (unsigned char)model_param_decayed(m->tensors[i].name, m->tensors[i].no_decay, no_decay_set);
    }
    return m->num_tensors;
}

void gpu_model_alloc_optimizer(GpuModel *m, int no_decay_set, int rank, int world_size) {
    if (m->adam_m != NULL) die("model_cuda: gpu_model_alloc_optimizer called twice");
    if (world_size > 1) free_flat_vectors(m);   // the parameters are not set yet (see model_cuda.cuh): nothing to keep
    gpu_model_shard(m, rank, world_size);
    if (world_size > 1) alloc_flat_vectors(m);   // shard·world_size values, padded
    m->adam_m = (float *)cuda_malloc_or_die(m->shard * sizeof(float), "AdamW's first moments", MOMENTS_TOO_BIG);
    m->adam_v = (float *)cuda_malloc_or_die(m->shard * sizeof(float), "AdamW's second moments", MOMENTS_TOO_BIG);
    cudaCheck(cudaMemsetAsync(m->adam_m, 0, m->shard * sizeof(float), m->stream));
    cudaCheck(cudaMemsetAsync(m->adam_v, 0, m->shard * sizeof(float), m->stream));
    size_t *ends = (size_t *)xmalloc((size_t)m->num_tensors * sizeof(size_t));
    unsigned char *decay = (unsigned char *)xmalloc((size_t)m->num_tensors);
    m->num_segments = gpu_model_decay_segments(m, no_decay_set, ends, decay);
    if (m->num_segments > 0) {
        cudaCheck(cudaMalloc((void **)&m->seg_end, (size_t)m->num_segments * sizeof(size_t)));
        cudaCheck(cudaMalloc((void **)&m->seg_decay, (size_t)m->num_segments));
        cudaCheck(cudaMemcpy(m->seg_end, ends, (size_t)m->num_segments * sizeof(size_t), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(m->seg_decay, decay, (size_t)m->num_segments, cudaMemcpyHostToDevice));
    }
    free(ends);
    free(decay);
}

void gpu_model_free(GpuModel *m) {
    free_flat_vectors(m);
    if (m->adam_m != NULL) cudaCheck(cudaFree(m->adam_m));
    if (m->adam_v != NULL) cudaCheck(cudaFree(m->adam_v));
    if (m->seg_end != NULL) cudaCheck(cudaFree(m->seg_end));
    if (m->seg_decay != NULL) cudaCheck(cudaFree(m->seg_decay));
    GpuActs *a = m->acts;
    cudaCheck(cudaFree(a->resid[0]));   // the first carve: the activations' one allocation
    cudaCheck(cudaFreeHost(a->host_tokens));
    cudaCheck(cudaFreeHost(a->host_losses));
    free(a->resid); free(a->rstd1); free(a->proj); free(a->abme);
    free(a->gates); free(a->o); free(a->orstd); free(a->gate_up); free(a->op_saved); free(a->mixer_out);
    free(a);
    free(m->tensors);
    free(m);
}

// ------------------------------------------------------------------------------------------------
// host <-> device in the CPU layout

static float *gpu_vector(const GpuModel *m, int which) {
    switch (which) {
    case 0: return m->params;
    case 1: return m->grads;
    case 2: return m->adam_m;
    default: return m->adam_v;
    }
}

// the copies below are synchronous, on the legacy default stream, which waits for m->stream (a
// blocking stream) and is waited for by it
void gpu_model_upload(const GpuModel *m, float *device_dst, const float *cpu_src) {
    // zero padding between tensors, then each tensor straight from the CPU layout (a host staging
    // copy of the whole vector cost seconds at 1B: page faults on 5.9 GB, then a second pass)
    cudaCheck(cudaMemsetAsync(device_dst, 0, m->layout_numel * sizeof(float), m->stream));
    cudaCheck(cudaStreamSynchronize(m->stream));
    for (int i = 0; i < m->num_tensors; i++)
        cudaCheck(cudaMemcpy(device_dst + m->tensors[i].offset, cpu_src + m->tensors[i].cpu_offset,
                             m->tensors[i].numel * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaDeviceSynchronize());   // a pageable copy may return before its DMA has landed
}

void gpu_model_download(const GpuModel *m, const float *device_src, float *cpu_dst) {
    float *staged = (float *)xmalloc(m->layout_numel * sizeof(float));
    cudaCheck(cudaMemcpy(staged, device_src, m->layout_numel * sizeof(float), cudaMemcpyDeviceToHost));
    for (int i = 0; i < m->num_tensors; i++)
        memcpy(cpu_dst + m->tensors[i].cpu_offset, staged + m->tensors[i].offset, m->tensors[i].numel * sizeof(float));
    free(staged);
}

void gpu_model_refresh_copy(GpuModel *m) {
    if (m->use_bf16) convert_params_cuda<bf16>((bf16 *)m->params_x, m->params, m->layout_numel, m->stream);
}

void gpu_model_set_params(GpuModel *m, const float *cpu_params) {
    gpu_model_upload(m, m->params, cpu_params);
    gpu_model_refresh_copy(m);
    cudaCheck(cudaStreamSynchronize(m->stream));
}

void gpu_model_get_vector(const GpuModel *m, int which, float *cpu_out) {
    if (which >= 2 && m->world_size > 1) die("model_cuda: gpu_model_get_vector of a moment sharded over %d ranks", m->world_size);
    gpu_model_download(m, gpu_vector(m, which), cpu_out);
}

void gpu_model_set_moment_slice(GpuModel *m, int which, const float *device_full) {
    cudaCheck(cudaMemcpyAsync(which == 2 ? m->adam_m : m->adam_v, device_full + m->shard_begin,
                              (m->shard_end - m->shard_begin) * sizeof(float), cudaMemcpyDeviceToDevice, m->stream));
}

void gpu_model_zero_grad(GpuModel *m) {
    cudaCheck(cudaMemsetAsync(m->grads, 0, m->shard * (size_t)m->world_size * sizeof(float), m->stream));
}

void gpu_model_profile_start(GpuModel *m) {
    if (!m->profile) return;
    m->num_marks = 0;
    gpu_model_profile_mark(m, "start");
}

void gpu_model_profile_mark(GpuModel *m, const char *label) {
    if (!m->profile || m->num_marks == GPU_MODEL_MAX_MARKS) return;
    if (m->marks[m->num_marks] == NULL) cudaCheck(cudaEventCreate(&m->marks[m->num_marks]));
    cudaCheck(cudaEventRecord(m->marks[m->num_marks], m->stream));
    m->mark_labels[m->num_marks++] = label;
}

// ------------------------------------------------------------------------------------------------
// forward and backward

static float inv_tau(const MdnConfig *c) { return (float)(1.0 / sqrt(c->hidden_size / c->tau_factor)); }
static float min_log_mu(const MdnConfig *c) { return c->has_min_log_mu ? (float)c->min_log_mu : -INFINITY; }

// the op's inputs for layer l: q, k, v in the scratch buffers, the layer's gates
static MdnCudaInputs op_inputs(const GpuModel *m, int l, int B) {
    const GpuActs *a = m->acts;
    size_t BTH = (size_t)B * m->T * m->config.num_heads;
    float *g = a->gates[l];
    MdnCudaInputs in = {a->q, a->k, a->v, g, g + BTH, g + 2 * BTH, g + 3 * BTH, NULL, NULL};
    return in;
}

// q, k, v = silu(conv(projection)), q corrected (mdn-spec.md §4.1, §4.5), from layer l's projection:
// k first, so that the q conv subtracts exp(D_log)·k as it writes q
template <typename X>
static void qkv_forward(GpuModel *m, int l, int B, const LayerParams *p) {
    const MdnConfig *c = &m->config;
    GpuActs *a = m->acts;
    int H = c->num_heads, K = c->head_dim, V = c->value_dim, W = c->conv_size, T = m->T;
    int HK = H * K, HV = H * V, PQ = 2 * HK + 2 * HV;
    const X *proj = (const X *)a->proj[l];
    shortconv_silu_forward_cuda<X>((X *)a->k, proj + HK, PQ, p->k_conv, B, T, HK, W, m->stream);
    shortconv_silu_corrected_forward_cuda<X>((X *)a->q, proj, PQ, p->q_conv, (const X *)a->k, p->D_log, H, B, T, HK, W,
                                             m->stream);
    shortconv_silu_forward_cuda<X>((X *)a->v, proj + 2 * HK, PQ, p->v_conv, B, T, HV, W, m->stream);
}

template <typename X>
static void forward_blocks(GpuModel *m, int B) {
    const MdnConfig *c = &m->config;
    GpuActs *a = m->acts;
    int L = c->num_hidden_layers, D = c->hidden_size, H = c->num_heads, K = c->head_dim, V = c->value_dim;
    int I = c->intermediate_size, T = m->T, BT = B * T, HK = H * K, HV = H * V, PQ = 2 * HK + 2 * HV;
    float eps = (float)c->norm_eps;
    cudaStream_t s = m->stream;
    const X *wx = (const X *)m->params_x;
    embedding_forward_cuda<X>(a->resid[0], a->tokens, wx + embeddings_offset(m), BT, D, s);
    gpu_model_profile_mark(m, "embedding forward");
    rmsnorm_forward_cuda<X>((X *)a->xn, a->rstd1[0], a->resid[0], layer_params(m, m->params, 0).attn_norm, BT, D, eps, s);
    gpu_model_profile_mark(m, "rmsnorm forward");
    for (int l = 0; l < L; l++) {
        LayerParams p = layer_params(m, m->params, l);
        size_t base = (size_t)(p.qkvg - m->params);   // offsets shared by the master and the copy
        const X *w_qkvg = wx + base, *w_abme = wx + (p.abme - m->params), *w_o = wx + (p.o_proj - m->params);
        const X *w_gu = wx + (p.gate_up - m->params), *w_down = wx + (p.down - m->params);
        size_t BTH = (size_t)BT * H;
        // mixer
        linear_forward_cuda<X, X>((X *)a->proj[l], (const X *)a->xn, w_qkvg, BT, D, PQ, s);
        gpu_model_profile_mark(m, "matmul q|k|v|g forward");
        linear_forward_cuda<X, float>(a->abme[l], (const X *)a->xn, w_abme, BT, D, 4 * H, s);
        gpu_model_profile_mark(m, "matmul gate logits forward");
        qkv_forward<X>(m, l, B, &p);
        gpu_model_profile_mark(m, "conv+silu, output correction (fwd and recompute)");
        float *ab = a->abme[l], *g = a->gates[l];
        mdn_gates_forward_cuda(g, g + BTH, g + 2 * BTH, g + 3 * BTH, ab, ab + H, ab + 2 * H, ab + 3 * H, 4 * H, p.A_log,
                               p.Mu_log, p.dt_bias, p.mu_bias, p.log_factor, BT, H, inv_tau(c), min_log_mu(c), s);
        gpu_model_profile_mark(m, "gates forward");
        MdnCudaShape shape = {B, T, H, K, V, c->use_p_times_alpha, m->use_bf16 ? MDN_DTYPE_BF16 : MDN_DTYPE_F32};
        MdnCudaInputs in = op_inputs(m, l, B);
        cudaCheck(mdn_chunk_forward_cuda(&shape, &in, a->o[l], NULL, NULL, a->op_saved[l], a->op_workspace, s));
        gpu_model_profile_mark(m, "MDN op forward");
        const X *gate = (const X *)a->proj[l] + 2 * HK + HV;
        gated_rmsnorm_forward_cuda<X>((X *)a->on, a->orstd[l], (const X *)a->o[l], gate, p.o_norm, BT * H, V, H, PQ, eps, s);
        gpu_model_profile_mark(m, "gated rmsnorm forward (and recompute)");
        X *mixer_out = m->recompute == 1 ? (X *)a->mixer_out[l] : (X *)a->tmpD;
        linear_forward_cuda<X, X>(mixer_out, (const X *)a->on, w_o, BT, HV, D, s);
        gpu_model_profile_mark(m, "matmul o_proj forward");
        residual_rmsnorm_forward_cuda<X>(a->h, (X *)a->hn, a->rstd2, a->resid[l], mixer_out, p.mlp_norm, BT, D, eps,
                                         s);
        gpu_model_profile_mark(m, "residual + rmsnorm forward");
        // MLP
        linear_forward_cuda<X, X>((X *)a->gate_up[l], (const X *)a->hn, w_gu, BT, D, 2 * I, s);
        gpu_model_profile_mark(m, "matmul gate|up forward");
        swiglu_forward_cuda<X>((X *)a->act, (const X *)a->gate_up[l], (const X *)a->gate_up[l] + I, 2 * I, BT, I, s);
        gpu_model_profile_mark(m, "swiglu forward");
        linear_forward_cuda<X, X>((X *)a->tmpD, (const X *)a->act, w_down, BT, I, D, s);
        gpu_model_profile_mark(m, "matmul down forward");
        // the residual add, fused into the next norm (the next block's, or the final one)
        if (l + 1 < L)
            residual_rmsnorm_forward_cuda<X>(a->resid[l + 1], (X *)a->xn, a->rstd1[l + 1], a->h, (const X *)a->tmpD,
                                             layer_params(m, m->params, l + 1).attn_norm, BT, D, eps, s);
        else
            residual_rmsnorm_forward_cuda<X>(a->resid[L], (X *)a->xf, a->rstdf, a->h, (const X *)a->tmpD,
                                             m->params + norm_offset(m), BT, D, eps, s);
        gpu_model_profile_mark(m, "residual + rmsnorm forward");
    }
}

template <typename X>
static void backward_blocks(GpuModel *m, int B) {
    const MdnConfig *c = &m->config;
    GpuActs *a = m->acts;
    int L = c->num_hidden_layers, D = c->hidden_size, H = c->num_heads, K = c->head_dim, V = c->value_dim;
    int I = c->intermediate_size, W = c->conv_size, T = m->T, BT = B * T, HK = H * K, HV = H * V;
    int PQ = 2 * HK + 2 * HV;
    float eps = (float)c->norm_eps;
    cudaStream_t s = m->stream;
    const X *wx = (const X *)m->params_x;
    size_t BTH = (size_t)BT * H;
    // the final norm: dxf (in dxn) → dresid
    cudaCheck(cudaMemsetAsync(a->dresid, 0, (size_t)BT * D * sizeof(float), s));
    rmsnorm_backward_cuda<X>(a->dresid, (X *)a->dres_x, NULL, m->grads + norm_offset(m), a->norm_partials,
                             (const X *)a->dxn, a->resid[L], m->params + norm_offset(m), a->rstdf, BT, D, s);
    gpu_model_profile_mark(m, "rmsnorm backward");
    for (int l = L - 1; l >= 0; l--) {
        LayerParams p = layer_params(m, m->params, l), g = layer_params(m, m->grads, l);
        const X *w_qkvg = wx + (p.qkvg - m->params), *w_abme = wx + (p.abme - m->params);
        const X *w_o = wx + (p.o_proj - m->params), *w_gu = wx + (p.gate_up - m->params);
        const X *w_down = wx + (p.down - m->params);
        const X *gu = (const X *)a->gate_up[l];
        const X *gate = (const X *)a->proj[l] + 2 * HK + HV;
        // the mixer's output: kept by the forward (recompute 1), or recomputed here: the gated norm
        // (o_proj's input, also for its weight gradient below) and o_proj, the same kernels on the
        // same inputs as the forward, so the same bits. The MLP norm's backward below adds it to the
        // residual stream again.
        const X *mixer_out = (const X *)a->mixer_out[l];
        if (m->recompute == 2) {
            gated_rmsnorm_forward_cuda<X>((X *)a->on, a->orstd[l], (const X *)a->o[l], gate, p.o_norm, BT * H, V, H,
                                          PQ, eps, s);
            gpu_model_profile_mark(m, "gated rmsnorm forward (and recompute)");
            linear_forward_cuda<X, X>((X *)a->tmpD, (const X *)a->on, w_o, BT, HV, D, s);
            gpu_model_profile_mark(m, "matmul o_proj forward (and recompute)");
            mixer_out = (const X *)a->tmpD;
        }
        // MLP. The SwiGLU product (the down projection's input) is recomputed by the SwiGLU backward,
        // which reads gate|up anyway, so the down projection's input gradient comes first
        linear_backward_cuda<X>((X *)a->dact, NULL, (const X *)a->dres_x, NULL, w_down, BT, I, D, 0, s);
        gpu_model_profile_mark(m, "matmul down backward");
        swiglu_backward_cuda<X>((X *)a->dgu, (X *)a->dgu + I, (X *)a->act, (const X *)a->dact, gu, gu + I, 2 * I, BT,
                                I, s);
        gpu_model_profile_mark(m, "swiglu backward (and recompute)");
        linear_backward_cuda<X>(NULL, g.down, (const X *)a->dres_x, (const X *)a->act, NULL, BT, I, D, 0, s);
        gpu_model_profile_mark(m, "matmul down backward");
        linear_backward_cuda<X>((X *)a->dxn, NULL, (const X *)a->dgu, NULL, w_gu, BT, D, 2 * I, 0, s);
        gpu_model_profile_mark(m, "matmul gate|up backward");
        // the MLP norm's backward recomputes its input h = resid + o_proj's output, rstd and the
        // normed input (for gate|up's weight gradient) as its forward formed them
        residual_rmsnorm_backward_cuda<X>(a->dresid, (X *)a->dres_x, (X *)a->hn, g.mlp_norm, a->norm_partials,
                                          (const X *)a->dxn, a->resid[l], mixer_out, p.mlp_norm, BT, D, eps,
                                          s);   // dresid is now dL/dh
        gpu_model_profile_mark(m, "rmsnorm backward (and recompute)");
        linear_backward_cuda<X>(NULL, g.gate_up, (const X *)a->dgu, (const X *)a->hn, NULL, BT, D, 2 * I, 0, s);
        gpu_model_profile_mark(m, "matmul gate|up backward");
        // mixer: o_proj's input gradient, the gated norm's backward (with recompute 1 it also forms
        // the norm's output, o_proj's input, here), then o_proj's weight gradient
        linear_backward_cuda<X>((X *)a->don, NULL, (const X *)a->dres_x, NULL, w_o, BT, HV, D, 0, s);
        gpu_model_profile_mark(m, "matmul o_proj backward");
        X *dproj = (X *)a->dproj;
        gated_rmsnorm_backward_cuda<X>((X *)a->d_o, dproj + 2 * HK + HV, m->recompute == 1 ? (X *)a->on : NULL,
                                       g.o_norm, a->norm_partials, (const X *)a->don, (const X *)a->o[l], gate,
                                       p.o_norm, a->orstd[l], BT * H, V, H, PQ, s);
        gpu_model_profile_mark(m, "gated rmsnorm backward");
        linear_backward_cuda<X>(NULL, g.o_proj, (const X *)a->dres_x, (const X *)a->on, NULL, BT, HV, D, 0, s);
        gpu_model_profile_mark(m, "matmul o_proj backward");
        // the op, from recomputed q, k, v
        qkv_forward<X>(m, l, B, &p);
        gpu_model_profile_mark(m, "conv+silu, output correction (fwd and recompute)");
        MdnCudaShape shape = {B, T, H, K, V, c->use_p_times_alpha, m->use_bf16 ? MDN_DTYPE_BF16 : MDN_DTYPE_F32};
        MdnCudaInputs in = op_inputs(m, l, B);
        float *dg = a->dgates;
        MdnCudaGrads grads = {a->dq, a->dk, a->dv, dg, dg + BTH, dg + 2 * BTH, dg + 3 * BTH, NULL, NULL};
        cudaCheck(mdn_chunk_backward_cuda(&shape, &in, a->d_o, NULL, NULL, &grads, a->op_saved[l], a->op_workspace, s));
        gpu_model_profile_mark(m, "MDN op backward");
        output_correction_backward_cuda<X>((X *)a->dq, (X *)a->dk, g.D_log, a->scratch, (const X *)a->dq,
                                           (const X *)a->k, p.D_log, BT, H, K, s);
        gpu_model_profile_mark(m, "output correction backward");
        const float *ab = a->abme[l];
        X *dab = (X *)a->dabme;
        mdn_gates_backward_cuda<X>(dab, dab + H, dab + 2 * H, dab + 3 * H, 4 * H, g.A_log, g.Mu_log, g.dt_bias, g.mu_bias,
                                   g.log_factor, a->scratch, dg, dg + BTH, dg + 2 * BTH, dg + 3 * BTH, ab, ab + H,
                                   ab + 2 * H, ab + 3 * H, 4 * H, p.A_log, p.Mu_log, p.dt_bias, p.mu_bias, p.log_factor,
                                   BT, H, inv_tau(c), min_log_mu(c), s);
        gpu_model_profile_mark(m, "gates backward");
        const X *proj = (const X *)a->proj[l];
        shortconv_silu_backward_cuda<X>(dproj, PQ, g.q_conv, a->scratch, (const X *)a->dq, proj, PQ, p.q_conv, B, T, HK,
                                        W, s);
        shortconv_silu_backward_cuda<X>(dproj + HK, PQ, g.k_conv, a->scratch, (const X *)a->dk, proj + HK, PQ, p.k_conv,
                                        B, T, HK, W, s);
        shortconv_silu_backward_cuda<X>(dproj + 2 * HK, PQ, g.v_conv, a->scratch, (const X *)a->dv, proj + 2 * HK, PQ,
                                        p.v_conv, B, T, HV, W, s);
        gpu_model_profile_mark(m, "conv+silu backward");
        // the projections' input gradients, summed; then the norm's backward, which also recomputes
        // the normed block input (it reads the block input anyway) for the projections' weight gradients
        linear_backward_cuda<X>((X *)a->dxn, NULL, dproj, NULL, w_qkvg, BT, D, PQ, 0, s);
        linear_backward_cuda<X>((X *)a->dxn, NULL, dab, NULL, w_abme, BT, D, 4 * H, 1, s);
        gpu_model_profile_mark(m, "matmul q|k|v|g + gate logits backward");
        rmsnorm_backward_cuda<X>(a->dresid, (X *)a->dres_x, (X *)a->xn, g.attn_norm, a->norm_partials,
                                 (const X *)a->dxn, a->resid[l], p.attn_norm, a->rstd1[l], BT, D,
                                 s);   // dresid is now dL/dx
        gpu_model_profile_mark(m, "rmsnorm backward (and recompute)");
        linear_backward_cuda<X>(NULL, g.qkvg, dproj, (const X *)a->xn, NULL, BT, D, PQ, 0, s);
        linear_backward_cuda<X>(NULL, g.abme, dab, (const X *)a->xn, NULL, BT, D, 4 * H, 0, s);
        gpu_model_profile_mark(m, "matmul q|k|v|g + gate logits backward");
    }
    embedding_backward_cuda(m->grads + embeddings_offset(m), a->dresid, a->tokens, BT, D, c->vocab_size, a->scratch, s);
    gpu_model_profile_mark(m, "embedding backward");
}

template <typename X>
static void classifier(GpuModel *m, int B, float dloss, int backward) {
    GpuActs *a = m->acts;
    const MdnConfig *c = &m->config;
    int BT = B * m->T;
    const X *wx = (const X *)m->params_x;
    classifier_forward_backward_cuda<X>(a->losses, backward ? (X *)a->dxn : NULL, m->grads + lm_head_offset(m),
                                        m->logits_out, (const X *)a->xf, wx + lm_head_offset(m), a->targets, dloss, BT,
                                        c->hidden_size, c->vocab_size, (X *)a->logits, m->block_rows, m->stream);
    gpu_model_profile_mark(m, "classifier (lm_head matmuls + cross-entropy)");
}

float gpu_model_forward_backward(GpuModel *m, const int *inputs, const int *targets, int B, float loss_scale) {
    if (B <= 0 || B > m->max_B) die("model_cuda: batch %d is outside the built 1..%d", B, m->max_B);
    const MdnConfig *c = &m->config;
    GpuActs *a = m->acts;
    int BT = B * m->T;
    int num_targets = 0;
    for (int i = 0; i < BT; i++) {
        if (inputs[i] < 0 || inputs[i] >= c->vocab_size)
            die("model_cuda: input token %d at position %d is outside the vocabulary [0, %d)", inputs[i], i, c->vocab_size);
        if (targets[i] >= c->vocab_size)
            die("model_cuda: target token %d at position %d is outside the vocabulary [0, %d)", targets[i], i, c->vocab_size);
        if (targets[i] >= 0) num_targets++;
    }
    m->num_targets = num_targets;
    // one pinned staging buffer, one copy: the stream may still be reading the previous batch's
    // staging, so wait for it first
    cudaCheck(cudaStreamSynchronize(m->stream));
    memcpy(a->host_tokens, inputs, (size_t)BT * sizeof(int));
    memcpy(a->host_tokens + BT, targets, (size_t)BT * sizeof(int));
    cudaCheck(cudaMemcpyAsync(a->tokens, a->host_tokens, (size_t)BT * sizeof(int), cudaMemcpyHostToDevice, m->stream));
    cudaCheck(cudaMemcpyAsync(a->targets, a->host_tokens + BT, (size_t)BT * sizeof(int), cudaMemcpyHostToDevice, m->stream));
    int backward = loss_scale != 0.0f && num_targets > 0;
    float dloss = num_targets > 0 ? loss_scale / num_targets : 0.0f;
    if (m->use_bf16) {
        forward_blocks<bf16>(m, B);
        classifier<bf16>(m, B, dloss, backward);
        if (backward) backward_blocks<bf16>(m, B);
    } else {
        forward_blocks<float>(m, B);
        classifier<float>(m, B, dloss, backward);
        if (backward) backward_blocks<float>(m, B);
    }
    cudaCheck(cudaMemcpyAsync(a->host_losses, a->losses, (size_t)BT * sizeof(float), cudaMemcpyDeviceToHost, m->stream));
    cudaCheck(cudaStreamSynchronize(m->stream));
    double sum = 0.0;   // in a fixed order, in double, as model.c
    for (int i = 0; i < BT; i++) sum += a->host_losses[i];
    return num_targets > 0 ? (float)(sum / num_targets) : 0.0f;
}

double gpu_model_grad_sum_squares(GpuModel *m) {
    double partials[REDUCE_PARTS];
    adamw_sum_squares_cuda(m->acts->sumsq_partials, m->grads + m->shard_begin, m->shard_end - m->shard_begin, m->stream);
    gpu_model_profile_mark(m, "gradient norm");
    cudaCheck(cudaMemcpyAsync(partials, m->acts->sumsq_partials, sizeof(partials), cudaMemcpyDeviceToHost, m->stream));
    cudaCheck(cudaStreamSynchronize(m->stream));
    double sum = 0.0;
    for (int i = 0; i < REDUCE_PARTS; i++) sum += partials[i];
    return sum;
}

void gpu_model_adamw(GpuModel *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                     float grad_scale, int64_t t) {
    if (m->adam_m == NULL) die("model_cuda: gpu_model_adamw before gpu_model_alloc_optimizer");
    // with several ranks the bf16 copy is refreshed whole after the allgather of the masters
    if (m->use_bf16 && m->world_size == 1)
        adamw_update_cuda<bf16>(m->params, (bf16 *)m->params_x, m->grads, m->adam_m, m->adam_v, m->shard_begin,
                                m->shard_end, lr, beta1, beta2, eps, weight_decay, grad_scale, t, m->seg_end,
                                m->seg_decay, m->num_segments, m->stream);
    else
        adamw_update_cuda<float>(m->params, NULL, m->grads, m->adam_m, m->adam_v, m->shard_begin, m->shard_end, lr,
                                 beta1, beta2, eps, weight_decay, grad_scale, t, m->seg_end, m->seg_decay,
                                 m->num_segments, m->stream);
    gpu_model_profile_mark(m, "AdamW");
}

double gpu_model_flops_per_token(const MdnConfig *c) {
    double D = c->hidden_size, N = c->vocab_size, H = c->num_heads, K = c->head_dim, V = c->value_dim;
    double L = 64;   // the op's chunk length
    double non_embedding = (double)config_num_params(c) - N * D;
    // forward op FLOPs per token and head (kernel-design.md): 12·K·V + 4·L·V + 8·L·K; backward ≈ 2× forward
    double op_forward = H * (12.0 * K * V + 4.0 * L * V + 8.0 * L * K);
    return 6.0 * non_embedding + 3.0 * op_forward * c->num_hidden_layers;
}
