// cuda_common.cu: the shared deterministic reductions (fixed partition, fixed summation order).
#include "cuda_common.cuh"

// block (32, 8) per 32 columns: row lane y sums parts y, y+8, ... (their loads independent, eight in
// flight a thread), then lane 0 adds the 8 lane sums in order: a fixed order, so deterministic. One
// thread a column summing all parts serially took ~30-60 µs a call (one load latency per part, on
// as few SMs as C/256 blocks): more than the conv and norm backward kernels whose weight gradients
// it finishes.
__global__ void reduce_partials_add_kernel(float *out, const float *partials, int num_parts, int C, int ld) {
    __shared__ float lane_s[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.0f;
    if (c < C) {
#pragma unroll 8
        for (int p = threadIdx.y; p < num_parts; p += 8) sum += partials[(size_t)p * ld + c];
    }
    lane_s[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float total = 0.0f;
        for (int y = 0; y < 8; y++) total += lane_s[y][threadIdx.x];
        out[c] += total;
    }
}

void reduce_partials_add_strided_cuda(float *out, const float *partials, int num_parts, int C, int ld,
                                      cudaStream_t stream) {
    reduce_partials_add_kernel<<<ceil_div(C, 32), dim3(32, 8), 0, stream>>>(out, partials, num_parts, C, ld);
    cudaCheck(cudaGetLastError());
}

void reduce_partials_add_cuda(float *out, const float *partials, int num_parts, int C, cudaStream_t stream) {
    reduce_partials_add_strided_cuda(out, partials, num_parts, C, C, stream);
}

// block (32, 8) per (32 columns, part): the 8 row lanes are summed in order at the end
__global__ void column_sum_partials_kernel(float *partials, const float *x, int rows, int C) {
    __shared__ float acc_s[8][33];
    int c = blockIdx.x * 32 + threadIdx.x, part = blockIdx.y;
    int rows_per_part = ceil_div(rows, gridDim.y);
    int r0 = part * rows_per_part, r1 = min(rows, r0 + rows_per_part);
    float acc = 0.0f;
    if (c < C)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) acc += x[(size_t)r * C + c];
    acc_s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float s = 0.0f;
        for (int y = 0; y < 8; y++) s += acc_s[y][threadIdx.x];
        partials[(size_t)part * C + c] = s;
    }
}

void column_sum_partials_cuda(float *partials, const float *x, int rows, int C, cudaStream_t stream) {
    column_sum_partials_kernel<<<dim3(ceil_div(C, 32), REDUCE_PARTS), dim3(32, 8), 0, stream>>>(partials, x, rows, C);
    cudaCheck(cudaGetLastError());
}
