// mdn_cpu.h: the MDN op (momentum delta rule) on the CPU, mdn-spec.md §5-§6.
// Two forms with identical semantics (the layer's kernel call): the recurrent form, which is the
// definition, and the chunkwise form (chunk 64), which is the algorithm the CUDA kernels implement.
// Built in float and in double (common/real.h).
//
// Layouts (row-major): q,k [B,T,H,K]; v, o, d_o [B,T,H,V]; log_alpha, log_mu, beta, eta [B,T,H];
// S0, M0, S_final, M_final [B,H,K,V]. Semantics: q and k are L2-normalised inside
// (x / sqrt(|x|^2 + 1e-6)), q is scaled by K^-1/2, the write key is eta*k_hat and the read key is
// exp(log_alpha)*k_hat (k_hat when use_p_times_alpha is 0).
// Pointers that may be NULL: S0, M0 (zero initial states), S_final, M_final (not wanted);
// in the backward dS_final, dM_final (zero), dS0, dM0 (not wanted).
#ifndef MDN_CPU_H
#define MDN_CPU_H

#include "../common/real.h"

#define MDN_CHUNK 64

typedef struct {
    int B, T, H, K, V;
    int use_p_times_alpha;   // 1 in every paper config
} MdnShape;

typedef struct {
    const real *q, *k, *v;                       // [B,T,H,K], [B,T,H,K], [B,T,H,V]
    const real *log_alpha, *log_mu, *beta, *eta; // [B,T,H]
    const real *S0, *M0;                         // [B,H,K,V] or NULL
} MdnInputs;

typedef struct {
    real *dq, *dk, *dv;
    real *dlog_alpha, *dlog_mu, *dbeta, *deta;
    real *dS0, *dM0;                             // may be NULL
} MdnGrads;

// forward: writes o [B,T,H,V] and, when non-NULL, S_final, M_final.
void mdn_recurrent_forward(const MdnShape *shape, const MdnInputs *in, real *o, real *S_final, real *M_final);
void mdn_chunk_forward(const MdnShape *shape, const MdnInputs *in, real *o, real *S_final, real *M_final);

// backward of sum(o*d_o) + <dS_final, S_T> + <dM_final, M_T>: recomputes what it needs from the
// inputs and overwrites (does not accumulate) every non-NULL gradient in `grads`.
void mdn_recurrent_backward(const MdnShape *shape, const MdnInputs *in, const real *d_o,
                            const real *dS_final, const real *dM_final, MdnGrads *grads);
void mdn_chunk_backward(const MdnShape *shape, const MdnInputs *in, const real *d_o,
                        const real *dS_final, const real *dM_final, MdnGrads *grads);

#endif // MDN_CPU_H
