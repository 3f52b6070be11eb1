// bench_mdn_cpu: speed of the CPU MDN op (mdn_kernels/mdn_cpu.c, float build) in tokens/s.
//   dev/bench_mdn_cpu [--B 1] [--T 4096] [--H 6] [--K 128] [--V 256] [--reps 3]
// Times forward and forward+backward of the recurrent and the chunk form on random inputs in the
// model's gate range, with initial states; OMP_NUM_THREADS sets the threads (parallel over B*H).
// Prints the best of --reps runs of each.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/utils.h"
#include "../mdn_kernels/mdn_cpu.h"

static real *random_array(size_t n, double lo, double hi) {
    real *x = (real *)xmalloc(n * sizeof(real));
    for (size_t i = 0; i < n; i++) x[i] = (real)(lo + (hi - lo) * ((double)rand() / RAND_MAX));
    return x;
}

int main(int argc, char **argv) {
    int B = 1, T = 4096, H = 6, K = 128, V = 256, reps = 3;
    for (int i = 1; i < argc; i++) {
        int *dst = strcmp(argv[i], "--B") == 0 ? &B : strcmp(argv[i], "--T") == 0 ? &T : strcmp(argv[i], "--H") == 0 ? &H
                 : strcmp(argv[i], "--K") == 0 ? &K : strcmp(argv[i], "--V") == 0 ? &V : strcmp(argv[i], "--reps") == 0 ? &reps : NULL;
        if (dst == NULL || i + 1 >= argc) die("%s: unknown flag or missing value (flags: --B --T --H --K --V --reps)", argv[i]);
        *dst = atoi(argv[++i]);
        if (*dst < 1) die("%s: must be a positive integer", argv[i - 1]);
    }
    srand(1234);
    size_t nqk = (size_t)B * T * H * K, nv = (size_t)B * T * H * V, ng = (size_t)B * T * H, ns = (size_t)B * H * K * V;
    MdnShape shape = {B, T, H, K, V, 1};
    real *q = random_array(nqk, -1, 1), *k = random_array(nqk, -1, 1), *v = random_array(nv, -1, 1);
    real *la = random_array(ng, -5, 0), *lm = random_array(ng, -2, 0), *beta = random_array(ng, 1e-3, 1);
    real *eta = random_array(ng, 1e-3, 2), *S0 = random_array(ns, -1, 1), *M0 = random_array(ns, -0.3, 0.3);
    real *d_o = random_array(nv, -1, 1);
    MdnInputs in = {q, k, v, la, lm, beta, eta, S0, M0};
    real *o = (real *)xmalloc(nv * sizeof(real)), *S = (real *)xmalloc(ns * sizeof(real)), *M = (real *)xmalloc(ns * sizeof(real));
    real *g[9];
    size_t sizes[9] = {nqk, nqk, nv, ng, ng, ng, ng, ns, ns};
    for (int i = 0; i < 9; i++) g[i] = (real *)xmalloc(sizes[i] * sizeof(real));
    MdnGrads grads = {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]};

    printf("CPU MDN op (%s), B%d T%d H%d K%d V%d, %d threads, best of %d\n", REAL_NAME, B, T, H, K, V, omp_get_max_threads(), reps);
    for (int chunk = 0; chunk < 2; chunk++) {
        double best_f = 1e30, best_fb = 1e30;
        for (int r = 0; r < reps; r++) {
            double t0 = wall_seconds();
            if (chunk) mdn_chunk_forward(&shape, &in, o, S, M);
            else mdn_recurrent_forward(&shape, &in, o, S, M);
            double t1 = wall_seconds();
            if (chunk) mdn_chunk_backward(&shape, &in, d_o, NULL, NULL, &grads);
            else mdn_recurrent_backward(&shape, &in, d_o, NULL, NULL, &grads);
            double t2 = wall_seconds();
            if (t1 - t0 < best_f) best_f = t1 - t0;
            if (t2 - t0 < best_fb) best_fb = t2 - t0;
        }
        double tokens = (double)B * T;
        printf("%-9s forward %8.3f s %9.0f tok/s   forward+backward %8.3f s %9.0f tok/s\n", chunk ? "chunk" : "recurrent",
               best_f, tokens / best_f, best_fb, tokens / best_fb);
    }
    real *all[] = {q, k, v, la, lm, beta, eta, S0, M0, d_o, o, S, M};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) free(all[i]);
    for (int i = 0; i < 9; i++) free(g[i]);
    return 0;
}
