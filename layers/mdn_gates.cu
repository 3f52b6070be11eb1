// mdn_gates.cu: see mdn_gates.cuh; the formulas are mdn_gates.c's, one thread per (row, head).
#include "mdn_gates.cuh"

#include "packed.cuh"

__device__ __forceinline__ float softplus_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float softplus_grad_(float x) { return x > 20.0f ? 1.0f : sigmoidf_(x); }

__global__ void mdn_gates_forward_kernel(float *log_alpha, float *log_mu, float *beta, float *eta, const float *a,
                                         const float *b, const float *m, const float *e, int proj_stride,
                                         const float *A_log, const float *Mu_log, const float *dt_bias,
                                         const float *mu_bias, const float *log_factor, int rows, int H,
                                         float inv_tau, float min_log_mu) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= rows * H) return;
    int i = j / H, h = j % H;
    size_t p = (size_t)i * proj_stride + h;
    float la = -expf(A_log[h]) * softplus_(a[p] + dt_bias[h]);
    float lm = -expf(Mu_log[h]) * softplus_(m[p] + mu_bias[h]);
    float et = tanhf(e[p] * inv_tau) + 1.0f;
    float z = et * expf(log_factor[h]), z2 = z * z;
    beta[j] = sigmoidf_(b[p]) * z2 / (1.0f + z2);
    log_alpha[j] = la - log1pf(z2);
    log_mu[j] = lm < min_log_mu ? min_log_mu : lm;
    eta[j] = et;
}

void mdn_gates_forward_cuda(float *log_alpha, float *log_mu, float *beta, float *eta, const float *a,
                            const float *b, const float *m, const float *e, int proj_stride, const float *A_log,
                            const float *Mu_log, const float *dt_bias, const float *mu_bias, const float *log_factor,
                            int rows, int H, float inv_tau, float min_log_mu, cudaStream_t stream) {
    mdn_gates_forward_kernel<<<ceil_div((long long)rows * H, 256), 256, 0, stream>>>(
        log_alpha, log_mu, beta, eta, a, b, m, e, proj_stride, A_log, Mu_log, dt_bias, mu_bias, log_factor, rows, H,
        inv_tau, min_log_mu);
    cudaCheck(cudaGetLastError());
}

// per (row, head): the projection gradients, and the five parameter contributions written to
// contrib [rows, 5H] (A_log | Mu_log | dt_bias | mu_bias | log_factor) for the ordered row sum
template <typename T>
__global__ void mdn_gates_backward_kernel(T *da, T *db, T *dm, T *de, int dproj_stride, float *contrib,
                                          const float *dlog_alpha, const float *dlog_mu, const float *dbeta,
                                          const float *deta, const float *a, const float *b, const float *m,
                                          const float *e, int proj_stride, const float *A_log, const float *Mu_log,
                                          const float *dt_bias, const float *mu_bias, const float *log_factor,
                                          int rows, int H, float inv_tau, float min_log_mu) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= rows * H) return;
    int i = j / H, h = j % H;
    size_t p = (size_t)i * proj_stride + h, q = (size_t)i * dproj_stride + h;
    float th = tanhf(e[p] * inv_tau), et = th + 1.0f;
    float ef = expf(log_factor[h]);
    float z = et * ef, z2 = z * z;
    float s = sigmoidf_(b[p]);
    float dz = dbeta[j] * s * 2.0f * z / ((1.0f + z2) * (1.0f + z2)) - dlog_alpha[j] * 2.0f * z / (1.0f + z2);
    db[q] = from_float<T>(dbeta[j] * z2 / (1.0f + z2) * s * (1.0f - s));
    float det = deta[j] + dz * ef;
    de[q] = from_float<T>(det * (1.0f - th * th) * inv_tau);
    float eA = expf(A_log[h]), xa = a[p] + dt_bias[h];
    float da_j = -dlog_alpha[j] * eA * softplus_grad_(xa);
    da[q] = from_float<T>(da_j);
    float eM = expf(Mu_log[h]), xm = m[p] + mu_bias[h];
    float lm = -eM * softplus_(xm);
    float dlm = lm < min_log_mu ? 0.0f : dlog_mu[j];
    float dm_j = -dlm * eM * softplus_grad_(xm);
    dm[q] = from_float<T>(dm_j);
    float *c = contrib + (size_t)i * 5 * H;
    c[h] = dlog_alpha[j] * (-eA * softplus_(xa));
    c[H + h] = dlm * lm;
    c[2 * H + h] = da_j;
    c[3 * H + h] = dm_j;
    c[4 * H + h] = dz * z;
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

size_t mdn_gates_backward_scratch_bytes(int rows, int H) {
    return align256((size_t)rows * 5 * H * sizeof(float)) + (size_t)REDUCE_PARTS * 5 * H * sizeof(float);
}

template <typename T>
void mdn_gates_backward_cuda(T *da, T *db, T *dm, T *de, int dproj_stride, float *dA_log, float *dMu_log,
                             float *ddt_bias, float *dmu_bias, float *dlog_factor, void *scratch,
                             const float *dlog_alpha, const float *dlog_mu, const float *dbeta, const float *deta,
                             const float *a, const float *b, const float *m, const float *e, int proj_stride,
                             const float *A_log, const float *Mu_log, const float *dt_bias, const float *mu_bias,
                             const float *log_factor, int rows, int H, float inv_tau, float min_log_mu,
                             cudaStream_t stream) {
    float *contrib = (float *)scratch;
    float *partials = (float *)((char *)scratch + align256((size_t)rows * 5 * H * sizeof(float)));
    mdn_gates_backward_kernel<T><<<ceil_div((long long)rows * H, 256), 256, 0, stream>>>(
        da, db, dm, de, dproj_stride, contrib, dlog_alpha, dlog_mu, dbeta, deta, a, b, m, e, proj_stride, A_log,
        Mu_log, dt_bias, mu_bias, log_factor, rows, H, inv_tau, min_log_mu);
    cudaCheck(cudaGetLastError());
    column_sum_partials_cuda(partials, contrib, rows, 5 * H, stream);
    float *targets[5] = {dA_log, dMu_log, ddt_bias, dmu_bias, dlog_factor};
    for (int k = 0; k < 5; k++)
        reduce_partials_add_strided_cuda(targets[k], partials + k * H, REDUCE_PARTS, H, 5 * H, stream);
}

// one warp per (row, head): dk update, dq copy (none when dq is dq_out, as in the trainer), and the
// head's dot product into contrib [rows, H]. A lane moves N adjacent values per access (K a multiple
// of 32·N): with one bf16 value a lane (64 bytes a warp instruction) the kernel ran at ~55% of a
// copy's bandwidth.
template <typename T, int N>
__global__ void output_correction_backward_kernel(T *dq, T *dk, float *contrib, const T *dq_out, const T *k,
                                                  const float *D_log, int rows, int H, int K) {
    int j = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (j >= rows * H) return;
    int h = j % H;
    float c = expf(D_log[h]), dot = 0.0f;
    size_t base = (size_t)j * K;
    for (int d = lane * N; d < K; d += 32 * N) {
        float g[N], kv[N], dkv[N];
        load_floats<N>(g, dq_out + base + d);
        load_floats<N>(kv, k + base + d);
        load_floats<N>(dkv, dk + base + d);
#pragma unroll
        for (int i = 0; i < N; i++) {
            dot += g[i] * kv[i];
            dkv[i] -= c * g[i];
        }
        store_floats<N>(dk + base + d, dkv);
        if (dq != dq_out) store_floats<N>(dq + base + d, g);
    }
    dot = warp_reduce_sum(dot);
    if (lane == 0) contrib[j] = -c * dot;
}

size_t output_correction_backward_scratch_bytes(int rows, int H) {
    return align256((size_t)rows * H * sizeof(float)) + (size_t)REDUCE_PARTS * H * sizeof(float);
}

template <typename T>
void output_correction_backward_cuda(T *dq, T *dk, float *dD_log, void *scratch, const T *dq_out, const T *k,
                                     const float *D_log, int rows, int H, int K, cudaStream_t stream) {
    float *contrib = (float *)scratch;
    float *partials = (float *)((char *)scratch + align256((size_t)rows * H * sizeof(float)));
    int blocks = ceil_div((long long)rows * H, 8);
    constexpr int V = Vec16<T>::n;
    bool aligned = is_aligned(dq, 16) && is_aligned(dk, 16) && is_aligned(dq_out, 16) && is_aligned(k, 16);
    if (aligned && K % (32 * V) == 0)
        output_correction_backward_kernel<T, V><<<blocks, 256, 0, stream>>>(dq, dk, contrib, dq_out, k, D_log, rows,
                                                                            H, K);
    else if (aligned && V >= 4 && K % (32 * (V / 2)) == 0)
        output_correction_backward_kernel<T, V / 2><<<blocks, 256, 0, stream>>>(dq, dk, contrib, dq_out, k, D_log, rows,
                                                                               H, K);
    else
        output_correction_backward_kernel<T, 1><<<blocks, 256, 0, stream>>>(dq, dk, contrib, dq_out, k, D_log, rows,
                                                                            H, K);
    cudaCheck(cudaGetLastError());
    column_sum_partials_cuda(partials, contrib, rows, H, stream);
    reduce_partials_add_cuda(dD_log, partials, REDUCE_PARTS, H, stream);
}

#define INSTANTIATE(T)                                                                                             \
    template void mdn_gates_backward_cuda<T>(T *, T *, T *, T *, int, float *, float *, float *, float *, float *, \
                                             void *, const float *, const float *, const float *, const float *,  \
                                             const float *, const float *, const float *, const float *, int,     \
                                             const float *, const float *, const float *, const float *,          \
                                             const float *, int, int, float, float, cudaStream_t);                \
    template void output_correction_backward_cuda<T>(T *, T *, float *, void *, const T *, const T *, const float *, \
                                                     int, int, int, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(bf16)
