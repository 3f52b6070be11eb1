// adamw.cuh: AdamW on the GPU (CUDA twin of adamw.h, the same arithmetic as torch.optim.AdamW):
// one launch over the whole flat parameter vector (or a rank's slice of it), with the clip factor
// folded in, the per-tensor no-decay mask as a small segment table, and the bf16 copy of the
// updated weights (what the matmuls read) written in the same pass.
#ifndef MDN_ADAMW_CUH
#define MDN_ADAMW_CUH

#include <stdint.h>

#include "../common/cuda_common.cuh"

// sum of x[i]² over [0, n) in float64: partials [REDUCE_PARTS] (device) get per-part sums; the
// caller adds them in order (deterministic, device-independent partition).
void adamw_sum_squares_cuda(double *partials, const float *x, size_t n, cudaStream_t stream);

// One update of elements [begin, end) of the flat vector: params, grads, params_copy indexed
// globally, m and v hold only the slice (m[i - begin]). grad_scale is adamw_clip_scale's factor.
// Decay: segment j covers [seg_end[j-1], seg_end[j]) and is decayed iff seg_decay[j]; with
// num_segments == 0 every element is decayed. seg_end, seg_decay are device arrays.
// params_copy (type T, may be NULL) receives the updated weights.
// is element i decayed? segment j covers [seg_end[j-1], seg_end[j]) (seg_end ascending): binary
// search for the first segment whose end is > i (past the last end: the last segment's flag).
// Host and device: the kernel asks it per element, the layout test of every value on the CPU.
__host__ __device__ __forceinline__ bool adamw_is_decayed(size_t i, const size_t *seg_end, const unsigned char *seg_decay,
                                                          int num_segments) {
    if (num_segments == 0) return true;
    int lo = 0, hi = num_segments - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (seg_end[mid] > i) hi = mid; else lo = mid + 1;
    }
    return seg_decay[lo] != 0;
}

template <typename T>
void adamw_update_cuda(float *params, T *params_copy, const float *grads, float *m, float *v, size_t begin,
                       size_t end, float lr, float beta1, float beta2, float eps, float weight_decay,
                       float grad_scale, int64_t t, const size_t *seg_end, const unsigned char *seg_decay,
                       int num_segments, cudaStream_t stream);

// dst[i] = (T)src[i], n values (the bf16 copy of the master weights after a load)
template <typename T>
void convert_params_cuda(T *dst, const float *src, size_t n, cudaStream_t stream);

#endif // MDN_ADAMW_CUH
