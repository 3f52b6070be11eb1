// swiglu.c: see swiglu.h.
#include "swiglu.h"

void swiglu_forward(real *out, const real *gate, const real *up, long n) {
    #pragma omp parallel for
    for (long i = 0; i < n; i++) {
        real g = gate[i];
        out[i] = g / (1 + exp(-g)) * up[i];
    }
}

void swiglu_backward(real *dgate, real *dup, const real *dout, const real *gate, const real *up, long n) {
    #pragma omp parallel for
    for (long i = 0; i < n; i++) {
        real g = gate[i], s = 1 / (1 + exp(-g));
        dup[i] = dout[i] * g * s;
        dgate[i] = dout[i] * up[i] * s * (1 + g * (1 - s));
    }
}
