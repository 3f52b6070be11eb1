// conv.cuh: short causal depthwise conv + SiLU on the GPU (CUDA twin of conv.h). The forward does
// not keep the pre-activation z: the backward recomputes it from the input (a W-tap sum), which
// saves a [B,T,C] buffer per layer. The input may be a column slice of a wider per-token buffer
// (the fused q|k|v|g projection): row t of it starts at inp + t·in_stride.
#ifndef MDN_CONV_CUH
#define MDN_CONV_CUH

#include "../common/cuda_common.cuh"

#define CONV_MAX_W 8   // conv_size 1..CONV_MAX_W

// out [B,T,C] contiguous = silu(conv(inp)); weight [C, W] float32, W <= CONV_MAX_W
template <typename T>
void shortconv_silu_forward_cuda(T *out, const T *inp, int in_stride, const float *weight, int B, int Tlen, int C,
                                 int W, cudaStream_t stream);
// out = silu(conv(inp)) − exp(D_log[h])·sub, channel c in head h = c / (C / H): the output
// correction (mdn-spec.md §4.5, q − exp(D_log)·k) fused into the q conv, sub being the k conv's output
// (out's layout). One pass where the conv then the correction wrote q, read it back and wrote it again.
template <typename T>
void shortconv_silu_corrected_forward_cuda(T *out, const T *inp, int in_stride, const float *weight, const T *sub,
                                           const float *D_log, int H, int B, int Tlen, int C, int W,
                                           cudaStream_t stream);
// scratch bytes shortconv_silu_backward_cuda needs
size_t shortconv_silu_backward_scratch_bytes(int B, int Tlen, int C, int W);
// dinp (row stride dinp_stride) overwritten; dweight [C, W] += (float32, deterministic)
template <typename T>
void shortconv_silu_backward_cuda(T *dinp, int dinp_stride, float *dweight, void *scratch, const T *dout,
                                  const T *inp, int in_stride, const float *weight, int B, int Tlen, int C, int W,
                                  cudaStream_t stream);

#endif // MDN_CONV_CUH
