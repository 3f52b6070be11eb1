// swiglu.cu: see swiglu.cuh; elementwise, one thread per output value.
#include "swiglu.cuh"

template <typename T>
__global__ void swiglu_forward_kernel(T *out, const T *gate, const T *up, int in_stride, int rows, int dim) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * dim) return;
    size_t in = (idx / dim) * in_stride + idx % dim;
    float g = to_float(gate[in]);
    out[idx] = from_float<T>(g * sigmoidf_(g) * to_float(up[in]));
}

template <typename T>
__global__ void swiglu_backward_kernel(T *dgate, T *dup, const T *dout, const T *gate, const T *up, int in_stride,
                                       int rows, int dim) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)rows * dim) return;
    size_t in = (idx / dim) * in_stride + idx % dim;
    float g = to_float(gate[in]), s = sigmoidf_(g), d = to_float(dout[idx]);
    dup[in] = from_float<T>(d * g * s);
    dgate[in] = from_float<T>(d * to_float(up[in]) * s * (1.0f + g * (1.0f - s)));
}

template <typename T>
void swiglu_forward_cuda(T *out, const T *gate, const T *up, int in_stride, int rows, int dim, cudaStream_t stream) {
    size_t n = (size_t)rows * dim;
    swiglu_forward_kernel<T><<<ceil_div(n, 256), 256, 0, stream>>>(out, gate, up, in_stride, rows, dim);
    cudaCheck(cudaGetLastError());
}

template <typename T>
void swiglu_backward_cuda(T *dgate, T *dup, const T *dout, const T *gate, const T *up, int in_stride, int rows,
                          int dim, cudaStream_t stream) {
    size_t n = (size_t)rows * dim;
    swiglu_backward_kernel<T><<<ceil_div(n, 256), 256, 0, stream>>>(dgate, dup, dout, gate, up, in_stride, rows, dim);
    cudaCheck(cudaGetLastError());
}

template void swiglu_forward_cuda<float>(float *, const float *, const float *, int, int, int, cudaStream_t);
template void swiglu_forward_cuda<bf16>(bf16 *, const bf16 *, const bf16 *, int, int, int, cudaStream_t);
template void swiglu_backward_cuda<float>(float *, float *, const float *, const float *, const float *, int, int, int,
                                          cudaStream_t);
template void swiglu_backward_cuda<bf16>(bf16 *, bf16 *, const bf16 *, const bf16 *, const bf16 *, int, int, int,
                                         cudaStream_t);
