// embedding.h: token embedding lookup. CUDA twin: embedding_*_cuda.
#ifndef MDN_EMBEDDING_H
#define MDN_EMBEDDING_H

#include "../common/real.h"

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

// out [n, dim] = table[ids[i]] (table [vocab, dim]); ids must be in range (checked by the caller).
void embedding_forward(real *out, const int *ids, const real *table, int n, int dim);
// dtable [vocab, dim] += dout[i] at row ids[i] (accumulated).
void embedding_backward(real *dtable, const real *dout, const int *ids, int n, int dim);

#ifdef __cplusplus
}
#endif

#endif // MDN_EMBEDDING_H
