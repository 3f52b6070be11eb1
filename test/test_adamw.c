// test_adamw.c: AdamW against a float64 transcription of torch.optim.AdamW with the clip of
// clip_grad_norm_; the first step's closed form; slices (ZeRO-1) giving the same bits as the
// whole vector; the per-tensor decay mask; the skip of non-finite steps.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/utils.h"
#include "../layers/adamw.h"

static int failures = 0;
#define EXPECT(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static uint64_t rng = 88172645463325252ULL;
static double uniform(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (double)(rng >> 11) / 9007199254740992.0; }

#define N 1000
// three "tensors": 400 decayed, 100 not decayed, 500 decayed
static const size_t NUMEL[3] = {400, 100, 500};
static const unsigned char DECAY[3] = {1, 0, 1};

int main(void) {
    const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-15, wd = 0.1, max_norm = 1.0;
    real *p = xmalloc(N * sizeof(real)), *g = xmalloc(N * sizeof(real));
    real *m = xcalloc(N, sizeof(real)), *v = xcalloc(N, sizeof(real));
    double *rp = xmalloc(N * sizeof(double)), *rm = xcalloc(N, sizeof(double)), *rv = xcalloc(N, sizeof(double));
    for (int i = 0; i < N; i++) rp[i] = p[i] = (real)(uniform() - 0.5);
    AdamW opt;
    adamw_init(&opt, b1, b2, eps, wd, max_norm, 3, NUMEL, DECAY);

    // 5 steps against the float64 reference; step 0 has a large gradient (clipped), the rest small
    for (int step = 1; step <= 5; step++) {
        double scale_in = step == 1 ? 3.0 : 0.01;
        for (int i = 0; i < N; i++) g[i] = (real)((uniform() - 0.5) * scale_in);
        double sq = adamw_sum_squares(g, N), ref_sq = 0;
        for (int i = 0; i < N; i++) ref_sq += (double)g[i] * g[i];
        EXPECT(fabs(sq - ref_sq) <= 1e-12 * ref_sq, "sum of squares %.17g vs %.17g", sq, ref_sq);
        double norm = sqrt(sq), clip = max_norm / (norm + 1e-6);
        if (clip > 1) clip = 1;
        if (step == 1) EXPECT(clip < 0.2, "step 1 should be clipped (norm %g)", norm);
        double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        for (int i = 0; i < N; i++) {
            int decayed = i < 400 || i >= 500;
            double gi = (double)g[i] * clip;
            rm[i] = b1 * rm[i] + (1 - b1) * gi;
            rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
            rp[i] *= 1 - (decayed ? lr * wd : 0);
            rp[i] -= lr / bc1 * rm[i] / (sqrt(rv[i]) / sqrt(bc2) + eps);
        }
        real p_before = p[0];
        EXPECT(adamw_step(&opt, p, g, m, v, 0, N, lr, norm) == 0, "step %d skipped", step);
        if (step == 1) {
            // closed form of AdamW's first step: m_hat = g, v_hat = g^2, so p -= lr*sign(g) (+ decay)
            double want = (double)p_before * (1 - lr * wd) - lr * (g[0] > 0 ? 1 : -1);
            EXPECT(fabs(p[0] - want) < 1e-6, "first step p[0] %.9g, closed form %.9g", (double)p[0], want);
        }
        double err = 0, ref = 0;
        for (int i = 0; i < N; i++) { err += (p[i] - rp[i]) * (p[i] - rp[i]); ref += rp[i] * rp[i]; }
        EXPECT(sqrt(err / ref) < 1e-6, "step %d: params relative error %g vs float64 reference", step, sqrt(err / ref));
    }
    EXPECT(opt.num_updates == 5 && opt.nan_steps_total == 0, "counters %lld %lld", (long long)opt.num_updates, (long long)opt.nan_steps_total);

    // ZeRO-1: updating [0,k) and [k,N) (moments held per slice) gives the same bits as [0,N)
    const size_t cuts[] = {0, 123, 450, 777, N};
    real *p2 = xmalloc(N * sizeof(real)), *m2 = xmalloc(N * sizeof(real)), *v2 = xmalloc(N * sizeof(real));
    memcpy(p2, p, N * sizeof(real)); memcpy(m2, m, N * sizeof(real)); memcpy(v2, v, N * sizeof(real));
    AdamW opt2 = opt;   // same counters; segments shared read-only
    for (int i = 0; i < N; i++) g[i] = (real)(uniform() - 0.5) * 0.01f;
    real *g2 = xmalloc(N * sizeof(real));
    memcpy(g2, g, N * sizeof(real));
    double norm = sqrt(adamw_sum_squares(g, N));
    adamw_step(&opt, p, g, m, v, 0, N, lr, norm);
    for (int s = 0; s < 4; s++) {
        AdamW slice_opt = opt2;
        adamw_step(&slice_opt, p2, g2, m2 + cuts[s], v2 + cuts[s], cuts[s], cuts[s + 1], lr, norm);
        if (s == 3) opt2 = slice_opt;
    }
    EXPECT(memcmp(p, p2, N * sizeof(real)) == 0 && memcmp(m, m2, N * sizeof(real)) == 0 && memcmp(v, v2, N * sizeof(real)) == 0,
           "slices differ from the whole vector");

    // a non-finite norm skips the step: grads zeroed, params and moments untouched, counted
    memcpy(p2, p, N * sizeof(real)); memcpy(m2, m, N * sizeof(real)); memcpy(v2, v, N * sizeof(real));
    int64_t updates = opt.num_updates;
    for (int round = 1; round <= 2; round++) {
        for (int i = 0; i < N; i++) g[i] = 1;
        g[7] = (real)NAN;
        EXPECT(adamw_step(&opt, p, g, m, v, 0, N, lr, round == 1 ? NAN : INFINITY) == 1, "non-finite step applied");
        int zero = 1;
        for (int i = 0; i < N; i++) zero &= g[i] == 0;
        EXPECT(zero, "grads not zeroed after a skipped step");
        EXPECT(opt.nan_steps_in_row == round && opt.nan_steps_total == round, "nan counters %lld %lld",
               (long long)opt.nan_steps_in_row, (long long)opt.nan_steps_total);
    }
    EXPECT(memcmp(p, p2, N * sizeof(real)) == 0 && memcmp(m, m2, N * sizeof(real)) == 0 && memcmp(v, v2, N * sizeof(real)) == 0,
           "a skipped step changed params or moments");
    EXPECT(opt.num_updates == updates, "a skipped step counted as an update");
    for (int i = 0; i < N; i++) g[i] = 0.001f;
    adamw_step(&opt, p, g, m, v, 0, N, lr, sqrt(adamw_sum_squares(g, N)));
    EXPECT(opt.nan_steps_in_row == 0 && opt.nan_steps_total == 2, "a good step should end the run of skipped steps");
    // the decay mask: with zero gradient only the decayed tensors shrink
    memset(m, 0, N * sizeof(real)); memset(v, 0, N * sizeof(real));
    for (int i = 0; i < N; i++) { p[i] = 1; g[i] = 0; }
    adamw_step(&opt, p, g, m, v, 0, N, lr, 0.0);
    EXPECT(fabsf((float)p[0] - (float)(1 - lr * wd)) < 1e-7 && p[450] == 1 && fabsf((float)p[999] - (float)(1 - lr * wd)) < 1e-7,
           "decay mask: %g %g %g", (double)p[0], (double)p[450], (double)p[999]);
    printf("%s: %d failures\n", failures ? "FAIL" : "OK", failures);
    adamw_free(&opt);
    return failures ? 1 : 0;
}
