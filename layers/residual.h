// residual.h: the residual stream's add. CUDA twin: residual_forward_cuda.
#ifndef MDN_RESIDUAL_H
#define MDN_RESIDUAL_H

#include "../common/real.h"

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

// out[i] = a[i] + b[i] (out may alias a or b). Its backward is the identity on both inputs.
void residual_forward(real *out, const real *a, const real *b, long n);

#ifdef __cplusplus
}
#endif

#endif // MDN_RESIDUAL_H
