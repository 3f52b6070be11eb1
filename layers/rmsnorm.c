// rmsnorm.c: see rmsnorm.h.
// With x̂ = x·r, r = (mean(x²)+eps)^-1/2 and y = x̂·w: dx = r·(w∘dy − x̂·mean(x̂∘w∘dy)).
// The weight gradients are reductions over rows; they run after the parallel row loop, split over
// channels, so the sum order is fixed (deterministic) and no thread shares a value.
#include "rmsnorm.h"

#include <stddef.h>

void rmsnorm_forward(real *out, real *rstd, const real *inp, const real *weight, int rows, int dim, real eps) {
    #pragma omp parallel for
    for (int i = 0; i < rows; i++) {
        const real *x = inp + (size_t)i * dim;
        real *y = out + (size_t)i * dim;
        real ss = 0;
        for (int d = 0; d < dim; d++) ss += x[d] * x[d];
        real r = 1 / sqrt(ss / dim + eps);
        for (int d = 0; d < dim; d++) y[d] = x[d] * r * weight[d];
        rstd[i] = r;
    }
}

void rmsnorm_backward(real *dinp, real *dweight, const real *dout, const real *inp, const real *weight,
                      const real *rstd, int rows, int dim) {
    #pragma omp parallel for
    for (int i = 0; i < rows; i++) {
        const real *x = inp + (size_t)i * dim, *dy = dout + (size_t)i * dim;
        real *dx = dinp + (size_t)i * dim;
        real r = rstd[i], dot = 0;
        for (int d = 0; d < dim; d++) dot += x[d] * r * weight[d] * dy[d];
        dot /= dim;
        for (int d = 0; d < dim; d++) dx[d] += r * (weight[d] * dy[d] - x[d] * r * dot);
    }
    #pragma omp parallel for
    for (int d = 0; d < dim; d++) {
        real acc = 0;
        for (int i = 0; i < rows; i++) acc += dout[(size_t)i * dim + d] * inp[(size_t)i * dim + d] * rstd[i];
        dweight[d] += acc;
    }
}

static real sigmoid(real x) { return 1 / (1 + exp(-x)); }

void gated_rmsnorm_forward(real *out, real *rstd, const real *inp, const real *gate, const real *weight,
                           int rows, int dim, real eps) {
    #pragma omp parallel for
    for (int i = 0; i < rows; i++) {
        const real *x = inp + (size_t)i * dim;
        real *y = out + (size_t)i * dim;
        real ss = 0;
        for (int d = 0; d < dim; d++) ss += x[d] * x[d];
        real r = 1 / sqrt(ss / dim + eps);
        for (int d = 0; d < dim; d++) {
            real g = gate != NULL ? sigmoid(gate[(size_t)i * dim + d]) : 1;
            y[d] = x[d] * r * weight[d] * g;
        }
        rstd[i] = r;
    }
}

void gated_rmsnorm_backward(real *dinp, real *dgate, real *dweight, const real *dout, const real *inp,
                            const real *gate, const real *weight, const real *rstd, int rows, int dim) {
    #pragma omp parallel for
    for (int i = 0; i < rows; i++) {
        const real *x = inp + (size_t)i * dim, *dy = dout + (size_t)i * dim;
        real *dx = dinp + (size_t)i * dim;
        real r = rstd[i], dot = 0;
        for (int d = 0; d < dim; d++) {
            real dn = dy[d];   // gradient of the normed value n = x̂·w
            if (gate != NULL) {
                real g = gate[(size_t)i * dim + d], s = sigmoid(g);
                dgate[(size_t)i * dim + d] = dy[d] * x[d] * r * weight[d] * s * (1 - s);
                dn = dy[d] * s;
            }
            dx[d] = weight[d] * dn;   // w∘dn, finished below
            dot += x[d] * r * weight[d] * dn;
        }
        dot /= dim;
        for (int d = 0; d < dim; d++) dx[d] = r * (dx[d] - x[d] * r * dot);
    }
    #pragma omp parallel for
    for (int d = 0; d < dim; d++) {
        real acc = 0;
        for (int i = 0; i < rows; i++) {
            size_t j = (size_t)i * dim + d;
            real s = gate != NULL ? sigmoid(gate[j]) : 1;
            acc += dout[j] * s * inp[j] * rstd[i];
        }
        dweight[d] += acc;
    }
}
