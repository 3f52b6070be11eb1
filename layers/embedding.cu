// embedding.cu: embedding_forward_cuda / embedding_backward_cuda (see embedding.cuh).
#include "embedding.cuh"

#include <cub/device/device_radix_sort.cuh>

template <typename T>
__global__ void embedding_forward_kernel(float *out, const int *ids, const T *table, int n, int dim) {
    int row = blockIdx.x;
    const T *src = table + (size_t)ids[row] * dim;
    float *dst = out + (size_t)row * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = to_float(src[c]);
}

template <typename T>
void embedding_forward_cuda(float *out, const int *ids, const T *table, int n, int dim, cudaStream_t stream) {
    embedding_forward_kernel<<<n, 256, 0, stream>>>(out, ids, table, n, dim);
    cudaCheck(cudaGetLastError());
}

__global__ void iota_kernel(int *x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = i;
}

// one block per sorted position; only the first position of each run of equal ids does the work
__global__ void embedding_backward_kernel(float *dtable, const float *dout, const int *sorted_ids,
                                          const int *sorted_pos, int n, int dim) {
    int start = blockIdx.x;
    int id = sorted_ids[start];
    if (start > 0 && sorted_ids[start - 1] == id) return;
    int end = start + 1;
    while (end < n && sorted_ids[end] == id) end++;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float sum = 0.0f;
        for (int j = start; j < end; j++) sum += dout[(size_t)sorted_pos[j] * dim + c];
        dtable[(size_t)id * dim + c] += sum;
    }
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

static size_t cub_sort_bytes(int n) {
    size_t bytes = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(NULL, bytes, (const int *)NULL, (int *)NULL, (const int *)NULL,
                                              (int *)NULL, n));
    return bytes;
}

size_t embedding_backward_scratch_bytes(int n) {
    return 3 * align256((size_t)n * sizeof(int)) + align256(cub_sort_bytes(n));
}

void embedding_backward_cuda(float *dtable, const float *dout, const int *ids, int n, int dim, int vocab,
                             void *scratch, cudaStream_t stream) {
    char *p = (char *)scratch;
    size_t ints = align256((size_t)n * sizeof(int));
    int *positions = (int *)p, *sorted_ids = (int *)(p + ints), *sorted_pos = (int *)(p + 2 * ints);
    void *cub_temp = p + 3 * ints;
    size_t cub_bytes = cub_sort_bytes(n);
    int end_bit = 1;
    while ((1 << end_bit) < vocab && end_bit < 31) end_bit++;
    iota_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(positions, n);
    cudaCheck(cudaGetLastError());
    cudaCheck(cub::DeviceRadixSort::SortPairs(cub_temp, cub_bytes, ids, sorted_ids, positions, sorted_pos, n, 0,
                                              end_bit, stream));
    embedding_backward_kernel<<<n, 256, 0, stream>>>(dtable, dout, sorted_ids, sorted_pos, n, dim);
    cudaCheck(cudaGetLastError());
}

template void embedding_forward_cuda<float>(float *, const int *, const float *, int, int, cudaStream_t);
template void embedding_forward_cuda<bf16>(float *, const int *, const bf16 *, int, int, cudaStream_t);
