// bench_linear_cpu: speed of the CPU matmuls (layers/linear.c, float build) in GFLOP/s.
//   dev/bench_linear_cpu [--rows 1024] [--reps 5] [--shape IN,OUT]
// Times linear_forward and linear_backward (dinp + dweight) for the shapes of the tiny config
// (hidden 128, 2 heads of 32, MLP 512, vocab 50257) at rows = B*T, or one --shape; OMP_NUM_THREADS
// sets the threads. Prints the best of --reps runs of each: wall-clock GFLOP/s, and in brackets
// GFLOP/s per thread of CPU time (on a shared, loaded machine the cleaner number for 1 thread).
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/utils.h"
#include "../layers/linear.h"

static real *random_array(size_t n) {
    real *x = (real *)xmalloc(n * sizeof(real));
    for (size_t i = 0; i < n; i++) x[i] = (real)(2.0 * rand() / RAND_MAX - 1.0);
    return x;
}

// CPU time of the whole process (all threads)
static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void bench_shape(int rows, int in_dim, int out_dim, int reps) {
    real *inp = random_array((size_t)rows * in_dim), *weight = random_array((size_t)out_dim * in_dim);
    real *dout = random_array((size_t)rows * out_dim), *out = random_array((size_t)rows * out_dim);
    real *dinp = random_array((size_t)rows * in_dim), *dweight = random_array((size_t)out_dim * in_dim);
    double best_fwd = 1e30, best_bwd = 1e30, cpu_fwd = 1e30, cpu_bwd = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = wall_seconds(), c0 = cpu_seconds();
        linear_forward(out, inp, weight, rows, in_dim, out_dim);
        double t1 = wall_seconds(), c1 = cpu_seconds();
        linear_backward(dinp, dweight, dout, inp, weight, rows, in_dim, out_dim);
        double t2 = wall_seconds(), c2 = cpu_seconds();
        if (t1 - t0 < best_fwd) best_fwd = t1 - t0;
        if (t2 - t1 < best_bwd) best_bwd = t2 - t1;
        if (c1 - c0 < cpu_fwd) cpu_fwd = c1 - c0;
        if (c2 - c1 < cpu_bwd) cpu_bwd = c2 - c1;
    }
    double flops = 2.0 * rows * in_dim * out_dim, threads = omp_get_max_threads();
    printf("rows %5d in %5d out %6d   forward %9.3f ms %6.1f GFLOP/s (%5.1f)   backward %9.3f ms %6.1f GFLOP/s (%5.1f)\n",
           rows, in_dim, out_dim, best_fwd * 1e3, flops / best_fwd * 1e-9, flops / cpu_fwd * threads * 1e-9,
           best_bwd * 1e3, 2 * flops / best_bwd * 1e-9, 2 * flops / cpu_bwd * threads * 1e-9);
    free(inp); free(weight); free(dout); free(out); free(dinp); free(dweight);
}

int main(int argc, char **argv) {
    int rows = 1024, reps = 5, in_dim = 0, out_dim = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) die("%s: missing value (flags: --rows --reps --shape IN,OUT)", argv[i]);
        if (strcmp(argv[i], "--rows") == 0) rows = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0) reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--shape") == 0) {
            if (sscanf(argv[++i], "%d,%d", &in_dim, &out_dim) != 2 || in_dim < 1 || out_dim < 1)
                die("--shape %s: expected IN,OUT (positive integers)", argv[i]);
        } else die("%s: unknown flag (flags: --rows --reps --shape IN,OUT)", argv[i]);
    }
    if (rows < 1 || reps < 1) die("--rows and --reps must be positive integers");
    srand(1234);
    printf("CPU linear (%s), %d threads, best of %d\n", REAL_NAME, omp_get_max_threads(), reps);
    if (in_dim > 0) {
        bench_shape(rows, in_dim, out_dim, reps);
        return 0;
    }
    // the tiny config's projections: q/k (64), v/g/o (128), gates (2), MLP (512 <-> 128), lm-head
    int shapes[][2] = {{128, 64}, {128, 128}, {128, 2}, {128, 512}, {512, 128}, {128, 50257}};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) bench_shape(rows, shapes[s][0], shapes[s][1], reps);
    return 0;
}
