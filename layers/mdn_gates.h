// mdn_gates.h: the MDN layer's gates (mdn-spec.md §4.2-§4.4) and output correction (§4.5).
// Per token and head, from the projections a, b, m, e (e still undivided by tau):
//   log μ = -exp(Mu_log)·softplus(m + mu_bias),  log α = -exp(A_log)·softplus(a + dt_bias),
//   η = tanh(e/τ) + 1,  β = σ(b);
//   z = η·exp(log_factor):  β ← β·z²/(1+z²),  log α ← log α − log1p(z²)   (θ = arctan z: sin²θ, log cos²θ)
//   log μ ← max(log μ, min_log_mu)   (zero gradient where clamped; min_log_mu = -INFINITY: no clamp)
// softplus(x) = log(1+eˣ), and x itself for x > 20 (the release's threshold, gradient 1 there).
// Layouts: a, b, m, e and the gates [rows, H] with rows = B·T; the parameters [H].
// CUDA twins: mdn_gates_*_cuda, output_correction_*_cuda.
#ifndef MDN_GATES_H
#define MDN_GATES_H

#include "../common/real.h"

#ifdef __cplusplus
extern "C" {  // the CUDA code (C++) links these C functions
#endif

void mdn_gates_forward(real *log_alpha, real *log_mu, real *beta, real *eta,
                       const real *a, const real *b, const real *m, const real *e,
                       const real *A_log, const real *Mu_log, const real *dt_bias, const real *mu_bias,
                       const real *log_factor, int rows, int H, real inv_tau, real min_log_mu);
// da, db, dm, de (gradients of the projections, de of e before the 1/τ) overwritten; the five
// parameter gradients accumulated. dlog_alpha..deta: the op's gradients of its gate inputs.
void mdn_gates_backward(real *da, real *db, real *dm, real *de,
                        real *dA_log, real *dMu_log, real *ddt_bias, real *dmu_bias, real *dlog_factor,
                        const real *dlog_alpha, const real *dlog_mu, const real *dbeta, const real *deta,
                        const real *a, const real *b, const real *m, const real *e,
                        const real *A_log, const real *Mu_log, const real *dt_bias, const real *mu_bias,
                        const real *log_factor, int rows, int H, real inv_tau, real min_log_mu);

// q_out = q − exp(D_log[h])·k per head; q, k, q_out [rows, H, K] (q_out may alias q).
void output_correction_forward(real *q_out, const real *q, const real *k, const real *D_log, int rows, int H, int K);
// dq = dq_out (overwritten; may alias dq_out), dk += −exp(D_log)·dq_out (accumulated),
// dD_log += −exp(D_log)·<dq_out, k> (accumulated).
void output_correction_backward(real *dq, real *dk, real *dD_log, const real *dq_out, const real *k,
                                const real *D_log, int rows, int H, int K);

#ifdef __cplusplus
}
#endif

#endif // MDN_GATES_H
