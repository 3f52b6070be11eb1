// swiglu.h: the MLP's gated activation, out = silu(gate) · up (mdn-spec.md §3). CUDA twin: swiglu_*_cuda.
#ifndef MDN_SWIGLU_H
#define MDN_SWIGLU_H

#include "../common/real.h"

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

// all arrays [n]
void swiglu_forward(real *out, const real *gate, const real *up, long n);
// dgate, dup overwritten
void swiglu_backward(real *dgate, real *dup, const real *dout, const real *gate, const real *up, long n);

#ifdef __cplusplus
}
#endif

#endif // MDN_SWIGLU_H
