// rmsnorm.cu: see rmsnorm.cuh. One warp per row for the row-wise parts (dim is 128..2048 here);
// the weight gradients in a second, column-parallel pass over the rows.
// With x̂ = x·r, r = (mean(x²)+eps)^-1/2, y = x̂·w: dx = r·(w∘dy − x̂·mean(x̂∘w∘dy)).
#include "rmsnorm.cuh"

#define ROWS_PER_BLOCK 8   // warps per block in the row kernels

template <typename Tin, typename T>
__global__ void rmsnorm_forward_kernel(float *sum, T *out, float *rstd, const float *x, const Tin *delta,
                                       const float *weight, int rows, int dim, float eps) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float *xr = x + (size_t)row * dim;
    float ss = 0.0f;
    for (int c = lane; c < dim; c += 32) {
        float v = xr[c];
        if (delta != NULL) {
            v += to_float(delta[(size_t)row * dim + c]);
            sum[(size_t)row * dim + c] = v;
        }
        ss += v * v;
    }
    ss = warp_reduce_sum(ss);
    float r = rsqrtf(ss / dim + eps);
    const float *src = delta != NULL ? sum + (size_t)row * dim : xr;
    for (int c = lane; c < dim; c += 32) out[(size_t)row * dim + c] = from_float<T>(src[c] * r * weight[c]);
    if (lane == 0) rstd[row] = r;
}

template <typename T>
void rmsnorm_forward_cuda(T *out, float *rstd, const float *inp, const float *weight, int rows, int dim, float eps,
                          cudaStream_t stream) {
    rmsnorm_forward_kernel<T, T><<<ceil_div(rows, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, stream>>>(
        NULL, out, rstd, inp, (const T *)NULL, weight, rows, dim, eps);
    cudaCheck(cudaGetLastError());
}

template <typename T>
void residual_rmsnorm_forward_cuda(float *sum, T *out, float *rstd, const float *x, const T *delta,
                                   const float *weight, int rows, int dim, float eps, cudaStream_t stream) {
    rmsnorm_forward_kernel<T, T><<<ceil_div(rows, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, stream>>>(
        sum, out, rstd, x, delta, weight, rows, dim, eps);
    cudaCheck(cudaGetLastError());
}

template <typename T>
__global__ void rmsnorm_backward_kernel(float *dinp, T *dinp_copy, const T *dout, const float *inp,
                                        const float *weight, const float *rstd, int rows, int dim) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * dim;
    float r = rstd[row], dot = 0.0f;
    for (int c = lane; c < dim; c += 32) dot += inp[base + c] * r * weight[c] * to_float(dout[base + c]);
    dot = warp_reduce_sum(dot) / dim;
    for (int c = lane; c < dim; c += 32) {
        float xhat = inp[base + c] * r;
        float d = dinp[base + c] + r * (weight[c] * to_float(dout[base + c]) - xhat * dot);
        dinp[base + c] = d;
        if (dinp_copy != NULL) dinp_copy[base + c] = from_float<T>(d);
    }
}

// partials[part, c] = sum over this part's rows of dout[r,c]·inp[r,c]·rstd[r]
template <typename T>
__global__ void rmsnorm_dweight_kernel(float *partials, const T *dout, const float *inp, const float *rstd,
                                       int rows, int dim) {
    __shared__ float acc_s[8][33];
    int c = blockIdx.x * 32 + threadIdx.x, part = blockIdx.y;
    int rows_per_part = ceil_div(rows, gridDim.y);
    int r0 = part * rows_per_part, r1 = min(rows, r0 + rows_per_part);
    float acc = 0.0f;
    if (c < dim)
        for (int r = r0 + threadIdx.y; r < r1; r += 8)
            acc += to_float(dout[(size_t)r * dim + c]) * inp[(size_t)r * dim + c] * rstd[r];
    acc_s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < dim) {
        float s = 0.0f;
        for (int y = 0; y < 8; y++) s += acc_s[y][threadIdx.x];
        partials[(size_t)part * dim + c] = s;
    }
}

template <typename T>
void rmsnorm_backward_cuda(float *dinp, T *dinp_copy, float *dweight, float *scratch, const T *dout,
                           const float *inp, const float *weight, const float *rstd, int rows, int dim,
                           cudaStream_t stream) {
    rmsnorm_backward_kernel<T><<<ceil_div(rows, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, stream>>>(
        dinp, dinp_copy, dout, inp, weight, rstd, rows, dim);
    cudaCheck(cudaGetLastError());
    rmsnorm_dweight_kernel<T><<<dim3(ceil_div(dim, 32), REDUCE_PARTS), dim3(32, 8), 0, stream>>>(
        scratch, dout, inp, rstd, rows, dim);
    cudaCheck(cudaGetLastError());
    reduce_partials_add_cuda(dweight, scratch, REDUCE_PARTS, dim, stream);
}

// ---- gated norm ----
template <typename T>
__global__ void gated_rmsnorm_forward_kernel(T *out, float *rstd, const T *inp, const T *gate, const float *weight,
                                             int rows, int dim, int H, int gate_stride, float eps) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T *x = inp + (size_t)row * dim;
    const T *g = gate + (size_t)(row / H) * gate_stride + (size_t)(row % H) * dim;
    float ss = 0.0f;
    for (int c = lane; c < dim; c += 32) {
        float v = to_float(x[c]);
        ss += v * v;
    }
    ss = warp_reduce_sum(ss);
    float r = rsqrtf(ss / dim + eps);
    for (int c = lane; c < dim; c += 32)
        out[(size_t)row * dim + c] = from_float<T>(to_float(x[c]) * r * weight[c] * sigmoidf_(to_float(g[c])));
    if (lane == 0) rstd[row] = r;
}

template <typename T>
__global__ void gated_rmsnorm_backward_kernel(T *dinp, T *dgate, const T *dout, const T *inp, const T *gate,
                                              const float *weight, const float *rstd, int rows, int dim, int H,
                                              int gate_stride) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * dim, gbase = (size_t)(row / H) * gate_stride + (size_t)(row % H) * dim;
    float r = rstd[row], dot = 0.0f;
    for (int c = lane; c < dim; c += 32) {
        float s = sigmoidf_(to_float(gate[gbase + c])), xhat = to_float(inp[base + c]) * r;
        float dy = to_float(dout[base + c]);
        dgate[gbase + c] = from_float<T>(dy * xhat * weight[c] * s * (1.0f - s));
        dot += xhat * weight[c] * dy * s;
    }
    dot = warp_reduce_sum(dot) / dim;
    for (int c = lane; c < dim; c += 32) {
        float s = sigmoidf_(to_float(gate[gbase + c])), xhat = to_float(inp[base + c]) * r;
        float dn = to_float(dout[base + c]) * s;
        dinp[base + c] = from_float<T>(r * (weight[c] * dn - xhat * dot));
    }
}

template <typename T>
__global__ void gated_rmsnorm_dweight_kernel(float *partials, const T *dout, const T *inp, const T *gate,
                                             const float *rstd, int rows, int dim, int H, int gate_stride) {
    __shared__ float acc_s[8][33];
    int c = blockIdx.x * 32 + threadIdx.x, part = blockIdx.y;
    int rows_per_part = ceil_div(rows, gridDim.y);
    int r0 = part * rows_per_part, r1 = min(rows, r0 + rows_per_part);
    float acc = 0.0f;
    if (c < dim)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            float s = sigmoidf_(to_float(gate[(size_t)(r / H) * gate_stride + (size_t)(r % H) * dim + c]));
            acc += to_float(dout[(size_t)r * dim + c]) * s * to_float(inp[(size_t)r * dim + c]) * rstd[r];
        }
    acc_s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < dim) {
        float s = 0.0f;
        for (int y = 0; y < 8; y++) s += acc_s[y][threadIdx.x];
        partials[(size_t)part * dim + c] = s;
    }
}

template <typename T>
void gated_rmsnorm_forward_cuda(T *out, float *rstd, const T *inp, const T *gate, const float *weight,
                                int rows, int dim, int H, int gate_stride, float eps, cudaStream_t stream) {
    gated_rmsnorm_forward_kernel<T><<<ceil_div(rows, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, stream>>>(
        out, rstd, inp, gate, weight, rows, dim, H, gate_stride, eps);
    cudaCheck(cudaGetLastError());
}

template <typename T>
void gated_rmsnorm_backward_cuda(T *dinp, T *dgate, float *dweight, float *scratch, const T *dout, const T *inp,
                                 const T *gate, const float *weight, const float *rstd, int rows, int dim, int H,
                                 int gate_stride, cudaStream_t stream) {
    gated_rmsnorm_backward_kernel<T><<<ceil_div(rows, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK, 0, stream>>>(
        dinp, dgate, dout, inp, gate, weight, rstd, rows, dim, H, gate_stride);
    cudaCheck(cudaGetLastError());
    gated_rmsnorm_dweight_kernel<T><<<dim3(ceil_div(dim, 32), REDUCE_PARTS), dim3(32, 8), 0, stream>>>(
        scratch, dout, inp, gate, rstd, rows, dim, H, gate_stride);
    cudaCheck(cudaGetLastError());
    reduce_partials_add_cuda(dweight, scratch, REDUCE_PARTS, dim, stream);
}

#define INSTANTIATE(T)                                                                                            \
    template void rmsnorm_forward_cuda<T>(T *, float *, const float *, const float *, int, int, float,             \
                                          cudaStream_t);                                                          \
    template void residual_rmsnorm_forward_cuda<T>(float *, T *, float *, const float *, const T *, const float *, \
                                                   int, int, float, cudaStream_t);                                \
    template void rmsnorm_backward_cuda<T>(float *, T *, float *, float *, const T *, const float *, const float *, \
                                           const float *, int, int, cudaStream_t);                                \
    template void gated_rmsnorm_forward_cuda<T>(T *, float *, const T *, const T *, const float *, int, int, int,  \
                                                int, float, cudaStream_t);                                        \
    template void gated_rmsnorm_backward_cuda<T>(T *, T *, float *, float *, const T *, const T *, const T *,      \
                                                 const float *, const float *, int, int, int, int, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(bf16)
