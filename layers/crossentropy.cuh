// crossentropy.cuh: softmax cross-entropy on the GPU (CUDA twin of crossentropy.h), and the fused
// classifier: lm-head logits, loss and every gradient over blocks of token rows, so that the
// float32 logits of the whole batch never exist (a block of bf16 logits is the only buffer).
#ifndef MDN_CROSSENTROPY_CUH
#define MDN_CROSSENTROPY_CUH

#include "../common/cuda_common.cuh"

// One block per row of logits [rows, N] (rows `ld` >= N values apart): losses[i] = logsumexp − logit[target] (0 without a
// target, target < 0). If dloss != 0 the row is overwritten in place with
// dloss·(softmax − onehot) (zeros without a target), and
// its padding (values N..ld) with zeros. logits_out (may be NULL) gets the float32
// logits before they are overwritten (tests, the reference-state writer).
template <typename T>
void crossentropy_forward_backward_cuda(float *losses, T *logits, int ld, float *logits_out, const int *targets,
                                        float dloss, int rows, int N, cudaStream_t stream);

// The fused classifier over block_rows rows at a time:
//   logits = inp · weightᵀ → loss → dlogits (in the same buffer) → dinp = dlogits · weight (overwritten),
//   dweight += dlogitsᵀ · inp (float32).
// inp [rows, dim], weight [N, dim], targets [rows], losses [rows]; logits_scratch holds
// block_rows · classifier_logits_ld(N) values of T (rows padded for aligned matmuls). With dinp == NULL only the losses (and logits_out) are computed
// (evaluation). dloss is the gradient of each counted loss (1 / number of targets / accumulation).
static inline int classifier_logits_ld(int N) { return (N + 63) / 64 * 64; }
template <typename T>
void classifier_forward_backward_cuda(float *losses, T *dinp, float *dweight, float *logits_out, const T *inp,
                                      const T *weight, const int *targets, float dloss, int rows, int dim, int N,
                                      T *logits_scratch, int block_rows, cudaStream_t stream);

#endif // MDN_CROSSENTROPY_CUH
