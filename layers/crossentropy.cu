// crossentropy.cu: see crossentropy.cuh. The softmax row kernel reads the row twice: once for the
// running maximum and sum of exponentials (each thread keeps its own pair, merged at the end), once
// to write the gradient; a 50k-entry bf16 row (100 KB) is still in L2 the second time.
#include "crossentropy.cuh"

#include "linear.cuh"

#define CE_THREADS 1024

template <typename T>
__global__ void __launch_bounds__(CE_THREADS) crossentropy_kernel(float *losses, T *logits, int ld, float *logits_out,
                                                                  const int *targets, float dloss, int N) {
    __shared__ float shared[32];
    int row = blockIdx.x;
    T *x = logits + (size_t)row * ld;
    int target = targets[row];
    float mx = -INFINITY, sum = 0.0f;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        float v = to_float(x[j]);
        if (logits_out != NULL) logits_out[(size_t)row * N + j] = v;
        if (v > mx) {
            sum = sum * expf(mx - v) + 1.0f;
            mx = v;
        } else {
            sum += expf(v - mx);
        }
    }
    float row_max = block_reduce_max(mx, shared);
    float row_sum = block_reduce_sum(mx == -INFINITY ? 0.0f : sum * expf(mx - row_max), shared);
    if (threadIdx.x == 0) losses[row] = target < 0 ? 0.0f : logf(row_sum) + row_max - to_float(x[target]);
    if (dloss == 0.0f) return;
    // every thread has read the target logit's value through the reductions above before any write
    __syncthreads();
    float inv = 1.0f / row_sum;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        float g = target < 0 ? 0.0f : dloss * (expf(to_float(x[j]) - row_max) * inv - (j == target ? 1.0f : 0.0f));
        x[j] = from_float<T>(g);
    }
}

template <typename T>
void crossentropy_forward_backward_cuda(float *losses, T *logits, int ld, float *logits_out, const int *targets,
                                        float dloss, int rows, int N, cudaStream_t stream) {
    crossentropy_kernel<T><<<rows, CE_THREADS, 0, stream>>>(losses, logits, ld, logits_out, targets, dloss, N);
    cudaCheck(cudaGetLastError());
}

template <typename T>
void classifier_forward_backward_cuda(float *losses, T *dinp, float *dweight, float *logits_out, const T *inp,
                                      const T *weight, const int *targets, float dloss, int rows, int dim, int N,
                                      T *logits_scratch, int block_rows, cudaStream_t stream) {
    int ld = classifier_logits_ld(N);
    for (int r0 = 0; r0 < rows; r0 += block_rows) {
        int n = rows - r0 < block_rows ? rows - r0 : block_rows;
        linear_forward_strided_cuda<T, T>(logits_scratch, ld, inp + (size_t)r0 * dim, weight, n, dim, N, stream);
        crossentropy_forward_backward_cuda<T>(losses + r0, logits_scratch, ld,
                                              logits_out != NULL ? logits_out + (size_t)r0 * N : NULL, targets + r0,
                                              dinp != NULL ? dloss : 0.0f, n, N, stream);
        if (dinp != NULL)
            linear_backward_strided_cuda<T>(dinp + (size_t)r0 * dim, dweight, logits_scratch, ld, inp + (size_t)r0 * dim,
                                            weight, n, dim, N, 0, stream);
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
