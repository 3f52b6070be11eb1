// bench_mdn: times the CUDA MDN op (mdn_kernels/mdn_cuda.cu), forward and forward+backward, in
// bf16 at the paper shapes (400M: B8 T4096 H6 K128 V256; 1B: B4 T4096 H6 K256 V512).
// CUDA events, warm-up, median of many runs, inputs rotated over several sets so that L2 (50 MB)
// never holds the previous run's data. Prints the FLOP count of the implementation's matrix
// products (derived below) and the achieved rate.
// Usage: dev/bench_mdn [--iters N] [--shape 400M|1B|all] [--f32]
#include <algorithm>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "../common/utils.h"
#include "../mdn_kernels/mdn_cuda.cuh"

#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess) die("%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
    } while (0)

#define NSETS 3

// matrix-product FLOPs per chunk of L = 64 and head (2 per multiply-add), as implemented:
//   forward  prepare: Khat Khat^T, Qbar Khat^T                          4 L^2 K
//            state:   R = V + Pab X (L x 2K x V), O = Qab X (same), X update (2K x L x V)
//                     -> 12 L K V; U = T^-1 R, QKG U -> 4 L^2 V
//   backward (from the forward's saved prepare results) recompute states without O: 8 L K V + 2 L^2 V;
//            reverse pass: KK dX1 (4 L K V), QKG^T dO, T^-T dU (4 L^2 V), Qab^T dO + Pab^T G (8 L K V);
//            state grads: dO X^T, G X^T, U dX^T (12 L K V), dO U^T, G U^T (4 L^2 V);
//            chunk pass: QK, KK (4 L^2 K), four L x L x K products (8 L^2 K)
// (the O(L^3) gate algebra and the triangular inverse are left out: under 2%).
static double flops_fwd(double L, double K, double V) { return 4 * L * L * K + 12 * L * K * V + 4 * L * L * V; }
static double flops_bwd(double L, double K, double V) {
    return (8 * L * K * V + 2 * L * L * V) + (12 * L * K * V + 4 * L * L * V) +
           (12 * L * K * V + 4 * L * L * V) + 12 * L * L * K;
}

static void fill_random(void *d, size_t n, bool bf16, float lo, float hi, unsigned seed) {
    std::vector<float> h(n);
    srand(seed);
    for (size_t i = 0; i < n; i++) h[i] = lo + (hi - lo) * (float)rand() / (float)RAND_MAX;
    if (bf16) {
        std::vector<__nv_bfloat16> b(n);
        for (size_t i = 0; i < n; i++) b[i] = __float2bfloat16_rn(h[i]);
        CUDA_CHECK(cudaMemcpy(d, b.data(), n * 2, cudaMemcpyHostToDevice));
    } else {
        CUDA_CHECK(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice));
    }
}
static void *dalloc(size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    return p;
}

static double median(std::vector<float> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
}

static void bench_shape(const char *name, MdnCudaShape sh, int iters) {
    const char *why = mdn_cuda_check_shape(&sh);
    if (why) die("%s: %s", name, why);
    const bool bf16 = sh.dtype == MDN_DTYPE_BF16;
    const size_t es = bf16 ? 2 : 4;
    const size_t nq = (size_t)sh.B * sh.T * sh.H * sh.K, nv = (size_t)sh.B * sh.T * sh.H * sh.V,
                 ng = (size_t)sh.B * sh.T * sh.H;
    MdnCudaInputs in[NSETS];
    void *d_o[NSETS];
    for (int s = 0; s < NSETS; s++) {
        void *q = dalloc(nq * es), *k = dalloc(nq * es), *v = dalloc(nv * es);
        float *la = (float *)dalloc(ng * 4), *lm = (float *)dalloc(ng * 4), *be = (float *)dalloc(ng * 4),
              *et = (float *)dalloc(ng * 4);
        d_o[s] = dalloc(nv * es);
        fill_random(q, nq, bf16, -1, 1, 10 * s + 1);
        fill_random(k, nq, bf16, -1, 1, 10 * s + 2);
        fill_random(v, nv, bf16, -1, 1, 10 * s + 3);
        fill_random(d_o[s], nv, bf16, -1, 1, 10 * s + 4);
        fill_random(la, ng, false, -5, 0, 10 * s + 5);
        fill_random(lm, ng, false, -2, 0, 10 * s + 6);
        fill_random(be, ng, false, 0.001f, 1, 10 * s + 7);
        fill_random(et, ng, false, 0.001f, 2, 10 * s + 8);
        in[s] = {q, k, v, la, lm, be, et, NULL, NULL};
    }
    void *o = dalloc(nv * es);
    MdnCudaGrads gr = {dalloc(nq * es), dalloc(nq * es), dalloc(nv * es), (float *)dalloc(ng * 4),
                       (float *)dalloc(ng * 4), (float *)dalloc(ng * 4), (float *)dalloc(ng * 4), NULL, NULL};
    const size_t wsize = std::max(mdn_chunk_forward_workspace_size(&sh), mdn_chunk_backward_workspace_size(&sh));
    void *ws = dalloc(wsize), *saved = dalloc(mdn_chunk_saved_size(&sh));   // the backward reuses the forward's results, as the trainer does
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    std::vector<float> tf, tfb;
    for (int it = -3; it < iters; it++) {
        const int s = (it + 3) % NSETS;
        float ms;
        CUDA_CHECK(cudaEventRecord(e0));
        CUDA_CHECK(mdn_chunk_forward_cuda(&sh, &in[s], o, NULL, NULL, saved, ws, 0));
        CUDA_CHECK(cudaEventRecord(e1));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (it >= 0) tf.push_back(ms);
    }
    for (int it = -3; it < iters; it++) {
        const int s = (it + 3) % NSETS;
        float ms;
        CUDA_CHECK(cudaEventRecord(e0));
        CUDA_CHECK(mdn_chunk_forward_cuda(&sh, &in[s], o, NULL, NULL, saved, ws, 0));
        CUDA_CHECK(mdn_chunk_backward_cuda(&sh, &in[s], d_o[s], NULL, NULL, &gr, saved, ws, 0));
        CUDA_CHECK(cudaEventRecord(e1));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (it >= 0) tfb.push_back(ms);
    }
    // the outputs are finite (a cheap guard; correctness is test_mdn_op_cuda's job)
    std::vector<float> chk(ng);
    CUDA_CHECK(cudaMemcpy(chk.data(), gr.dlog_alpha, ng * 4, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < ng; i++)
        if (!isfinite(chk[i])) die("%s: non-finite dlog_alpha at %zu", name, i);
    const double nch = (double)sh.B * sh.H * ((sh.T + 63) / 64);
    const double ff = nch * flops_fwd(64, sh.K, sh.V), fb = nch * flops_bwd(64, sh.K, sh.V);
    const double mf = median(tf), mfb = median(tfb);
    printf("%-4s %s B%d T%d H%d K%d V%d: fwd %.3f ms (%.3f TFLOP, %.1f TFLOP/s) | fwd+bwd %.3f ms (%.3f TFLOP, %.1f "
           "TFLOP/s) | min %.3f / %.3f ms | workspace %.2f GB\n",
           name, bf16 ? "bf16" : "f32", sh.B, sh.T, sh.H, sh.K, sh.V, mf, ff * 1e-12, ff / (mf * 1e-3) * 1e-12, mfb,
           (ff + fb) * 1e-12, (ff + fb) / (mfb * 1e-3) * 1e-12, *std::min_element(tf.begin(), tf.end()),
           *std::min_element(tfb.begin(), tfb.end()), wsize / 1e9);
    for (int s = 0; s < NSETS; s++) {
        void *ps[] = {(void *)in[s].q, (void *)in[s].k, (void *)in[s].v, (void *)in[s].log_alpha,
                      (void *)in[s].log_mu, (void *)in[s].beta, (void *)in[s].eta, d_o[s]};
        for (void *p : ps) CUDA_CHECK(cudaFree(p));
    }
    void *ps[] = {o, gr.dq, gr.dk, gr.dv, gr.dlog_alpha, gr.dlog_mu, gr.dbeta, gr.deta, ws, saved};
    for (void *p : ps) CUDA_CHECK(cudaFree(p));
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
}

int main(int argc, char **argv) {
    int iters = 20;
    const char *shape = "all";
    MdnDtype dt = MDN_DTYPE_BF16;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) iters = atoi(argv[++i]);
        else if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc) shape = argv[++i];
        else if (strcmp(argv[i], "--f32") == 0) dt = MDN_DTYPE_F32;
        else die("usage: %s [--iters N] [--shape 400M|1B|all] [--f32]", argv[0]);
    }
    if (iters < 1) die("--iters must be positive");
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    if (strcmp(shape, "all") == 0 || strcmp(shape, "400M") == 0)
        bench_shape("400M", MdnCudaShape{8, 4096, 6, 128, 256, 1, dt}, iters);
    if (strcmp(shape, "all") == 0 || strcmp(shape, "1B") == 0)
        bench_shape("1B", MdnCudaShape{4, 4096, 6, 256, 512, 1, dt}, iters);
    return 0;
}
