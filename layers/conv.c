// conv.c: see conv.h.
#include "conv.h"

#include <stddef.h>

static real sigmoid(real x) { return 1 / (1 + exp(-x)); }
static real silu_grad(real z) { real s = sigmoid(z); return s * (1 + z * (1 - s)); }

void shortconv_silu_forward(real *out, real *preact, const real *inp, const real *weight, int B, int T, int C, int W) {
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t row = ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++) {
                real z;
                if (weight == NULL) {
                    z = inp[row + c];
                } else {
                    z = 0;
                    for (int i = 0; i < W; i++) {
                        int s = t - W + 1 + i;
                        if (s >= 0) z += weight[(size_t)c * W + i] * inp[((size_t)b * T + s) * C + c];
                    }
                }
                preact[row + c] = z;
                out[row + c] = z * sigmoid(z);
            }
        }
}

void shortconv_silu_backward(real *dinp, real *dweight, const real *dout, const real *inp, const real *preact,
                             const real *weight, int B, int T, int C, int W) {
    // dinp[s,c] = sum_i w[c,i] dz[s+W-1-i, c], with dz = dout·silu'(z) recomputed where needed
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int s = 0; s < T; s++) {
            size_t row = ((size_t)b * T + s) * C;
            for (int c = 0; c < C; c++) {
                if (weight == NULL) {
                    dinp[row + c] = dout[row + c] * silu_grad(preact[row + c]);
                    continue;
                }
                real acc = 0;
                for (int i = 0; i < W; i++) {
                    int t = s + W - 1 - i;
                    if (t < T) {
                        size_t j = ((size_t)b * T + t) * C + c;
                        acc += weight[(size_t)c * W + i] * dout[j] * silu_grad(preact[j]);
                    }
                }
                dinp[row + c] = acc;
            }
        }
    if (weight == NULL) return;
    // dw[c,i] += sum_{b,t} dz[t,c] · x[t-W+1+i, c]; split over channels (fixed sum order)
    #pragma omp parallel for
    for (int c = 0; c < C; c++)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                size_t j = ((size_t)b * T + t) * C + c;
                real dz = dout[j] * silu_grad(preact[j]);
                for (int i = 0; i < W; i++) {
                    int s = t - W + 1 + i;
                    if (s >= 0) dweight[(size_t)c * W + i] += dz * inp[((size_t)b * T + s) * C + c];
                }
            }
}

void shortconv_silu_step(real *out, real *state, const real *inp, const real *weight, int B, int C, int W) {
    for (int b = 0; b < B; b++) {
        real *st = state + (size_t)b * (W - 1) * C;
        const real *x = inp + (size_t)b * C;
        for (int c = 0; c < C; c++) {
            real z = x[c];
            if (weight != NULL) {
                // the W-1 stored inputs are positions t-W+1 .. t-1, the new one is position t
                z = weight[(size_t)c * W + W - 1] * x[c];
                for (int i = 0; i < W - 1; i++) z += weight[(size_t)c * W + i] * st[(size_t)i * C + c];
            }
            out[(size_t)b * C + c] = z * sigmoid(z);
        }
        if (weight != NULL && W > 1) {
            for (int i = 0; i + 1 < W - 1; i++)
                for (int c = 0; c < C; c++) st[(size_t)i * C + c] = st[(size_t)(i + 1) * C + c];
            for (int c = 0; c < C; c++) st[(size_t)(W - 2) * C + c] = x[c];
        }
    }
}
