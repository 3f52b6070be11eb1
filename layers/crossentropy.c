// crossentropy.c: see crossentropy.h. The softmax is shifted by the row maximum (no overflow); the
// sum of exponentials is accumulated in double so that a 50k-entry row keeps full precision.
// The exponentials of the N-wide rows are a large part of CPU training time: in the float build
// they use exp_vectorisable below (the loops become SIMD code; libm's expf is a call per element);
// the double build (finite-difference checks) keeps libm's exp.
#include "crossentropy.h"

#include <stddef.h>
#include <string.h>
#include <tgmath.h>

#ifdef MDN_DOUBLE
static inline real exp_vectorisable(real x) { return exp(x); }
#else
// e^x for x <= 88 in float, branch-free so that `omp simd` loops vectorise it (Cephes' expf):
// x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact product), e^r by a degree-7
// polynomial, 2^n written into the exponent bits. Relative error ~1e-7 (about libm's); below -87
// the result is 0 (libm gives subnormals < 2e-38 there, nothing against a sum >= 1).
static inline float exp_vectorisable(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    const float round_shift = 12582912.0f;   // 1.5 * 2^23: adding and subtracting it rounds to an integer
    float n = (xc * 1.44269504089f + round_shift) - round_shift;
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float er = p * r * r + r + 1.0f;
    int bits = ((int)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.0f ? 0.0f : er * scale;
}
#endif

int crossentropy_forward(real *losses, real *lse, const real *logits, const int *targets, int rows, int N) {
    int count = 0;
    #pragma omp parallel for reduction(+:count)
    for (int i = 0; i < rows; i++) {
        const real *x = logits + (size_t)i * N;
        real mx = x[0];
        #pragma omp simd reduction(max:mx)
        for (int j = 1; j < N; j++) mx = x[j] > mx ? x[j] : mx;
        // blocks of 256 exponentials (each <= 1) summed in SIMD lanes of `real`, the block sums in
        // double; a fixed order (same bits every run) and a vector loop free of float->double
        double sum = 0;
        for (int j0 = 0; j0 < N; j0 += 256) {
            int j1 = j0 + 256 < N ? j0 + 256 : N;
            real block = 0;
            #pragma omp simd reduction(+:block)
            for (int j = j0; j < j1; j++) block += exp_vectorisable(x[j] - mx);
            sum += block;
        }
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
        real shift = lse[i];
        #pragma omp simd
        for (int j = 0; j < N; j++) dx[j] = dloss * exp_vectorisable(x[j] - shift);   // in place: x[j] read before written
        dx[targets[i]] -= dloss;
    }
}
