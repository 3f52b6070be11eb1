// swiglu.cu: see swiglu.cuh; elementwise, one block per row (no index division), threads across it.
#include "swiglu.cuh"

template <typename T>
__global__ void swiglu_forward_kernel(T *out, const T *gate, const T *up, int in_stride, int rows, int dim) {
    size_t row = blockIdx.x;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        size_t in = row * in_stride + c;
        float g = to_float(gate[in]);
        out[row * dim + c] = from_float<T>(g * sigmoidf_(g) * to_float(up[in]));
    }
}

template <typename T>
__global__ void swiglu_backward_kernel(T *dgate, T *dup, const T *dout, const T *gate, const T *up, int in_stride,
                                       int rows, int dim) {
    size_t row = blockIdx.x;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        size_t in = row * in_stride + c;
        float g = to_float(gate[in]), s = sigmoidf_(g), d = to_float(dout[row * dim + c]);
        dup[in] = from_float<T>(d * g * s);
        dgate[in] = from_float<T>(d * to_float(up[in]) * s * (1.0f + g * (1.0f - s)));
    }
}

template <typename T>
void swiglu_forward_cuda(T *out, const T *gate, const T *up, int in_stride, int rows, int dim, cudaStream_t stream) {
    swiglu_forward_kernel<T><<<rows, 256, 0, stream>>>(out, gate, up, in_stride, rows, dim);
    cudaCheck(cudaGetLastError());
}

template <typename T>
void swiglu_backward_cuda(T *dgate, T *dup, const T *dout, const T *gate, const T *up, int in_stride, int rows,
                          int dim, cudaStream_t stream) {
    swiglu_backward_kernel<T><<<rows, 256, 0, stream>>>(dgate, dup, dout, gate, up, in_stride, rows, dim);
    cudaCheck(cudaGetLastError());
}

template void swiglu_forward_cuda<float>(float *, const float *, const float *, int, int, int, cudaStream_t);
template void swiglu_forward_cuda<bf16>(bf16 *, const bf16 *, const bf16 *, int, int, int, cudaStream_t);
template void swiglu_backward_cuda<float>(float *, float *, const float *, const float *, const float *, int, int, int,
                                          cudaStream_t);
template void swiglu_backward_cuda<bf16>(bf16 *, bf16 *, const bf16 *, const bf16 *, const bf16 *, int, int, int,
                                         cudaStream_t);
