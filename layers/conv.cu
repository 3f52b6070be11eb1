// conv.cu: see conv.cuh. z[t,c] = sum_i w[c,i]·x[t-W+1+i, c] (zero before the row's start).
// Backward: dz = dout·silu'(z) (recomputed z) is written once to scratch (float32), then one pass
// gives dinp[s,c] = sum_i w[c,i]·dz[s+W-1-i, c] and the per-part partial sums of
// dw[c,i] = sum_t dz[t,c]·x[t-W+1+i, c], reduced over parts in a fixed order.
#include "conv.cuh"

template <typename T>
__device__ __forceinline__ float conv_preact(const T *inp, int in_stride, const float *weight, int b, int t,
                                             int Tlen, int c, int W) {
    float z = 0.0f;
    for (int i = 0; i < W; i++) {
        int s = t - W + 1 + i;
        if (s >= 0) z += weight[c * W + i] * to_float(inp[((size_t)b * Tlen + s) * in_stride + c]);
    }
    return z;
}

// one block per (row of B·T, tile of 256 channels): no index division, coalesced across channels
template <typename T>
__global__ void shortconv_silu_forward_kernel(T *out, const T *inp, int in_stride, const float *weight, int B,
                                              int Tlen, int C, int W) {
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int row = blockIdx.x, t = row % Tlen, b = row / Tlen;
    float z = conv_preact(inp, in_stride, weight, b, t, Tlen, c, W);
    out[(size_t)row * C + c] = from_float<T>(z * sigmoidf_(z));
}

template <typename T>
void shortconv_silu_forward_cuda(T *out, const T *inp, int in_stride, const float *weight, int B, int Tlen, int C,
                                 int W, cudaStream_t stream) {
    dim3 grid(B * Tlen, ceil_div(C, 256));
    shortconv_silu_forward_kernel<T><<<grid, 256, 0, stream>>>(out, inp, in_stride, weight, B, Tlen, C, W);
    cudaCheck(cudaGetLastError());
}

template <typename T>
__global__ void shortconv_dz_kernel(float *dz, const T *dout, const T *inp, int in_stride, const float *weight,
                                    int B, int Tlen, int C, int W) {
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int row = blockIdx.x, t = row % Tlen, b = row / Tlen;
    size_t idx = (size_t)row * C + c;
    float z = conv_preact(inp, in_stride, weight, b, t, Tlen, c, W);
    float s = sigmoidf_(z);
    dz[idx] = to_float(dout[idx]) * s * (1.0f + z * (1.0f - s));
}

// block (32 channels, 8 row lanes) per (channel tile, part of the B·T rows)
template <typename T>
__global__ void shortconv_dinp_dweight_kernel(T *dinp, int dinp_stride, float *partials, const float *dz,
                                              const T *inp, int in_stride, const float *weight, int rows, int Tlen,
                                              int C, int W) {
    __shared__ float acc_s[8][32][CONV_MAX_W];
    int c = blockIdx.x * 32 + threadIdx.x, part = blockIdx.y;
    int rows_per_part = ceil_div(rows, gridDim.y);
    int r0 = part * rows_per_part, r1 = min(rows, r0 + rows_per_part);
    float acc[CONV_MAX_W];
#pragma unroll
    for (int i = 0; i < CONV_MAX_W; i++) acc[i] = 0.0f;
    if (c < C)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            int t = r % Tlen;
            float d = 0.0f, dzr = dz[(size_t)r * C + c];
#pragma unroll
            for (int i = 0; i < CONV_MAX_W; i++) {
                if (i >= W) break;
                int later = t + W - 1 - i, earlier = t - W + 1 + i;
                if (later < Tlen) d += weight[c * W + i] * dz[(size_t)(r + W - 1 - i) * C + c];
                if (earlier >= 0) acc[i] += dzr * to_float(inp[(size_t)(r - W + 1 + i) * in_stride + c]);
            }
            dinp[(size_t)r * dinp_stride + c] = from_float<T>(d);
        }
#pragma unroll
    for (int i = 0; i < CONV_MAX_W; i++) acc_s[threadIdx.y][threadIdx.x][i] = acc[i];
    __syncthreads();
    if (threadIdx.y == 0 && c < C)
        for (int i = 0; i < W; i++) {
            float s = 0.0f;
            for (int y = 0; y < 8; y++) s += acc_s[y][threadIdx.x][i];
            partials[(size_t)part * C * W + c * W + i] = s;
        }
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

size_t shortconv_silu_backward_scratch_bytes(int B, int Tlen, int C, int W) {
    return align256((size_t)B * Tlen * C * sizeof(float)) + (size_t)REDUCE_PARTS * C * W * sizeof(float);
}

template <typename T>
void shortconv_silu_backward_cuda(T *dinp, int dinp_stride, float *dweight, void *scratch, const T *dout,
                                  const T *inp, int in_stride, const float *weight, int B, int Tlen, int C, int W,
                                  cudaStream_t stream) {
    if (W > CONV_MAX_W) {
        fprintf(stderr, "error: conv.cu: conv_size %d > %d\n", W, CONV_MAX_W);
        exit(EXIT_FAILURE);
    }
    size_t n = (size_t)B * Tlen * C;
    float *dz = (float *)scratch;
    float *partials = (float *)((char *)scratch + align256(n * sizeof(float)));
    shortconv_dz_kernel<T><<<dim3(B * Tlen, ceil_div(C, 256)), 256, 0, stream>>>(dz, dout, inp, in_stride, weight, B,
                                                                                  Tlen, C, W);
    cudaCheck(cudaGetLastError());
    shortconv_dinp_dweight_kernel<T><<<dim3(ceil_div(C, 32), REDUCE_PARTS), dim3(32, 8), 0, stream>>>(
        dinp, dinp_stride, partials, dz, inp, in_stride, weight, B * Tlen, Tlen, C, W);
    cudaCheck(cudaGetLastError());
    reduce_partials_add_cuda(dweight, partials, REDUCE_PARTS, C * W, stream);
}

template void shortconv_silu_forward_cuda<float>(float *, const float *, int, const float *, int, int, int, int,
                                                 cudaStream_t);
template void shortconv_silu_forward_cuda<bf16>(bf16 *, const bf16 *, int, const float *, int, int, int, int,
                                                cudaStream_t);
template void shortconv_silu_backward_cuda<float>(float *, int, float *, void *, const float *, const float *, int,
                                                  const float *, int, int, int, int, cudaStream_t);
template void shortconv_silu_backward_cuda<bf16>(bf16 *, int, float *, void *, const bf16 *, const bf16 *, int,
                                                 const float *, int, int, int, int, cudaStream_t);
