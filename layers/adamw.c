// adamw.c: AdamW on a slice of the flat parameter vector (see adamw.h).
#include "adamw.h"

#include <math.h>
#include <string.h>

#include "../common/utils.h"

// adamw_sum_squares sums blocks of this many elements, then the block sums in order
#define SUM_BLOCK 4096

void adamw_init(AdamW *opt, double beta1, double beta2, double eps, double weight_decay, double max_norm,
                int num_tensors, const size_t *tensor_numel, const unsigned char *tensor_decay) {
    memset(opt, 0, sizeof(*opt));
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->weight_decay = weight_decay;
    opt->max_norm = max_norm;
    opt->segments.count = num_tensors;
    opt->segments.end = (size_t *)xmalloc((size_t)num_tensors * sizeof(size_t));
    opt->segments.decay = (unsigned char *)xmalloc((size_t)num_tensors);
    size_t offset = 0;
    for (int j = 0; j < num_tensors; j++) {
        offset += tensor_numel[j];
        opt->segments.end[j] = offset;
        opt->segments.decay[j] = tensor_decay[j] ? 1 : 0;
    }
}

void adamw_free(AdamW *opt) {
    free(opt->segments.end);
    free(opt->segments.decay);
    memset(opt, 0, sizeof(*opt));
}

double adamw_sum_squares(const real *x, size_t count) {
    size_t num_blocks = (count + SUM_BLOCK - 1) / SUM_BLOCK;
    if (num_blocks == 0) return 0.0;
    double *block_sums = (double *)xmalloc(num_blocks * sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < num_blocks; b++) {
        size_t start = b * SUM_BLOCK, stop = start + SUM_BLOCK < count ? start + SUM_BLOCK : count;
        double sum = 0.0;
        for (size_t i = start; i < stop; i++) sum += (double)x[i] * (double)x[i];
        block_sums[b] = sum;
    }
    double total = 0.0;
    for (size_t b = 0; b < num_blocks; b++) total += block_sums[b];
    free(block_sums);
    return total;
}

double adamw_clip_scale(double grad_norm, double max_norm) {
    double scale = max_norm / (grad_norm + 1e-6);
    return scale < 1.0 ? scale : 1.0;
}

int adamw_step(AdamW *opt, real *params, real *grads, real *m, real *v, size_t begin, size_t end, double lr,
               double grad_norm) {
    if (!isfinite(grad_norm)) {
        // NaN/inf anywhere poisons the update of every parameter: skip it whole. The moments keep
        // their last finite values, so the next good step continues as if this batch never came.
        memset(grads + begin, 0, (end - begin) * sizeof(real));
        opt->nan_steps_total++;
        opt->nan_steps_in_row++;
        return 1;
    }
    opt->nan_steps_in_row = 0;
    opt->num_updates++;
    double t = (double)opt->num_updates;
    // the same arithmetic as torch.optim.AdamW (non-fused, non-amsgrad):
    //   p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    //   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    const real grad_scale = (real)adamw_clip_scale(grad_norm, opt->max_norm);
    const real beta1 = (real)opt->beta1, beta2 = (real)opt->beta2, eps = (real)opt->eps;
    const real step_size = (real)(lr / (1.0 - pow(opt->beta1, t)));
    const real bias_correction2_sqrt = (real)sqrt(1.0 - pow(opt->beta2, t));
    size_t segment_start = 0;
    for (int j = 0; j < opt->segments.count; j++) {
        size_t segment_end = opt->segments.end[j];
        size_t lo = segment_start > begin ? segment_start : begin;
        size_t hi = segment_end < end ? segment_end : end;
        segment_start = segment_end;
        if (lo >= hi) continue;
        const real decay_factor = (real)(1.0 - (opt->segments.decay[j] ? lr * opt->weight_decay : 0.0));
#pragma omp parallel for schedule(static)
        for (size_t i = lo; i < hi; i++) {
            real g = grads[i] * grad_scale;
            real m_i = beta1 * m[i - begin] + (1 - beta1) * g;
            real v_i = beta2 * v[i - begin] + (1 - beta2) * g * g;
            m[i - begin] = m_i;
            v[i - begin] = v_i;
            real denom = sqrt(v_i) / bias_correction2_sqrt + eps;
            params[i] = params[i] * decay_factor - step_size * m_i / denom;
        }
    }
    return 0;
}
