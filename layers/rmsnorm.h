// rmsnorm.h: RMSNorm, y = x / sqrt(mean(x²) + eps) · w over the last dimension (mdn-spec.md §3),
// and the MDN layer's gated output norm (§4.7): per head, o ← RMSNorm_Vh(o; w) · σ(g), the weight
// [Vh] shared by all heads. CUDA twins: rmsnorm_*_cuda, gated_rmsnorm_*_cuda.
#ifndef MDN_RMSNORM_H
#define MDN_RMSNORM_H

#include "../common/real.h"

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

// out, inp [rows, dim]; weight [dim]; rstd [rows] saves 1/sqrt(mean(x²)+eps) for the backward.
void rmsnorm_forward(real *out, real *rstd, const real *inp, const real *weight, int rows, int dim, real eps);
// dinp += (accumulated: the residual stream's gradient), dweight += (accumulated).
void rmsnorm_backward(real *dinp, real *dweight, const real *dout, const real *inp, const real *weight,
                      const real *rstd, int rows, int dim);

// Gated norm over rows = B·T·H head vectors of dim = Vh: out = x·rstd·w·σ(gate). gate [rows, dim]
// may be NULL (use_gate false: a plain RMSNorm). rstd [rows].
void gated_rmsnorm_forward(real *out, real *rstd, const real *inp, const real *gate, const real *weight,
                           int rows, int dim, real eps);
// dinp and dgate are overwritten (dgate skipped when gate is NULL); dweight accumulated.
void gated_rmsnorm_backward(real *dinp, real *dgate, real *dweight, const real *dout, const real *inp,
                            const real *gate, const real *weight, const real *rstd, int rows, int dim);

#ifdef __cplusplus
}
#endif

#endif // MDN_RMSNORM_H
