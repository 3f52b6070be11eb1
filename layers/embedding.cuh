// embedding.cuh: token embedding lookup on the GPU (CUDA twin of embedding.h). The residual
// stream is float32, the table the activation type.
#ifndef MDN_EMBEDDING_CUH
#define MDN_EMBEDDING_CUH

#include "../common/cuda_common.cuh"

// out [n, dim] (float32) = table[ids[i]]; ids on the device, in range (checked by the caller)
template <typename T>
void embedding_forward_cuda(float *out, const int *ids, const T *table, int n, int dim, cudaStream_t stream);

// bytes of scratch embedding_backward_cuda needs for n ids
size_t embedding_backward_scratch_bytes(int n);
// dtable [vocab, dim] += dout[i] at row ids[i]. Deterministic: the ids are sorted stably (radix
// sort of (id, position)), and each distinct id's rows are summed by one block in position order,
// so no two threads ever add to the same row and the order of the sums is fixed.
void embedding_backward_cuda(float *dtable, const float *dout, const int *ids, int n, int dim, int vocab,
                             void *scratch, cudaStream_t stream);

#endif // MDN_EMBEDDING_CUH
