// linear.cuh: y = x·Wᵀ on the GPU through cuBLASLt (CUDA twin of linear.h). Row-major like the CPU
// code: x [rows, in_dim], W [out_dim, in_dim]. Operands are float or bf16 (the activation type),
// accumulation is always float32: bf16 operands use the tensor cores, float32 operands stay true
// float32 (no tf32), which the 1e-4 reference test needs. Plans (descriptors, layouts and the
// heuristic's algorithm) are cached per shape, so steady-state calls cost one cublasLtMatmul.
#ifndef MDN_LINEAR_CUH
#define MDN_LINEAR_CUH

#include "../common/cuda_common.cuh"

// out [rows, out_dim] = inp · weightᵀ (overwritten). Tout is the activation type, or float
// (the gate logits are kept in float32 even in bf16 training).
template <typename T, typename Tout>
void linear_forward_cuda(Tout *out, const T *inp, const T *weight, int rows, int in_dim, int out_dim,
                         cudaStream_t stream);
// dinp [rows, in_dim] = dout · weight (overwritten, or added to when accumulate_dinp; skipped if NULL);
// dweight [out_dim, in_dim] += doutᵀ · inp in float32 (skipped if NULL).
template <typename T>
void linear_backward_cuda(T *dinp, float *dweight, const T *dout, const T *inp, const T *weight,
                          int rows, int in_dim, int out_dim, int accumulate_dinp, cudaStream_t stream);

// the same with the rows of out (forward) or dout (backward) `ld` elements apart (ld >= out_dim):
// the classifier pads the vocabulary's row length to a multiple of 64 so every row starts 128-byte
// aligned, which cuBLASLt's fast kernels need (50257 bf16 values a row leave rows 2-byte aligned)
template <typename T, typename Tout>
void linear_forward_strided_cuda(Tout *out, int out_ld, const T *inp, const T *weight, int rows, int in_dim,
                                 int out_dim, cudaStream_t stream);
template <typename T>
void linear_backward_strided_cuda(T *dinp, float *dweight, const T *dout, int dout_ld, const T *inp, const T *weight,
                                  int rows, int in_dim, int out_dim, int accumulate_dinp, cudaStream_t stream);

// weight [out_dim, in_dim] copied to an aligned buffer of padded_out_dim rows, the extra rows zero:
// products with out_dim (or k) = 50257 ran at 84-119 TFLOP/s, padded to 50304 at the matmul units'
// speed. The buffer belongs to linear.cu (one, reused by the next call; freed by linear_cuda_free).
template <typename T>
const T *linear_padded_weight_cuda(const T *weight, int out_dim, int padded_out_dim, int in_dim, cudaStream_t stream);

// the cuBLASLt handle, workspace and plan cache are created on first use; this frees them and the
// padded weight's buffer
void linear_cuda_free(void);

#endif // MDN_LINEAR_CUH
