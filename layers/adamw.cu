// adamw.cu: see adamw.cuh.
#include "adamw.cuh"

#include <math.h>

__global__ void sum_squares_kernel(double *partials, const float *x, size_t n) {
    __shared__ double shared[32];
    // part [i0, i1) of x, whole float4s when x is 16-byte aligned (the trainer's gradient shard is):
    // one float a thread per iteration ran at ~35% of the bandwidth
    size_t per_part = ((n + gridDim.x - 1) / gridDim.x + 3) / 4 * 4;
    size_t i0 = min(n, blockIdx.x * per_part), i1 = min(n, i0 + per_part);
    double acc = 0.0;
    size_t tail = i0;
    if ((uintptr_t)x % 16 == 0) {
        const float4 *x4 = reinterpret_cast<const float4 *>(x);
        size_t v1 = i1 / 4;   // i0 is a multiple of 4
#pragma unroll 4
        for (size_t v = i0 / 4 + threadIdx.x; v < v1; v += blockDim.x) {
            float4 a = x4[v];
            acc += (double)a.x * (double)a.x + (double)a.y * (double)a.y + (double)a.z * (double)a.z +
                   (double)a.w * (double)a.w;
        }
        tail = v1 * 4;
    }
    for (size_t i = tail + threadIdx.x; i < i1; i += blockDim.x) acc += (double)x[i] * (double)x[i];
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) shared[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < (int)blockDim.x / 32; w++) s += shared[w];
        partials[blockIdx.x] = s;
    }
}

void adamw_sum_squares_cuda(double *partials, const float *x, size_t n, cudaStream_t stream) {
    sum_squares_kernel<<<REDUCE_PARTS, 512, 0, stream>>>(partials, x, n);
    cudaCheck(cudaGetLastError());
}

template <typename T>
__global__ void adamw_kernel(float *params, T *params_copy, const float *grads, float *m, float *v, size_t begin,
                             size_t end, float lr, float beta1, float beta2, float eps, float weight_decay,
                             float grad_scale, float step_size, float bias_correction2_sqrt, const size_t *seg_end,
                             const unsigned char *seg_decay, int num_segments) {
    size_t i = begin + (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= end) return;
    float g = grads[i] * grad_scale;
    float m_i = beta1 * m[i - begin] + (1.0f - beta1) * g;
    float v_i = beta2 * v[i - begin] + (1.0f - beta2) * g * g;
    m[i - begin] = m_i;
    v[i - begin] = v_i;
    float decay_factor = adamw_is_decayed(i, seg_end, seg_decay, num_segments) ? 1.0f - lr * weight_decay : 1.0f;
    float denom = sqrtf(v_i) / bias_correction2_sqrt + eps;
    float p = params[i] * decay_factor - step_size * m_i / denom;
    params[i] = p;
    if (params_copy != NULL) params_copy[i] = from_float<T>(p);
}

template <typename T>
void adamw_update_cuda(float *params, T *params_copy, const float *grads, float *m, float *v, size_t begin,
                       size_t end, float lr, float beta1, float beta2, float eps, float weight_decay,
                       float grad_scale, int64_t t, const size_t *seg_end, const unsigned char *seg_decay,
                       int num_segments, cudaStream_t stream) {
    if (end <= begin) return;
    // the same float64 bias corrections as adamw.c, rounded once to float
    float step_size = (float)(lr / (1.0 - pow((double)beta1, (double)t)));
    float bias_correction2_sqrt = (float)sqrt(1.0 - pow((double)beta2, (double)t));
    adamw_kernel<T><<<ceil_div(end - begin, 256), 256, 0, stream>>>(
        params, params_copy, grads, m, v, begin, end, lr, beta1, beta2, eps, weight_decay, grad_scale, step_size,
        bias_correction2_sqrt, seg_end, seg_decay, num_segments);
    cudaCheck(cudaGetLastError());
}

template <typename T>
__global__ void convert_params_kernel(T *dst, const float *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = from_float<T>(src[i]);
}

template <typename T>
void convert_params_cuda(T *dst, const float *src, size_t n, cudaStream_t stream) {
    convert_params_kernel<T><<<ceil_div(n, 256), 256, 0, stream>>>(dst, src, n);
    cudaCheck(cudaGetLastError());
}

template void adamw_update_cuda<float>(float *, float *, const float *, float *, float *, size_t, size_t, float, float,
                                       float, float, float, float, int64_t, const size_t *, const unsigned char *, int,
                                       cudaStream_t);
template void adamw_update_cuda<bf16>(float *, bf16 *, const float *, float *, float *, size_t, size_t, float, float,
                                      float, float, float, float, int64_t, const size_t *, const unsigned char *, int,
                                      cudaStream_t);
template void convert_params_cuda<bf16>(bf16 *, const float *, size_t, cudaStream_t);
