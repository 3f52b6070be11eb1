// mdn_gates.c: see mdn_gates.h. The forward recomputes nothing from the backward's point of view:
// the backward recomputes every intermediate from the projections (cheap: rows·H values).
#include "mdn_gates.h"

#include <stddef.h>

static real softplus(real x) { return x > 20 ? x : log1p(exp(x)); }
static real softplus_grad(real x) { return x > 20 ? 1 : 1 / (1 + exp(-x)); }
static real sigmoid(real x) { return 1 / (1 + exp(-x)); }

void mdn_gates_forward(real *log_alpha, real *log_mu, real *beta, real *eta,
                       const real *a, const real *b, const real *m, const real *e,
                       const real *A_log, const real *Mu_log, const real *dt_bias, const real *mu_bias,
                       const real *log_factor, int rows, int H, real inv_tau, real min_log_mu) {
    #pragma omp parallel for
    for (int i = 0; i < rows; i++)
        for (int h = 0; h < H; h++) {
            size_t j = (size_t)i * H + h;
            real la = -exp(A_log[h]) * softplus(a[j] + dt_bias[h]);
            real lm = -exp(Mu_log[h]) * softplus(m[j] + mu_bias[h]);
            real et = tanh(e[j] * inv_tau) + 1;
            real z = et * exp(log_factor[h]), z2 = z * z;
            beta[j] = sigmoid(b[j]) * z2 / (1 + z2);
            log_alpha[j] = la - log1p(z2);
            log_mu[j] = lm < min_log_mu ? min_log_mu : lm;
            eta[j] = et;
        }
}

void mdn_gates_backward(real *da, real *db, real *dm, real *de,
                        real *dA_log, real *dMu_log, real *ddt_bias, real *dmu_bias, real *dlog_factor,
                        const real *dlog_alpha, const real *dlog_mu, const real *dbeta, const real *deta,
                        const real *a, const real *b, const real *m, const real *e,
                        const real *A_log, const real *Mu_log, const real *dt_bias, const real *mu_bias,
                        const real *log_factor, int rows, int H, real inv_tau, real min_log_mu) {
    // per-token gradients in parallel; the per-head parameter sums serially below (fixed order)
    #pragma omp parallel for
    for (int i = 0; i < rows; i++)
        for (int h = 0; h < H; h++) {
            size_t j = (size_t)i * H + h;
            real th = tanh(e[j] * inv_tau), et = th + 1;
            real z = et * exp(log_factor[h]), z2 = z * z;
            real s = sigmoid(b[j]);
            // β = s·z²/(1+z²): dβ/ds = z²/(1+z²), dβ/dz = s·2z/(1+z²)²; log α gets −log1p(z²): d/dz = −2z/(1+z²)
            real dz = dbeta[j] * s * 2 * z / ((1 + z2) * (1 + z2)) - dlog_alpha[j] * 2 * z / (1 + z2);
            db[j] = dbeta[j] * z2 / (1 + z2) * s * (1 - s);
            real det = deta[j] + dz * exp(log_factor[h]);
            de[j] = det * (1 - th * th) * inv_tau;
            da[j] = -dlog_alpha[j] * exp(A_log[h]) * softplus_grad(a[j] + dt_bias[h]);
            real lm = -exp(Mu_log[h]) * softplus(m[j] + mu_bias[h]);
            real dlm = lm < min_log_mu ? 0 : dlog_mu[j];
            dm[j] = -dlm * exp(Mu_log[h]) * softplus_grad(m[j] + mu_bias[h]);
        }
    for (int i = 0; i < rows; i++)
        for (int h = 0; h < H; h++) {
            size_t j = (size_t)i * H + h;
            real et = tanh(e[j] * inv_tau) + 1;
            real z = et * exp(log_factor[h]), z2 = z * z;
            real s = sigmoid(b[j]);
            real dz = dbeta[j] * s * 2 * z / ((1 + z2) * (1 + z2)) - dlog_alpha[j] * 2 * z / (1 + z2);
            dlog_factor[h] += dz * z;
            dA_log[h] += dlog_alpha[j] * (-exp(A_log[h]) * softplus(a[j] + dt_bias[h]));
            ddt_bias[h] += da[j];
            real lm = -exp(Mu_log[h]) * softplus(m[j] + mu_bias[h]);
            if (!(lm < min_log_mu)) dMu_log[h] += dlog_mu[j] * lm;
            dmu_bias[h] += dm[j];
        }
}

void output_correction_forward(real *q_out, const real *q, const real *k, const real *D_log, int rows, int H, int K) {
    #pragma omp parallel for
    for (int i = 0; i < rows; i++)
        for (int h = 0; h < H; h++) {
            real c = exp(D_log[h]);
            size_t base = ((size_t)i * H + h) * K;
            for (int d = 0; d < K; d++) q_out[base + d] = q[base + d] - c * k[base + d];
        }
}

void output_correction_backward(real *dq, real *dk, real *dD_log, const real *dq_out, const real *k,
                                const real *D_log, int rows, int H, int K) {
    for (int i = 0; i < rows; i++)
        for (int h = 0; h < H; h++) {
            real c = exp(D_log[h]), dot = 0;
            size_t base = ((size_t)i * H + h) * K;
            for (int d = 0; d < K; d++) {
                real g = dq_out[base + d];
                dot += g * k[base + d];
                dk[base + d] -= c * g;
                dq[base + d] = g;
            }
            dD_log[h] -= c * dot;
        }
}
