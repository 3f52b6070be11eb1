// adamw.h: AdamW with decoupled weight decay (PyTorch's torch.optim.AdamW formula), the global
// gradient-norm clip folded into the update, and the skip of non-finite steps (mdn-spec.md §9).
// It works on a slice [begin, end) of the flat parameter vector, so that under ZeRO-1 each rank
// updates only the slice whose moments it holds; one process simply passes [0, num_params).
//
// One optimizer step, as the trainers do it:
//     double sq = adamw_sum_squares(grads + begin, end - begin);   // this rank's slice
//     (sum sq over ranks) ; grad_norm = sqrt(sq)
//     if (adamw_step(&opt, params, grads, m, v, begin, end, lr, grad_norm)) ... skipped (non-finite)
#ifndef MDN_ADAMW_H
#define MDN_ADAMW_H

#include <stddef.h>
#include <stdint.h>

#include "../common/real.h"

// Which parameters are decayed: the flat vector is cut into consecutive segments (one per tensor);
// segment j covers [end[j-1], end[j]) (end[-1] = 0) and is decayed when decay[j] is 1.
typedef struct {
    int count;
    size_t *end;
    unsigned char *decay;
} DecaySegments;

typedef struct {
    double beta1, beta2, eps, weight_decay, max_norm;
    DecaySegments segments;
    int64_t num_updates;        // updates applied so far (PyTorch's `step`: the bias correction)
    int64_t nan_steps_total;    // steps skipped because the gradient norm was not finite
    int64_t nan_steps_in_row;   // the current run of such steps (reset by an applied update)
} AdamW;

// the segments from per-tensor sizes and decay flags (copied); num_updates and counters start at 0
void adamw_init(AdamW *opt, double beta1, double beta2, double eps, double weight_decay, double max_norm,
                int num_tensors, const size_t *tensor_numel, const unsigned char *tensor_decay);
void adamw_free(AdamW *opt);

// sum of x[i]^2 in double, in fixed blocks summed in order: the same bits for any thread count
double adamw_sum_squares(const real *x, size_t count);

// torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (grad_norm + 1e-6))
double adamw_clip_scale(double grad_norm, double max_norm);

// One step on elements [begin, end): params and grads are indexed globally (params[i]), m and v hold
// only the slice (m[i - begin]). grad_norm is the global norm (all parameters, all ranks).
// If grad_norm is not finite the step is skipped: grads[begin, end) are zeroed, params and moments
// are left untouched, the counters go up, and 1 is returned. Otherwise the gradients are scaled by
// the clip factor, the update is applied (num_updates + 1) and 0 is returned.
int adamw_step(AdamW *opt, real *params, real *grads, real *m, real *v, size_t begin, size_t end, double lr,
               double grad_norm);

#endif // MDN_ADAMW_H
