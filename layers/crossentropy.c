// crossentropy.c: see crossentropy.h. The softmax is shifted by the row maximum (no overflow); the
// sum of exponentials is accumulated in double so that a 50k-entry row keeps full precision.
// tgmath.h makes exp/log follow `real` (expf in the float build): the exponentials of the
// N-wide rows are a large part of CPU training time.
#include "crossentropy.h"

#include <stddef.h>
#include <tgmath.h>

int crossentropy_forward(real *losses, real *lse, const real *logits, const int *targets, int rows, int N) {
    int count = 0;
    #pragma omp parallel for reduction(+:count)
    for (int i = 0; i < rows; i++) {
        const real *x = logits + (size_t)i * N;
        real mx = x[0];
        for (int j = 1; j < N; j++) mx = x[j] > mx ? x[j] : mx;
        double sum = 0;
        for (int j = 0; j < N; j++) sum += exp(x[j] - mx);
        lse[i] = (real)(log(sum) + mx);
        if (targets[i] < 0) {
            losses[i] = 0;
        } else {
            losses[i] = (real)(log(sum) + mx - x[targets[i]]);
            count++;
        }
    }
    return count;
}

void crossentropy_backward(real *dlogits, const real *logits, const real *lse, const int *targets, real dloss,
                           int rows, int N) {
    #pragma omp parallel for
    for (int i = 0; i < rows; i++) {
        const real *x = logits + (size_t)i * N;
        real *dx = dlogits + (size_t)i * N;
        if (targets[i] < 0) {
            for (int j = 0; j < N; j++) dx[j] = 0;
            continue;
        }
        for (int j = 0; j < N; j++) dx[j] = dloss * exp(x[j] - lse[i]);   // in place: x[j] read before written
        dx[targets[i]] -= dloss;
    }
}
