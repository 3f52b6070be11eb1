// packed.cuh: 16-byte loads and stores of activation values for the memory-bound layer kernels.
// A warp moving 16 bytes a thread moves 512 contiguous bytes per instruction, 8x what scalar bf16
// accesses move; the kernels fall back to one value per access (N = 1) when a row length, stride or
// pointer is not a multiple of the vector, so any shape stays valid.
#ifndef MDN_PACKED_CUH
#define MDN_PACKED_CUH

#include "../common/cuda_common.cuh"

#include <stdint.h>

// N values of T loaded or stored as one access (alignas makes the compiler emit one wide access)
template <typename T, int N> struct alignas(sizeof(T) * N) Packed {
    T v[N];
};

// values of T per 16-byte access
template <typename T> struct Vec16 {
    static constexpr int n = 16 / sizeof(T);
};

template <int N, typename T> __device__ __forceinline__ void load_floats(float *out, const T *p) {
    Packed<T, N> x = *reinterpret_cast<const Packed<T, N> *>(p);
#pragma unroll
    for (int i = 0; i < N; i++) out[i] = to_float(x.v[i]);
}

template <int N, typename T> __device__ __forceinline__ void store_floats(T *p, const float *in) {
    Packed<T, N> x;
#pragma unroll
    for (int i = 0; i < N; i++) x.v[i] = from_float<T>(in[i]);
    *reinterpret_cast<Packed<T, N> *>(p) = x;
}

// whether p is aligned to `bytes`
static inline bool is_aligned(const void *p, size_t bytes) { return (uintptr_t)p % bytes == 0; }

#endif // MDN_PACKED_CUH
