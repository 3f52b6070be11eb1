// mdn_op: the op checker (design.md "Op checker"): runs the MDN op on the tensors of a safetensors
// file and writes its outputs and the gradients of sum(o*do), so another implementation can be
// compared with this one (or this one with a file written elsewhere).
//
//   dev/mdn_op --mode recurrent|chunk --in IN.safetensors --out OUT.safetensors [--device cpu|cuda]
//
// IN: q, k [B,T,H,K], v [B,T,H,V], log_alpha, log_mu, beta, eta [B,T,H], do [B,T,H,V], optionally
// S0, M0 [B,H,K,V] (any float dtype). OUT (float32): o, S_final, M_final, dq, dk, dv, dlog_alpha,
// dlog_mu, dbeta, deta, and dS0, dM0 when IN has S0, M0.
// --device cpu (default) computes in double (this program links the double CPU library): it is
// the reference. --device cuda runs mdn_kernels/mdn_cuda.cu's chunk form in float32 (chunk only).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MDN_CUDA
#include <cuda_runtime.h>
#include "../mdn_kernels/mdn_cuda.cuh"
#endif
#ifdef __cplusplus
extern "C" {
#endif
#include "../common/safetensors.h"
#include "../common/utils.h"
#include "../mdn_kernels/mdn_cpu.h"
#ifdef __cplusplus
}
#endif

#define N_INPUTS 9
#define N_OUTPUTS 12
// gradient i of the outputs belongs to input i (dS0, dM0 only when S0, M0 are given)
static const char *input_names[N_INPUTS] = {"q", "k", "v", "log_alpha", "log_mu", "beta", "eta", "S0", "M0"};
static const char *output_names[N_OUTPUTS] = {"dq", "dk", "dv", "dlog_alpha", "dlog_mu", "dbeta", "deta",
                                              "dS0", "dM0", "o", "S_final", "M_final"};

typedef struct {
    MdnShape shape;
    int has_S0, has_M0;
    size_t numel[N_OUTPUTS];       // per output (and per input, same index for the first nine)
    int ndim[N_OUTPUTS];
    int64_t dims[N_OUTPUTS][4];
    real *in[N_INPUTS], *d_o;      // inputs (NULL for absent S0, M0)
    real *out[N_OUTPUTS];          // outputs (NULL for dS0, dM0 when not wanted)
} OpCase;

static void usage(void) {
    fprintf(stderr, "usage: dev/mdn_op --mode recurrent|chunk --in IN.safetensors --out OUT.safetensors [--device cpu|cuda]\n");
}

// one shape per tensor kind: [B,T,H,K], [B,T,H,V], [B,T,H], [B,H,K,V]
static void set_dims(OpCase *c, int i, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    c->ndim[i] = ndim;
    c->dims[i][0] = d0; c->dims[i][1] = d1; c->dims[i][2] = d2; c->dims[i][3] = d3;
    c->numel[i] = (size_t)(d0 * d1 * d2 * (ndim == 4 ? d3 : 1));
}

static real *read_tensor(const SafeTensors *st, const char *name, int ndim, const int64_t *dims, size_t numel) {
    char err[512];
    double *x = (double *)xmalloc(numel * sizeof(double));
    if (st_get_f64(st, name, ndim, dims, x, err, sizeof err) != 0) die("%s", err);
    // this program links the double library, so real is double; the copy keeps it honest if not
    real *r = (real *)xmalloc(numel * sizeof(real));
    for (size_t i = 0; i < numel; i++) r[i] = (real)x[i];
    free(x);
    return r;
}

static void load_case(OpCase *c, const char *path) {
    SafeTensors st;
    char err[512];
    if (st_read(&st, path, err, sizeof err) != 0) die("%s", err);
    const StTensor *q = st_find(&st, "q"), *v = st_find(&st, "v");
    if (q == NULL) die("%s: missing tensor q", path);
    if (v == NULL) die("%s: missing tensor v", path);
    if (q->ndim != 4) die("%s: tensor q has %d dims, expected 4 [B,T,H,K]", path, q->ndim);
    if (v->ndim != 4) die("%s: tensor v has %d dims, expected 4 [B,T,H,V]", path, v->ndim);
    for (int d = 0; d < 4; d++) {
        if (q->shape[d] < 1 || q->shape[d] > (1 << 30)) die("%s: tensor q has an empty or huge dimension", path);
        if (v->shape[d] < 1 || v->shape[d] > (1 << 30)) die("%s: tensor v has an empty or huge dimension", path);
    }
    int64_t B = q->shape[0], T = q->shape[1], H = q->shape[2], K = q->shape[3], V = v->shape[3];
    memset(c, 0, sizeof(*c));
    c->shape.B = (int)B; c->shape.T = (int)T; c->shape.H = (int)H; c->shape.K = (int)K; c->shape.V = (int)V;
    c->shape.use_p_times_alpha = 1;
    set_dims(c, 0, 4, B, T, H, K);
    set_dims(c, 1, 4, B, T, H, K);
    set_dims(c, 2, 4, B, T, H, V);
    for (int i = 3; i < 7; i++) set_dims(c, i, 3, B, T, H, 0);
    set_dims(c, 7, 4, B, H, K, V);
    set_dims(c, 8, 4, B, H, K, V);
    set_dims(c, 9, 4, B, T, H, V);    // o
    set_dims(c, 10, 4, B, H, K, V);   // S_final
    set_dims(c, 11, 4, B, H, K, V);   // M_final
    c->has_S0 = st_find(&st, "S0") != NULL;
    c->has_M0 = st_find(&st, "M0") != NULL;
    for (int i = 0; i < N_INPUTS; i++) {
        if ((i == 7 && !c->has_S0) || (i == 8 && !c->has_M0)) continue;
        c->in[i] = read_tensor(&st, input_names[i], c->ndim[i], c->dims[i], c->numel[i]);
    }
    c->d_o = read_tensor(&st, "do", 4, c->dims[2], c->numel[2]);
    st_free(&st);
    for (int i = 0; i < N_OUTPUTS; i++) {
        if ((i == 7 && !c->has_S0) || (i == 8 && !c->has_M0)) continue;
        c->out[i] = (real *)xmalloc(c->numel[i] * sizeof(real));
    }
}

static void run_cpu(OpCase *c, int chunk) {
    MdnInputs in = {c->in[0], c->in[1], c->in[2], c->in[3], c->in[4], c->in[5], c->in[6], c->in[7], c->in[8]};
    MdnGrads g = {c->out[0], c->out[1], c->out[2], c->out[3], c->out[4], c->out[5], c->out[6], c->out[7], c->out[8]};
    if (chunk) {
        mdn_chunk_forward(&c->shape, &in, c->out[9], c->out[10], c->out[11]);
        mdn_chunk_backward(&c->shape, &in, c->d_o, NULL, NULL, &g);
    } else {
        mdn_recurrent_forward(&c->shape, &in, c->out[9], c->out[10], c->out[11]);
        mdn_recurrent_backward(&c->shape, &in, c->d_o, NULL, NULL, &g);
    }
}

#ifdef MDN_CUDA
// The CUDA path: the chunk form of mdn_kernels/mdn_cuda.cu in float32. Inputs are rounded to
// float32 on the host, outputs come back as float32 and are widened to `real` for writing.
static void cuda_try(cudaError_t e, const char *what) {
    if (e != cudaSuccess) die("--device cuda: %s: %s", what, cudaGetErrorString(e));
}

static float *to_device(const real *x, size_t n) {
    if (x == NULL) return NULL;
    float *h = (float *)xmalloc(n * sizeof(float)), *d;
    for (size_t i = 0; i < n; i++) h[i] = (float)x[i];
    cuda_try(cudaMalloc((void **)&d, n * sizeof(float)), "cudaMalloc");
    cuda_try(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice), "copy to device");
    free(h);
    return d;
}

static float *device_zeros(size_t n, int wanted) {
    if (!wanted) return NULL;
    float *d;
    cuda_try(cudaMalloc((void **)&d, n * sizeof(float)), "cudaMalloc");
    cuda_try(cudaMemset(d, 0, n * sizeof(float)), "cudaMemset");
    return d;
}

static void run_cuda(OpCase *c) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) die("--device cuda: no CUDA device available");
    MdnCudaShape sh = {c->shape.B, c->shape.T, c->shape.H, c->shape.K, c->shape.V, c->shape.use_p_times_alpha, MDN_DTYPE_F32};
    const char *why = mdn_cuda_check_shape(&sh);
    if (why != NULL) die("--device cuda: unsupported shape: %s", why);
    float *din[N_INPUTS], *dout[N_OUTPUTS];
    for (int i = 0; i < N_INPUTS; i++) din[i] = to_device(c->in[i], c->numel[i]);
    float *d_do = to_device(c->d_o, c->numel[2]);
    for (int i = 0; i < N_OUTPUTS; i++) dout[i] = device_zeros(c->numel[i], c->out[i] != NULL);
    size_t ws = mdn_chunk_forward_workspace_size(&sh), wb = mdn_chunk_backward_workspace_size(&sh);
    void *work = NULL;
    cuda_try(cudaMalloc(&work, (ws > wb ? ws : wb) + 256), "cudaMalloc workspace");
    MdnCudaInputs in = {din[0], din[1], din[2], din[3], din[4], din[5], din[6], din[7], din[8]};
    MdnCudaGrads g = {dout[0], dout[1], dout[2], dout[3], dout[4], dout[5], dout[6], dout[7], dout[8]};
    cuda_try(mdn_chunk_forward_cuda(&sh, &in, dout[9], dout[10], dout[11], NULL, work, 0), "mdn_chunk_forward_cuda");
    cuda_try(mdn_chunk_backward_cuda(&sh, &in, d_do, NULL, NULL, &g, NULL, work, 0), "mdn_chunk_backward_cuda");
    cuda_try(cudaDeviceSynchronize(), "the op's kernels");
    for (int i = 0; i < N_OUTPUTS; i++) {
        if (c->out[i] == NULL) continue;
        float *h = (float *)xmalloc(c->numel[i] * sizeof(float));
        cuda_try(cudaMemcpy(h, dout[i], c->numel[i] * sizeof(float), cudaMemcpyDeviceToHost), "copy to host");
        for (size_t e = 0; e < c->numel[i]; e++) c->out[i][e] = (real)h[e];
        free(h);
        cuda_try(cudaFree(dout[i]), "cudaFree");
    }
    for (int i = 0; i < N_INPUTS; i++)
        if (din[i] != NULL) cuda_try(cudaFree(din[i]), "cudaFree");
    cuda_try(cudaFree(d_do), "cudaFree");
    cuda_try(cudaFree(work), "cudaFree");
}
#endif

static void save_outputs(const OpCase *c, const char *path, const char *mode, const char *device) {
    StWriter w;
    st_writer_init(&w);
    float *f32[N_OUTPUTS] = {0};
    for (int i = 0; i < N_OUTPUTS; i++) {
        if (c->out[i] == NULL) continue;
        f32[i] = (float *)xmalloc(c->numel[i] * sizeof(float));
        for (size_t e = 0; e < c->numel[i]; e++) f32[i][e] = (float)c->out[i][e];
        st_writer_add(&w, output_names[i], ST_F32, c->ndim[i], c->dims[i], f32[i]);
    }
    st_writer_add_metadata(&w, "mode", mode);
    st_writer_add_metadata(&w, "device", device);
    char err[512];
    if (st_writer_save(&w, path, err, sizeof err) != 0) die("%s", err);
    st_writer_free(&w);
    for (int i = 0; i < N_OUTPUTS; i++) free(f32[i]);
}

int main(int argc, char **argv) {
    const char *mode = NULL, *in_path = NULL, *out_path = NULL, *device = "cpu";
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "-h") == 0 || strcmp(flag, "--help") == 0) { usage(); return 0; }
        const char **dst = strcmp(flag, "--mode") == 0 ? &mode : strcmp(flag, "--in") == 0 ? &in_path
                         : strcmp(flag, "--out") == 0 ? &out_path : strcmp(flag, "--device") == 0 ? &device : NULL;
        if (dst == NULL) { usage(); die("%s: unknown flag", flag); }
        if (i + 1 >= argc) { usage(); die("%s: missing value", flag); }
        *dst = argv[++i];
    }
    if (mode == NULL || in_path == NULL || out_path == NULL) { usage(); die("--mode, --in and --out are required"); }
    int chunk = strcmp(mode, "chunk") == 0;
    if (!chunk && strcmp(mode, "recurrent") != 0) die("--mode %s: expected recurrent or chunk", mode);
    int cuda = strcmp(device, "cuda") == 0;
    if (!cuda && strcmp(device, "cpu") != 0) die("--device %s: expected cpu or cuda", device);
    if (cuda && !chunk) die("--device cuda: the CUDA op implements --mode chunk only");
#ifndef MDN_CUDA
    if (cuda) die("--device cuda: not available: this build has no CUDA (nvcc was not found)");
#endif

    OpCase c;
    load_case(&c, in_path);
    if (cuda) {
#ifdef MDN_CUDA
        run_cuda(&c);
#endif
    } else {
        run_cpu(&c, chunk);
    }
    save_outputs(&c, out_path, mode, device);
    printf("%s: %s form on %s, B%d T%d H%d K%d V%d%s -> %s\n", in_path, mode, cuda ? "cuda (float32)" : "cpu (" REAL_NAME ")",
           c.shape.B, c.shape.T, c.shape.H, c.shape.K, c.shape.V, c.has_S0 || c.has_M0 ? " with initial states" : "", out_path);
    for (int i = 0; i < N_INPUTS; i++) free(c.in[i]);
    for (int i = 0; i < N_OUTPUTS; i++) free(c.out[i]);
    free(c.d_o);
    return 0;
}
