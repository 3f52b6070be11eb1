// swiglu.cu: see swiglu.cuh. Elementwise: one thread per N adjacent values of a row (one 16-byte
// access of each operand where the shapes allow), over all rows·dim/N vectors.
#include "swiglu.cuh"

#include "packed.cuh"

template <typename T, int N>
__global__ void swiglu_forward_kernel(T *out, const T *gate, const T *up, int in_stride, int rows, int dim) {
    int per_row = dim / N;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)rows * per_row) return;
    int row = (int)(idx / per_row), c = (int)(idx - (long long)row * per_row) * N;
    size_t in = (size_t)row * in_stride + c;
    float g[N], u[N], y[N];
    load_floats<N>(g, gate + in);
    load_floats<N>(u, up + in);
#pragma unroll
    for (int i = 0; i < N; i++) y[i] = g[i] * sigmoidf_(g[i]) * u[i];
    store_floats<N>(out + (size_t)row * dim + c, y);
}

// out, when non-NULL, also receives the forward's product (the same expression, the same bits): the
// trainer's backward recomputes it for the down projection's weight gradient here, where gate and
// up are read anyway, instead of in a forward pass of its own (one read of gate|up less a layer)
template <typename T, int N>
__global__ void swiglu_backward_kernel(T *dgate, T *dup, T *out, const T *dout, const T *gate, const T *up,
                                       int in_stride, int rows, int dim) {
    int per_row = dim / N;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)rows * per_row) return;
    int row = (int)(idx / per_row), c = (int)(idx - (long long)row * per_row) * N;
    size_t in = (size_t)row * in_stride + c;
    float g[N], u[N], d[N], dg[N], du[N], y[N];
    load_floats<N>(g, gate + in);
    load_floats<N>(u, up + in);
    load_floats<N>(d, dout + (size_t)row * dim + c);
#pragma unroll
    for (int i = 0; i < N; i++) {
        float s = sigmoidf_(g[i]);
        y[i] = g[i] * s * u[i];
        du[i] = d[i] * g[i] * s;
        dg[i] = d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    }
    store_floats<N>(dup + in, du);
    store_floats<N>(dgate + in, dg);
    if (out != NULL) store_floats<N>(out + (size_t)row * dim + c, y);
}

// whether rows of dim values, in_stride apart, can be read N at a time from these pointers
template <typename T>
static bool swiglu_vectorizable(int N, int dim, int in_stride, const void *a, const void *b, const void *c,
                                const void *d) {
    size_t bytes = (size_t)N * sizeof(T);
    return dim % N == 0 && in_stride % N == 0 && is_aligned(a, bytes) && is_aligned(b, bytes) && is_aligned(c, bytes) &&
           is_aligned(d, bytes);
}

template <typename T>
void swiglu_forward_cuda(T *out, const T *gate, const T *up, int in_stride, int rows, int dim, cudaStream_t stream) {
    constexpr int V = Vec16<T>::n;
    if (swiglu_vectorizable<T>(V, dim, in_stride, out, gate, up, up))
        swiglu_forward_kernel<T, V><<<ceil_div((long long)rows * (dim / V), 256), 256, 0, stream>>>(out, gate, up,
                                                                                                    in_stride, rows, dim);
    else
        swiglu_forward_kernel<T, 1><<<ceil_div((long long)rows * dim, 256), 256, 0, stream>>>(out, gate, up, in_stride,
                                                                                              rows, dim);
    cudaCheck(cudaGetLastError());
}

template <typename T>
void swiglu_backward_cuda(T *dgate, T *dup, T *out, const T *dout, const T *gate, const T *up, int in_stride,
                          int rows, int dim, cudaStream_t stream) {
    constexpr int V = Vec16<T>::n;
    if (swiglu_vectorizable<T>(V, dim, in_stride, dgate, dup, dout, gate) && is_aligned(up, 16) &&
        is_aligned(out, 16))
        swiglu_backward_kernel<T, V><<<ceil_div((long long)rows * (dim / V), 256), 256, 0, stream>>>(
            dgate, dup, out, dout, gate, up, in_stride, rows, dim);
    else
        swiglu_backward_kernel<T, 1><<<ceil_div((long long)rows * dim, 256), 256, 0, stream>>>(
            dgate, dup, out, dout, gate, up, in_stride, rows, dim);
    cudaCheck(cudaGetLastError());
}

template void swiglu_forward_cuda<float>(float *, const float *, const float *, int, int, int, cudaStream_t);
template void swiglu_forward_cuda<bf16>(bf16 *, const bf16 *, const bf16 *, int, int, int, cudaStream_t);
template void swiglu_backward_cuda<float>(float *, float *, float *, const float *, const float *, const float *, int,
                                          int, int, cudaStream_t);
template void swiglu_backward_cuda<bf16>(bf16 *, bf16 *, bf16 *, const bf16 *, const bf16 *, const bf16 *, int, int,
                                         int, cudaStream_t);
