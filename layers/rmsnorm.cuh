// rmsnorm.cuh: RMSNorm and the gated output norm on the GPU (CUDA twin of rmsnorm.h), plus the
// residual add fused into the norm that follows it. The residual stream (inp, its gradient dinp)
// is float32; normed outputs and incoming gradients are the activation type T; weights are the
// float32 masters. Weight gradients are per-block partial sums (REDUCE_PARTS blocks of rows) reduced
// in a fixed order: deterministic. `scratch` holds REDUCE_PARTS·dim floats.
#ifndef MDN_RMSNORM_CUH
#define MDN_RMSNORM_CUH

#include "../common/cuda_common.cuh"

// out [rows, dim] = inp·rstd·weight; rstd [rows] saved for the backward
template <typename T>
void rmsnorm_forward_cuda(T *out, float *rstd, const float *inp, const float *weight, int rows, int dim, float eps,
                          cudaStream_t stream);
// sum = x + delta (the residual add, written to sum), then out = RMSNorm(sum)
template <typename T>
void residual_rmsnorm_forward_cuda(float *sum, T *out, float *rstd, const float *x, const T *delta,
                                   const float *weight, int rows, int dim, float eps, cudaStream_t stream);
// dinp += the input gradient (the residual stream's gradient); dinp_copy (may be NULL) receives the
// updated dinp in type T for the matmuls that read it next; normed (may be NULL) receives the
// forward's output inp·rstd·weight, the same bits as rmsnorm_forward_cuda (the trainer's backward
// recomputes a normed input here, where inp is read anyway); dweight += (float32)
template <typename T>
void rmsnorm_backward_cuda(float *dinp, T *dinp_copy, T *normed, float *dweight, float *scratch, const T *dout,
                           const float *inp, const float *weight, const float *rstd, int rows, int dim,
                           cudaStream_t stream);
// the same for a norm whose forward was residual_rmsnorm_forward_cuda(sum, ., ., x, delta, ...),
// with neither the sum nor rstd kept: both are recomputed from x and delta (the forward's bits), and
// normed (may be NULL) receives the forward's output
template <typename T>
void residual_rmsnorm_backward_cuda(float *dinp, T *dinp_copy, T *normed, float *dweight, float *scratch,
                                    const T *dout, const float *x, const T *delta, const float *weight, int rows,
                                    int dim, float eps, cudaStream_t stream);

// Gated norm over rows = tokens·H head vectors of `dim` values: out = x·rstd·w·σ(gate).
// inp, out [rows, dim] contiguous; gate row r is at gate + (r / H)·gate_stride + (r % H)·dim, so the
// gate can be a column slice of a wider per-token buffer (gate_stride = that buffer's row length).
template <typename T>
void gated_rmsnorm_forward_cuda(T *out, float *rstd, const T *inp, const T *gate, const float *weight,
                                int rows, int dim, int H, int gate_stride, float eps, cudaStream_t stream);
// dinp overwritten; dgate overwritten (same addressing as gate); normed (may be NULL) receives the
// forward's output, the same bits as gated_rmsnorm_forward_cuda; dweight += (float32)
template <typename T>
void gated_rmsnorm_backward_cuda(T *dinp, T *dgate, T *normed, float *dweight, float *scratch, const T *dout,
                                 const T *inp, const T *gate, const float *weight, const float *rstd, int rows,
                                 int dim, int H, int gate_stride, cudaStream_t stream);

#endif // MDN_RMSNORM_CUH
