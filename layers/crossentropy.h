// crossentropy.h: softmax cross-entropy over the vocabulary, ignoring positions whose target is
// negative (-100: no target). CUDA twin: crossentropy_*_cuda (fused with the lm-head there).
#ifndef MDN_CROSSENTROPY_H
#define MDN_CROSSENTROPY_H

#include "../common/real.h"

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

// losses [rows] = lse[i] - logits[i, target[i]] (0 where target < 0), lse [rows] = logsumexp(logits[i])
// (kept for the backward, every row). logits [rows, N]; targets must be < N (checked by the caller).
// Returns the number of positions with a target.
int crossentropy_forward(real *losses, real *lse, const real *logits, const int *targets, int rows, int N);
// dlogits [rows, N] = dloss · (softmax(logits) - onehot(target)), 0 on rows without a target.
// dlogits may alias logits (computed in place). dloss is the gradient of each counted loss
// (for a mean over n targets: 1/n).
void crossentropy_backward(real *dlogits, const real *logits, const real *lse, const int *targets, real dloss,
                           int rows, int N);

#ifdef __cplusplus
}
#endif

#endif // MDN_CROSSENTROPY_H
