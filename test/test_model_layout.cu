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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/config.h"
#include "../layers/model.h"
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
    const char *small_paths[] = {"configs/mdn_tiny.json", "configs/mdn_small.json", "test/data/small/config.json"};
    for (int i = 0; i < 3; i++) {
        MdnConfig c = load(small_paths[i]);
        check_cpu_table(&c, small_paths[i], 1);
        check_gpu_layout(&c, small_paths[i]);
    }
    // the paper's models: no model_build (GBs of host memory)
    const char *big_paths[] = {"configs/momentum_deltanet_400M.json", "configs/momentum_deltanet_1B.json"};
    for (int i = 0; i < 2; i++) {
        MdnConfig c = load(big_paths[i]);
        check_cpu_table(&c, big_paths[i], 0);
        check_gpu_layout(&c, big_paths[i]);
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
    printf("%s\n", failures == 0 ? "all passed" : "FAILED");
    return failures == 0 ? 0 : 1;
}
