// test_model_layout.cu: the parameter tables, host code only (runs without a GPU).
// 1. model_param_table (model.h) is what model_build puts in m->tensors, and is a packed table:
//    each tensor's numel is its shape's product and starts where the one before ends, the total is
//    config_num_params, the names are unique;
// 2. the GPU layout (gpu_model_layout, model_cuda.cu) holds every CPU tensor once, with its CPU
//    offset and size, without overlaps; every tensor starts on a 64-value boundary (256 bytes of a
//    float32 vector, 128 of the bf16 copy) except the members of the fused matmuls, which follow
//    their group's first tensor without a gap (q|k|v|g_proj, a|b|m|e_proj, gate|up_proj: the
//    forward reads each group as one matrix). Checked for the repository's configs and an odd-sized
//    one whose tensors do not fall on boundaries by themselves.
// 3. ZeRO-1's slices (gpu_model_shard, what gpu_model_alloc_optimizer uses) for 1, 2, 3, 4, 8 ranks,
//    as train_mdn.cu's collectives rely on them: every rank has the same shard, a multiple of 64
//    values (each rank's block 256-byte aligned), the smallest such with shard·world >= layout_numel
//    (one rank: the whole layout); rank r's [shard_begin, shard_end) is its block [r·shard,
//    (r+1)·shard) (the reduce-scatter's destination grads + r·shard and the allgather's source
//    params + r·shard) clipped to layout_numel, so m[i - shard_begin] is the value the gather of the
//    moments puts at i; the slices tile [0, layout_numel) in rank order (each value updated and
//    counted in the gradient norm by exactly one rank), and layouts smaller than world·64 leave the
//    last ranks empty. For the smaller models, m and v sliced from a full vector on N ranks and
//    gathered back (checkpoint) come back equal, zero past the tensors (so any N -> M resume holds).
// 4. AdamW's decay segments (gpu_model_decay_segments, looked up by adamw_is_decayed as the kernel
//    does): none by default (everything decayed, the paper); with --no-decay-set one per tensor,
//    ascending, every value of the six gate tensors and the norms not decayed and of all others
//    decayed (every value of the smaller models, each tensor's ends and each rank's slice ends of
//    the larger), and on trainer_tiny 77056 of 77272 values decayed, as train_mdn_cpu reports.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/config.h"
#include "../layers/model.h"
#include "../layers/adamw.cuh"
#include "../layers/model_cuda.cuh"

static int failures = 0;

static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) failures++;
}

static int ends_with(const char *name, const char *suffix) {
    size_t n = strlen(name), k = strlen(suffix);
    return n >= k && strcmp(name + n - k, suffix) == 0;
}

// the suffix of the tensor a fused member follows in its matmul group (*own_suffix_len: the length
// of the member's own suffix), or NULL if it starts a group or stands alone
static const char *fused_after(const char *name, size_t *own_suffix_len) {
    static const char *pairs[][2] = {
        {"attn.k_proj.weight", "attn.q_proj.weight"}, {"attn.v_proj.weight", "attn.k_proj.weight"},
        {"attn.g_proj.weight", "attn.v_proj.weight"}, {"attn.b_proj.weight", "attn.a_proj.weight"},
        {"attn.m_proj.weight", "attn.b_proj.weight"}, {"attn.e_proj.weight", "attn.m_proj.weight"},
        {"mlp.up_proj.weight", "mlp.gate_proj.weight"}};
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
        if (ends_with(name, pairs[i][0])) {
            *own_suffix_len = strlen(pairs[i][0]);
            return pairs[i][1];
        }
    return NULL;
}

static void check_cpu_table(const MdnConfig *c, const char *label, int compare_build) {
    char what[256];
    ParamTensor *t;
    size_t num_params;
    int n = model_param_table(c, &t, &num_params);
    int packed = 1, shapes = 1, unique = 1;
    for (int i = 0; i < n; i++) {
        size_t product = 1;
        for (int d = 0; d < t[i].ndim; d++) product *= (size_t)t[i].shape[d];
        shapes &= product == t[i].numel;
        packed &= t[i].offset == (i == 0 ? 0 : t[i - 1].offset + t[i - 1].numel);
        unique &= model_param_table_find(t, n, t[i].name) == i;
    }
    snprintf(what, sizeof what, "%s: CPU table of %d tensors packed, numel = shape product, unique names", label, n);
    check(packed && shapes && unique && n > 0 && t[n - 1].offset + t[n - 1].numel == num_params, what);
    snprintf(what, sizeof what, "%s: CPU table holds config_num_params (%zu)", label, num_params);
    check((int64_t)num_params == config_num_params(c), what);
    if (compare_build) {
        Model *m = model_build(c, 1, 1);
        snprintf(what, sizeof what, "%s: model_build's table is model_param_table's", label);
        check(m->num_tensors == n && m->num_params == num_params &&
                  memcmp(m->tensors, t, (size_t)n * sizeof(ParamTensor)) == 0, what);
        model_free(m);
    }
    free(t);
}

static void check_gpu_layout(const MdnConfig *c, const char *label) {
    char what[256];
    ParamTensor *cpu;
    size_t cpu_params;
    int cpu_count = model_param_table(c, &cpu, &cpu_params);
    GpuModel *m = (GpuModel *)calloc(1, sizeof(GpuModel));
    m->config = *c;
    gpu_model_layout(m);
    int same = m->num_tensors == cpu_count && m->num_params == cpu_params, aligned = 1, fused = 1, inside = 1;
    // each tensor matches the CPU table's entry of its name
    for (int i = 0; i < m->num_tensors; i++) {
        const GpuParamTensor *g = &m->tensors[i];
        int j = model_param_table_find(cpu, cpu_count, g->name);
        same &= j >= 0 && cpu[j].offset == g->cpu_offset && cpu[j].numel == g->numel && cpu[j].no_decay == g->no_decay;
        inside &= g->offset + g->numel <= m->layout_numel;
        size_t suffix_len = 0;
        const char *after = fused_after(g->name, &suffix_len);
        if (after == NULL) {
            aligned &= g->offset % 64 == 0;
        } else {
            // the group's previous member, same layer: the name with the suffix swapped
            char prev_name[MODEL_MAX_NAME];
            snprintf(prev_name, sizeof prev_name, "%.*s%s", (int)(strlen(g->name) - suffix_len), g->name, after);
            int k = -1;
            for (int q = 0; q < m->num_tensors; q++)
                if (strcmp(m->tensors[q].name, prev_name) == 0) k = q;
            fused &= k >= 0 && m->tensors[k].offset + m->tensors[k].numel == g->offset;
        }
    }
    // no two tensors overlap: sort the offsets (insertion sort, a few hundred entries)
    int no_overlap = 1;
    size_t *order = (size_t *)malloc((size_t)m->num_tensors * sizeof(size_t));
    for (int i = 0; i < m->num_tensors; i++) {
        size_t v = (size_t)i;
        int p = i;
        while (p > 0 && m->tensors[order[p - 1]].offset > m->tensors[v].offset) { order[p] = order[p - 1]; p--; }
        order[p] = v;
    }
    for (int i = 1; i < m->num_tensors; i++)
        no_overlap &= m->tensors[order[i - 1]].offset + m->tensors[order[i - 1]].numel <= m->tensors[order[i]].offset;
    snprintf(what, sizeof what, "%s: GPU layout has every CPU tensor once (offset, numel, no_decay)", label);
    check(same, what);
    snprintf(what, sizeof what, "%s: GPU layout: no overlaps, all inside layout_numel %zu (%zu params, %.3f%% gaps)",
             label, m->layout_numel, m->num_params, 100.0 * (double)(m->layout_numel - m->num_params) / m->num_params);
    check(no_overlap && inside && m->layout_numel % 64 == 0 && m->layout_numel >= m->num_params, what);
    snprintf(what, sizeof what, "%s: GPU layout: every tensor or fused group starts on a 64-value boundary", label);
    check(aligned, what);
    snprintf(what, sizeof what, "%s: GPU layout: q|k|v|g, a|b|m|e, gate|up contiguous", label);
    check(fused, what);
    free(order);
    free(m->tensors);
    free(m);
    free(cpu);
}

static const int world_sizes[] = {1, 2, 3, 4, 8};
#define NUM_WORLD_SIZES ((int)(sizeof(world_sizes) / sizeof(world_sizes[0])))

// the slices of every rank of world_size over a layout of layout_numel values
static void check_shards(size_t layout_numel, int world_size, const char *label) {
    char what[256];
    GpuModel g;
    memset(&g, 0, sizeof g);
    g.layout_numel = layout_numel;
    gpu_model_shard(&g, 0, world_size);
    const size_t shard = g.shard, padded = shard * (size_t)world_size;
    int same = 1, blocks = 1, aligned = 1, tiles = 1, nonempty = 0;
    size_t next = 0;   // where the next rank's slice must start
    for (int r = 0; r < world_size; r++) {
        gpu_model_shard(&g, r, world_size);
        same &= g.shard == shard && g.rank == r && g.world_size == world_size;
        const size_t block = (size_t)r * shard;
        // inside the rank's block; where not empty, starting at the block (m[0] is the block's first value)
        blocks &= g.shard_begin <= g.shard_end && g.shard_end <= layout_numel && g.shard_end <= block + shard &&
                  (g.shard_begin == g.shard_end || g.shard_begin == block);
        aligned &= g.shard_begin % 64 == 0;
        tiles &= g.shard_begin == next;
        next = g.shard_end;
        nonempty += g.shard_end > g.shard_begin;
    }
    tiles &= next == layout_numel;
    int sized = shard > 0 && shard % 64 == 0 && padded >= layout_numel && (shard - 64) * (size_t)world_size < layout_numel &&
                (world_size > 1 || shard == layout_numel);
    snprintf(what, sizeof what,
             "%s, %d rank%s: shard %zu (x%d = %zu, %zu padding) equal, 64-aligned, smallest; slices in their blocks, "
             "tiling [0, %zu) (%d non-empty)", label, world_size, world_size > 1 ? "s" : "", shard, world_size, padded,
             padded - layout_numel, layout_numel, nonempty);
    check(same && sized && blocks && aligned && tiles, what);
}

// m (or v) through a checkpoint on world_size ranks: a full vector in the GPU layout (from the CPU
// layout, zeros in the gaps: gpu_model_upload), each rank's slice taken (gpu_model_set_moment_slice:
// m[j] = full[shard_begin + j], the rest of m zero as allocated), gathered (comm_allgather: rank r's m
// at r·shard) and read back into the CPU layout (gpu_model_download) gives the CPU vector back
static void check_moment_round_trip(const GpuModel *model, int world_size, const char *label) {
    char what[256];
    GpuModel g = *model;
    gpu_model_shard(&g, 0, world_size);
    const size_t shard = g.shard, padded = shard * (size_t)world_size;
    float *cpu = (float *)malloc(model->num_params * sizeof(float));
    float *full = (float *)calloc(padded, sizeof(float));
    float *gathered = (float *)malloc(padded * sizeof(float));
    float *slice = (float *)malloc(shard * sizeof(float));
    float *back = (float *)malloc(model->num_params * sizeof(float));
    for (size_t i = 0; i < model->num_params; i++) cpu[i] = (float)(i % 1000003) + 1.0f;   // nonzero, exact
    for (int i = 0; i < g.num_tensors; i++)
        memcpy(full + g.tensors[i].offset, cpu + g.tensors[i].cpu_offset, g.tensors[i].numel * sizeof(float));
    for (size_t i = 0; i < padded; i++) gathered[i] = -1.0f;   // poison: every value must be written
    for (int r = 0; r < world_size; r++) {
        gpu_model_shard(&g, r, world_size);
        memset(slice, 0, shard * sizeof(float));
        memcpy(slice, full + g.shard_begin, (g.shard_end - g.shard_begin) * sizeof(float));
        memcpy(gathered + (size_t)r * shard, slice, shard * sizeof(float));
    }
    int same_layout = memcmp(gathered, full, padded * sizeof(float)) == 0;   // the gaps and the padding zero too
    for (int i = 0; i < g.num_tensors; i++)
        memcpy(back + g.tensors[i].cpu_offset, gathered + g.tensors[i].offset, g.tensors[i].numel * sizeof(float));
    int same_cpu = memcmp(back, cpu, model->num_params * sizeof(float)) == 0;
    snprintf(what, sizeof what, "%s, %d rank%s: moments sliced and gathered == the full vector, back to the CPU layout",
             label, world_size, world_size > 1 ? "s" : "");
    check(same_layout && same_cpu, what);
    free(cpu); free(full); free(gathered); free(slice); free(back);
}

// the tensors --no-decay-set spares (cli.c's help): the six per-head gate parameters and the norms
static int spared_by_no_decay_set(const char *name) {
    static const char *suffixes[] = {"attn.A_log", "attn.Mu_log", "attn.dt_bias", "attn.mu_bias", "attn.log_factor",
                                     "attn.D_log", "attn_norm.weight", "attn.o_norm.weight", "mlp_norm.weight"};
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++)
        if (ends_with(name, suffixes[i])) return 1;
    return strcmp(name, "model.norm.weight") == 0;
}

// AdamW's decay segments over the layout, looked up per value as the kernel does; every_value: all
// values of the layout, else each tensor's first and last and each rank's slice ends
static size_t check_decay_segments(const GpuModel *m, const char *label, int every_value) {
    char what[256];
    size_t *seg_end = (size_t *)malloc((size_t)m->num_tensors * sizeof(size_t));
    unsigned char *seg_decay = (unsigned char *)malloc((size_t)m->num_tensors);
    int n = gpu_model_decay_segments(m, 0, seg_end, seg_decay);
    snprintf(what, sizeof what, "%s: without --no-decay-set no segments: every value decayed", label);
    check(n == 0 && adamw_is_decayed(0, seg_end, seg_decay, n) && adamw_is_decayed(m->layout_numel - 1, seg_end, seg_decay, n), what);
    n = gpu_model_decay_segments(m, 1, seg_end, seg_decay);
    int ascending = n == m->num_tensors && seg_end[n - 1] <= m->layout_numel, flags = 1, lookups = 1;
    size_t decayed = 0;
    for (int i = 0; i < n; i++) {
        const GpuParamTensor *t = &m->tensors[i];
        ascending &= i == 0 || seg_end[i - 1] < seg_end[i];
        int expect = !spared_by_no_decay_set(t->name);
        flags &= seg_decay[i] == expect;
        decayed += seg_decay[i] ? t->numel : 0;
        if (every_value) {
            for (size_t v = t->offset; v < t->offset + t->numel; v++)
                lookups &= adamw_is_decayed(v, seg_end, seg_decay, n) == (bool)expect;
        } else {
            lookups &= adamw_is_decayed(t->offset, seg_end, seg_decay, n) == (bool)expect &&
                       adamw_is_decayed(t->offset + t->numel - 1, seg_end, seg_decay, n) == (bool)expect;
        }
    }
    // each rank's slice ends (AdamW looks up global indices), checked against the tensor holding them
    for (int w = 0; w < NUM_WORLD_SIZES; w++) {
        GpuModel g = *m;
        for (int r = 0; r < world_sizes[w]; r++) {
            gpu_model_shard(&g, r, world_sizes[w]);
            size_t ends[2] = {g.shard_begin, g.shard_end - 1};
            for (int e = 0; e < 2 && g.shard_end > g.shard_begin; e++)
                for (int i = 0; i < m->num_tensors; i++)
                    if (ends[e] >= m->tensors[i].offset && ends[e] < m->tensors[i].offset + m->tensors[i].numel)
                        lookups &= adamw_is_decayed(ends[e], seg_end, seg_decay, n) == !spared_by_no_decay_set(m->tensors[i].name);
        }
    }
    snprintf(what, sizeof what, "%s: --no-decay-set: %d segments ascending, gates and norms not decayed (%zu of %zu decayed, %s)",
             label, n, decayed, m->num_params, every_value ? "every value looked up" : "tensor and slice ends looked up");
    check(ascending && flags && lookups, what);
    free(seg_end);
    free(seg_decay);
    return decayed;
}

static size_t check_zero1(const MdnConfig *c, const char *label) {
    GpuModel *m = (GpuModel *)calloc(1, sizeof(GpuModel));
    m->config = *c;
    gpu_model_layout(m);
    const int small = m->layout_numel <= ((size_t)1 << 24);
    for (int w = 0; w < NUM_WORLD_SIZES; w++) {
        check_shards(m->layout_numel, world_sizes[w], label);
        if (small) check_moment_round_trip(m, world_sizes[w], label);
    }
    size_t decayed = check_decay_segments(m, label, small);
    free(m->tensors);
    free(m);
    return decayed;
}

static MdnConfig load(const char *path) {
    MdnConfig c;
    char err[512];
    if (config_load(&c, path, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s\n", err);
        exit(1);
    }
    return c;
}

int main(void) {
    const char *small_paths[] = {"configs/mdn_tiny.json", "configs/mdn_small.json", "test/data/small/config.json",
                                 "test/data/trainer_tiny.json"};
    for (int i = 0; i < 4; i++) {
        MdnConfig c = load(small_paths[i]);
        check_cpu_table(&c, small_paths[i], 1);
        check_gpu_layout(&c, small_paths[i]);
        size_t decayed = check_zero1(&c, small_paths[i]);
        if (i == 3) check(decayed == 77056, "test/data/trainer_tiny.json: --no-decay-set decays 77056 values, as "
                                            "train_mdn_cpu (test_train.sh nodecay)");
    }
    // the paper's models: no model_build (GBs of host memory)
    const char *big_paths[] = {"configs/momentum_deltanet_400M.json", "configs/momentum_deltanet_1B.json"};
    for (int i = 0; i < 2; i++) {
        MdnConfig c = load(big_paths[i]);
        check_cpu_table(&c, big_paths[i], 0);
        check_gpu_layout(&c, big_paths[i]);
        check_zero1(&c, big_paths[i]);
    }
    // every switch off (the CPU model's other tables; the GPU model needs them on)
    MdnConfig c = load("configs/mdn_tiny.json");
    c.use_short_conv = c.use_gate = c.use_output_correction = 0;
    c.tie_word_embeddings = 1;
    check_cpu_table(&c, "tiny, no conv/gate/correction, tied", 1);
    // odd sizes: the [H] gate tensors, norms, convs and matrices all end off 64-value boundaries
    c = load("configs/mdn_tiny.json");
    c.hidden_size = 100;
    c.num_heads = 3;
    c.head_dim = 20;
    c.value_dim = 30;
    c.intermediate_size = 270;
    c.vocab_size = 1001;
    c.conv_size = 3;
    check_cpu_table(&c, "odd sizes", 1);
    check_gpu_layout(&c, "odd sizes");
    check_zero1(&c, "odd sizes");
    // layouts of fewer than world·64 values: the last ranks' slices are empty, at the end
    for (int w = 0; w < NUM_WORLD_SIZES; w++) {
        check_shards(64, world_sizes[w], "64-value layout");
        check_shards(192, world_sizes[w], "192-value layout");
    }
    printf("%s\n", failures == 0 ? "all passed" : "FAILED");
    return failures == 0 ? 0 : 1;
}
