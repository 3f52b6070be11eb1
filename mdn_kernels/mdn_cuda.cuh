// mdn_cuda.cuh: the MDN op (momentum delta rule, mdn-spec.md §5-§6) on an NVIDIA GPU.
// Same semantics, layouts and NULL conventions as mdn_cpu.h's chunk form (chunk 64):
//   q,k [B,T,H,K]; v, o, d_o [B,T,H,V]; log_alpha, log_mu, beta, eta [B,T,H];
//   S0, M0, S_final, M_final [B,H,K,V]; q and k are L2-normalised inside, q is scaled by K^-1/2,
//   the write key is eta*k_hat and the read key exp(log_alpha)*k_hat (k_hat if use_p_times_alpha 0).
// Element types: q, k, v, o, d_o, dq, dk, dv are float or bf16 (MdnCudaShape.dtype); the gates,
// their gradients and every state (S0, M0, finals and their gradients) are always float32.
// In bf16 the chunk-local products run on tensor cores with bf16 operands and float32
// accumulation; in float32 every product is float32 FMA (no tf32), for the 1e-4 reference test.
// Every pointer is a device pointer; all work is queued on `stream`, nothing synchronises.
// Supported head dims: K in {16, 32, 48, 64, 128, 192, 256}, and V a multiple of 16 up to 64 or a
// multiple of 64 (mdn_cuda_check_shape says which).
//
// The backward recomputes the per-chunk states from the inputs (one extra forward state pass, no
// output) instead of having the forward save them (2K x V per chunk: 8.5 GB a step at 400M). The
// forward's per-chunk gate factors, T^-1 and QKG (`saved`, ~57 MB a layer at 400M B8xT4096) can
// be kept by the caller and handed to the backward, which then skips recomputing them (the
// prepare kernel, ~7% of the backward); with saved NULL the backward recomputes them too.
#ifndef MDN_CUDA_CUH
#define MDN_CUDA_CUH

#include <stddef.h>
#include <cuda_runtime.h>

typedef enum { MDN_DTYPE_F32 = 0, MDN_DTYPE_BF16 = 1 } MdnDtype;

typedef struct {
    int B, T, H, K, V;
    int use_p_times_alpha;   // 1 in every paper config
    MdnDtype dtype;          // element type of q, k, v, o, d_o, dq, dk, dv
} MdnCudaShape;

typedef struct {
    const void *q, *k, *v;                         // dtype
    const float *log_alpha, *log_mu, *beta, *eta;  // [B,T,H]
    const float *S0, *M0;                          // [B,H,K,V] or NULL (zero)
} MdnCudaInputs;

typedef struct {
    void *dq, *dk, *dv;                            // dtype
    float *dlog_alpha, *dlog_mu, *dbeta, *deta;    // [B,T,H]
    float *dS0, *dM0;                              // [B,H,K,V] or NULL (not wanted)
} MdnCudaGrads;

// 0 if the shape is supported, else a static message saying why not.
const char *mdn_cuda_check_shape(const MdnCudaShape *shape);

// bytes of device workspace the calls below need, and of the forward's reusable results (`saved`);
// every pointer 256-byte aligned
size_t mdn_chunk_forward_workspace_size(const MdnCudaShape *shape);
size_t mdn_chunk_backward_workspace_size(const MdnCudaShape *shape);
size_t mdn_chunk_saved_size(const MdnCudaShape *shape);

// forward: writes o [B,T,H,V] (dtype) and, when non-NULL, S_final, M_final (float32); when saved
// is non-NULL, also the per-chunk results a backward can reuse (mdn_chunk_saved_size bytes).
// Returns cudaSuccess or the first launch error.
cudaError_t mdn_chunk_forward_cuda(const MdnCudaShape *shape, const MdnCudaInputs *in, void *o,
                                   float *S_final, float *M_final, void *saved, void *workspace, cudaStream_t stream);

// backward of sum(o*d_o) + <dS_final, S_T> + <dM_final, M_T> (dS_final, dM_final may be NULL:
// zero); overwrites every non-NULL gradient in `grads`. saved: NULL, or what a forward on the same
// inputs wrote there (it is read, not changed).
cudaError_t mdn_chunk_backward_cuda(const MdnCudaShape *shape, const MdnCudaInputs *in, const void *d_o,
                                    const float *dS_final, const float *dM_final, MdnCudaGrads *grads,
                                    const void *saved, void *workspace, cudaStream_t stream);

#endif // MDN_CUDA_CUH
