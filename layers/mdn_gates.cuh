// mdn_gates.cuh: the MDN layer's gates and output correction on the GPU (CUDA twin of
// mdn_gates.h; same formulas). The gate logits a, b, m, e are float32 even in bf16 training
// (mdn-spec.md §4.2); rows of each are `proj_stride` floats apart, so they can be column slices of
// one [rows, 4H] buffer (a | b | m | e) or four [rows, H] arrays (proj_stride = H). Parameter
// gradients are summed over rows deterministically (partial sums per row block, then in order).
#ifndef MDN_GATES_CUH
#define MDN_GATES_CUH

#include "../common/cuda_common.cuh"

// gates [rows, H] each (float32)
void mdn_gates_forward_cuda(float *log_alpha, float *log_mu, float *beta, float *eta, const float *a,
                            const float *b, const float *m, const float *e, int proj_stride, const float *A_log,
                            const float *Mu_log, const float *dt_bias, const float *mu_bias, const float *log_factor,
                            int rows, int H, float inv_tau, float min_log_mu, cudaStream_t stream);
// scratch bytes mdn_gates_backward_cuda needs
size_t mdn_gates_backward_scratch_bytes(int rows, int H);
// da, db, dm, de overwritten (type T: they feed the projections' matmuls; rows dproj_stride apart);
// dA_log .. dlog_factor accumulated
template <typename T>
void mdn_gates_backward_cuda(T *da, T *db, T *dm, T *de, int dproj_stride, float *dA_log, float *dMu_log,
                             float *ddt_bias, float *dmu_bias, float *dlog_factor, void *scratch,
                             const float *dlog_alpha, const float *dlog_mu, const float *dbeta, const float *deta,
                             const float *a, const float *b, const float *m, const float *e, int proj_stride,
                             const float *A_log, const float *Mu_log, const float *dt_bias, const float *mu_bias,
                             const float *log_factor, int rows, int H, float inv_tau, float min_log_mu,
                             cudaStream_t stream);

// the output correction's forward, q − exp(D_log[h])·k, is fused into the q conv
// (shortconv_silu_corrected_forward_cuda, conv.cuh)
// scratch bytes output_correction_backward_cuda needs
size_t output_correction_backward_scratch_bytes(int rows, int H);
// dq = dq_out (overwritten; may alias), dk += −exp(D_log)·dq_out, dD_log += −exp(D_log)·<dq_out, k>
template <typename T>
void output_correction_backward_cuda(T *dq, T *dk, float *dD_log, void *scratch, const T *dq_out, const T *k,
                                     const float *D_log, int rows, int H, int K, cudaStream_t stream);

#endif // MDN_GATES_CUH
