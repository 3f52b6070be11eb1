// swiglu.cuh: out = silu(gate)·up on the GPU (CUDA twin of swiglu.h). gate and up rows are
// in_stride elements apart, so they can be the two halves of the fused gate|up projection.
#ifndef MDN_SWIGLU_CUH
#define MDN_SWIGLU_CUH

#include "../common/cuda_common.cuh"

// out [rows, dim] contiguous
template <typename T>
void swiglu_forward_cuda(T *out, const T *gate, const T *up, int in_stride, int rows, int dim, cudaStream_t stream);
// dgate, dup overwritten (rows in_stride apart, like gate and up); out (may be NULL; [rows, dim]
// contiguous) receives the forward's product, the same bits as swiglu_forward_cuda
template <typename T>
void swiglu_backward_cuda(T *dgate, T *dup, T *out, const T *dout, const T *gate, const T *up, int in_stride,
                          int rows, int dim, cudaStream_t stream);

#endif // MDN_SWIGLU_CUH
