// cuda_common.cuh: what every CUDA source of mdn.c shares: error checks that name file:line,
// the device's properties, the activation type helpers (float or bf16) and warp/block reductions.
// Kernels are templated on the activation type `floatX` (float for the float32 reference path,
// __nv_bfloat16 for training); parameters' masters, gradients, optimizer state and the MDN states
// are always float32.
#ifndef MDN_CUDA_COMMON_CUH
#define MDN_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>

typedef __nv_bfloat16 bf16;

static inline void cuda_check(cudaError_t err, const char *file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "error: %s:%d: CUDA: %s\n", file, line, cudaGetErrorString(err));
        exit(EXIT_FAILURE);
    }
}
static inline void cublas_check(cublasStatus_t status, const char *file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: %s:%d: cuBLAS status %d\n", file, line, (int)status);
        exit(EXIT_FAILURE);
    }
}
// wrap every CUDA runtime call; cudaCheck(cudaGetLastError()) after every launch
#define cudaCheck(call) cuda_check((call), __FILE__, __LINE__)
#define cublasCheck(call) cublas_check((call), __FILE__, __LINE__)

// cudaMalloc of one of the trainer's large buffers: running out of GPU memory is the user's most
// likely error (a --batch-size too large for the card), so it gets a one-line error saying what did
// not fit and what to change, instead of a bare "out of memory" at a source line
static inline void *cuda_malloc_or_die(size_t bytes, const char *what, const char *hint) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
        size_t free_bytes = 0, total_bytes = 0;
        cudaGetLastError();   // clear the error so that the query below is answered
        cudaMemGetInfo(&free_bytes, &total_bytes);
        const double gib = 1024.0 * 1024.0 * 1024.0;
        fprintf(stderr, "error: out of GPU memory: %s needs %.2f GiB, %.2f of %.2f GiB are free; %s\n", what,
                bytes / gib, free_bytes / gib, total_bytes / gib, hint);
        exit(EXIT_FAILURE);
    }
    cuda_check(err, __FILE__, __LINE__);
    return p;
}

__host__ __device__ static inline int ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }

// properties of the current device, read once per process
static inline const cudaDeviceProp *cuda_device_props(void) {
    static cudaDeviceProp props;
    static int have = 0;
    if (!have) {
        int dev;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaGetDeviceProperties(&props, dev));
        have = 1;
    }
    return &props;
}

// ---- activation type helpers ----
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

template <typename T> struct CudaType;
template <> struct CudaType<float> { static constexpr cudaDataType_t value = CUDA_R_32F; };
template <> struct CudaType<bf16> { static constexpr cudaDataType_t value = CUDA_R_16BF; };

// the fast exponential (ex2.approx, ~2 ulp) and division (~2 ulp): expf and an IEEE division are ~30
// instructions, and made the memory-bound conv and gated-norm kernels instruction-bound (conv
// backward 0.52 -> 0.40 ms at the 400M layer). The result is within ~1e-6 relative of the exact
// sigmoid for |x| < 80; 0 or 1 beyond (1 / inf = 0).
__device__ __forceinline__ float sigmoidf_(float x) { return __fdividef(1.0f, 1.0f + __expf(-x)); }

// ---- reductions ----
__device__ __forceinline__ float warp_reduce_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
__device__ __forceinline__ float warp_reduce_max(float v) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}
// sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `shared` holds 32 floats. Fixed order: deterministic.
__device__ __forceinline__ float block_reduce_sum(float v, float *shared) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_reduce_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared[lane] : 0.0f;
    return warp_reduce_sum(v);
}
__device__ __forceinline__ float block_reduce_max(float v, float *shared) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_reduce_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared[lane] : -INFINITY;
    return warp_reduce_max(v);
}

// Deterministic reductions of per-block partial sums (common/cuda_common.cu):
// out[c] += sum over p of partials[p * C + c], in a fixed order (see cuda_common.cu).
void reduce_partials_add_cuda(float *out, const float *partials, int num_parts, int C, cudaStream_t stream);
// the same with partial rows `ld` apart (a column slice of wider partials)
void reduce_partials_add_strided_cuda(float *out, const float *partials, int num_parts, int C, int ld,
                                      cudaStream_t stream);
// partials [REDUCE_PARTS, C]: column sums of x [rows, C] over REDUCE_PARTS consecutive row blocks
void column_sum_partials_cuda(float *partials, const float *x, int rows, int C, cudaStream_t stream);
// the number of row blocks every "partial sums then reduce" kernel uses: a constant, so results
// do not depend on the device.
#define REDUCE_PARTS 256

#endif // MDN_CUDA_COMMON_CUH
