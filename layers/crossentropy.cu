// crossentropy.cu: see crossentropy.cuh. One block per row, two passes over it: the first keeps,
// per thread, a running maximum and the sum of exponentials under it (rescaled once per 16-byte
// vector, not per value), merged over the block; the second writes the gradient in place. A row
// (100 KB of bf16 for 50k classes) is still in L2 for the second pass, so device memory sees one
// read and one write of the logits: ~2 ms for 32768 x 50304 bf16 on an H100.
// The first version (one bf16 value per access, an expf and a branch per value) ran ~68 ms for
// that size: too few bytes in flight per thread to cover the memory latency.
#include "crossentropy.cuh"

#include "linear.cuh"
#include "packed.cuh"

#define CE_THREADS 1024

// N values per access: the row start (logits + row·ld) and ld must allow N-value alignment
template <typename T, int N>
__global__ void __launch_bounds__(CE_THREADS) crossentropy_kernel(float *losses, T *logits, int ld, float *logits_out,
                                                                  const int *targets, float dloss, int Ncols) {
    __shared__ float shared[32];
    int row = blockIdx.x;
    T *x = logits + (size_t)row * ld;
    float *xo = logits_out != NULL ? logits_out + (size_t)row * Ncols : NULL;
    int target = targets[row];
    int full = Ncols / N * N;   // values in whole vectors; the rest (< N) one at a time
    float mx = -INFINITY, sum = 0.0f;
    for (int j = threadIdx.x * N; j < full; j += blockDim.x * N) {
        float f[N];
        load_floats<N>(f, x + j);
        float m = f[0];
#pragma unroll
        for (int i = 1; i < N; i++) m = fmaxf(m, f[i]);
        if (m > mx) {
            sum *= __expf(mx - m);
            mx = m;
        }
#pragma unroll
        for (int i = 0; i < N; i++) sum += __expf(f[i] - mx);
        if (xo != NULL)
#pragma unroll
            for (int i = 0; i < N; i++) xo[j + i] = f[i];
    }
    for (int j = full + threadIdx.x; j < Ncols; j += blockDim.x) {
        float v = to_float(x[j]);
        if (xo != NULL) xo[j] = v;
        if (v > mx) {
            sum = sum * __expf(mx - v) + 1.0f;
            mx = v;
        } else {
            sum += __expf(v - mx);
        }
    }
    float row_max = block_reduce_max(mx, shared);
    float row_sum = block_reduce_sum(mx == -INFINITY ? 0.0f : sum * __expf(mx - row_max), shared);
    if (threadIdx.x == 0) losses[row] = target < 0 ? 0.0f : logf(row_sum) + row_max - to_float(x[target]);
    if (dloss == 0.0f) return;
    // every thread has read the target logit's value through the reductions above before any write
    __syncthreads();
    float scale = target < 0 ? 0.0f : dloss / row_sum;
    float hit = target < 0 ? 0.0f : dloss;
    for (int j = threadIdx.x * N; j < full; j += blockDim.x * N) {
        float f[N];
        load_floats<N>(f, x + j);
#pragma unroll
        for (int i = 0; i < N; i++) f[i] = scale * __expf(f[i] - row_max) - (j + i == target ? hit : 0.0f);
        store_floats<N>(x + j, f);
    }
    for (int j = full + threadIdx.x; j < Ncols; j += blockDim.x)
        x[j] = from_float<T>(scale * __expf(to_float(x[j]) - row_max) - (j == target ? hit : 0.0f));
    for (int j = Ncols + threadIdx.x; j < ld; j += blockDim.x) x[j] = from_float<T>(0.0f);   // the padding
}

template <typename T>
void crossentropy_forward_backward_cuda(float *losses, T *logits, int ld, float *logits_out, const int *targets,
                                        float dloss, int rows, int N, cudaStream_t stream) {
    constexpr int V = Vec16<T>::n;
    if (ld % V == 0 && is_aligned(logits, 16))
        crossentropy_kernel<T, V><<<rows, CE_THREADS, 0, stream>>>(losses, logits, ld, logits_out, targets, dloss, N);
    else
        crossentropy_kernel<T, 1><<<rows, CE_THREADS, 0, stream>>>(losses, logits, ld, logits_out, targets, dloss, N);
    cudaCheck(cudaGetLastError());
}

template <typename T>
void classifier_forward_backward_cuda(float *losses, T *dinp, float *dweight, float *logits_out, const T *inp,
                                      const T *weight, const int *targets, float dloss, int rows, int dim, int N,
                                      T *logits_scratch, int block_rows, cudaStream_t stream) {
    int ld = classifier_logits_ld(N);
    // the products run over ld classes (zero weight rows, zero gradient columns past N): the widths
    // 50257 (odd) put cuBLASLt on kernels 4-6x slower than at 50304
    const T *wpad = linear_padded_weight_cuda<T>(weight, N, ld, dim, stream);
    for (int r0 = 0; r0 < rows; r0 += block_rows) {
        int n = rows - r0 < block_rows ? rows - r0 : block_rows;
        linear_forward_strided_cuda<T, T>(logits_scratch, ld, inp + (size_t)r0 * dim, wpad, n, dim, ld, stream);
        crossentropy_forward_backward_cuda<T>(losses + r0, logits_scratch, ld,
                                              logits_out != NULL ? logits_out + (size_t)r0 * N : NULL, targets + r0,
                                              dinp != NULL ? dloss : 0.0f, n, N, stream);
        if (dinp != NULL) {
            linear_backward_strided_cuda<T>(dinp + (size_t)r0 * dim, NULL, logits_scratch, ld, inp + (size_t)r0 * dim,
                                            wpad, n, dim, ld, 0, stream);
            linear_backward_strided_cuda<T>(NULL, dweight, logits_scratch, ld, inp + (size_t)r0 * dim, weight, n, dim,
                                            N, 0, stream);
        }
    }
}

template void crossentropy_forward_backward_cuda<float>(float *, float *, int, float *, const int *, float, int, int,
                                                        cudaStream_t);
template void crossentropy_forward_backward_cuda<bf16>(float *, bf16 *, int, float *, const int *, float, int, int,
                                                       cudaStream_t);
template void classifier_forward_backward_cuda<float>(float *, float *, float *, float *, const float *,
                                                      const float *, const int *, float, int, int, int, float *, int,
                                                      cudaStream_t);
template void classifier_forward_backward_cuda<bf16>(float *, bf16 *, float *, float *, const bf16 *, const bf16 *,
                                                     const int *, float, int, int, int, bf16 *, int, cudaStream_t);
