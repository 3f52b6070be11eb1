// conv.h: the MDN layer's short causal depthwise convolution followed by SiLU (mdn-spec.md §4.1):
//   z[t,c] = sum_{i=0..W-1} w[c,i] · x[t-W+1+i, c]   (zero before the start of each row),
//   out = silu(z) = z·σ(z).
// With no short conv (use_short_conv false, weight NULL) z = x: out = silu(x).
// Layouts: x, z, out [B, T, C]; weight [C, W] (fla's [C, 1, W]). CUDA twins: shortconv_silu_*_cuda.
#ifndef MDN_CONV_H
#define MDN_CONV_H

#include "../common/real.h"

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

// writes out and preact (z, kept for the backward).
void shortconv_silu_forward(real *out, real *preact, const real *inp, const real *weight, int B, int T, int C, int W);
// dinp overwritten; dweight accumulated (unused when weight is NULL).
void shortconv_silu_backward(real *dinp, real *dweight, const real *dout, const real *inp, const real *preact,
                             const real *weight, int B, int T, int C, int W);
// One token of B rows (inference): inp, out [B, C]; state [B, W-1, C] holds the previous W-1 inputs
// of each row (oldest first, zeros at the start of a row) and is shifted by one token.
void shortconv_silu_step(real *out, real *state, const real *inp, const real *weight, int B, int C, int W);

#ifdef __cplusplus
}
#endif

#endif // MDN_CONV_H
