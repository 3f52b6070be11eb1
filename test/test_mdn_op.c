// test_mdn_op.c: the MDN op on the CPU (mdn_kernels/mdn_cpu.c), in the precision of the library it
// links: float here, double in test_mdn_op_f64.c (which includes this file).
//   1. chunk form == recurrent form (o, final states, every gradient), relative error of norms,
//      over T in {1,63,64,65,130,200,1000}, K and V in {16,32,48,128}, with and without initial
//      states, in every gate regime of mdn-spec.md §8, plus one case drawn at random each run.
//   2. momentum: both forms match a naive recurrence written here from §5.1, which differs
//      clearly from the same recurrence without momentum (M_t = kappa r^T): an implementation that
//      dropped or mishandled M (or M0) fails.
//   3. (double only) both forms' gradients against central finite differences, every input.
// Inputs are fresh each run; the seed is printed (`--seed N` reproduces a run).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

#include "../mdn_kernels/mdn_cpu.h"
#include "../common/utils.h"

#ifdef MDN_DOUBLE
#define TOL_FWD 1e-10
#define TOL_GRAD 1e-10
#else
#define TOL_FWD 1e-5
#define TOL_GRAD 1e-4
#endif

// ---- random numbers (splitmix64) ----
static uint64_t rng_state;
static double uniform(void) {   // [0,1)
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}
static double uniform_in(double lo, double hi) { return lo + (hi - lo) * uniform(); }
static double normal(void) {
    double u1 = uniform(), u2 = uniform();
    return sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2);
}

// ---- gate regimes (mdn-spec.md §8) ----
enum { R_MODEL, R_MU_LL_ALPHA, R_ALPHA_LL_MU, R_BETA_TINY, R_BETA_ONE, R_ETA_TINY, N_REGIMES };
static const char *regime_names[N_REGIMES] = {"model", "mu<<alpha", "alpha<<mu", "beta=1e-8", "beta=1", "eta->1e-7"};

static void draw_gates(int regime, double *la, double *lm, double *beta, double *eta) {
    switch (regime) {
    case R_MODEL:       *la = -5 * uniform(); *lm = -2 * uniform(); *beta = uniform_in(1e-3, 1); *eta = uniform_in(1e-3, 2); break;
    case R_MU_LL_ALPHA: *la = -0.01 * uniform() - 1e-4; *lm = -2; *beta = uniform_in(0.05, 1); *eta = uniform_in(0.2, 2); break;
    case R_ALPHA_LL_MU: *la = -2 - uniform(); *lm = -0.01 * uniform() - 1e-4; *beta = uniform_in(0.05, 1); *eta = uniform_in(0.2, 2); break;
    case R_BETA_TINY:   *la = -2 * uniform(); *lm = -2 * uniform(); *beta = 1e-8; *eta = uniform_in(0.2, 2); break;
    case R_BETA_ONE:    *la = -2 * uniform(); *lm = -2 * uniform(); *beta = 1; *eta = uniform_in(0.2, 2); break;
    default:            *la = -2 * uniform(); *lm = -2 * uniform(); *beta = uniform_in(0.05, 1); *eta = 1e-7; break;
    }
}

// ---- one problem: inputs, upstream gradients ----
typedef struct {
    MdnShape shape;
    int regime, init;
    size_t nqk, nv, ng, ns;
    real *q, *k, *v, *la, *lm, *beta, *eta, *S0, *M0;
    real *d_o, *dSf, *dMf;
} Problem;

static real *random_array(size_t n, double scale) {
    real *x = (real *)xmalloc(n * sizeof(real));
    for (size_t i = 0; i < n; i++) x[i] = (real)(scale * normal());
    return x;
}

static void problem_init(Problem *p, int B, int T, int H, int K, int V, int regime, int init) {
    memset(p, 0, sizeof(*p));
    p->shape = (MdnShape){B, T, H, K, V, 1};
    p->regime = regime;
    p->init = init;
    p->nqk = (size_t)B * T * H * K;
    p->nv = (size_t)B * T * H * V;
    p->ng = (size_t)B * T * H;
    p->ns = (size_t)B * H * K * V;
    p->q = random_array(p->nqk, 1);
    p->k = random_array(p->nqk, 1);
    p->v = random_array(p->nv, 1);
    p->la = (real *)xmalloc(p->ng * sizeof(real));
    p->lm = (real *)xmalloc(p->ng * sizeof(real));
    p->beta = (real *)xmalloc(p->ng * sizeof(real));
    p->eta = (real *)xmalloc(p->ng * sizeof(real));
    for (size_t i = 0; i < p->ng; i++) {
        double la, lm, be, et;
        draw_gates(regime, &la, &lm, &be, &et);
        p->la[i] = (real)la; p->lm[i] = (real)lm; p->beta[i] = (real)be; p->eta[i] = (real)et;
    }
    if (init) {
        p->S0 = random_array(p->ns, 1);
        p->M0 = random_array(p->ns, 0.3);
    }
    p->d_o = random_array(p->nv, 1);
    p->dSf = random_array(p->ns, 1);
    p->dMf = random_array(p->ns, 1);
}

static void problem_free(Problem *p) {
    real *all[] = {p->q, p->k, p->v, p->la, p->lm, p->beta, p->eta, p->S0, p->M0, p->d_o, p->dSf, p->dMf};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) free(all[i]);
}

static MdnInputs problem_inputs(const Problem *p) {
    return (MdnInputs){p->q, p->k, p->v, p->la, p->lm, p->beta, p->eta, p->S0, p->M0};
}

// ---- results of one form ----
#define N_GRADS 9
static const char *grad_names[N_GRADS] = {"dq", "dk", "dv", "dlog_alpha", "dlog_mu", "dbeta", "deta", "dS0", "dM0"};

typedef struct {
    real *o, *S, *M;
    real *g[N_GRADS];
} Result;

static void result_alloc(Result *r, const Problem *p) {
    size_t sizes[N_GRADS] = {p->nqk, p->nqk, p->nv, p->ng, p->ng, p->ng, p->ng, p->ns, p->ns};
    r->o = (real *)xmalloc(p->nv * sizeof(real));
    r->S = (real *)xmalloc(p->ns * sizeof(real));
    r->M = (real *)xmalloc(p->ns * sizeof(real));
    for (int i = 0; i < N_GRADS; i++) {
        r->g[i] = (real *)xmalloc(sizes[i] * sizeof(real));
        for (size_t e = 0; e < sizes[i]; e++) r->g[i][e] = (real)NAN;   // poisoned: must be overwritten
    }
}

static void result_free(Result *r) {
    free(r->o); free(r->S); free(r->M);
    for (int i = 0; i < N_GRADS; i++) free(r->g[i]);
}

static MdnGrads result_grads(Result *r) {
    return (MdnGrads){r->g[0], r->g[1], r->g[2], r->g[3], r->g[4], r->g[5], r->g[6], r->g[7], r->g[8]};
}

static void run_form(int chunk, const Problem *p, Result *r) {
    MdnInputs in = problem_inputs(p);
    MdnGrads g = result_grads(r);
    if (chunk) {
        mdn_chunk_forward(&p->shape, &in, r->o, r->S, r->M);
        mdn_chunk_backward(&p->shape, &in, p->d_o, p->dSf, p->dMf, &g);
    } else {
        mdn_recurrent_forward(&p->shape, &in, r->o, r->S, r->M);
        mdn_recurrent_backward(&p->shape, &in, p->d_o, p->dSf, p->dMf, &g);
    }
}

// ||x - ref|| / ||ref|| (NaN anywhere gives NaN, which fails every comparison below)
static double rel_err(const real *x, const real *ref, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)x[i] - (double)ref[i];
        d += e * e;
        r += (double)ref[i] * ref[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

static int failures = 0;
static double worst_fwd[N_REGIMES], worst_grad[N_REGIMES];

static void check(int cond, const char *what) {
    if (!cond) {
        failures++;
        printf("FAIL %s\n", what);
    }
}

// 1. chunk vs recurrent on one problem
static void test_chunk_vs_recurrent(int B, int T, int H, int K, int V, int regime, int init) {
    Problem p;
    problem_init(&p, B, T, H, K, V, regime, init);
    Result rec, chk;
    result_alloc(&rec, &p);
    result_alloc(&chk, &p);
    run_form(0, &p, &rec);
    run_form(1, &p, &chk);
    double ef = rel_err(chk.o, rec.o, p.nv);
    double eS = rel_err(chk.S, rec.S, p.ns), eM = rel_err(chk.M, rec.M, p.ns);
    double fwd = fmax(ef, fmax(eS, eM));
    if (isnan(ef) || isnan(eS) || isnan(eM)) fwd = NAN;
    size_t sizes[N_GRADS] = {p.nqk, p.nqk, p.nv, p.ng, p.ng, p.ng, p.ng, p.ns, p.ns};
    double grad = 0;
    int worst_i = 0;
    for (int i = 0; i < N_GRADS; i++) {
        double e = rel_err(chk.g[i], rec.g[i], sizes[i]);
        if (isnan(e) || e > grad) { grad = e; worst_i = i; }
        if (isnan(e)) break;
    }
    char what[200];
    snprintf(what, sizeof(what), "B%d T%-4d H%d K%-3d V%-3d %-10s init=%d", B, T, H, K, V, regime_names[regime], init);
    int ok = fwd <= TOL_FWD && grad <= TOL_GRAD;
    printf("%s %s  o %.1e S_T %.1e M_T %.1e  grads worst %.1e (%s)\n", ok ? "ok  " : "FAIL", what, ef, eS, eM,
           grad, grad_names[worst_i]);
    if (!ok) failures++;
    if (!(fwd <= worst_fwd[regime])) worst_fwd[regime] = fwd;
    if (!(grad <= worst_grad[regime])) worst_grad[regime] = grad;
    result_free(&rec);
    result_free(&chk);
    problem_free(&p);
}

// 2. naive recurrence from §5.1 in double, for one (b,h) at a time; momentum = 0 drops M:
// M_t = kappa r^T, i.e. the plain delta rule S_t = alpha S_{t-1} - beta kappa r^T.
static void naive_forward(const Problem *p, int momentum, double *o, double *S_T, double *M_T) {
    const MdnShape *s = &p->shape;
    int K = s->K, V = s->V;
    double *S = (double *)xmalloc((size_t)K * V * sizeof(double)), *M = (double *)xmalloc((size_t)K * V * sizeof(double));
    double *qb = (double *)xmalloc(K * sizeof(double)), *kh = (double *)xmalloc(K * sizeof(double));
    double *r = (double *)xmalloc(V * sizeof(double));
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++) {
            size_t so = ((size_t)b * s->H + h) * K * V;
            for (size_t e = 0; e < (size_t)K * V; e++) {
                S[e] = p->S0 ? p->S0[so + e] : 0;
                M[e] = momentum && p->M0 ? p->M0[so + e] : 0;
            }
            for (int t = 0; t < s->T; t++) {
                size_t g = ((size_t)b * s->T + t) * s->H + h;
                const real *q = p->q + g * K, *k = p->k + g * K, *v = p->v + g * V;
                double nq = 0, nk = 0;
                for (int c = 0; c < K; c++) { nq += (double)q[c] * q[c]; nk += (double)k[c] * k[c]; }
                for (int c = 0; c < K; c++) {
                    qb[c] = q[c] / sqrt(nq + 1e-6) / sqrt((double)K);
                    kh[c] = k[c] / sqrt(nk + 1e-6);
                }
                double al = exp((double)p->la[g]), mu = exp((double)p->lm[g]), be = p->beta[g], et = p->eta[g];
                for (int j = 0; j < V; j++) {
                    double acc = -(double)v[j];
                    for (int c = 0; c < K; c++) acc += S[(size_t)c * V + j] * al * kh[c];
                    r[j] = acc;
                }
                for (int c = 0; c < K; c++)
                    for (int j = 0; j < V; j++) {
                        size_t e = (size_t)c * V + j;
                        M[e] = (momentum ? mu * M[e] : 0.0) + et * kh[c] * r[j];
                        S[e] = al * S[e] - be * M[e];
                    }
                for (int j = 0; j < V; j++) {
                    double acc = 0;
                    for (int c = 0; c < K; c++) acc += S[(size_t)c * V + j] * qb[c];
                    o[g * V + j] = acc;
                }
            }
            memcpy(S_T + so, S, (size_t)K * V * sizeof(double));
            memcpy(M_T + so, M, (size_t)K * V * sizeof(double));
        }
    free(S); free(M); free(qb); free(kh); free(r);
}

static double rel_err_d(const real *x, const double *ref, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)x[i] - ref[i]) * ((double)x[i] - ref[i]);
        r += ref[i] * ref[i];
    }
    return sqrt(d / r);
}

static void test_momentum(void) {
    // mu close to 1 so the momentum carries far; T 150 spans three chunks; M0 nonzero
    Problem p;
    problem_init(&p, 1, 150, 2, 16, 24, R_MODEL, 1);
    for (size_t i = 0; i < p.ng; i++) p.lm[i] = (real)(-0.1 * uniform());
    double *o = (double *)xmalloc(p.nv * sizeof(double)), *o_plain = (double *)xmalloc(p.nv * sizeof(double));
    double *S = (double *)xmalloc(p.ns * sizeof(double)), *M = (double *)xmalloc(p.ns * sizeof(double));
    double *S_plain = (double *)xmalloc(p.ns * sizeof(double)), *M_plain = (double *)xmalloc(p.ns * sizeof(double));
    naive_forward(&p, 1, o, S, M);
    naive_forward(&p, 0, o_plain, S_plain, M_plain);
    // the test must be able to see momentum: with and without it differ by far more than the tolerance
    real *o_plain_r = (real *)xmalloc(p.nv * sizeof(real));
    for (size_t i = 0; i < p.nv; i++) o_plain_r[i] = (real)o_plain[i];
    double sep = rel_err_d(o_plain_r, o, p.nv);
    printf("momentum: naive recurrence with vs without momentum differ by %.2e in o\n", sep);
    check(sep > 0.1, "momentum: the naive recurrences with and without momentum do not differ");
    Result r;
    result_alloc(&r, &p);
    MdnInputs in = problem_inputs(&p);
    for (int chunk = 0; chunk < 2; chunk++) {
        if (chunk) mdn_chunk_forward(&p.shape, &in, r.o, r.S, r.M);
        else mdn_recurrent_forward(&p.shape, &in, r.o, r.S, r.M);
        double eo = rel_err_d(r.o, o, p.nv), eS = rel_err_d(r.S, S, p.ns), eM = rel_err_d(r.M, M, p.ns);
        printf("momentum: %-9s vs naive: o %.1e S_T %.1e M_T %.1e\n", chunk ? "chunk" : "recurrent", eo, eS, eM);
        // float: the naive recurrence runs in double, the op in float
        double tol = sizeof(real) == 8 ? TOL_FWD : 1e-5;
        check(eo <= tol && eS <= tol && eM <= tol, chunk ? "momentum: chunk form vs naive" : "momentum: recurrent form vs naive");
    }
    result_free(&r);
    free(o); free(o_plain); free(S); free(M); free(S_plain); free(M_plain); free(o_plain_r);
    problem_free(&p);
}

#ifdef MDN_DOUBLE
// 3. finite differences of L = sum(o*do) + <dSf, S_T> + <dMf, M_T> along random directions D of
// one input: fd = (L(x + hD) - L(x - hD)) / 2h against an = <grad, D>, three directions per input.
// L is affine in v, S0 and M0 (the recurrence is linear in the states and v enters additively),
// so for them the central difference is exact for any h and h = 1 removes the rounding error.
// For the other inputs h = 1e-6: the truncation error is O(h^2) ~ 1e-12 relative and the rounding
// error of fd is about noise = 1e-14 * sum|terms of L| / h (~50 ulps of L; 1e-9 here). The check
// is |fd - an| <= 1e-6 |an| + noise, reported as e = |fd - an| / (|an| + 1e6 noise) <= 1e-6: a
// correct gradient gives ~1e-8, any real mistake O(1). The noise floor only matters where a
// gradient is itself ~1e-9 (dk when eta = 1e-7), which part 1 covers to 1e-10 instead.
static double loss_of(int chunk, const Problem *p, real *o, real *S, real *M, double *abs_sum) {
    MdnInputs in = problem_inputs(p);
    if (chunk) mdn_chunk_forward(&p->shape, &in, o, S, M);
    else mdn_recurrent_forward(&p->shape, &in, o, S, M);
    double L = 0, A = 0;
    for (size_t i = 0; i < p->nv; i++) { L += o[i] * p->d_o[i]; A += fabs(o[i] * p->d_o[i]); }
    for (size_t i = 0; i < p->ns; i++) {
        L += S[i] * p->dSf[i] + M[i] * p->dMf[i];
        A += fabs(S[i] * p->dSf[i]) + fabs(M[i] * p->dMf[i]);
    }
    *abs_sum = A;
    return L;
}

static double fd_worst_total = 0;

static void test_finite_differences(int chunk, int regime) {
    Problem p;
    problem_init(&p, 1, 70, 2, 8, 6, regime, 1);   // two chunks (64 + 6)
    Result r;
    result_alloc(&r, &p);
    run_form(chunk, &p, &r);
    real *inputs[N_GRADS] = {p.q, p.k, p.v, p.la, p.lm, p.beta, p.eta, p.S0, p.M0};
    size_t sizes[N_GRADS] = {p.nqk, p.nqk, p.nv, p.ng, p.ng, p.ng, p.ng, p.ns, p.ns};
    real *o = (real *)xmalloc(p.nv * sizeof(real)), *S = (real *)xmalloc(p.ns * sizeof(real)), *M = (real *)xmalloc(p.ns * sizeof(real));
    double worst = 0, worst_plain = 0;
    int worst_i = 0;
    for (int i = 0; i < N_GRADS; i++) {
        size_t n = sizes[i];
        int affine = i == 2 || i == 7 || i == 8;   // v, S0, M0
        double h = affine ? 1.0 : 1e-6, Ap, Am;
        real *x0 = (real *)xmalloc(n * sizeof(real)), *dir = (real *)xmalloc(n * sizeof(real));
        memcpy(x0, inputs[i], n * sizeof(real));
        for (int trial = 0; trial < 3; trial++) {
            double analytic = 0;
            for (size_t e = 0; e < n; e++) {
                dir[e] = (real)normal();
                analytic += r.g[i][e] * dir[e];
            }
            for (size_t e = 0; e < n; e++) inputs[i][e] = x0[e] + h * dir[e];
            double Lp = loss_of(chunk, &p, o, S, M, &Ap);
            for (size_t e = 0; e < n; e++) inputs[i][e] = x0[e] - h * dir[e];
            double Lm = loss_of(chunk, &p, o, S, M, &Am);
            memcpy(inputs[i], x0, n * sizeof(real));
            double fd = (Lp - Lm) / (2 * h);
            double noise = 1e-14 * fmax(Ap, Am) / h;
            double e = fabs(fd - analytic) / (fabs(analytic) + 1e6 * noise);
            if (!(e <= worst)) { worst = e; worst_i = i; }
            double plain = fabs(fd - analytic) / fabs(analytic);
            if (!(plain <= worst_plain)) worst_plain = plain;
        }
        free(x0); free(dir);
    }
    printf("%s fd %-9s %-10s worst error vs central differences %.1e (%s); plain relative error %.1e\n",
           worst <= 1e-6 ? "ok  " : "FAIL", chunk ? "chunk" : "recurrent", regime_names[regime], worst,
           grad_names[worst_i], worst_plain);
    if (!(worst <= 1e-6)) failures++;
    if (!(worst <= fd_worst_total)) fd_worst_total = worst;
    free(o); free(S); free(M);
    result_free(&r);
    problem_free(&p);
}
#endif

int main(int argc, char **argv) {
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else die("%s: unknown flag (usage: %s [--seed N])", argv[i], argv[0]);
    }
    rng_state = seed;
    printf("test_mdn_op (%s): seed %llu (rerun with --seed %llu)\n", REAL_NAME, (unsigned long long)seed, (unsigned long long)seed);
    printf("tolerances: forward %.0e, gradients %.0e (chunk vs recurrent, relative error of norms)\n", TOL_FWD, TOL_GRAD);

    // every regime with and without initial states
    for (int reg = 0; reg < N_REGIMES; reg++)
        for (int init = 1; init >= 0; init--) test_chunk_vs_recurrent(2, 200, 2, 32, 48, reg, init);
    // lengths around the chunk size and long sequences; every K and V
    test_chunk_vs_recurrent(1, 1, 2, 16, 16, R_MODEL, 1);
    test_chunk_vs_recurrent(1, 63, 2, 48, 32, R_MU_LL_ALPHA, 1);
    test_chunk_vs_recurrent(1, 64, 2, 128, 16, R_ALPHA_LL_MU, 0);
    test_chunk_vs_recurrent(1, 65, 2, 16, 128, R_BETA_ONE, 1);
    test_chunk_vs_recurrent(1, 130, 1, 48, 48, R_BETA_TINY, 1);
    test_chunk_vs_recurrent(1, 200, 1, 128, 48, R_ETA_TINY, 0);
    test_chunk_vs_recurrent(2, 1000, 1, 32, 48, R_MODEL, 1);
    test_chunk_vs_recurrent(1, 1000, 1, 128, 128, R_MU_LL_ALPHA, 1);
    // one case drawn at random
    {
        static const int Ts[] = {1, 63, 64, 65, 200, 1000}, dims[] = {16, 32, 48, 128};
        int T = Ts[(int)(uniform() * 6)], K = dims[(int)(uniform() * 4)], V = dims[(int)(uniform() * 4)];
        int reg = (int)(uniform() * N_REGIMES), init = uniform() < 0.5;
        test_chunk_vs_recurrent(1, T, 2, K, V, reg, init);
    }
    printf("worst chunk-vs-recurrent relative errors per regime (%s):\n", REAL_NAME);
    for (int reg = 0; reg < N_REGIMES; reg++)
        printf("  %-10s forward %.1e  gradients %.1e\n", regime_names[reg], worst_fwd[reg], worst_grad[reg]);

    test_momentum();

#ifdef MDN_DOUBLE
    for (int chunk = 0; chunk < 2; chunk++)
        for (int reg = 0; reg < N_REGIMES; reg++) test_finite_differences(chunk, reg);
    printf("finite differences: worst %.1e\n", fd_worst_total);
#endif

    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
