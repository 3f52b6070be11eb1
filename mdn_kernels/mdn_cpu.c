// mdn_cpu.c: the MDN op (momentum delta rule) on the CPU, mdn-spec.md §5-§6.
//
// Two forms with identical semantics:
//   recurrent: the definition (§5.1) and its reverse-time adjoint (§5.2), token by token.
//   chunkwise: the exact chunk form (§6), chunk MDN_CHUNK = 64, structured like the CUDA kernel:
//     per chunk a state-independent "prepare" (gate coefficients, T^-1, and the products that do
//     not involve the states), then a sequential "state step" that carries S, M to the next chunk.
// Every (b,h) is independent: OpenMP runs them in parallel, each one on one thread from start
// to end, so the result does not depend on the number of threads.
//
// Precision: matrices are `real` (float or double, common/real.h). The gate coefficients
// (prefix sums of the log gates, their exponentials, Gamma, b) and the inversion of the L x L
// triangular system are computed in double even in the float build: they are O(L^2) or O(L^3/6)
// per chunk, cheap next to the O(L*K*V) products, and the prefix sums are where float32 loses
// most (mdn-spec.md §6: float64 prefix sums bring the float32 chunk form down to the recurrent
// form's own float32 error).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mdn_cpu.h"
#include "../common/utils.h"

#define L2_EPS 1e-6   // q, k normalisation: x / sqrt(|x|^2 + 1e-6)
#define CL MDN_CHUNK  // chunk length; also the recurrent backward's recomputation segment

// ----------------------------------------------------------------------------------------------
// small dense products on row-major matrices (inner loops run over contiguous memory)
// ----------------------------------------------------------------------------------------------

// C[m,n] += s * A(i,l) B[l,n], with A(i,l) = A[i*rs + l*cs] (rs = k, cs = 1: A[m,k]; rs = 1,
// cs = m: A stored as [k,m], i.e. A^T). Four rows of C at a time, so each row of B is read once
// per four rows (B is the large operand: a K x V state); all-zero groups of A (the triangular
// factors) are skipped.
static void mm_rows(real *C, const real *A, size_t rs, size_t cs, const real *B, int m, int n, int k, real s) {
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        real *c0 = C + (size_t)i * n, *c1 = c0 + n, *c2 = c1 + n, *c3 = c2 + n;
        for (int l = 0; l < k; l++) {
            const real *a = A + i * rs + l * cs;
            real x0 = s * a[0], x1 = s * a[rs], x2 = s * a[2 * rs], x3 = s * a[3 * rs];
            if (x0 == 0 && x1 == 0 && x2 == 0 && x3 == 0) continue;
            const real *b = B + (size_t)l * n;
            #pragma omp simd
            for (int j = 0; j < n; j++) {
                real bj = b[j];
                c0[j] += x0 * bj;
                c1[j] += x1 * bj;
                c2[j] += x2 * bj;
                c3[j] += x3 * bj;
            }
        }
    }
    for (; i < m; i++) {
        real *c = C + (size_t)i * n;
        for (int l = 0; l < k; l++) {
            real x = s * A[i * rs + l * cs];
            if (x == 0) continue;
            const real *b = B + (size_t)l * n;
            #pragma omp simd
            for (int j = 0; j < n; j++) c[j] += x * b[j];
        }
    }
}

// C[m,n] += s * A[m,k] B[k,n]
static void mm_nn(real *C, const real *A, const real *B, int m, int n, int k, real s) {
    mm_rows(C, A, (size_t)k, 1, B, m, n, k, s);
}

// C[m,n] += s * A[k,m]^T B[k,n]
static void mm_tn(real *C, const real *A, const real *B, int m, int n, int k, real s) {
    mm_rows(C, A, 1, (size_t)m, B, m, n, k, s);
}

// C[m,n] += s * A[m,k] B[n,k]^T: dot products of rows, four rows of A against one row of B
static void mm_nt(real *C, const real *A, const real *B, int m, int n, int k, real s) {
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        const real *a0 = A + (size_t)i * k, *a1 = a0 + k, *a2 = a1 + k, *a3 = a2 + k;
        for (int j = 0; j < n; j++) {
            const real *b = B + (size_t)j * k;
            real acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
            #pragma omp simd reduction(+:acc0, acc1, acc2, acc3)
            for (int l = 0; l < k; l++) {
                acc0 += a0[l] * b[l];
                acc1 += a1[l] * b[l];
                acc2 += a2[l] * b[l];
                acc3 += a3[l] * b[l];
            }
            C[(size_t)i * n + j] += s * acc0;
            C[(size_t)(i + 1) * n + j] += s * acc1;
            C[(size_t)(i + 2) * n + j] += s * acc2;
            C[(size_t)(i + 3) * n + j] += s * acc3;
        }
    }
    for (; i < m; i++) {
        const real *a = A + (size_t)i * k;
        for (int j = 0; j < n; j++) {
            const real *b = B + (size_t)j * k;
            real acc = 0;
            #pragma omp simd reduction(+:acc)
            for (int l = 0; l < k; l++) acc += a[l] * b[l];
            C[(size_t)i * n + j] += s * acc;
        }
    }
}

// sums in double: also used over whole K x V states (the recurrent form's gate gradients)
static double dot(const real *x, const real *y, size_t n) {
    double acc = 0;
    #pragma omp simd reduction(+:acc)
    for (size_t i = 0; i < n; i++) acc += (double)x[i] * y[i];
    return acc;
}

static void zero(real *x, size_t n) { memset(x, 0, n * sizeof(real)); }

// ----------------------------------------------------------------------------------------------
// per-thread workspace: one segment of up to CL tokens of one (b,h), plus what the forms need
// ----------------------------------------------------------------------------------------------
typedef struct {
    int K, V;
    // the segment's preprocessed rows (§5.1): qbar, kappa, p [L,K], v [L,V]; q_hat, k_hat and
    // their inverse norms for the backward of the preprocessing; the gates in double
    real *Q, *Kp, *P, *Vv, *Qh, *Kh;
    double rq[CL], rk[CL];
    double la[CL], lm[CL], beta[CL], eta[CL], alpha[CL], mu[CL];
    // chunk coefficients (§6), double: prefix sums A, C; a = e^A, m = e^C, b; the shifted a, b;
    // Em[i,j] = e^(C_i - C_j), Ea[i,l] = e^(A_i - A_l) (backward only), Gamma (lower triangular)
    double A[CL], C[CL], a[CL], m[CL], b[CL], a_prev[CL], b_prev[CL];
    double Em[CL * CL], Ea[CL * CL], Gam[CL * CL], Tinv_d[CL * CL];
    // state-independent chunk products (the "prepare")
    real G[CL * CL];          // Gamma as real, lower triangular
    real QK[CL * CL], PK[CL * CL];   // Qbar Kk^T, P Kk^T
    real W[CL * CL];          // (Qbar Kk^T) o Gamma, lower triangular
    real Tinv[CL * CL];       // (I + A)^-1, unit lower triangular
    real *Qa, *Qb;            // diag(a) Qbar, diag(b) Qbar [L,K]
    real *Xa, *Xb;            // diag(a_prev) P, diag(b_prev) P [L,K]
    real *Y, *Z;              // T^-1 Xa, T^-1 Xb [L,K]
    real *Kg, *Kh_end;        // diag(Gamma[L-1,.]) Kk, diag(Em[L-1,.]) Kk [L,K]
    real *U0;                 // T^-1 V [L,V]
    real *Vn;                 // the new values u = -r [L,V]
    // backward temporaries
    real *dO, *dQ, *dKp, *dP, *tLK1, *tLK2;   // [L,V], [L,K] x5
    real *dVn, *Gm, *tLV1, *tLV2;             // [L,V] x4
    real dW[CL * CL], dWG[CL * CL], dAm[CL * CL];
    double da[CL], db[CL], dm[CL], dla[CL], dlm[CL], dbeta[CL];
    double dG[CL * CL], dEm[CL * CL], DGE[CL * CL];
    real *nS, *nM;            // gradients flowing to the chunk's incoming states [K,V]
} Work;

static Work *work_alloc(int K, int V) {
    Work *w = (Work *)xcalloc(1, sizeof(Work));
    w->K = K;
    w->V = V;
    size_t LK = (size_t)CL * K, LV = (size_t)CL * V, KV = (size_t)K * V;
    real **lk[] = {&w->Q, &w->Kp, &w->P, &w->Qh, &w->Kh, &w->Qa, &w->Qb, &w->Xa, &w->Xb, &w->Y,
                   &w->Z, &w->Kg, &w->Kh_end, &w->dQ, &w->dKp, &w->dP, &w->tLK1, &w->tLK2};
    for (size_t i = 0; i < sizeof(lk) / sizeof(lk[0]); i++) *lk[i] = (real *)xcalloc(LK, sizeof(real));
    real **lv[] = {&w->Vv, &w->U0, &w->Vn, &w->dO, &w->dVn, &w->Gm, &w->tLV1, &w->tLV2};
    for (size_t i = 0; i < sizeof(lv) / sizeof(lv[0]); i++) *lv[i] = (real *)xcalloc(LV, sizeof(real));
    w->nS = (real *)xcalloc(KV, sizeof(real));
    w->nM = (real *)xcalloc(KV, sizeof(real));
    return w;
}

static void work_free(Work *w) {
    real *all[] = {w->Q, w->Kp, w->P, w->Qh, w->Kh, w->Qa, w->Qb, w->Xa, w->Xb, w->Y, w->Z, w->Kg,
                   w->Kh_end, w->dQ, w->dKp, w->dP, w->tLK1, w->tLK2, w->Vv, w->U0, w->Vn, w->dO,
                   w->dVn, w->Gm, w->tLV1, w->tLV2, w->nS, w->nM};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) free(all[i]);
    free(w);
}

// ----------------------------------------------------------------------------------------------
// preprocessing (§5.1) and its backward, one segment [t0, t0+L) of one (b,h)
// ----------------------------------------------------------------------------------------------
static size_t row_k(const MdnShape *s, int b, int t, int h) { return (((size_t)b * s->T + t) * s->H + h) * s->K; }
static size_t row_v(const MdnShape *s, int b, int t, int h) { return (((size_t)b * s->T + t) * s->H + h) * s->V; }
static size_t gate(const MdnShape *s, int b, int t, int h) { return ((size_t)b * s->T + t) * s->H + h; }

// y = x / sqrt(|x|^2 + eps); returns the inverse norm rho
static double l2_normalize(const real *x, real *y, int n) {
    double rho = 1.0 / sqrt(dot(x, x, n) + L2_EPS);
    for (int i = 0; i < n; i++) y[i] = (real)(x[i] * rho);
    return rho;
}

// backward of y = x*rho: dx = rho * (dy - <dy,y> y)
static void l2_normalize_backward(const real *y, double rho, const real *dy, real *dx, int n) {
    double d = dot(dy, y, n);
    for (int i = 0; i < n; i++) dx[i] = (real)(rho * (dy[i] - d * y[i]));
}

// fill w's rows for tokens t0..t0+L-1: qbar = K^-1/2 q_hat, kappa = eta k_hat, p = alpha k_hat
static void load_rows(const MdnShape *s, const MdnInputs *in, int b, int h, int t0, int L, Work *w) {
    int K = s->K, V = s->V;
    double scale = 1.0 / sqrt((double)K);
    for (int i = 0; i < L; i++) {
        int t = t0 + i;
        size_t g = gate(s, b, t, h);
        w->la[i] = in->log_alpha[g];
        w->lm[i] = in->log_mu[g];
        w->beta[i] = in->beta[g];
        w->eta[i] = in->eta[g];
        w->alpha[i] = exp(w->la[i]);
        w->mu[i] = exp(w->lm[i]);
        real *qh = w->Qh + (size_t)i * K, *kh = w->Kh + (size_t)i * K;
        w->rq[i] = l2_normalize(in->q + row_k(s, b, t, h), qh, K);
        w->rk[i] = l2_normalize(in->k + row_k(s, b, t, h), kh, K);
        double read = s->use_p_times_alpha ? w->alpha[i] : 1.0;
        for (int c = 0; c < K; c++) {
            w->Q[(size_t)i * K + c] = (real)(scale * qh[c]);
            w->Kp[(size_t)i * K + c] = (real)(w->eta[i] * kh[c]);
            w->P[(size_t)i * K + c] = (real)(read * kh[c]);
        }
        memcpy(w->Vv + (size_t)i * V, in->v + row_v(s, b, t, h), (size_t)V * sizeof(real));
    }
}

// from the core gradients of the segment (dqbar = w->dQ, dkappa = w->dKp, dp = w->dP, dv = w->Gm,
// w->dla, w->dlm, w->dbeta) to the op's gradients, written at the segment's rows
static void store_row_grads(const MdnShape *s, int b, int h, int t0, int L, Work *w, MdnGrads *gr) {
    int K = s->K, V = s->V;
    double scale = 1.0 / sqrt((double)K);
    real *dqh = w->tLK1, *dkh = w->tLK2;   // one row each is enough
    for (int i = 0; i < L; i++) {
        int t = t0 + i;
        size_t g = gate(s, b, t, h);
        const real *dqbar = w->dQ + (size_t)i * K, *dkap = w->dKp + (size_t)i * K, *dp = w->dP + (size_t)i * K;
        const real *kh = w->Kh + (size_t)i * K;
        double read = s->use_p_times_alpha ? w->alpha[i] : 1.0;
        for (int c = 0; c < K; c++) {
            dqh[c] = (real)(scale * dqbar[c]);
            dkh[c] = (real)(w->eta[i] * dkap[c] + read * dp[c]);
        }
        l2_normalize_backward(w->Qh + (size_t)i * K, w->rq[i], dqh, gr->dq + row_k(s, b, t, h), K);
        l2_normalize_backward(kh, w->rk[i], dkh, gr->dk + row_k(s, b, t, h), K);
        gr->deta[g] = (real)dot(dkap, kh, K);
        double dla = w->dla[i];
        if (s->use_p_times_alpha) dla += w->alpha[i] * dot(dp, kh, K);   // p = exp(log_alpha) k_hat
        gr->dlog_alpha[g] = (real)dla;
        gr->dlog_mu[g] = (real)w->dlm[i];
        gr->dbeta[g] = (real)w->dbeta[i];
        memcpy(gr->dv + row_v(s, b, t, h), w->Gm + (size_t)i * V, (size_t)V * sizeof(real));
    }
}

static void load_state(const real *src, const MdnShape *s, int b, int h, real *dst) {
    size_t KV = (size_t)s->K * s->V;
    if (src != NULL) memcpy(dst, src + ((size_t)b * s->H + h) * KV, KV * sizeof(real));
    else zero(dst, KV);
}

static void store_state(real *dst, const MdnShape *s, int b, int h, const real *src) {
    size_t KV = (size_t)s->K * s->V;
    if (dst != NULL) memcpy(dst + ((size_t)b * s->H + h) * KV, src, KV * sizeof(real));
}

// ----------------------------------------------------------------------------------------------
// recurrent form (§5.1, §5.2)
// ----------------------------------------------------------------------------------------------

// one step: r = S^T p - v; M = mu M + kappa r^T; S = alpha S - beta M; o = S^T qbar
static void recurrent_step(Work *w, int i, real *S, real *M, real *r, real *o) {
    int K = w->K, V = w->V;
    const real *p = w->P + (size_t)i * K, *kap = w->Kp + (size_t)i * K, *qb = w->Q + (size_t)i * K;
    const real *v = w->Vv + (size_t)i * V;
    real al = (real)w->alpha[i], mu = (real)w->mu[i], be = (real)w->beta[i];
    for (int j = 0; j < V; j++) r[j] = -v[j];
    mm_tn(r, p, S, 1, V, K, 1);   // r (a 1 x V row) += p^T S
    for (int c = 0; c < K; c++) {
        real *Sr = S + (size_t)c * V, *Mr = M + (size_t)c * V;
        real kc = kap[c];
        #pragma omp simd
        for (int j = 0; j < V; j++) {
            Mr[j] = mu * Mr[j] + kc * r[j];
            Sr[j] = al * Sr[j] - be * Mr[j];
        }
    }
    if (o != NULL) {
        zero(o, V);
        mm_tn(o, qb, S, 1, V, K, 1);
    }
}

void mdn_recurrent_forward(const MdnShape *s, const MdnInputs *in, real *o, real *S_final, real *M_final) {
    int BH = s->B * s->H;
    size_t KV = (size_t)s->K * s->V;
    #pragma omp parallel
    {
        Work *w = work_alloc(s->K, s->V);
        real *S = (real *)xmalloc(KV * sizeof(real)), *M = (real *)xmalloc(KV * sizeof(real));
        real *r = (real *)xmalloc((size_t)s->V * sizeof(real));
        #pragma omp for schedule(static)
        for (int bh = 0; bh < BH; bh++) {
            int b = bh / s->H, h = bh % s->H;
            load_state(in->S0, s, b, h, S);
            load_state(in->M0, s, b, h, M);
            for (int t0 = 0; t0 < s->T; t0 += CL) {
                int L = s->T - t0 < CL ? s->T - t0 : CL;
                load_rows(s, in, b, h, t0, L, w);
                for (int i = 0; i < L; i++) recurrent_step(w, i, S, M, r, o + row_v(s, b, t0 + i, h));
            }
            store_state(S_final, s, b, h, S);
            store_state(M_final, s, b, h, M);
        }
        free(S); free(M); free(r);
        work_free(w);
    }
}

// The adjoint of one step (§5.2), row i of the segment. Shist/Mhist hold S_{t-1} at [i] and S_t
// at [i+1]; dS, dM (the adjoints of S_t, M_t on entry) become those of S_{t-1}, M_{t-1}.
static void recurrent_step_backward(Work *w, int i, const real *Shist, const real *Mhist, const real *R,
                                    real *dS, real *dM, real *dr) {
    int K = w->K, V = w->V;
    size_t KV = (size_t)K * V;
    const real *S_t = Shist + (i + 1) * KV, *S_p = Shist + i * KV, *M_t = Mhist + (i + 1) * KV, *M_p = Mhist + i * KV;
    const real *r = R + (size_t)i * V, *d_o = w->dO + (size_t)i * V;
    const real *qb = w->Q + (size_t)i * K, *kap = w->Kp + (size_t)i * K, *p = w->P + (size_t)i * K;
    real *dqb = w->dQ + (size_t)i * K, *dkap = w->dKp + (size_t)i * K, *dp = w->dP + (size_t)i * K;
    real *dv = w->Gm + (size_t)i * V;
    real al = (real)w->alpha[i], mu = (real)w->mu[i], be = (real)w->beta[i];
    // Two passes over the state rows instead of one per formula. Pass 1, per row c:
    //   o_t = S_t^T qbar:            dqbar[c] = S_t[c] . do;     dS[c] += qbar[c] do
    //   S_t = alpha S_{t-1} - beta M_t:  dlog_alpha += alpha <dS, S_{t-1}>; dbeta -= <dS, M_t>;
    //                                    dM[c] -= beta dS[c]
    //   M_t = mu M_{t-1} + kappa r^T:    dlog_mu += mu <dM, M_{t-1}>; dkappa[c] = dM[c] . r;
    //                                    dr += kappa[c] dM[c]
    double dla = 0, dbeta = 0, dlm = 0;
    zero(dr, V);
    for (int c = 0; c < K; c++) {
        real *dSr = dS + (size_t)c * V, *dMr = dM + (size_t)c * V;
        const real *St = S_t + (size_t)c * V, *Sp = S_p + (size_t)c * V, *Mt = M_t + (size_t)c * V, *Mp = M_p + (size_t)c * V;
        real qc = qb[c], kc = kap[c], dq = 0;
        double sa = 0, sb = 0, sm = 0, sk = 0;
        #pragma omp simd reduction(+:dq, sa, sb, sm, sk)
        for (int j = 0; j < V; j++) {
            dq += St[j] * d_o[j];
            real ds = dSr[j] + qc * d_o[j];
            dSr[j] = ds;
            sa += (double)ds * Sp[j];
            sb += (double)ds * Mt[j];
            real dm = dMr[j] - be * ds;
            dMr[j] = dm;
            sm += (double)dm * Mp[j];
            sk += (double)dm * r[j];
            dr[j] += kc * dm;
        }
        dqb[c] = dq;
        dkap[c] = (real)sk;
        dla += sa;
        dbeta += sb;
        dlm += sm;
    }
    w->dla[i] = w->alpha[i] * dla;
    w->dbeta[i] = -dbeta;
    w->dlm[i] = w->mu[i] * dlm;
    // r = S_{t-1}^T p - v: dv = -dr, dp = S_{t-1} dr; then the adjoints step back one time:
    // dS <- alpha dS + p dr^T, dM <- mu dM
    for (int j = 0; j < V; j++) dv[j] = -dr[j];
    for (int c = 0; c < K; c++) {
        real *dSr = dS + (size_t)c * V, *dMr = dM + (size_t)c * V;
        const real *Sp = S_p + (size_t)c * V;
        real pc = p[c], acc = 0;
        #pragma omp simd reduction(+:acc)
        for (int j = 0; j < V; j++) {
            acc += Sp[j] * dr[j];
            dSr[j] = al * dSr[j] + pc * dr[j];
            dMr[j] = mu * dMr[j];
        }
        dp[c] = acc;
    }
}

static void load_rows_v(const real *src, const MdnShape *s, int b, int h, int t0, int L, real *dst) {
    for (int i = 0; i < L; i++)
        memcpy(dst + (size_t)i * s->V, src + row_v(s, b, t0 + i, h), (size_t)s->V * sizeof(real));
}

// The recurrent backward keeps the states only at segment starts (every CL steps) and recomputes
// a segment's CL+1 states before running its adjoint: memory O(T/CL + CL) states, not O(T).
void mdn_recurrent_backward(const MdnShape *s, const MdnInputs *in, const real *d_o,
                            const real *dS_final, const real *dM_final, MdnGrads *gr) {
    int BH = s->B * s->H, nseg = (s->T + CL - 1) / CL;
    size_t KV = (size_t)s->K * s->V;
    #pragma omp parallel
    {
        Work *w = work_alloc(s->K, s->V);
        real *ckS = (real *)xmalloc((size_t)nseg * KV * sizeof(real)), *ckM = (real *)xmalloc((size_t)nseg * KV * sizeof(real));
        real *Shist = (real *)xmalloc((CL + 1) * KV * sizeof(real)), *Mhist = (real *)xmalloc((CL + 1) * KV * sizeof(real));
        real *R = (real *)xmalloc((size_t)CL * s->V * sizeof(real)), *dr = (real *)xmalloc((size_t)s->V * sizeof(real));
        real *dS = (real *)xmalloc(KV * sizeof(real)), *dM = (real *)xmalloc(KV * sizeof(real));
        #pragma omp for schedule(static)
        for (int bh = 0; bh < BH; bh++) {
            int b = bh / s->H, h = bh % s->H;
            // forward, keeping the states at segment starts
            load_state(in->S0, s, b, h, Shist);
            load_state(in->M0, s, b, h, Mhist);
            for (int seg = 0; seg < nseg; seg++) {
                int t0 = seg * CL, L = s->T - t0 < CL ? s->T - t0 : CL;
                memcpy(ckS + seg * KV, Shist, KV * sizeof(real));
                memcpy(ckM + seg * KV, Mhist, KV * sizeof(real));
                load_rows(s, in, b, h, t0, L, w);
                for (int i = 0; i < L; i++) recurrent_step(w, i, Shist, Mhist, R, NULL);
            }
            // reverse time, segment by segment
            load_state(dS_final, s, b, h, dS);
            load_state(dM_final, s, b, h, dM);
            for (int seg = nseg - 1; seg >= 0; seg--) {
                int t0 = seg * CL, L = s->T - t0 < CL ? s->T - t0 : CL;
                load_rows(s, in, b, h, t0, L, w);
                load_rows_v(d_o, s, b, h, t0, L, w->dO);
                memcpy(Shist, ckS + seg * KV, KV * sizeof(real));
                memcpy(Mhist, ckM + seg * KV, KV * sizeof(real));
                for (int i = 0; i < L; i++) {
                    memcpy(Shist + (i + 1) * KV, Shist + i * KV, KV * sizeof(real));
                    memcpy(Mhist + (i + 1) * KV, Mhist + i * KV, KV * sizeof(real));
                    recurrent_step(w, i, Shist + (i + 1) * KV, Mhist + (i + 1) * KV, R + (size_t)i * s->V, NULL);
                }
                for (int i = L - 1; i >= 0; i--) recurrent_step_backward(w, i, Shist, Mhist, R, dS, dM, dr);
                store_row_grads(s, b, h, t0, L, w, gr);
            }
            store_state(gr->dS0, s, b, h, dS);
            store_state(gr->dM0, s, b, h, dM);
        }
        free(ckS); free(ckM); free(Shist); free(Mhist); free(R); free(dr); free(dS); free(dM);
        work_free(w);
    }
}

// ----------------------------------------------------------------------------------------------
// chunkwise form (§6): one chunk of L <= CL rows; L x L matrices are stored with row stride L
// ----------------------------------------------------------------------------------------------

// The gate coefficients, in double. Every one is a product or a sum of non-negative terms, so
// each keeps full relative precision however fast alpha or mu decay (the release's factorised
// form, 1 - exp(.), loses it: mdn-spec.md §8):
//   A_i, C_i   in-chunk prefix sums of log alpha, log mu;  a = e^A, m = e^C
//   Em[i,j]    = e^(C_i - C_j) = mu_{j+1..i} (j <= i): exponent <= 0
//   Gamma[i,j] = sum_{l=j..i} alpha_{l+1..i} beta_l mu_{j+1..l}, by its own forward recurrence
//                Gamma[i,j] = alpha_i Gamma[i-1,j] + beta_i Em[i,j]
//   b_i        = sum_{l<=i} alpha_{l+1..i} beta_l m_l = alpha_i b_{i-1} + beta_i m_i
//   Ea[i,l]    = e^(A_i - A_l) (backward only: it factors Gamma = Ea diag(beta) Em there)
// Coefficients below COEF_FLUSH are set to zero. They scale O(1) values into contributions far
// below rounding (the smallest coefficient that matters is Gamma's diagonal, beta), and left in,
// they and their float products are subnormal numbers, which cost ~100x per operation on many
// x86 CPUs; fast decays make them common (a_i = e^(A_i) reaches e^-320 within a chunk).
#define COEF_FLUSH 1e-30
static double flush_tiny(double x) { return fabs(x) < COEF_FLUSH ? 0.0 : x; }

static void chunk_coefficients(Work *w, int L, int need_Ea) {
    double A = 0, C = 0;
    for (int i = 0; i < L; i++) {
        A += w->la[i];
        C += w->lm[i];
        w->A[i] = A;
        w->C[i] = C;
        w->a[i] = flush_tiny(exp(A));
        w->m[i] = flush_tiny(exp(C));
    }
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < L; j++) {
            double em = j <= i ? flush_tiny(exp(w->C[i] - w->C[j])) : 0.0;
            w->Em[i * L + j] = em;
            double g = j <= i ? w->beta[i] * em + (i > 0 ? w->alpha[i] * w->Gam[(i - 1) * L + j] : 0.0) : 0.0;
            w->Gam[i * L + j] = flush_tiny(g);
            w->G[i * L + j] = (real)w->Gam[i * L + j];
            if (need_Ea) w->Ea[i * L + j] = j <= i ? exp(w->A[i] - w->A[j]) : 0.0;
        }
        w->b[i] = flush_tiny(w->alpha[i] * (i > 0 ? w->b[i - 1] : 0.0) + w->beta[i] * w->m[i]);
        w->a_prev[i] = i > 0 ? w->a[i - 1] : 1.0;   // the incoming state's coefficients at row i
        w->b_prev[i] = i > 0 ? w->b[i - 1] : 0.0;
    }
}

// The state-independent part of a chunk (on the GPU: all chunks in parallel).
// The new values U (= -r) solve (I + A) U = V - Xa S0 + Xb M0 with the strictly lower
// A[i,j] = (p_i . kappa_j) Gamma[i-1,j]; T^-1 = (I + A)^-1 is formed by forward substitution
// (in double: it is L^3/6 work), then U0 = T^-1 V, Y = T^-1 Xa, Z = T^-1 Xb.
static void chunk_prepare(Work *w, int L, int need_Ea) {
    int K = w->K, V = w->V;
    chunk_coefficients(w, L, need_Ea);
    zero(w->QK, (size_t)L * L);
    mm_nt(w->QK, w->Q, w->Kp, L, L, K, 1);
    zero(w->PK, (size_t)L * L);
    mm_nt(w->PK, w->P, w->Kp, L, L, K, 1);
    for (int i = 0; i < L; i++)
        for (int j = 0; j < L; j++) w->W[i * L + j] = j <= i ? w->QK[i * L + j] * w->G[i * L + j] : 0;
    // row i of T^-1 = e_i - sum_{l<i} A[i,l] (row l of T^-1); row l is zero beyond column l
    double *Ti = w->Tinv_d;
    for (int i = 0; i < L; i++) {
        double *row = Ti + i * L;
        for (int j = 0; j < L; j++) row[j] = j == i ? 1.0 : 0.0;
        for (int l = 0; l < i; l++) {
            double coef = (double)w->PK[i * L + l] * w->Gam[(i - 1) * L + l];
            for (int j = 0; j <= l; j++) row[j] -= coef * Ti[l * L + j];
        }
    }
    for (int e = 0; e < L * L; e++) w->Tinv[e] = (real)Ti[e];
    // row-scaled copies of the keys, so the state step is plain products
    for (int i = 0; i < L; i++) {
        real a = (real)w->a[i], b = (real)w->b[i], ap = (real)w->a_prev[i], bp = (real)w->b_prev[i];
        real g = (real)w->Gam[(L - 1) * L + i], hh = (real)w->Em[(L - 1) * L + i];
        for (int c = 0; c < K; c++) {
            size_t e = (size_t)i * K + c;
            w->Qa[e] = a * w->Q[e];
            w->Qb[e] = b * w->Q[e];
            w->Xa[e] = ap * w->P[e];
            w->Xb[e] = bp * w->P[e];
            w->Kg[e] = g * w->Kp[e];
            w->Kh_end[e] = hh * w->Kp[e];
        }
    }
    zero(w->U0, (size_t)L * V);
    mm_nn(w->U0, w->Tinv, w->Vv, L, V, L, 1);
    zero(w->Y, (size_t)L * K);
    mm_nn(w->Y, w->Tinv, w->Xa, L, K, L, 1);
    zero(w->Z, (size_t)L * K);
    mm_nn(w->Z, w->Tinv, w->Xb, L, K, L, 1);
}

// the state-dependent part (sequential over chunks): new values U = U0 - Y S0 + Z M0
static void chunk_new_values(Work *w, int L, const real *S, const real *M) {
    memcpy(w->Vn, w->U0, (size_t)L * w->V * sizeof(real));
    mm_nn(w->Vn, w->Y, S, L, w->V, w->K, -1);
    mm_nn(w->Vn, w->Z, M, L, w->V, w->K, 1);
}

// O = diag(a) Qbar S0 - diag(b) Qbar M0 + ((Qbar Kk^T) o Gamma) U
static void chunk_output(Work *w, int L, const real *S, const real *M, real *O) {
    zero(O, (size_t)L * w->V);
    mm_nn(O, w->Qa, S, L, w->V, w->K, 1);
    mm_nn(O, w->Qb, M, L, w->V, w->K, -1);
    mm_nn(O, w->W, w->Vn, L, w->V, L, 1);
}

// S_L = a_L S0 - b_L M0 + Kk^T diag(Gamma[L-1,.]) U;  M_L = m_L M0 - Kk^T diag(Em[L-1,.]) U
static void chunk_advance_states(Work *w, int L, real *S, real *M) {
    size_t KV = (size_t)w->K * w->V;
    real aL = (real)w->a[L - 1], bL = (real)w->b[L - 1], mL = (real)w->m[L - 1];
    for (size_t e = 0; e < KV; e++) {
        S[e] = aL * S[e] - bL * M[e];
        M[e] = mL * M[e];
    }
    mm_tn(S, w->Kg, w->Vn, w->K, w->V, L, 1);
    mm_tn(M, w->Kh_end, w->Vn, w->K, w->V, L, -1);
}

void mdn_chunk_forward(const MdnShape *s, const MdnInputs *in, real *o, real *S_final, real *M_final) {
    int BH = s->B * s->H;
    size_t KV = (size_t)s->K * s->V;
    #pragma omp parallel
    {
        Work *w = work_alloc(s->K, s->V);
        real *S = (real *)xmalloc(KV * sizeof(real)), *M = (real *)xmalloc(KV * sizeof(real));
        #pragma omp for schedule(static)
        for (int bh = 0; bh < BH; bh++) {
            int b = bh / s->H, h = bh % s->H;
            load_state(in->S0, s, b, h, S);
            load_state(in->M0, s, b, h, M);
            for (int t0 = 0; t0 < s->T; t0 += CL) {
                int L = s->T - t0 < CL ? s->T - t0 : CL;
                load_rows(s, in, b, h, t0, L, w);
                chunk_prepare(w, L, 0);
                chunk_new_values(w, L, S, M);
                chunk_output(w, L, S, M, w->tLV1);
                for (int i = 0; i < L; i++)
                    memcpy(o + row_v(s, b, t0 + i, h), w->tLV1 + (size_t)i * s->V, (size_t)s->V * sizeof(real));
                chunk_advance_states(w, L, S, M);
            }
            store_state(S_final, s, b, h, S);
            store_state(M_final, s, b, h, M);
        }
        free(S); free(M);
        work_free(w);
    }
}

// Stage 4 of the chunk backward: from the gradients of the coefficients (dG = dGamma, dEm, da,
// db, dm) to those of the gates. Gamma = Ea diag(beta) Em and b = Ea (beta o m), so with
// DGE[i,l] = sum_j dGamma[i,j] Em[l,j]:  dEa[i,l] = beta_l (DGE[i,l] + db_i m_l),
// dbeta_l = sum_i Ea[i,l] (DGE[i,l] + db_i m_l), dm_l += beta_l sum_i Ea[i,l] db_i,
// dEm[l,j] += beta_l sum_i Ea[i,l] dGamma[i,j]. A_i enters Ea[i,l] with + and Ea[l,i] with -
// (the diagonal is the constant 1 and is skipped), plus a_i = e^(A_i); likewise C. The log gates'
// gradients are the reverse cumulative sums of dA, dC (A, C are prefix sums).
static void chunk_coefficients_backward(Work *w, int L) {
    const double *Ea = w->Ea, *Em = w->Em, *dG = w->dG;
    double dA[CL] = {0}, dC[CL] = {0}, dEmG[CL * CL];
    for (int i = 0; i < L; i++)
        for (int l = 0; l <= i; l++) {
            double acc = 0;
            for (int j = 0; j <= l; j++) acc += dG[i * L + j] * Em[l * L + j];
            w->DGE[i * L + l] = acc;
        }
    memset(dEmG, 0, sizeof(double) * L * L);
    for (int i = 0; i < L; i++)
        for (int l = 0; l <= i; l++) {
            double e = Ea[i * L + l];
            for (int j = 0; j <= l; j++) dEmG[l * L + j] += e * dG[i * L + j];
        }
    for (int l = 0; l < L; l++) {
        double s1 = 0, s2 = 0;
        for (int i = l; i < L; i++) {
            s1 += Ea[i * L + l] * w->DGE[i * L + l];
            s2 += Ea[i * L + l] * w->db[i];
        }
        w->dbeta[l] = s1 + w->m[l] * s2;
        w->dm[l] += w->beta[l] * s2;
        for (int j = 0; j <= l; j++) w->dEm[l * L + j] += w->beta[l] * dEmG[l * L + j];
    }
    for (int i = 0; i < L; i++)
        for (int l = 0; l < i; l++) {
            double ra = w->beta[l] * (w->DGE[i * L + l] + w->db[i] * w->m[l]) * Ea[i * L + l];
            dA[i] += ra;
            dA[l] -= ra;
            double rm = w->dEm[i * L + l] * Em[i * L + l];
            dC[i] += rm;
            dC[l] -= rm;
        }
    double sa = 0, sc = 0;
    for (int i = L - 1; i >= 0; i--) {
        sa += dA[i] + w->da[i] * w->a[i];
        sc += dC[i] + w->dm[i] * w->m[i];
        w->dla[i] = sa;
        w->dlm[i] = sc;
    }
}

// Backward of one chunk, stages 1-4 of mdn-spec.md §6 (mdn_ref.py chunk_bwd_one). Needs the
// prepare (with Ea) and the new values U of this chunk, the chunk's incoming states S0, M0 and
// w->dO. On entry dS, dM are the gradients of the chunk's outgoing states; on return those of
// its incoming ones. Leaves dqbar, dkappa, dp, dv (w->Gm) and the core gate gradients in w.
static void chunk_backward_one(Work *w, int L, const real *S0, const real *M0, real *dS, real *dM) {
    int K = w->K, V = w->V;
    size_t KV = (size_t)K * V, LK = (size_t)L * K, LV = (size_t)L * V;
    real *KdS = w->tLV1, *KdM = w->tLV2, *t1 = w->tLK1, *t2 = w->tLK2;
    real *nS = w->nS, *nM = w->nM;
    for (int i = 0; i < L; i++) w->da[i] = w->db[i] = w->dm[i] = 0;
    memset(w->dG, 0, sizeof(double) * L * L);
    memset(w->dEm, 0, sizeof(double) * L * L);
    zero(w->dQ, LK);
    zero(w->dKp, LK);

    // 1. end states: S_L = a_L S0 - b_L M0 + Kk^T diag(g) U, M_L = m_L M0 - Kk^T diag(h) U
    zero(KdS, LV);
    mm_nn(KdS, w->Kp, dS, L, V, K, 1);
    zero(KdM, LV);
    mm_nn(KdM, w->Kp, dM, L, V, K, 1);
    for (int j = 0; j < L; j++) {
        real g = w->G[(L - 1) * L + j], hh = (real)w->Em[(L - 1) * L + j];
        w->dG[(L - 1) * L + j] += dot(KdS + (size_t)j * V, w->Vn + (size_t)j * V, V);
        w->dEm[(L - 1) * L + j] -= dot(KdM + (size_t)j * V, w->Vn + (size_t)j * V, V);
        for (int c = 0; c < V; c++) w->dVn[(size_t)j * V + c] = g * KdS[(size_t)j * V + c] - hh * KdM[(size_t)j * V + c];
    }
    zero(t1, LK);
    mm_nt(t1, w->Vn, dS, L, K, V, 1);
    zero(t2, LK);
    mm_nt(t2, w->Vn, dM, L, K, V, 1);
    for (int j = 0; j < L; j++) {
        real g = w->G[(L - 1) * L + j], hh = (real)w->Em[(L - 1) * L + j];
        for (int c = 0; c < K; c++) w->dKp[(size_t)j * K + c] = g * t1[(size_t)j * K + c] - hh * t2[(size_t)j * K + c];
    }
    w->da[L - 1] += dot(dS, S0, KV);
    w->db[L - 1] -= dot(dS, M0, KV);
    w->dm[L - 1] += dot(dM, M0, KV);
    real aL = (real)w->a[L - 1], bL = (real)w->b[L - 1], mL = (real)w->m[L - 1];
    for (size_t e = 0; e < KV; e++) {
        nS[e] = aL * dS[e];
        nM[e] = mL * dM[e] - bL * dS[e];
    }

    // 2. outputs: O = diag(a) Qbar S0 - diag(b) Qbar M0 + ((Qbar Kk^T) o Gamma) U
    zero(t1, LK);
    mm_nt(t1, w->dO, S0, L, K, V, 1);   // dO S0^T
    zero(t2, LK);
    mm_nt(t2, w->dO, M0, L, K, V, 1);   // dO M0^T
    for (int i = 0; i < L; i++) {
        real a = (real)w->a[i], b = (real)w->b[i];
        for (int c = 0; c < K; c++) w->dQ[(size_t)i * K + c] = a * t1[(size_t)i * K + c] - b * t2[(size_t)i * K + c];
        w->da[i] += dot(w->Q + (size_t)i * K, t1 + (size_t)i * K, K);
        w->db[i] -= dot(w->Q + (size_t)i * K, t2 + (size_t)i * K, K);
    }
    mm_tn(nS, w->Qa, w->dO, K, V, L, 1);
    mm_tn(nM, w->Qb, w->dO, K, V, L, -1);
    zero(w->dW, (size_t)L * L);
    mm_nt(w->dW, w->dO, w->Vn, L, L, V, 1);   // dW = dO U^T
    for (int i = 0; i < L; i++)
        for (int j = 0; j < L; j++) {
            int e = i * L + j;
            w->dWG[e] = j <= i ? w->dW[e] * w->G[e] : 0;     // d(Qbar Kk^T)
            if (j <= i) w->dG[e] += (double)w->dW[e] * w->QK[e];
        }
    mm_nn(w->dQ, w->dWG, w->Kp, L, K, L, 1);
    mm_tn(w->dKp, w->dWG, w->Q, L, K, L, 1);
    mm_tn(w->dVn, w->W, w->dO, L, V, L, 1);

    // 3. new values: U = T^-1 R, R = V - Xa S0 + Xb M0. Gm = T^-T dU is dR (and dv); the
    // derivative of the inverse gives dA = -Gm U^T on the strict lower triangle.
    zero(w->Gm, LV);
    mm_tn(w->Gm, w->Tinv, w->dVn, L, V, L, 1);
    zero(t1, LK);
    mm_nt(t1, w->Gm, S0, L, K, V, 1);   // Gm S0^T
    zero(t2, LK);
    mm_nt(t2, w->Gm, M0, L, K, V, 1);   // Gm M0^T
    for (int i = 0; i < L; i++) {
        real ap = (real)w->a_prev[i], bp = (real)w->b_prev[i];
        for (int c = 0; c < K; c++) w->dP[(size_t)i * K + c] = bp * t2[(size_t)i * K + c] - ap * t1[(size_t)i * K + c];
        if (i > 0) {   // a_prev[i] = a[i-1], b_prev[i] = b[i-1]; a_prev[0] = 1 is a constant
            w->da[i - 1] -= dot(t1 + (size_t)i * K, w->P + (size_t)i * K, K);
            w->db[i - 1] += dot(t2 + (size_t)i * K, w->P + (size_t)i * K, K);
        }
    }
    mm_tn(nS, w->Xa, w->Gm, K, V, L, -1);
    mm_tn(nM, w->Xb, w->Gm, K, V, L, 1);
    zero(w->dAm, (size_t)L * L);
    mm_nt(w->dAm, w->Gm, w->Vn, L, L, V, -1);
    // A = (P Kk^T) o Gamma_prev, Gamma_prev[i,j] = Gamma[i-1,j] (j < i)
    for (int i = 0; i < L; i++)
        for (int j = 0; j < L; j++) {
            int e = i * L + j;
            if (j < i) {
                w->dWG[e] = w->dAm[e] * w->G[(i - 1) * L + j];   // d(P Kk^T)
                w->dG[(i - 1) * L + j] += (double)w->dAm[e] * w->PK[e];
            } else {
                w->dWG[e] = 0;
            }
        }
    mm_nn(w->dP, w->dWG, w->Kp, L, K, L, 1);
    mm_tn(w->dKp, w->dWG, w->P, L, K, L, 1);

    // 4. coefficients -> gates
    chunk_coefficients_backward(w, L);
    memcpy(dS, nS, KV * sizeof(real));
    memcpy(dM, nM, KV * sizeof(real));
}

// The chunk backward runs the forward state pass once more to keep each chunk's incoming
// states (the only sequential data), then walks the chunks backwards, recomputing each chunk's
// prepare and new values from its stored incoming states.
void mdn_chunk_backward(const MdnShape *s, const MdnInputs *in, const real *d_o,
                        const real *dS_final, const real *dM_final, MdnGrads *gr) {
    int BH = s->B * s->H, nch = (s->T + CL - 1) / CL;
    size_t KV = (size_t)s->K * s->V;
    #pragma omp parallel
    {
        Work *w = work_alloc(s->K, s->V);
        real *ckS = (real *)xmalloc((size_t)(nch + 1) * KV * sizeof(real));
        real *ckM = (real *)xmalloc((size_t)(nch + 1) * KV * sizeof(real));
        real *dS = (real *)xmalloc(KV * sizeof(real)), *dM = (real *)xmalloc(KV * sizeof(real));
        #pragma omp for schedule(static)
        for (int bh = 0; bh < BH; bh++) {
            int b = bh / s->H, h = bh % s->H;
            load_state(in->S0, s, b, h, ckS);
            load_state(in->M0, s, b, h, ckM);
            for (int c = 0; c < nch; c++) {
                int t0 = c * CL, L = s->T - t0 < CL ? s->T - t0 : CL;
                real *S = ckS + (c + 1) * KV, *M = ckM + (c + 1) * KV;
                memcpy(S, ckS + c * KV, KV * sizeof(real));
                memcpy(M, ckM + c * KV, KV * sizeof(real));
                load_rows(s, in, b, h, t0, L, w);
                chunk_prepare(w, L, 0);
                chunk_new_values(w, L, S, M);
                chunk_advance_states(w, L, S, M);
            }
            load_state(dS_final, s, b, h, dS);
            load_state(dM_final, s, b, h, dM);
            for (int c = nch - 1; c >= 0; c--) {
                int t0 = c * CL, L = s->T - t0 < CL ? s->T - t0 : CL;
                const real *S0 = ckS + c * KV, *M0 = ckM + c * KV;
                load_rows(s, in, b, h, t0, L, w);
                load_rows_v(d_o, s, b, h, t0, L, w->dO);
                chunk_prepare(w, L, 1);
                chunk_new_values(w, L, S0, M0);
                chunk_backward_one(w, L, S0, M0, dS, dM);
                store_row_grads(s, b, h, t0, L, w, gr);
            }
            store_state(gr->dS0, s, b, h, dS);
            store_state(gr->dM0, s, b, h, dM);
        }
        free(ckS); free(ckM); free(dS); free(dM);
        work_free(w);
    }
}
