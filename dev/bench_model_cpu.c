// bench_model_cpu: tokens/s of one CPU training micro-step (model_forward + model_backward, float
// build) without data loading or the optimizer, which are small next to them.
//   dev/bench_model_cpu [--config configs/mdn_tiny.json] [--B 4] [--T 256] [--reps 5]
// Random tokens and a seeded init; OMP_NUM_THREADS sets the threads. Prints the best of --reps.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/config.h"
#include "../common/utils.h"
#include "../layers/model.h"

int main(int argc, char **argv) {
    const char *config_path = "configs/mdn_tiny.json";
    int B = 4, T = 256, reps = 5;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) die("%s: missing value (flags: --config --B --T --reps)", argv[i]);
        if (strcmp(argv[i], "--config") == 0) { config_path = argv[++i]; continue; }
        int *dst = strcmp(argv[i], "--B") == 0 ? &B : strcmp(argv[i], "--T") == 0 ? &T : strcmp(argv[i], "--reps") == 0 ? &reps : NULL;
        if (dst == NULL) die("%s: unknown flag (flags: --config --B --T --reps)", argv[i]);
        *dst = atoi(argv[++i]);
        if (*dst < 1) die("%s: must be a positive integer", argv[i - 1]);
    }
    MdnConfig config;
    char err[512];
    if (config_load(&config, config_path, err, sizeof err)) die("%s", err);
    Model *m = model_build(&config, B, T);
    model_init_weights(m, 42);
    int *inputs = (int *)xmalloc((size_t)B * T * sizeof(int)), *targets = (int *)xmalloc((size_t)B * T * sizeof(int));
    srand(1234);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = rand() % config.vocab_size;
        targets[i] = rand() % config.vocab_size;
    }
    printf("CPU training micro-step (%s), %s, B%d T%d, %d threads, best of %d\n", REAL_NAME, config_path, B, T,
           omp_get_max_threads(), reps);
    double best_fwd = 1e30, best_step = 1e30;
    model_zero_grad(m);
    for (int r = 0; r < reps; r++) {
        double t0 = wall_seconds();
        real loss = model_forward(m, inputs, targets, B, T);
        double t1 = wall_seconds();
        model_backward(m, 1);
        double t2 = wall_seconds();
        if (r == 0) printf("loss %.4f\n", (double)loss);
        if (t1 - t0 < best_fwd) best_fwd = t1 - t0;
        if (t2 - t0 < best_step) best_step = t2 - t0;
    }
    double tokens = (double)B * T;
    printf("forward %8.3f s   forward+backward %8.3f s   %8.0f tokens/s\n", best_fwd, best_step, tokens / best_step);
    model_free(m);
    free(inputs);
    free(targets);
    return 0;
}
