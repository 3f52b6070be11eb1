// linear.h: y = x·Wᵀ with W stored [out, in] and no bias (every projection of the model, the
// MLP and the lm-head). On the CPU this is where training spends its time, so the loops are
// tiled for the caches and split over OpenMP threads. CUDA twin: linear_*_cuda (cuBLASLt).
#ifndef MDN_LINEAR_H
#define MDN_LINEAR_H

#include "../common/real.h"

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

// out [rows, out_dim] = inp [rows, in_dim] · weightᵀ, weight [out_dim, in_dim]; out is overwritten.
void linear_forward(real *out, const real *inp, const real *weight, int rows, int in_dim, int out_dim);
// dinp [rows, in_dim] = dout · weight (overwritten; skipped when dinp is NULL);
// dweight [out_dim, in_dim] += doutᵀ · inp (accumulated).
void linear_backward(real *dinp, real *dweight, const real *dout, const real *inp, const real *weight,
                     int rows, int in_dim, int out_dim);

#ifdef __cplusplus
}
#endif

#endif // MDN_LINEAR_H
