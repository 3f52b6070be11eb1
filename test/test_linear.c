// test_linear: the CPU matmuls (layers/linear.c, float build) against plain loops in double, on
// shapes that cut every tile and k-block of linear.c at an edge (1 row, odd sizes, k > 256), with
// overwritten outputs poisoned with NaN first and dweight pre-filled (it accumulates). Then the
// determinism the trainer's bit-exact resume relies on: 1, 2 and 3 threads give identical bits.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/utils.h"
#include "../layers/linear.h"

static real *random_array(size_t n) {
    real *x = (real *)xmalloc(n * sizeof(real));
    for (size_t i = 0; i < n; i++) x[i] = (real)(2.0 * rand() / RAND_MAX - 1.0);
    return x;
}

static void poison(real *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

// |got - want| / |want| over the whole array (NaN anywhere makes it NaN)
static double rel_error(const real *got, const double *want, size_t n) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        norm += want[i] * want[i];
    }
    return sqrt(diff) / (sqrt(norm) + 1e-30);
}

static int check_shape(int rows, int in_dim, int out_dim) {
    size_t ni = (size_t)rows * in_dim, no = (size_t)rows * out_dim, nw = (size_t)out_dim * in_dim;
    real *inp = random_array(ni), *weight = random_array(nw), *dout = random_array(no), *dweight = random_array(nw);
    real *out = (real *)xmalloc(no * sizeof(real)), *dinp = (real *)xmalloc(ni * sizeof(real));
    double *want_out = (double *)xcalloc(no, sizeof(double)), *want_dinp = (double *)xcalloc(ni, sizeof(double));
    double *want_dw = (double *)xcalloc(nw, sizeof(double));
    for (int i = 0; i < rows; i++)
        for (int o = 0; o < out_dim; o++)
            for (int k = 0; k < in_dim; k++) {
                double x = inp[(size_t)i * in_dim + k], w = weight[(size_t)o * in_dim + k], d = dout[(size_t)i * out_dim + o];
                want_out[(size_t)i * out_dim + o] += x * w;
                want_dinp[(size_t)i * in_dim + k] += d * w;
                want_dw[(size_t)o * in_dim + k] += d * x;
            }
    double *grad_dw = (double *)xmalloc(nw * sizeof(double));   // doutᵀ·inp alone
    for (size_t j = 0; j < nw; j++) {
        grad_dw[j] = want_dw[j];
        want_dw[j] += dweight[j];
    }
    poison(out, no);
    poison(dinp, ni);
    linear_forward(out, inp, weight, rows, in_dim, out_dim);
    linear_backward(dinp, dweight, dout, inp, weight, rows, in_dim, out_dim);
    double e_out = rel_error(out, want_out, no), e_dinp = rel_error(dinp, want_dinp, ni), e_dw = rel_error(dweight, want_dw, nw);
    // dinp NULL: only dweight, accumulated a second time
    for (size_t j = 0; j < nw; j++) want_dw[j] += grad_dw[j];
    linear_backward(NULL, dweight, dout, inp, weight, rows, in_dim, out_dim);
    double e_dw2 = rel_error(dweight, want_dw, nw);
    int ok = e_out < 1e-5 && e_dinp < 1e-5 && e_dw < 1e-5 && e_dw2 < 1e-5;
    printf("%s rows %3d in %3d out %3d: rel err out %.1e dinp %.1e dweight %.1e, again without dinp %.1e\n",
           ok ? "ok  " : "FAIL", rows, in_dim, out_dim, e_out, e_dinp, e_dw, e_dw2);
    free(inp); free(weight); free(dout); free(dweight); free(out); free(dinp);
    free(want_out); free(want_dinp); free(want_dw); free(grad_dw);
    return ok;
}

// forward, dinp and dweight bits with `threads` threads
static void run_threads(int threads, int rows, int in_dim, int out_dim, const real *inp, const real *weight,
                        const real *dout, real *out, real *dinp, real *dweight) {
    omp_set_num_threads(threads);
    memset(dweight, 0, (size_t)out_dim * in_dim * sizeof(real));
    linear_forward(out, inp, weight, rows, in_dim, out_dim);
    linear_backward(dinp, dweight, dout, inp, weight, rows, in_dim, out_dim);
}

static int check_threads(int rows, int in_dim, int out_dim) {
    size_t ni = (size_t)rows * in_dim, no = (size_t)rows * out_dim, nw = (size_t)out_dim * in_dim;
    real *inp = random_array(ni), *weight = random_array(nw), *dout = random_array(no);
    real *out[3], *dinp[3], *dweight[3];
    for (int t = 0; t < 3; t++) {
        out[t] = (real *)xmalloc(no * sizeof(real));
        dinp[t] = (real *)xmalloc(ni * sizeof(real));
        dweight[t] = (real *)xmalloc(nw * sizeof(real));
        run_threads(t + 1, rows, in_dim, out_dim, inp, weight, dout, out[t], dinp[t], dweight[t]);
    }
    int ok = 1;
    for (int t = 1; t < 3; t++)
        ok &= memcmp(out[0], out[t], no * sizeof(real)) == 0 && memcmp(dinp[0], dinp[t], ni * sizeof(real)) == 0 &&
              memcmp(dweight[0], dweight[t], nw * sizeof(real)) == 0;
    printf("%s rows %3d in %3d out %3d: 1, 2, 3 threads give identical bits\n", ok ? "ok  " : "FAIL", rows, in_dim, out_dim);
    for (int t = 0; t < 3; t++) { free(out[t]); free(dinp[t]); free(dweight[t]); }
    free(inp); free(weight); free(dout);
    return ok;
}

int main(void) {
    srand(7);
    int shapes[][3] = {{1, 1, 1}, {1, 7, 3}, {5, 3, 17}, {7, 16, 16}, {13, 33, 2}, {6, 130, 129},
                       {97, 64, 300}, {500, 300, 40}, {481, 17, 131}, {290, 260, 97}};
    int failed = 0;
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        failed += !check_shape(shapes[s][0], shapes[s][1], shapes[s][2]);
    failed += !check_threads(1000, 136, 400);
    failed += !check_threads(37, 300, 1000);
    printf("%s\n", failed ? "FAILED" : "all passed");
    return failed ? 1 : 0;
}
