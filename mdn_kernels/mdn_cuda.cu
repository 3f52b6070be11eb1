// mdn_cuda.cu: the chunkwise momentum delta rule (mdn-spec.md §6) forward and backward on the GPU.
// API and conventions: mdn_cuda.cuh. Algorithm and notation: mdn-spec.md §6 and
// dev/mdn_ref.py chunk_fwd_one / chunk_bwd_one; the CPU mirror is mdn_cpu.c's chunk form.
//
// Per chunk of L = 64 steps of one (b,h), with X = [S; M] the stacked states (2K x V), the forward
// is written with the rows of the chunk's keys scaled by per-row gate factors:
//   R  = V + Pab X0                 Pab = [-a_prev*p | b_prev*p]           (L x 2K)
//   U  = T^-1 R                     T^-1 = (I + (P Kk^T) o Gamma_prev)^-1  (L x L)
//   O  = Qab X0 + QKG U             Qab = [a*qbar | -b*qbar], QKG = (Qbar Kk^T) o Gamma
//   X1 = D X0 + KK^T U              KK = [g*kappa | -h*kappa], D X0 = [a_L S0 - b_L M0; m_L M0]
// (g = Gamma[L-1,:], h = Em[L-1,:]). Kernels:
//   prepare     one CTA of 16 warps per (b,h,chunk): gates -> Gamma, b, T^-1, QKG, per-row factors
//               (the forward's copy can be kept and handed to the backward: `saved`, mdn_cuda.cuh).
//   state_fwd   one CTA per (b,h,V tile): walks the chunks with X in shared memory (float32);
//               writes O, or (backward recompute) each chunk's X0 and U.
//               In bf16 the *_fast kernels (v7, below the float32 ones) hold X in registers.
//   state_bwd   one CTA per (b,h,V tile), chunks in reverse, carrying dX = [dS; dM]:
//               dU = KK dX1 + QKG^T dO; G = T^-T dU (= dv); dX0 = D^T dX1 + Qab^T dO + Pab^T G;
//               stores each chunk's dX1.
//   bwd_state_grads  one CTA per (b,h,chunk, 32 key columns) (+1 for the L x L products):
//               the products over V: dO X0^T, G X0^T, U dX1^T (-> partial dqbar, dp, dkappa and
//               gate-factor gradients), dO U^T and G U^T.
//   bwd_chunk   one CTA of 16 warps per (b,h,chunk): the L x L chain (dGamma, Ea, Em, beta -> log
//               gates; its two L^3 products as split-bf16 tensor-core products in bf16 mode), the
//               remaining L x L x K products (bf16: ldmatrix fragments from bf16 operand copies) and
//               the preprocessing backward (L2 norms), a warp per row.
// Every reduction has a fixed order (no atomics): results are bitwise reproducible.
// Products: bf16 -> mma.sync m16n8k16 (bf16 operands, float32 accumulation); float32 -> FMA.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <type_traits>

#include "mdn_cuda.cuh"

#define CH 64          // chunk length L (mdn_cpu.h MDN_CHUNK)
#define NTHREADS 256   // every kernel: 8 warps
#define LDL (CH + 1)   // row stride of float32 L x L matrices in shared memory

// per-row chunk vectors written by the prepare kernel: [b,h,chunk][NVEC][CH] float32
enum { VEC_A, VEC_B, VEC_M, VEC_G, VEC_H, VEC_RQ, VEC_RK, VEC_PA, VEC_ETA, NVEC };

struct Dims {
    int B, T, H, K, V, NC, Vt, use_p;
    float qscale;   // K^-1/2
};

// ------------------------------------------------------------------------------------------------
// element conversion and the generic block-level product
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <typename T> struct UseMma { static constexpr bool value = std::is_same<T, __nv_bfloat16>::value; };

// shared-memory row padding of an element type: 16 bytes, so that 8 consecutive rows of a
// fragment load land in different banks
template <typename T> __host__ __device__ constexpr int pad_of() { return 16 / (int)sizeof(T); }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

__device__ __forceinline__ void mma_bf16_16816(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One warp accumulates a 16x8 tile C[m0.., n0..] += sum_k fa(row, k) * fb(k, col), k < kdim.
// fa, fb return float32 elements (any layout, scaling or conversion folded in). The thread owns
// c[0] (m0+g, n0+2t), c[1] (m0+g, n0+2t+1), c[2] (m0+g+8, n0+2t), c[3] (m0+g+8, n0+2t+1),
// g = lane/4, t = lane%4 (the mma.sync accumulator layout; the FMA path uses the same).
template <bool MMA, class FA, class FB>
__device__ __forceinline__ void tile_acc(float c[4], int m0, int n0, int kdim, const FA &fa, const FB &fb) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if constexpr (MMA) {
        const int r0 = m0 + g, r1 = r0 + 8, col = n0 + g;
        for (int k = 0; k < kdim; k += 16) {
            const int k0 = k + 2 * t, k1 = k0 + 8;
            uint32_t a0 = pack_bf16(fa(r0, k0), fa(r0, k0 + 1));
            uint32_t a1 = pack_bf16(fa(r1, k0), fa(r1, k0 + 1));
            uint32_t a2 = pack_bf16(fa(r0, k1), fa(r0, k1 + 1));
            uint32_t a3 = pack_bf16(fa(r1, k1), fa(r1, k1 + 1));
            uint32_t b0 = pack_bf16(fb(k0, col), fb(k0 + 1, col));
            uint32_t b1 = pack_bf16(fb(k1, col), fb(k1 + 1, col));
            mma_bf16_16816(c, a0, a1, a2, a3, b0, b1);
        }
    } else {
        const int r0 = m0 + g, r1 = r0 + 8, c0 = n0 + 2 * t, c1 = c0 + 1;
        for (int k = 0; k < kdim; k++) {
            const float x0 = fa(r0, k), x1 = fa(r1, k), y0 = fb(k, c0), y1 = fb(k, c1);
            c[0] = fmaf(x0, y0, c[0]);
            c[1] = fmaf(x0, y1, c[1]);
            c[2] = fmaf(x1, y0, c[2]);
            c[3] = fmaf(x1, y1, c[3]);
        }
    }
}

// Operands stored with the inner (k) index contiguous, in shared memory: A(r, k) = p[r*ld + k]
// (KMajor) and B(k, n) = p[n*ld + k] (KMajorT). With bf16 storage a fragment's pair of
// k-neighbours is one 32-bit load instead of two loads and a conversion.
template <typename T> struct KMajor {
    const T *p;
    int ld;
    __device__ float operator()(int r, int k) const { return to_f(p[r * ld + k]); }
    __device__ uint32_t pair(int r, int k) const {
        if constexpr (sizeof(T) == 2) return *reinterpret_cast<const uint32_t *>(p + r * ld + k);
        else return pack_bf16(p[r * ld + k], p[r * ld + k + 1]);
    }
};
template <typename T> struct KMajorT {
    const T *p;
    int ld;
    __device__ float operator()(int k, int n) const { return to_f(p[n * ld + k]); }
    __device__ uint32_t pair(int k, int n) const {
        if constexpr (sizeof(T) == 2) return *reinterpret_cast<const uint32_t *>(p + n * ld + k);
        else return pack_bf16(p[n * ld + k], p[n * ld + k + 1]);
    }
};
template <class F, class = void> struct HasPair : std::false_type {};
template <class F> struct HasPair<F, std::void_t<decltype(std::declval<const F &>().pair(0, 0))>> : std::true_type {};
// the bf16 pair (r,k),(r,k+1) of an A operand and (k,n),(k+1,n) of a B operand
template <class F> __device__ __forceinline__ uint32_t a_pair(const F &f, int r, int k) {
    if constexpr (HasPair<F>::value) return f.pair(r, k);
    else return pack_bf16(f(r, k), f(r, k + 1));
}
template <class F> __device__ __forceinline__ uint32_t b_pair(const F &f, int k, int n) {
    if constexpr (HasPair<F>::value) return f.pair(k, n);
    else return pack_bf16(f(k, n), f(k + 1, n));
}

// One warp accumulates a 16 x (8*NB) strip: the A fragment is loaded once per k step and used
// for NB tiles (c[nb] as in tile_acc, columns n0 + 8*nb).
template <bool MMA, int NB, class FA, class FB>
__device__ __forceinline__ void strip_acc(float (*c)[4], int m0, int n0, int kdim, const FA &fa, const FB &fb) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if constexpr (MMA) {
        const int r0 = m0 + g, r1 = r0 + 8;
        for (int k = 0; k < kdim; k += 16) {
            const int k0 = k + 2 * t, k1 = k0 + 8;
            const uint32_t a0 = a_pair(fa, r0, k0), a1 = a_pair(fa, r1, k0);
            const uint32_t a2 = a_pair(fa, r0, k1), a3 = a_pair(fa, r1, k1);
#pragma unroll
            for (int nb = 0; nb < NB; nb++) {
                const int col = n0 + 8 * nb + g;
                const uint32_t b0 = b_pair(fb, k0, col), b1 = b_pair(fb, k1, col);
                mma_bf16_16816(c[nb], a0, a1, a2, a3, b0, b1);
            }
        }
    } else {
        const int r0 = m0 + g, r1 = r0 + 8;
        for (int k = 0; k < kdim; k++) {
            const float x0 = fa(r0, k), x1 = fa(r1, k);
#pragma unroll
            for (int nb = 0; nb < NB; nb++) {
                const int c0 = n0 + 8 * nb + 2 * t;
                const float y0 = fb(k, c0), y1 = fb(k, c0 + 1);
                c[nb][0] = fmaf(x0, y0, c[nb][0]);
                c[nb][1] = fmaf(x0, y1, c[nb][1]);
                c[nb][2] = fmaf(x1, y0, c[nb][2]);
                c[nb][3] = fmaf(x1, y1, c[nb][3]);
            }
        }
    }
}

template <bool MMA, int NB, class FA1, class FB1, class FA2, class FB2, class FA3, class FB3, class FE>
__device__ void block_gemm3_nb(int M, int N, int K1, const FA1 &fa1, const FB1 &fb1, int K2, const FA2 &fa2,
                               const FB2 &fb2, int K3, const FA3 &fa3, const FB3 &fb3, const FE &epi) {
    const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3, tn = N / (8 * NB), ntiles = (M >> 4) * tn;
    for (int tile = warp; tile < ntiles; tile += nwarps) {
        const int m0 = (tile / tn) * 16, n0 = (tile % tn) * 8 * NB;
        float c[NB][4];
#pragma unroll
        for (int nb = 0; nb < NB; nb++) c[nb][0] = c[nb][1] = c[nb][2] = c[nb][3] = 0.f;
        strip_acc<MMA, NB>(c, m0, n0, K1, fa1, fb1);
        if (K2 > 0) strip_acc<MMA, NB>(c, m0, n0, K2, fa2, fb2);
        if (K3 > 0) strip_acc<MMA, NB>(c, m0, n0, K3, fa3, fb3);
#pragma unroll
        for (int nb = 0; nb < NB; nb++) {
            const int col = n0 + 8 * nb + 2 * t;
            epi(m0 + g, col, c[nb][0]);
            epi(m0 + g, col + 1, c[nb][1]);
            epi(m0 + g + 8, col, c[nb][2]);
            epi(m0 + g + 8, col + 1, c[nb][3]);
        }
    }
}

// The whole block computes C (M x N, multiples of 16 and 8) = fa1 fb1 (inner K1) + fa2 fb2
// (inner K2) + fa3 fb3 (inner K3; K2, K3 may be 0) and hands every element to epi(row, col,
// value) exactly once. Warps take 16 x 32 or 16 x 16 strips where no warp is left idle (A reused).
template <bool MMA, class FA1, class FB1, class FA2, class FB2, class FA3, class FB3, class FE>
__device__ void block_gemm3(int M, int N, int K1, const FA1 &fa1, const FB1 &fb1, int K2, const FA2 &fa2,
                            const FB2 &fb2, int K3, const FA3 &fa3, const FB3 &fb3, const FE &epi) {
    // the widest strip that still gives every warp work
    const int nwarps = blockDim.x >> 5;
    if (N % 32 == 0 && (M >> 4) * (N / 32) >= nwarps)
        block_gemm3_nb<MMA, 4>(M, N, K1, fa1, fb1, K2, fa2, fb2, K3, fa3, fb3, epi);
    else if (N % 16 == 0 && (M >> 4) * (N / 16) >= nwarps)
        block_gemm3_nb<MMA, 2>(M, N, K1, fa1, fb1, K2, fa2, fb2, K3, fa3, fb3, epi);
    else block_gemm3_nb<MMA, 1>(M, N, K1, fa1, fb1, K2, fa2, fb2, K3, fa3, fb3, epi);
}
template <bool MMA, class FA1, class FB1, class FA2, class FB2, class FE>
__device__ void block_gemm2(int M, int N, int K1, const FA1 &fa1, const FB1 &fb1, int K2, const FA2 &fa2,
                            const FB2 &fb2, const FE &epi) {
    block_gemm3<MMA>(M, N, K1, fa1, fb1, K2, fa2, fb2, 0, fa1, fb1, epi);
}
template <bool MMA, class FA, class FB, class FE>
__device__ void block_gemm(int M, int N, int Kd, const FA &fa, const FB &fb, const FE &epi) {
    block_gemm3<MMA>(M, N, Kd, fa, fb, 0, fa, fb, 0, fa, fb, epi);
}

// e = i * n + j -> i for the tile loops: a shift when n is a power of two (every tile shape of the
// paper configs), else a division; a runtime division is ~25 integer instructions, and the copy
// loops below split an index per 16-byte vector (ncu: 40% of the state-gradient kernel's issue slots)
__device__ __forceinline__ int row_of(int e, int n) {
    return (n & (n - 1)) == 0 ? e >> (31 - __clz(n)) : e / n;
}

// Copy `rows` rows of `cols` elements (cols a multiple of 16 bytes' worth) from global rows
// src + i*src_stride into shared dst + i*ldd with 16-byte accesses; rows >= rows_valid are zero
// (the last chunk's padding).
template <typename T>
__device__ void load_rows(T *dst, int ldd, const T *src, size_t src_stride, int rows, int cols, int rows_valid) {
    constexpr int VW = 16 / (int)sizeof(T);
    const int nvec = cols / VW;
    for (int e = threadIdx.x; e < rows * nvec; e += blockDim.x) {
        const int i = row_of(e, nvec), c = (e - i * nvec) * VW;
        uint4 raw = make_uint4(0u, 0u, 0u, 0u);
        if (i < rows_valid) raw = *reinterpret_cast<const uint4 *>(src + i * src_stride + c);
        *reinterpret_cast<uint4 *>(dst + i * ldd + c) = raw;
    }
}

// ------------------------------------------------------------------------------------------------
// asynchronous copies global -> shared (cp.async): a thread issues all its copies, then waits once,
// so a tile costs one memory latency instead of one per element it loads
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
// 16 bytes; zero-filled when !valid (src is then not read)
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
// 4 bytes (rows whose shared-memory stride is not a multiple of 16 bytes)
__device__ __forceinline__ void cp_async4(void *dst, const void *src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// the copies issued since the last commit form a group; wait until at most N groups are in flight
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// `rows` rows of `cols` elements (a multiple of 16 bytes) from global src + i*stride into shared
// dst + i*ldd; rows >= valid are zero
template <typename T>
__device__ __forceinline__ void async_rows(T *dst, int ldd, const T *src, size_t stride, int rows, int cols,
                                           int valid) {
    constexpr int VW = 16 / (int)sizeof(T);
    const int nvec = cols / VW;
    for (int e = threadIdx.x; e < rows * nvec; e += blockDim.x) {
        const int i = row_of(e, nvec), c = (e - i * nvec) * VW;
        cp_async16(dst + i * ldd + c, i < valid ? src + i * stride + c : src, i < valid);
    }
}
// the rows of dst (shared, `rows` x `cols`, stride ldd) times scale[i], in place: one rounding to
// T per element
template <typename T> __device__ void scale_rows(T *dst, int ldd, int rows, int cols, const float *scale) {
    for (int e = threadIdx.x; e < rows * cols; e += blockDim.x) {
        const int i = row_of(e, cols), c = e - i * cols;
        dst[i * ldd + c] = from_f<T>(to_f(dst[i * ldd + c]) * scale[i]);
    }
}

// ------------------------------------------------------------------------------------------------
// bf16 tensor-core fragments by ldmatrix, and block products built on them
// ------------------------------------------------------------------------------------------------
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t r[2], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(p)));
}

// Fragments of m16n8k16 (g = lane/4, t = lane%4 as in tile_acc). A 16x16 at (m0,k0) from P
// stored [M][ld] (A(m,k) = P[m*ld+k]) or, AT, stored [K][ld] (A(m,k) = P[k*ld+m]); B for the
// n-tiles n0 and n0+8 (or n0 alone) from P stored [K][ld] (B(k,n) = P[k*ld+n]).
template <bool AT> __device__ __forceinline__ void frag_a(uint32_t a[4], const bf16 *P, int ld, int m0, int k0) {
    const int lane = threadIdx.x & 31, mi = lane >> 3, rr = lane & 7;
    if (AT) ldsm_x4_t(a, P + (k0 + (mi >> 1) * 8 + rr) * ld + m0 + (mi & 1) * 8);
    else ldsm_x4(a, P + (m0 + (mi & 1) * 8 + rr) * ld + k0 + (mi >> 1) * 8);
}
__device__ __forceinline__ void frag_b2(uint32_t b[4], const bf16 *P, int ld, int k0, int n0) {
    const int lane = threadIdx.x & 31, mi = lane >> 3, rr = lane & 7;
    ldsm_x4_t(b, P + (k0 + (mi & 1) * 8 + rr) * ld + n0 + (mi >> 1) * 8);
}
__device__ __forceinline__ void frag_b1(uint32_t b[2], const bf16 *P, int ld, int k0, int n0) {
    const int lane = threadIdx.x & 31, mi = lane >> 3, rr = lane & 7;
    ldsm_x2_t(b, P + (k0 + (mi & 1) * 8 + rr) * ld + n0);
}

// B fragments of the n-tiles n0 and n0+8 from P stored [N][ld] (B(k,n) = P[n*ld+k])
__device__ __forceinline__ void frag_bn2(uint32_t b[4], const bf16 *P, int ld, int k0, int n0) {
    const int lane = threadIdx.x & 31, mi = lane >> 3, rr = lane & 7;
    ldsm_x4(b, P + (n0 + (mi >> 1) * 8 + rr) * ld + k0 + (mi & 1) * 8);
}

// bf16 block products from shared memory with ldmatrix fragments (the prepare and bwd_chunk
// kernels' L x L and L x KS products). Operand layouts: A(m,k) = A[m*lda+k], or A[k*lda+m] when
// AT; B(k,n) = B[k*ldb+n], or B[n*ldb+k] when BN. The whole block computes C (M x N, multiples of
// 16, inner kdim a multiple of 16) in 16 x 16 tiles and hands every element to epi(row, col, value)
// once; each element sums its k-steps in increasing order, as block_gemm's tiles do, so the bits
// are those of block_gemm on the same bf16 values.
template <bool BN> __device__ __forceinline__ void frag_b16(uint32_t b[4], const bf16 *P, int ld, int k0, int n0) {
    if (BN) frag_bn2(b, P, ld, k0, n0);
    else frag_b2(b, P, ld, k0, n0);
}
template <class FE>
__device__ __forceinline__ void tile16_epilogue(const float (*c)[4], int m0, int n0, const FE &epi) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nb = 0; nb < 2; nb++) {
        const int col = n0 + 8 * nb + 2 * t;
        epi(m0 + g, col, c[nb][0]);
        epi(m0 + g, col + 1, c[nb][1]);
        epi(m0 + g + 8, col, c[nb][2]);
        epi(m0 + g + 8, col + 1, c[nb][3]);
    }
}
// C = A B (+ A2 B2 when A2 is non-NULL, same layouts, the second product's k-steps after the first's)
template <bool AT, bool BN, class FE>
__device__ void block_mma(int M, int N, int kdim, const bf16 *A, int lda, const bf16 *B, int ldb, const bf16 *A2,
                          const bf16 *B2, const FE &epi) {
    const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5, tn = N / 16, ntiles = (M / 16) * tn;
    for (int tile = warp; tile < ntiles; tile += nwarps) {
        const int m0 = (tile / tn) * 16, n0 = (tile % tn) * 16;
        float c[2][4] = {};
        for (int op = 0; op < (A2 ? 2 : 1); op++) {
            const bf16 *Ao = op ? A2 : A, *Bo = op ? B2 : B;
            for (int k0 = 0; k0 < kdim; k0 += 16) {
                uint32_t a[4], b[4];
                frag_a<AT>(a, Ao, lda, m0, k0);
                frag_b16<BN>(b, Bo, ldb, k0, n0);
                mma_bf16_16816(c[0], a[0], a[1], a[2], a[3], b[0], b[1]);
                mma_bf16_16816(c[1], a[0], a[1], a[2], a[3], b[2], b[3]);
            }
        }
        tile16_epilogue(c, m0, n0, epi);
    }
}
// C = A B for float32 operands that one bf16 rounding would spoil (the L x L gate-gradient chain:
// sums whose terms cancel), each given as its bf16 split hi + lo (store_split, x = hi + lo + O(2^-16 |x|)):
// per k-step lo*hi + hi*lo + hi*hi, three tensor-core products, ~2^-16 relative error per term.
template <bool AT, bool BN, class FE>
__device__ void block_mma_split(int M, int N, int kdim, const bf16 *Ah, const bf16 *Al, int lda, const bf16 *Bh,
                                const bf16 *Bl, int ldb, const FE &epi) {
    const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5, tn = N / 16, ntiles = (M / 16) * tn;
    for (int tile = warp; tile < ntiles; tile += nwarps) {
        const int m0 = (tile / tn) * 16, n0 = (tile % tn) * 16;
        float c[2][4] = {};
        for (int k0 = 0; k0 < kdim; k0 += 16) {
            uint32_t ah[4], al[4], bh[4], bl[4];
            frag_a<AT>(ah, Ah, lda, m0, k0);
            frag_a<AT>(al, Al, lda, m0, k0);
            frag_b16<BN>(bh, Bh, ldb, k0, n0);
            frag_b16<BN>(bl, Bl, ldb, k0, n0);
#pragma unroll
            for (int nb = 0; nb < 2; nb++) {
                mma_bf16_16816(c[nb], al[0], al[1], al[2], al[3], bh[2 * nb], bh[2 * nb + 1]);
                mma_bf16_16816(c[nb], ah[0], ah[1], ah[2], ah[3], bl[2 * nb], bl[2 * nb + 1]);
                mma_bf16_16816(c[nb], ah[0], ah[1], ah[2], ah[3], bh[2 * nb], bh[2 * nb + 1]);
            }
        }
        tile16_epilogue(c, m0, n0, epi);
    }
}
// x split into bf16 hi (the rounding of x) and lo (the rounding of the remainder)
__device__ __forceinline__ void store_split(bf16 *dst_hi, bf16 *dst_lo, float x) {
    const bf16 h = __float2bfloat16_rn(x);
    *dst_hi = h;
    *dst_lo = __float2bfloat16_rn(x - __bfloat162float(h));
}

// shared-memory carving: the same code runs on the host (base 0) to size the allocation
struct Carver {
    size_t off;
    char *base;
    template <typename U> __host__ __device__ U *take(size_t n) {
        off = (off + 15) & ~(size_t)15;
        U *p = (U *)(base + off);
        off += n * sizeof(U);
        return p;
    }
};

// ------------------------------------------------------------------------------------------------
// gate coefficients of one chunk (float32; prefix sums in float64 so that differences of large
// prefix sums keep their precision) — shared by prepare and bwd_chunk
// ------------------------------------------------------------------------------------------------
struct Coef {
    double *A, *C;                                     // prefix sums of log alpha, log mu
    float *la, *lm, *be, *et, *al, *a, *m, *b, *h;     // [CH]
    float *Ea, *Em, *G;                                // [CH][LDL]
};
__host__ __device__ inline void carve_coef(Carver &cv, Coef &c) {
    c.A = cv.take<double>(CH);
    c.C = cv.take<double>(CH);
    float **vecs[] = {&c.la, &c.lm, &c.be, &c.et, &c.al, &c.a, &c.m, &c.b, &c.h};
    for (int i = 0; i < 9; i++) *vecs[i] = cv.take<float>(CH);
    c.Ea = cv.take<float>(CH * LDL);
    c.Em = cv.take<float>(CH * LDL);
    c.G = cv.take<float>(CH * LDL);
}

// A warp's prefix sums over 64 values held two a lane (x0, x1: elements 2 lane and 2 lane + 1): the
// lanes' pair sums scanned by a shuffle tree; `before` is the sum of the pairs before this lane's
// (0 in lane 0), `through` the sum through this lane's pair. (One thread walking the 64 values left
// the rest of the CTA waiting at the next barrier.)
template <typename F> __device__ __forceinline__ void warp_pair_scan(F x0, F x1, F &before, F &through) {
    const int lane = threadIdx.x & 31;
    through = x0 + x1;
    for (int o = 1; o < 32; o <<= 1) {
        const F y = __shfl_up_sync(0xffffffffu, through, o);
        if (lane >= o) through += y;
    }
    before = __shfl_up_sync(0xffffffffu, through, 1);
    if (lane == 0) before = F(0);
}

// Steps past T (the last chunk's padding) get log alpha = log mu = beta = eta = 0: they change
// no state (alpha = mu = 1, nothing written), so the chunk's end-of-chunk factors are exact.
__device__ void chunk_coef(const Coef &c, const Dims &d, int b, int h, int t0, const float *log_alpha,
                           const float *log_mu, const float *beta, const float *eta) {
    const int tid = threadIdx.x;
    if (tid < CH) {
        const bool valid = t0 + tid < d.T;
        const size_t gi = ((size_t)b * d.T + t0 + tid) * d.H + h;
        c.la[tid] = valid ? log_alpha[gi] : 0.f;
        c.lm[tid] = valid ? log_mu[gi] : 0.f;
        c.be[tid] = valid ? beta[gi] : 0.f;
        c.et[tid] = valid ? eta[gi] : 0.f;
    }
    __syncthreads();
    // inclusive prefix sums A (log alpha, warp 0) and C (log mu, warp 1), two steps a lane
    if (tid < 2 * 32) {
        const int lane = tid & 31;
        const float *x = tid < 32 ? c.la : c.lm;
        double *prefix = tid < 32 ? c.A : c.C;
        const double x0 = x[2 * lane], x1 = x[2 * lane + 1];
        double before, through;
        warp_pair_scan(x0, x1, before, through);
        prefix[2 * lane] = before + x0;
        prefix[2 * lane + 1] = through;
    }
    __syncthreads();
    for (int e = tid; e < CH * CH; e += blockDim.x) {
        const int i = e / CH, l = e % CH;
        c.Ea[i * LDL + l] = l <= i ? expf((float)(c.A[i] - c.A[l])) : 0.f;   // alpha_{l+1..i}
        c.Em[i * LDL + l] = l <= i ? expf((float)(c.C[i] - c.C[l])) : 0.f;   // mu_{l+1..i}
    }
    if (tid < CH) {
        c.a[tid] = expf((float)c.A[tid]);
        c.m[tid] = expf((float)c.C[tid]);
        c.al[tid] = expf(c.la[tid]);
    }
    __syncthreads();
    // Gamma = Ea diag(beta) Em and b = Ea (beta o m): sums of non-negative terms (no cancellation).
    // Gamma in 4 x 4 register tiles (rows 4ti..4ti+3, columns tj + 16c): a thread sums l over
    // [tj, 4ti+3] in increasing order; the terms outside [j, i] are exact zeros (Ea[i][l] = 0 for
    // l > i, Em[l][j] = 0 for l < j), so every Gamma[i][j] is the plain ordered sum over l = j..i.
    // (the first 256 threads: CTAs have 256 or more)
    static_assert(CH == 64, "Gamma tiling assumes 64 x 64 over 256 threads");
    if (tid < 256) {
        const int ti = tid >> 4, tj = tid & 15;
        float acc[4][4] = {};
        for (int l = tj; l <= 4 * ti + 3; l++) {
            float eb[4], em[4];
#pragma unroll
            for (int r = 0; r < 4; r++) eb[r] = c.Ea[(4 * ti + r) * LDL + l] * c.be[l];
#pragma unroll
            for (int cc = 0; cc < 4; cc++) em[cc] = c.Em[l * LDL + tj + 16 * cc];
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int cc = 0; cc < 4; cc++) acc[r][cc] = fmaf(eb[r], em[cc], acc[r][cc]);
        }
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int cc = 0; cc < 4; cc++) c.G[(4 * ti + r) * LDL + tj + 16 * cc] = acc[r][cc];
    }
    // b: a warp per row, lanes along l (Ea[i][l] = 0 past the diagonal)
    for (int i = tid >> 5; i < CH; i += blockDim.x >> 5) {
        const int lane = tid & 31;
        float s = 0.f;
        for (int l = lane; l <= i; l += 32) s = fmaf(c.Ea[i * LDL + l], c.be[l] * c.m[l], s);
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) c.b[i] = s;
    }
    if (tid < CH) c.h[tid] = c.Em[(CH - 1) * LDL + tid];
    __syncthreads();
}

// ------------------------------------------------------------------------------------------------
// prepare: per (b,h,chunk) T^-1, QKG and the per-row vectors
// ------------------------------------------------------------------------------------------------
template <typename T> struct PrepSmem {
    Coef c;
    float *rq, *rk, *Ti, *W;
    T *Kh, *Qh;
};
template <typename T> __host__ __device__ size_t carve_prep(PrepSmem<T> &s, char *base, int K) {
    Carver cv{0, base};
    carve_coef(cv, s.c);
    s.rq = cv.take<float>(CH);
    s.rk = cv.take<float>(CH);
    s.Ti = cv.take<float>(CH * LDL);
    s.W = cv.take<float>(32 * 32);
    s.Kh = cv.take<T>((size_t)CH * (K + pad_of<T>()));
    s.Qh = cv.take<T>((size_t)CH * (K + pad_of<T>()));
    return cv.off;
}

// The chunk's raw q and k rows into Qh and Kh by cp.async, all in flight at once (a warp reading
// its rows from global memory, twice, was a quarter of the prepare kernel's time, ncu). Issued
// before the gate coefficients are formed, so that their latency overlaps chunk_coef.
template <typename T>
__device__ void issue_qk_rows(const Dims &d, const T *q, const T *k, int b, int h, int t0, T *Qh, T *Kh, int ldk) {
    const size_t base = (((size_t)b * d.T + t0) * d.H + h) * d.K, stride = (size_t)d.H * d.K;
    const int rows_valid = min(CH, d.T - t0);   // the padding rows are zero: norm factor 1e3, values 0
    async_rows(Qh, ldk, q + base, stride, CH, d.K, rows_valid);
    async_rows(Kh, ldk, k + base, stride, CH, d.K, rows_valid);
}
// once issue_qk_rows' copies land: rq, rk (inverse norms) and the normalised rows Qh = qbar
// (scaled), Kh = khat, each warp its rows, in place
template <typename T> __device__ void normalise_qk_rows(const Dims &d, float *rq, float *rk, T *Qh, T *Kh, int ldk) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    cp_async_wait_all();
    __syncthreads();
    for (int r = warp; r < CH; r += nwarps) {
        float sq = 0.f, sk = 0.f;
        for (int c = lane; c < d.K; c += 32) {
            const float qv = to_f(Qh[r * ldk + c]), kv = to_f(Kh[r * ldk + c]);
            sq = fmaf(qv, qv, sq);
            sk = fmaf(kv, kv, sk);
        }
        for (int o = 16; o > 0; o >>= 1) {
            sq += __shfl_xor_sync(0xffffffffu, sq, o);
            sk += __shfl_xor_sync(0xffffffffu, sk, o);
        }
        const float iq = 1.f / sqrtf(sq + 1e-6f), ik = 1.f / sqrtf(sk + 1e-6f);
        if (lane == 0) {
            rq[r] = iq;
            rk[r] = ik;
        }
        for (int c = lane; c < d.K; c += 32) {
            Qh[r * ldk + c] = from_f<T>(to_f(Qh[r * ldk + c]) * iq * d.qscale);
            Kh[r * ldk + c] = from_f<T>(to_f(Kh[r * ldk + c]) * ik);
        }
    }
}

// Ti = (I + A)^-1 for A strictly lower triangular (64 x 64, row stride LDL), in float32, by
// blocks: the four 16 x 16 diagonal blocks by forward substitution (a thread per block column,
// the column in registers), then two doubling levels, each joining two lower-triangular inverses
// X1, X2 with the block A21 between them: [[X1, 0], [-X2 A21 X1, X2]]. A serial substitution over
// all 64 rows was half of the prepare kernel (one 2016-step chain on 2 of 8 warps); this is the
// same blocked forward substitution with a chain of 120 steps and the rest as small products.
// W: 32 x 32 floats of scratch. Ends with a barrier.
__device__ void unit_lower_inverse(const float *A, float *Ti, float *W) {
    const int tid = threadIdx.x;
    if (tid < CH) {
        const int base = (tid >> 4) * 16, c = tid & 15;
        float x[16];
#pragma unroll
        for (int r = 0; r < 16; r++) {
            float sum = 0.f;   // terms l < c are zero (x[l] = 0 there)
#pragma unroll
            for (int l = 0; l < r; l++) sum = fmaf(A[(base + r) * LDL + base + l], x[l], sum);
            x[r] = r < c ? 0.f : (r == c ? 1.f : -sum);
        }
#pragma unroll
        for (int r = 0; r < 16; r++) Ti[(base + r) * LDL + base + c] = x[r];
    } else {
        // zeros above the diagonal blocks
        for (int e = tid - CH; e < CH * CH; e += blockDim.x - CH) {
            const int i = e / CH, j = e % CH;
            if ((j >> 4) > (i >> 4)) Ti[i * LDL + j] = 0.f;
        }
    }
    __syncthreads();
    for (int n = 16; n < CH; n *= 2) {
        // join the pairs of n x n inverses at (o, o) and (o + n, o + n), o = 0, 2n, ...
        const int pairs = CH / (2 * n), per_pair = n * n;
        for (int e = tid; e < pairs * per_pair; e += blockDim.x) {
            const int o = (e / per_pair) * 2 * n, r = (e % per_pair) / n, c = e % n;
            float sum = 0.f;   // W = A21 X1
            for (int l = c; l < n; l++) sum = fmaf(A[(o + n + r) * LDL + o + l], Ti[(o + l) * LDL + o + c], sum);
            W[e] = sum;
        }
        __syncthreads();
        for (int e = tid; e < pairs * per_pair; e += blockDim.x) {
            const int p = e / per_pair, o = p * 2 * n, r = (e % per_pair) / n, c = e % n;
            float sum = 0.f;   // -X2 W
            for (int l = 0; l <= r; l++) sum = fmaf(Ti[(o + n + r) * LDL + o + n + l], W[p * per_pair + l * n + c], sum);
            Ti[(o + n + r) * LDL + o + c] = -sum;
        }
        __syncthreads();
    }
}

// 16 warps, two CTAs an SM (64 registers a thread): the kernel is a chain of short phases between
// barriers, and 8 warps a CTA left most cycles without a ready warp
#define PREPARE_THREADS 512

template <typename T>
__global__ void __launch_bounds__(PREPARE_THREADS, 2)
    mdn_prepare_kernel(Dims d, const T *q, const T *k, const float *log_alpha, const float *log_mu, const float *beta,
                       const float *eta, float *vec, T *Tinv, T *QKG) {
    extern __shared__ __align__(16) char smem[];
    PrepSmem<T> s;
    carve_prep(s, smem, d.K);
    const Coef &c = s.c;
    const int bhc = blockIdx.x, n = bhc % d.NC, bh = bhc / d.NC, h = bh % d.H, b = bh / d.H;
    const int t0 = n * CH, tid = threadIdx.x, ldk = d.K + pad_of<T>();
    constexpr bool MMA = UseMma<T>::value;

    issue_qk_rows(d, q, k, b, h, t0, s.Qh, s.Kh, ldk);
    chunk_coef(c, d, b, h, t0, log_alpha, log_mu, beta, eta);
    normalise_qk_rows(d, s.rq, s.rk, s.Qh, s.Kh, ldk);
    __syncthreads();
    // KK = Khat Khat^T into Ea's space, QK = Qbar Khat^T into Em's space (both free now)
    float *KK = c.Ea, *QK = c.Em;
    const T *Kh = s.Kh, *Qh = s.Qh;
    auto set_kk = [=](int i, int j, float v) { KK[i * LDL + j] = v; };
    auto set_qk = [=](int i, int j, float v) { QK[i * LDL + j] = v; };
    if constexpr (MMA) {
        block_mma<false, true>(CH, CH, d.K, (const bf16 *)Kh, ldk, (const bf16 *)Kh, ldk, nullptr, nullptr, set_kk);
        block_mma<false, true>(CH, CH, d.K, (const bf16 *)Qh, ldk, (const bf16 *)Kh, ldk, nullptr, nullptr, set_qk);
    } else {
        const KMajorT<T> fkt{Kh, ldk};
        block_gemm<false>(CH, CH, d.K, KMajor<T>{Kh, ldk}, fkt, set_kk);
        block_gemm<false>(CH, CH, d.K, KMajor<T>{Qh, ldk}, fkt, set_qk);
    }
    __syncthreads();
    // A = (P Kk^T) o Gamma_prev (strictly lower), QKG = (Qbar Kk^T) o Gamma (lower)
    for (int e = tid; e < CH * CH; e += blockDim.x) {
        const int i = e / CH, j = e % CH;
        const float pa = d.use_p ? c.al[i] : 1.f;
        KK[i * LDL + j] = j < i ? pa * c.et[j] * KK[i * LDL + j] * c.G[(i - 1) * LDL + j] : 0.f;
        QK[i * LDL + j] = j <= i ? QK[i * LDL + j] * c.et[j] * c.G[i * LDL + j] : 0.f;
    }
    __syncthreads();
    unit_lower_inverse(KK, s.Ti, s.W);
    const size_t mo = (size_t)bhc * CH * CH;
    for (int e = tid; e < CH * CH; e += blockDim.x) {
        const int i = e / CH, j = e % CH;
        Tinv[mo + e] = from_f<T>(s.Ti[i * LDL + j]);
        QKG[mo + e] = from_f<T>(QK[i * LDL + j]);
    }
    if (tid < CH) {
        float *vo = vec + (size_t)bhc * NVEC * CH;
        vo[VEC_A * CH + tid] = c.a[tid];
        vo[VEC_B * CH + tid] = c.b[tid];
        vo[VEC_M * CH + tid] = c.m[tid];
        vo[VEC_G * CH + tid] = c.G[(CH - 1) * LDL + tid];
        vo[VEC_H * CH + tid] = c.h[tid];
        vo[VEC_RQ * CH + tid] = s.rq[tid];
        vo[VEC_RK * CH + tid] = s.rk[tid];
        vo[VEC_PA * CH + tid] = d.use_p ? c.al[tid] : 1.f;
        vo[VEC_ETA * CH + tid] = c.et[tid];
    }
}

// ------------------------------------------------------------------------------------------------
// state passes (forward and reverse), one CTA per (b,h,V tile)
// ------------------------------------------------------------------------------------------------
// row factors of one chunk, from the prepare vectors
enum { SC_PA1, SC_PA2, SC_QA1, SC_QA2, SC_KK1, SC_KK2, NSC };
template <typename T> struct StateSmem {
    float *X;              // [2K][Vt+4] states (forward) or their gradients (reverse), float32
    T *Kh, *Qh;            // [CH][K+pad] raw k, q rows (normalisation in the row factors)
    T *Ti, *QG;            // [CH][CH+pad] T^-1, QKG
    T *Vs;                 // [CH][Vt+pad] v (forward) or d_o (reverse) tile
    float *R, *U;          // [CH][Vt+4] R, U (forward) or dU, G (reverse)
    float *sc;             // [NSC][CH]
};
// with_tile: the reverse pass keeps the d_o tile in shared memory (a product operand); the forward
// reads v once, in the epilogue of R, straight from global memory
template <typename T>
__host__ __device__ size_t carve_state(StateSmem<T> &s, char *base, int K, int Vt, bool with_tile) {
    Carver cv{0, base};
    s.X = cv.take<float>((size_t)2 * K * (Vt + 4));
    s.Kh = cv.take<T>((size_t)CH * (K + pad_of<T>()));
    s.Qh = cv.take<T>((size_t)CH * (K + pad_of<T>()));
    s.Ti = cv.take<T>((size_t)CH * (CH + pad_of<T>()));
    s.QG = cv.take<T>((size_t)CH * (CH + pad_of<T>()));
    s.Vs = with_tile ? cv.take<T>((size_t)CH * (Vt + pad_of<T>())) : nullptr;
    s.R = cv.take<float>((size_t)CH * (Vt + 4));
    s.U = cv.take<float>((size_t)CH * (Vt + 4));
    s.sc = cv.take<float>((size_t)NSC * CH);
    return cv.off;
}

// load one chunk's operands: row factors, khat, qbar, T^-1, QKG, and a [CH][Vt] tile of `tile_src`
// ([B,T,H,V]: v or d_o). Returns a_L, b_L, m_L through the pointers.
template <typename T>
__device__ void load_chunk(const StateSmem<T> &s, const Dims &d, int b, int h, int bhc, int t0, int v0,
                           const T *q, const T *k, const T *tile_src, const float *vec, const T *Tinv,
                           const T *QKG) {
    const int tid = threadIdx.x, ldk = d.K + pad_of<T>(), ldl = CH + pad_of<T>(), ldv = d.Vt + pad_of<T>();
    const float *vi = vec + (size_t)bhc * NVEC * CH;
    if (tid < CH) {
        const int i = tid;
        const float aprev = i ? vi[VEC_A * CH + i - 1] : 1.f, bprev = i ? vi[VEC_B * CH + i - 1] : 0.f;
        const float pa = vi[VEC_PA * CH + i], et = vi[VEC_ETA * CH + i];
        // Kh, Qh hold the raw rows; the factors carry the normalisation (one rounding, in the product)
        const float rk = vi[VEC_RK * CH + i], qs = vi[VEC_RQ * CH + i] * d.qscale;
        s.sc[SC_PA1 * CH + i] = -aprev * pa * rk;
        s.sc[SC_PA2 * CH + i] = bprev * pa * rk;
        s.sc[SC_QA1 * CH + i] = vi[VEC_A * CH + i] * qs;
        s.sc[SC_QA2 * CH + i] = -vi[VEC_B * CH + i] * qs;
        s.sc[SC_KK1 * CH + i] = vi[VEC_G * CH + i] * et * rk;
        s.sc[SC_KK2 * CH + i] = -vi[VEC_H * CH + i] * et * rk;
    }
    __syncthreads();
    const int rows_valid = min(CH, d.T - t0);
    const size_t base = (((size_t)b * d.T + t0) * d.H + h);
    const size_t mo = (size_t)bhc * CH * CH;
    load_rows(s.Kh, ldk, k + base * d.K, (size_t)d.H * d.K, CH, d.K, rows_valid);
    load_rows(s.Qh, ldk, q + base * d.K, (size_t)d.H * d.K, CH, d.K, rows_valid);
    load_rows(s.Ti, ldl, Tinv + mo, CH, CH, CH, CH);
    load_rows(s.QG, ldl, QKG + mo, CH, CH, CH, CH);
    if (tile_src)
        load_rows(s.Vs, ldv, tile_src + base * d.V + v0, (size_t)d.H * d.V, CH, d.Vt, rows_valid);
    __syncthreads();
}

// STORE = false: forward (writes o and final states). STORE = true: the backward's recompute
// (writes each chunk's X0 to Xall [bhc][2K][V] in float32 — the gate gradients' end-of-chunk
// reductions <dS1,S0>, <dS1,M0>, <dM1,M0> need it — and U to Uall [bhc][CH][V]).
template <typename T, bool STORE>
__global__ void __launch_bounds__(NTHREADS)
    mdn_state_fwd_kernel(Dims d, const T *q, const T *k, const T *v, const float *S0, const float *M0,
                         const float *vec, const T *Tinv, const T *QKG, T *o, float *S_final, float *M_final,
                         float *Xall, T *Uall) {
    extern __shared__ __align__(16) char smem[];
    StateSmem<T> s;
    carve_state(s, smem, d.K, d.Vt, false);
    constexpr bool MMA = UseMma<T>::value;
    const int bh = blockIdx.y, h = bh % d.H, b = bh / d.H, v0 = blockIdx.x * d.Vt, tid = threadIdx.x;
    const int K = d.K, Vt = d.Vt, ldx = Vt + 4, ldk = K + pad_of<T>(), ldl = CH + pad_of<T>();
    float *X = s.X, *R = s.R, *U = s.U;
    const float *sc = s.sc;
    const T *Kh = s.Kh, *Qh = s.Qh, *Ti = s.Ti, *QG = s.QG;

    for (int e = tid; e < K * Vt; e += blockDim.x) {
        const int r = e / Vt, c = e % Vt;
        const size_t gi = ((size_t)bh * K + r) * d.V + v0 + c;
        X[r * ldx + c] = S0 ? S0[gi] : 0.f;
        X[(K + r) * ldx + c] = M0 ? M0[gi] : 0.f;
    }
    for (int n = 0; n < d.NC; n++) {
        const int bhc = bh * d.NC + n, t0 = n * CH;
        __syncthreads();   // the previous chunk's state update is complete
        if (STORE)
            for (int e = tid; e < 2 * K * Vt; e += blockDim.x) {
                const int r = e / Vt, c = e % Vt;
                Xall[((size_t)bhc * 2 * K + r) * d.V + v0 + c] = X[r * ldx + c];
            }
        load_chunk(s, d, b, h, bhc, t0, v0, q, k, (const T *)nullptr, vec, Tinv, QKG);
        const float *vi = vec + (size_t)bhc * NVEC * CH;
        const float aL = vi[VEC_A * CH + CH - 1], bL = vi[VEC_B * CH + CH - 1], mL = vi[VEC_M * CH + CH - 1];

        auto fxs = [=](int r, int c) { return X[r * ldx + c]; };
        auto fxm = [=](int r, int c) { return X[(K + r) * ldx + c]; };
        // R = V + Pab X0 = V + (-a_prev o p) S0 + (b_prev o p) M0
        block_gemm2<MMA>(
            CH, Vt, K, [=](int i, int c) { return sc[SC_PA1 * CH + i] * to_f(Kh[i * ldk + c]); }, fxs, K,
            [=](int i, int c) { return sc[SC_PA2 * CH + i] * to_f(Kh[i * ldk + c]); }, fxm,
            [=](int i, int c, float val) {
                const float vv = t0 + i < d.T ? to_f(v[(((size_t)b * d.T + t0 + i) * d.H + h) * d.V + v0 + c]) : 0.f;
                R[i * ldx + c] = vv + val;
            });
        __syncthreads();
        // U = T^-1 R
        block_gemm<MMA>(
            CH, Vt, CH, KMajor<T>{Ti, ldl}, [=](int j, int c) { return R[j * ldx + c]; },
            [=](int i, int c, float val) {
                U[i * ldx + c] = val;
                if (STORE) Uall[((size_t)bhc * CH + i) * d.V + v0 + c] = from_f<T>(val);
            });
        __syncthreads();
        if (!STORE) {
            // O = Qab X0 + QKG U
            block_gemm3<MMA>(
                CH, Vt, K, [=](int i, int c) { return sc[SC_QA1 * CH + i] * to_f(Qh[i * ldk + c]); }, fxs, K,
                [=](int i, int c) { return sc[SC_QA2 * CH + i] * to_f(Qh[i * ldk + c]); }, fxm, CH,
                KMajor<T>{QG, ldl},
                [=](int j, int c) { return U[j * ldx + c]; },
                [=](int i, int c, float val) {
                    if (t0 + i < d.T) o[(((size_t)b * d.T + t0 + i) * d.H + h) * d.V + v0 + c] = from_f<T>(val);
                });
            __syncthreads();
        }
        auto fu = [=](int j, int c) { return U[j * ldx + c]; };
        // S1 = a_L S0 - b_L M0 + (g o kappa)^T U   (reads M0 before the M update below)
        block_gemm<MMA>(
            K, Vt, CH, [=](int r, int j) { return sc[SC_KK1 * CH + j] * to_f(Kh[j * ldk + r]); }, fu,
            [=](int r, int c, float val) { X[r * ldx + c] = aL * X[r * ldx + c] - bL * X[(K + r) * ldx + c] + val; });
        __syncthreads();
        // M1 = m_L M0 - (h o kappa)^T U
        block_gemm<MMA>(
            K, Vt, CH, [=](int r, int j) { return sc[SC_KK2 * CH + j] * to_f(Kh[j * ldk + r]); }, fu,
            [=](int r, int c, float val) { X[(K + r) * ldx + c] = mL * X[(K + r) * ldx + c] + val; });
    }
    __syncthreads();
    if (S_final || M_final)
        for (int e = tid; e < K * Vt; e += blockDim.x) {
            const int r = e / Vt, c = e % Vt;
            const size_t gi = ((size_t)bh * K + r) * d.V + v0 + c;
            if (S_final) S_final[gi] = X[r * ldx + c];
            if (M_final) M_final[gi] = X[(K + r) * ldx + c];
        }
}

// Reverse state pass: carries dX = [dS; dM] from the end; writes dv (= G) into G_out [B,T,H,V],
// each chunk's incoming dX1 into dXall [bhc][2K][V], and dS0, dM0.
template <typename T>
__global__ void __launch_bounds__(NTHREADS)
    mdn_state_bwd_kernel(Dims d, const T *q, const T *k, const T *d_o, const float *dS_final, const float *dM_final,
                         const float *vec, const T *Tinv, const T *QKG, T *G_out, float *dXall, float *dS0,
                         float *dM0) {
    extern __shared__ __align__(16) char smem[];
    StateSmem<T> s;
    carve_state(s, smem, d.K, d.Vt, true);
    constexpr bool MMA = UseMma<T>::value;
    const int bh = blockIdx.y, h = bh % d.H, b = bh / d.H, v0 = blockIdx.x * d.Vt, tid = threadIdx.x;
    const int K = d.K, Vt = d.Vt, ldx = Vt + 4, ldk = K + pad_of<T>(), ldl = CH + pad_of<T>(),
              ldv = Vt + pad_of<T>();
    float *dX = s.X, *dU = s.R, *G = s.U;
    const float *sc = s.sc;
    const T *Kh = s.Kh, *Qh = s.Qh, *Ti = s.Ti, *QG = s.QG, *dOs = s.Vs;

    for (int e = tid; e < K * Vt; e += blockDim.x) {
        const int r = e / Vt, c = e % Vt;
        const size_t gi = ((size_t)bh * K + r) * d.V + v0 + c;
        dX[r * ldx + c] = dS_final ? dS_final[gi] : 0.f;
        dX[(K + r) * ldx + c] = dM_final ? dM_final[gi] : 0.f;
    }
    for (int n = d.NC - 1; n >= 0; n--) {
        const int bhc = bh * d.NC + n, t0 = n * CH;
        __syncthreads();
        for (int e = tid; e < 2 * K * Vt; e += blockDim.x) {
            const int r = e / Vt, c = e % Vt;
            dXall[((size_t)bhc * 2 * K + r) * d.V + v0 + c] = dX[r * ldx + c];
        }
        load_chunk(s, d, b, h, bhc, t0, v0, q, k, d_o, vec, Tinv, QKG);
        const float *vi = vec + (size_t)bhc * NVEC * CH;
        const float aL = vi[VEC_A * CH + CH - 1], bL = vi[VEC_B * CH + CH - 1], mL = vi[VEC_M * CH + CH - 1];
        auto fdo = [=](int i, int c) { return to_f(dOs[i * ldv + c]); };
        auto fg = [=](int i, int c) { return G[i * ldx + c]; };

        // dU = KK dX1 + QKG^T dO
        block_gemm3<MMA>(
            CH, Vt, K, [=](int j, int c) { return sc[SC_KK1 * CH + j] * to_f(Kh[j * ldk + c]); },
            [=](int r, int c) { return dX[r * ldx + c]; }, K,
            [=](int j, int c) { return sc[SC_KK2 * CH + j] * to_f(Kh[j * ldk + c]); },
            [=](int r, int c) { return dX[(K + r) * ldx + c]; }, CH,
            [=](int j, int i) { return to_f(QG[i * ldl + j]); }, fdo,
            [=](int j, int c, float val) { dU[j * ldx + c] = val; });
        __syncthreads();
        // G = T^-T dU: the gradient of R, hence dv
        block_gemm<MMA>(
            CH, Vt, CH, [=](int i, int j) { return to_f(Ti[j * ldl + i]); }, [=](int j, int c) { return dU[j * ldx + c]; },
            [=](int i, int c, float val) {
                G[i * ldx + c] = val;
                if (t0 + i < d.T) G_out[(((size_t)b * d.T + t0 + i) * d.H + h) * d.V + v0 + c] = from_f<T>(val);
            });
        __syncthreads();
        // dM0 = -b_L dS1 + m_L dM1 + (-b o qbar)^T dO + (b_prev o p)^T G   (before dS is overwritten)
        block_gemm2<MMA>(
            K, Vt, CH, [=](int r, int i) { return sc[SC_QA2 * CH + i] * to_f(Qh[i * ldk + r]); }, fdo, CH,
            [=](int r, int i) { return sc[SC_PA2 * CH + i] * to_f(Kh[i * ldk + r]); }, fg,
            [=](int r, int c, float val) {
                dX[(K + r) * ldx + c] = -bL * dX[r * ldx + c] + mL * dX[(K + r) * ldx + c] + val;
            });
        __syncthreads();
        // dS0 = a_L dS1 + (a o qbar)^T dO + (-a_prev o p)^T G
        block_gemm2<MMA>(
            K, Vt, CH, [=](int r, int i) { return sc[SC_QA1 * CH + i] * to_f(Qh[i * ldk + r]); }, fdo, CH,
            [=](int r, int i) { return sc[SC_PA1 * CH + i] * to_f(Kh[i * ldk + r]); }, fg,
            [=](int r, int c, float val) { dX[r * ldx + c] = aL * dX[r * ldx + c] + val; });
    }
    __syncthreads();
    if (dS0 || dM0)
        for (int e = tid; e < K * Vt; e += blockDim.x) {
            const int r = e / Vt, c = e % Vt;
            const size_t gi = ((size_t)bh * K + r) * d.V + v0 + c;
            if (dS0) dS0[gi] = dX[r * ldx + c];
            if (dM0) dM0[gi] = dX[(K + r) * ldx + c];
        }
}

// ------------------------------------------------------------------------------------------------
// bf16 state passes (v7): the state in registers, operands by ldmatrix, cp.async prefetch
// ------------------------------------------------------------------------------------------------
// One CTA per (b,h,V tile) as above, with three changes that cut the instructions per mma.sync
// about fivefold and a barrier per chunk:
// - X = [S; M] (or dX) lives in registers as the accumulators of the state-update product: each
//   warp owns fixed 16 x 8*NBU strips of the K x VT state (at most 2, since K*VT <= 8192), so the
//   update X1 = D X0 + KK^T U starts from D X0 in place and needs no shared-memory round trip; a
//   bf16 copy Xb in shared memory is the operand of the next chunk's products (the same rounding
//   the v6 fragments applied).
// - Every fragment comes from bf16 shared memory by ldmatrix (.trans for the transposed operands),
//   rows padded by 16 bytes (conflict-free). The per-row gate factors that v6 multiplied into each
//   fragment element are applied to the float32 accumulators (row factors of the output) or folded
//   once into a bf16 copy of the small L x VT operand (factors along the inner index): raw k, q
//   rows (exact bf16 inputs) are the A operands.
// - Operands of the next chunk go out by cp.async as soon as their last reader of this chunk has
//   passed a barrier (T^-1, QKG, q / d_o during the state update; k after it).

// c[nb] += A(m0:m0+16, 0:kdim) B(0:kdim, n0+8nb : n0+8nb+8), and with NOPS 2 also
// c2[nb] += A B2 (the A fragment shared)
template <int NB, bool AT, int NOPS>
__device__ __forceinline__ void mma_strip(float (*c)[4], float (*c2)[4], const bf16 *A, int lda, const bf16 *B,
                                          const bf16 *B2, int ldb, int m0, int n0, int kdim) {
    for (int k0 = 0; k0 < kdim; k0 += 16) {
        uint32_t a[4];
        frag_a<AT>(a, A, lda, m0, k0);
#pragma unroll
        for (int op = 0; op < NOPS; op++) {
            const bf16 *Bo = op ? B2 : B;
            float (*co)[4] = op ? c2 : c;
#pragma unroll
            for (int nb = 0; nb + 1 < NB; nb += 2) {
                uint32_t b[4];
                frag_b2(b, Bo, ldb, k0, n0 + 8 * nb);
                mma_bf16_16816(co[nb], a[0], a[1], a[2], a[3], b[0], b[1]);
                mma_bf16_16816(co[nb + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
            }
            if (NB & 1) {
                uint32_t b[2];
                frag_b1(b, Bo, ldb, k0, n0 + 8 * (NB - 1));
                mma_bf16_16816(co[NB - 1], a[0], a[1], a[2], a[3], b[0], b[1]);
            }
        }
    }
}

__device__ __forceinline__ void st_bf16x2(bf16 *p, float x, float y) {
    *reinterpret_cast<uint32_t *>(p) = pack_bf16(x, y);
}

struct FastSmem {
    bf16 *Kh, *Qh;          // [CH][K+8] raw k, q rows
    bf16 *Ti, *QG;          // [CH][CH+8]
    bf16 *Xb;               // [2K][VT+8] bf16 copy of the state (or of dX)
    bf16 *W[6];             // [CH][VT+8] L x VT operands: forward R, U, g-scaled U, h-scaled U;
                            // reverse d_o, (a qs)-scaled d_o, (-b qs)-scaled d_o, dU, PA1 G, PA2 G
    float *vs;              // [NVEC][CH] the chunk's gate vectors (prepare's), fetched with its operands
};
// mode: FAST_FWD, FAST_STORE (the backward's recompute: no q, no QKG), FAST_BWD
enum { FAST_FWD, FAST_STORE, FAST_BWD };
__host__ __device__ inline size_t carve_fast(FastSmem &s, char *base, int K, int VT, int mode) {
    Carver cv{0, base};
    s.Kh = cv.take<bf16>((size_t)CH * (K + 8));
    s.Qh = mode == FAST_STORE ? nullptr : cv.take<bf16>((size_t)CH * (K + 8));
    s.Ti = cv.take<bf16>((size_t)CH * (CH + 8));
    s.QG = mode == FAST_STORE ? nullptr : cv.take<bf16>((size_t)CH * (CH + 8));
    s.Xb = cv.take<bf16>((size_t)2 * K * (VT + 8));
    for (int i = 0; i < 6; i++) s.W[i] = (i < (mode == FAST_BWD ? 6 : 4)) ? cv.take<bf16>((size_t)CH * (VT + 8)) : nullptr;
    s.vs = cv.take<float>((size_t)NVEC * CH);
    return cv.off;
}

// the chunk's gate vectors vi (NVEC x CH floats, 16-byte aligned) into vs, by cp.async with the
// chunk's other operands. The state passes used to load them from global memory at the top of
// each chunk (threads < CH, then the row factors into shared memory before the chunk's first
// barrier): an exposed load latency a chunk, ~19% of the reverse pass's stall samples at the top.
__device__ __forceinline__ void fast_fetch_vectors(float *vs, const float *vi) {
    for (int e = threadIdx.x; e < NVEC * CH / 4; e += blockDim.x) cp_async16(vs + 4 * e, vi + 4 * e, true);
}

// row i's factors (as load_chunk), formed where used from the staged gate vectors: each thread's
// epilogue touches two rows, so this is a few shared loads, and no pass of its own
struct RowFactors {
    float pa1, pa2;   // R = V + PA1 o (Kh S0) + PA2 o (Kh M0); G's update operands
    float qa1, qa2;   // O = QA1 o (Qh S0) + QA2 o (Qh M0) + ...; d_o's update operands
    float kk1, kk2;   // the update's operands KK1 o U, KK2 o U; dU = KK1 o (Kh dS1) + KK2 o (Kh dM1) + ...
};
__device__ __forceinline__ RowFactors fast_row_factors(const float *vs, const Dims &d, int i) {
    const float aprev = i ? vs[VEC_A * CH + i - 1] : 1.f, bprev = i ? vs[VEC_B * CH + i - 1] : 0.f;
    const float pa = vs[VEC_PA * CH + i], et = vs[VEC_ETA * CH + i];
    const float rk = vs[VEC_RK * CH + i], qs = vs[VEC_RQ * CH + i] * d.qscale;
    RowFactors f;
    f.pa1 = -aprev * pa * rk;
    f.pa2 = bprev * pa * rk;
    f.qa1 = vs[VEC_A * CH + i] * qs;
    f.qa2 = -vs[VEC_B * CH + i] * qs;
    f.kk1 = vs[VEC_G * CH + i] * et * rk;
    f.kk2 = -vs[VEC_H * CH + i] * et * rk;
    return f;
}

// the chunk's first row in a [B, T, H, .] tensor (row index (b·T + t)·H + h), and its rows before T
__device__ __forceinline__ size_t chunk_row0(const Dims &d, int b, int h, int n) {
    return ((size_t)b * d.T + n * CH) * d.H + h;
}
__device__ __forceinline__ int chunk_rows(const Dims &d, int n) { return min(CH, d.T - n * CH); }

// The state strips of warp w: s = w + 8j (j < SPW <= 2), s < nU; strip s covers rows 16*(s / nsn), columns
// 8*NBU*(s % nsn) of the K x VT block (nsn = VT / (8*NBU)).
template <int VT> struct FastTiling {
    static constexpr int NBL = VT / 16;               // L x VT products: 4 x 2 strips of 16 x VT/2
    static constexpr int NBU = VT >= 32 ? 4 : 2;      // K x VT state strips of 16 x 8*NBU
    static constexpr int NSN = VT / (8 * NBU);
};

// load the state block [K][V] rows (src, float32 or NULL: zero) of strip-owned elements into
// registers st[j][0] (first block) and st[j][1] (second), and their bf16 copy into Xb
template <int VT, int SPW>
__device__ __forceinline__ void fast_state_load(float (*st)[2][FastTiling<VT>::NBU][4], const Dims &d, int bh, int v0,
                                                const float *A0, const float *B0, bf16 *Xb) {
    constexpr int NBU = FastTiling<VT>::NBU, NSN = FastTiling<VT>::NSN;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int K = d.K, nU = (K / 16) * NSN, ldv = VT + 8;
#pragma unroll
    for (int j = 0; j < SPW; j++) {
        const int s = warp + 8 * j;
        if (s >= nU) break;
        const int m0 = (s / NSN) * 16, n0 = (s % NSN) * 8 * NBU;
#pragma unroll
        for (int which = 0; which < 2; which++) {
            const float *src = which ? B0 : A0;
#pragma unroll
            for (int nb = 0; nb < NBU; nb++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int r = m0 + g + 8 * hh, c = n0 + 8 * nb + 2 * t;
                    float2 x = make_float2(0.f, 0.f);
                    if (src) x = *reinterpret_cast<const float2 *>(src + ((size_t)bh * K + r) * d.V + v0 + c);
                    st[j][which][nb][2 * hh] = x.x;
                    st[j][which][nb][2 * hh + 1] = x.y;
                    st_bf16x2(Xb + (which * K + r) * ldv + c, x.x, x.y);
                }
        }
    }
}
// write the registers' state to dst_a / dst_b ([..][K][V] rows at row base `rowbase`, float32, or
// bf16 for the backward's per-chunk states)
template <int VT, int SPW, typename DT>
__device__ __forceinline__ void fast_state_store(float (*st)[2][FastTiling<VT>::NBU][4], const Dims &d,
                                                 size_t rowbase_a, size_t rowbase_b, int v0, DT *dst_a,
                                                 DT *dst_b) {
    constexpr int NBU = FastTiling<VT>::NBU, NSN = FastTiling<VT>::NSN;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int nU = (d.K / 16) * NSN;
#pragma unroll
    for (int j = 0; j < SPW; j++) {
        const int s = warp + 8 * j;
        if (s >= nU) break;
        const int m0 = (s / NSN) * 16, n0 = (s % NSN) * 8 * NBU;
#pragma unroll
        for (int which = 0; which < 2; which++) {
            DT *dst = which ? dst_b : dst_a;
            if (!dst) continue;
            const size_t rb = which ? rowbase_b : rowbase_a;
#pragma unroll
            for (int nb = 0; nb < NBU; nb++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int r = m0 + g + 8 * hh, c = n0 + 8 * nb + 2 * t;
                    if constexpr (std::is_same<DT, float>::value)
                        *reinterpret_cast<float2 *>(dst + (rb + r) * d.V + v0 + c) =
                            make_float2(st[j][which][nb][2 * hh], st[j][which][nb][2 * hh + 1]);
                    else
                        st_bf16x2(dst + (rb + r) * d.V + v0 + c, st[j][which][nb][2 * hh], st[j][which][nb][2 * hh + 1]);
                }
        }
    }
}

// CTAs per SM the forward state pass is compiled for (registers per thread: 128 for 2, 80 for 3).
// The recompute (STORE: no q, no QKG) at VT 32 with one strip per warp fits three in shared memory
// (69 KB at K 128): the 400M shape's 384 CTAs then run as one round on 132 SMs instead of two
// (0.86 -> 0.62 ms on an H100, with 32 bytes of spills).
template <int VT, int SPW, bool STORE> constexpr int fwd_fast_min_ctas() {
    return STORE && VT == 32 && SPW == 1 ? 3 : 2;
}

// Forward state pass (bf16). STORE as mdn_state_fwd_kernel (Xall per chunk in XT: bf16 for the v8
// state gradients, float32 for v7's; Uall bf16).
template <int VT, int SPW, bool STORE, typename XT>
__global__ void __launch_bounds__(NTHREADS, fwd_fast_min_ctas<VT, SPW, STORE>())
    mdn_state_fwd_fast_kernel(Dims d, const bf16 *q, const bf16 *k, const bf16 *v, const float *S0, const float *M0,
                              const float *vec, const bf16 *Tinv, const bf16 *QKG, bf16 *o, float *S_final,
                              float *M_final, XT *Xall, bf16 *Uall) {
    extern __shared__ __align__(16) char smem[];
    FastSmem s;
    carve_fast(s, smem, d.K, VT, STORE ? FAST_STORE : FAST_FWD);
    constexpr int NBL = FastTiling<VT>::NBL, NBU = FastTiling<VT>::NBU, NSN = FastTiling<VT>::NSN;
    const int bh = blockIdx.y, h = bh % d.H, b = bh / d.H, v0 = blockIdx.x * VT, tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int K = d.K, ldk = K + 8, ldl = CH + 8, ldv = VT + 8, nU = (K / 16) * NSN;
    bf16 *Rb = s.W[0], *Ub = s.W[1], *Ug = s.W[2], *Uh = s.W[3];
    const size_t hstride = (size_t)d.H * K;

    float st[SPW][2][NBU][4];
    fast_state_load<VT, SPW>(st, d, bh, v0, S0, M0, s.Xb);
    // The chunk's k and q rows live in two buffers whose roles swap every chunk (forward): q is dead
    // after O, so the next chunk's k goes there while this chunk's update still reads its own k,
    // and the next q goes into the old k buffer after the update (it is read only at O, after R
    // and U). The recompute (STORE: no q) reloads k after the update. The v tile of the next chunk
    // goes into Rb (dead after U; R's epilogue adds v in place). cp.async groups, oldest first:
    // [v] after U, [k, T^-1, QKG, vectors] after O (STORE: after U), [q] after the update; the
    // chunk top waits for all but the newest ([q]; STORE: all), O for the rest.
    bf16 *kbuf = s.Kh, *qbuf = s.Qh;
    auto issue_v = [&](int n) {
        async_rows(Rb, ldv, v + chunk_row0(d, b, h, n) * d.V + v0, (size_t)d.H * d.V, CH, VT, chunk_rows(d, n));
    };
    auto issue_k = [&](int n, bf16 *dst) {
        async_rows(dst, ldk, k + chunk_row0(d, b, h, n) * K, hstride, CH, K, chunk_rows(d, n));
    };
    auto issue_q = [&](int n, bf16 *dst) {
        async_rows(dst, ldk, q + chunk_row0(d, b, h, n) * K, hstride, CH, K, chunk_rows(d, n));
    };
    auto issue_rest = [&](int n) {
        const size_t mo = (size_t)(bh * d.NC + n) * CH * CH;
        async_rows(s.Ti, ldl, Tinv + mo, CH, CH, CH, CH);
        if (!STORE) async_rows(s.QG, ldl, QKG + mo, CH, CH, CH, CH);
        fast_fetch_vectors(s.vs, vec + (size_t)(bh * d.NC + n) * NVEC * CH);
    };
    issue_v(0);
    issue_k(0, kbuf);
    issue_rest(0);
    cp_async_commit();
    if (!STORE) {
        issue_q(0, qbuf);
        cp_async_commit();
    }
    for (int n = 0; n < d.NC; n++) {
        const int bhc = bh * d.NC + n, t0 = n * CH;
        if (STORE) fast_state_store<VT, SPW>(st, d, (size_t)bhc * 2 * K, (size_t)bhc * 2 * K + K, v0, Xall, Xall);
        if (STORE) cp_async_wait_group<0>();
        else cp_async_wait_group<1>();   // q may still be in flight
        __syncthreads();   // operands, gate vectors and Xb of the previous update visible
        // the update's decays, read before the next chunk's vectors are fetched over them
        const float aL = s.vs[VEC_A * CH + CH - 1], bL = s.vs[VEC_B * CH + CH - 1], mL = s.vs[VEC_M * CH + CH - 1];
        // R = V + PA1 o (Kh S0) + PA2 o (Kh M0)   (4 x 2 strips of 16 x VT/2, one per warp)
        {
            const int m0 = (warp >> 1) * 16, n0 = (warp & 1) * (VT / 2);
            const RowFactors f[2] = {fast_row_factors(s.vs, d, m0 + g), fast_row_factors(s.vs, d, m0 + g + 8)};
            float c1[NBL][4] = {}, c2[NBL][4] = {};
            mma_strip<NBL, false, 2>(c1, c2, kbuf, ldk, s.Xb, s.Xb + K * ldv, ldv, m0, n0, K);
#pragma unroll
            for (int nb = 0; nb < NBL; nb++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int i = m0 + g + 8 * hh, c = n0 + 8 * nb + 2 * t;
                    const float2 vv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(Rb + i * ldv + c));
                    const float p1 = f[hh].pa1, p2 = f[hh].pa2;
                    st_bf16x2(Rb + i * ldv + c, vv.x + p1 * c1[nb][2 * hh] + p2 * c2[nb][2 * hh],
                              vv.y + p1 * c1[nb][2 * hh + 1] + p2 * c2[nb][2 * hh + 1]);
                }
        }
        __syncthreads();
        // U = T^-1 R; the update's operands g o U, h o U (row factors KK1, KK2)
        {
            const int m0 = (warp >> 1) * 16, n0 = (warp & 1) * (VT / 2);
            const RowFactors f[2] = {fast_row_factors(s.vs, d, m0 + g), fast_row_factors(s.vs, d, m0 + g + 8)};
            float c1[NBL][4] = {};
            mma_strip<NBL, false, 1>(c1, c1, s.Ti, ldl, Rb, Rb, ldv, m0, n0, CH);
#pragma unroll
            for (int nb = 0; nb < NBL; nb++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int i = m0 + g + 8 * hh, c = n0 + 8 * nb + 2 * t;
                    const float x = c1[nb][2 * hh], y = c1[nb][2 * hh + 1];
                    const float k1 = f[hh].kk1, k2 = f[hh].kk2;
                    st_bf16x2(Ub + i * ldv + c, x, y);
                    st_bf16x2(Ug + i * ldv + c, k1 * x, k1 * y);
                    st_bf16x2(Uh + i * ldv + c, k2 * x, k2 * y);
                    if (STORE) st_bf16x2(Uall + ((size_t)bhc * CH + i) * d.V + v0 + c, x, y);
                }
        }
        if (!STORE) cp_async_wait_group<0>();   // this chunk's q
        __syncthreads();   // U's operands read: Rb free
        if (n + 1 < d.NC) {
            issue_v(n + 1);
            if (STORE) issue_rest(n + 1);
            cp_async_commit();
        }
        if (!STORE) {
            // O = QA1 o (Qh S0) + QA2 o (Qh M0) + QKG U
            const int m0 = (warp >> 1) * 16, n0 = (warp & 1) * (VT / 2);
            const RowFactors f[2] = {fast_row_factors(s.vs, d, m0 + g), fast_row_factors(s.vs, d, m0 + g + 8)};
            float c1[NBL][4] = {}, c2[NBL][4] = {};
            mma_strip<NBL, false, 2>(c1, c2, qbuf, ldk, s.Xb, s.Xb + K * ldv, ldv, m0, n0, K);
#pragma unroll
            for (int nb = 0; nb < NBL; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    c1[nb][e] = f[e >> 1].qa1 * c1[nb][e] + f[e >> 1].qa2 * c2[nb][e];
            mma_strip<NBL, false, 1>(c1, c1, s.QG, ldl, Ub, Ub, ldv, m0, n0, CH);
#pragma unroll
            for (int nb = 0; nb < NBL; nb++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int i = m0 + g + 8 * hh, c = n0 + 8 * nb + 2 * t;
                    if (t0 + i < d.T)
                        st_bf16x2(o + (((size_t)b * d.T + t0 + i) * d.H + h) * d.V + v0 + c, c1[nb][2 * hh],
                                  c1[nb][2 * hh + 1]);
                }
            __syncthreads();   // Xb, q, QKG, T^-1 read for the last time in this chunk
            if (n + 1 < d.NC) {
                issue_k(n + 1, qbuf);
                issue_rest(n + 1);
                cp_async_commit();
            }
        }
        // X1 = D X0 + Kh^T [g o U, h o U], in the registers; then the bf16 copy
#pragma unroll
        for (int j = 0; j < SPW; j++) {
            const int sidx = warp + 8 * j;
            if (sidx >= nU) break;
            const int m0 = (sidx / NSN) * 16, n0 = (sidx % NSN) * 8 * NBU;
#pragma unroll
            for (int nb = 0; nb < NBU; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float S = st[j][0][nb][e], M = st[j][1][nb][e];
                    st[j][0][nb][e] = aL * S - bL * M;
                    st[j][1][nb][e] = mL * M;
                }
            mma_strip<NBU, true, 2>(st[j][0], st[j][1], kbuf, ldk, Ug, Uh, ldv, m0, n0, CH);
#pragma unroll
            for (int which = 0; which < 2; which++)
#pragma unroll
                for (int nb = 0; nb < NBU; nb++)
#pragma unroll
                    for (int hh = 0; hh < 2; hh++) {
                        const int r = m0 + g + 8 * hh, c = n0 + 8 * nb + 2 * t;
                        st_bf16x2(s.Xb + (which * K + r) * ldv + c, st[j][which][nb][2 * hh],
                                  st[j][which][nb][2 * hh + 1]);
                    }
        }
        __syncthreads();   // k, Ug, Uh read; Xb complete
        if (n + 1 < d.NC) {
            if (STORE) {
                issue_k(n + 1, kbuf);
            } else {
                issue_q(n + 1, kbuf);
                bf16 *const next_k = qbuf;
                qbuf = kbuf;
                kbuf = next_k;
            }
            cp_async_commit();
        }
    }
    fast_state_store<VT, SPW>(st, d, (size_t)bh * K, (size_t)bh * K, v0, S_final, M_final);
}

// Reverse state pass (bf16), as mdn_state_bwd_kernel (dXall in XT as Xall above).
template <int VT, int SPW, typename XT>
__global__ void __launch_bounds__(NTHREADS, 2)
    mdn_state_bwd_fast_kernel(Dims d, const bf16 *q, const bf16 *k, const bf16 *d_o, const float *dS_final,
                              const float *dM_final, const float *vec, const bf16 *Tinv, const bf16 *QKG, bf16 *G_out,
                              XT *dXall, float *dS0, float *dM0) {
    extern __shared__ __align__(16) char smem[];
    FastSmem s;
    carve_fast(s, smem, d.K, VT, FAST_BWD);
    constexpr int NBL = FastTiling<VT>::NBL, NBU = FastTiling<VT>::NBU, NSN = FastTiling<VT>::NSN;
    const int bh = blockIdx.y, h = bh % d.H, b = bh / d.H, v0 = blockIdx.x * VT, tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int K = d.K, ldk = K + 8, ldl = CH + 8, ldv = VT + 8, nU = (K / 16) * NSN;
    bf16 *dOs = s.W[0], *dOq1 = s.W[1], *dOq2 = s.W[2], *dUb = s.W[3], *Gp1 = s.W[4], *Gp2 = s.W[5];
    const size_t hstride = (size_t)d.H * K;

    float st[SPW][2][NBU][4];
    fast_state_load<VT, SPW>(st, d, bh, v0, dS_final, dM_final, s.Xb);
    // cp.async groups, oldest first: [T^-1, QKG, d_o, vectors] after G, then [k] and [q] after the
    // update. q is read only by the update, so the chunk top waits for all but [q], and the
    // barrier after G for [q]: its latency hides behind dU and G. (Running the update's Kh products
    // first, a barrier, and k's load during the Qh products measured 3% slower.)
    auto issue_rest = [&](int n) {
        const size_t mo = (size_t)(bh * d.NC + n) * CH * CH;
        async_rows(s.Ti, ldl, Tinv + mo, CH, CH, CH, CH);
        async_rows(s.QG, ldl, QKG + mo, CH, CH, CH, CH);
        async_rows(dOs, ldv, d_o + chunk_row0(d, b, h, n) * d.V + v0, (size_t)d.H * d.V, CH, VT, chunk_rows(d, n));
        fast_fetch_vectors(s.vs, vec + (size_t)(bh * d.NC + n) * NVEC * CH);
        cp_async_commit();
    };
    auto issue_k = [&](int n) {
        async_rows(s.Kh, ldk, k + chunk_row0(d, b, h, n) * K, hstride, CH, K, chunk_rows(d, n));
        cp_async_commit();
    };
    auto issue_q = [&](int n) {
        async_rows(s.Qh, ldk, q + chunk_row0(d, b, h, n) * K, hstride, CH, K, chunk_rows(d, n));
        cp_async_commit();
    };
    issue_rest(d.NC - 1);
    issue_k(d.NC - 1);
    issue_q(d.NC - 1);
    for (int n = d.NC - 1; n >= 0; n--) {
        const int bhc = bh * d.NC + n, t0 = n * CH;
        fast_state_store<VT, SPW>(st, d, (size_t)bhc * 2 * K, (size_t)bhc * 2 * K + K, v0, dXall, dXall);
        cp_async_wait_group<1>();   // q may still be in flight
        __syncthreads();
        // the update's decays, read before the previous chunk's vectors are fetched over them
        const float aL = s.vs[VEC_A * CH + CH - 1], bL = s.vs[VEC_B * CH + CH - 1], mL = s.vs[VEC_M * CH + CH - 1];
        // dU = KK1 o (Kh dS1) + KK2 o (Kh dM1) + QKG^T dO; the update's operands (a qs) o dO, (-b qs) o dO
        {
            const int m0 = (warp >> 1) * 16, n0 = (warp & 1) * (VT / 2);
            const RowFactors f[2] = {fast_row_factors(s.vs, d, m0 + g), fast_row_factors(s.vs, d, m0 + g + 8)};
            float c1[NBL][4] = {}, c2[NBL][4] = {};
            mma_strip<NBL, false, 2>(c1, c2, s.Kh, ldk, s.Xb, s.Xb + K * ldv, ldv, m0, n0, K);
#pragma unroll
            for (int nb = 0; nb < NBL; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    c1[nb][e] = f[e >> 1].kk1 * c1[nb][e] + f[e >> 1].kk2 * c2[nb][e];
            mma_strip<NBL, true, 1>(c1, c1, s.QG, ldl, dOs, dOs, ldv, m0, n0, CH);
#pragma unroll
            for (int nb = 0; nb < NBL; nb++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int i = m0 + g + 8 * hh, c = n0 + 8 * nb + 2 * t;
                    st_bf16x2(dUb + i * ldv + c, c1[nb][2 * hh], c1[nb][2 * hh + 1]);
                    const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(dOs + i * ldv + c));
                    const float q1 = f[hh].qa1, q2 = f[hh].qa2;
                    st_bf16x2(dOq1 + i * ldv + c, q1 * x.x, q1 * x.y);
                    st_bf16x2(dOq2 + i * ldv + c, q2 * x.x, q2 * x.y);
                }
        }
        __syncthreads();
        // G = T^-T dU (= dv); the update's operands PA1 o G, PA2 o G
        {
            const int m0 = (warp >> 1) * 16, n0 = (warp & 1) * (VT / 2);
            const RowFactors f[2] = {fast_row_factors(s.vs, d, m0 + g), fast_row_factors(s.vs, d, m0 + g + 8)};
            float c1[NBL][4] = {};
            mma_strip<NBL, true, 1>(c1, c1, s.Ti, ldl, dUb, dUb, ldv, m0, n0, CH);
#pragma unroll
            for (int nb = 0; nb < NBL; nb++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int i = m0 + g + 8 * hh, c = n0 + 8 * nb + 2 * t;
                    const float x = c1[nb][2 * hh], y = c1[nb][2 * hh + 1];
                    const float p1 = f[hh].pa1, p2 = f[hh].pa2;
                    if (t0 + i < d.T) st_bf16x2(G_out + (((size_t)b * d.T + t0 + i) * d.H + h) * d.V + v0 + c, x, y);
                    st_bf16x2(Gp1 + i * ldv + c, p1 * x, p1 * y);
                    st_bf16x2(Gp2 + i * ldv + c, p2 * x, p2 * y);
                }
        }
        cp_async_wait_group<0>();   // this chunk's q
        __syncthreads();   // T^-1, QKG, d_o, Xb read for the last time in this chunk
        if (n > 0) issue_rest(n - 1);
        // dS0 = a_L dS1 + Qh^T (QA1 o dO) + Kh^T (PA1 o G); dM0 = -b_L dS1 + m_L dM1 + Qh^T (QA2 o dO) + Kh^T (PA2 o G)
#pragma unroll
        for (int j = 0; j < SPW; j++) {
            const int sidx = warp + 8 * j;
            if (sidx >= nU) break;
            const int m0 = (sidx / NSN) * 16, n0 = (sidx % NSN) * 8 * NBU;
#pragma unroll
            for (int nb = 0; nb < NBU; nb++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float S = st[j][0][nb][e], M = st[j][1][nb][e];
                    st[j][0][nb][e] = aL * S;
                    st[j][1][nb][e] = -bL * S + mL * M;
                }
            mma_strip<NBU, true, 2>(st[j][0], st[j][1], s.Qh, ldk, dOq1, dOq2, ldv, m0, n0, CH);
            mma_strip<NBU, true, 2>(st[j][0], st[j][1], s.Kh, ldk, Gp1, Gp2, ldv, m0, n0, CH);
#pragma unroll
            for (int which = 0; which < 2; which++)
#pragma unroll
                for (int nb = 0; nb < NBU; nb++)
#pragma unroll
                    for (int hh = 0; hh < 2; hh++) {
                        const int r = m0 + g + 8 * hh, c = n0 + 8 * nb + 2 * t;
                        st_bf16x2(s.Xb + (which * K + r) * ldv + c, st[j][which][nb][2 * hh],
                                  st[j][which][nb][2 * hh + 1]);
                    }
        }
        __syncthreads();   // Kh, Qh read; Xb complete
        if (n > 0) {
            issue_k(n - 1);
            issue_q(n - 1);
        }
    }
    fast_state_store<VT, SPW>(st, d, (size_t)bh * K, (size_t)bh * K, v0, dS0, dM0);
}

// ------------------------------------------------------------------------------------------------
// backward, products over V: one CTA per (b,h,chunk) and KT key columns; the last CTA of each
// chunk (blockIdx.x == nKt) forms the L x L products F1 = dO U^T and F2 = G U^T
// ------------------------------------------------------------------------------------------------
enum { RP_DA, RP_DB, RP_DAP, RP_DBP, RP_DG, RP_DH, NRP };   // row partial sums
template <typename T> struct GradSmem {
    T *dO, *G, *U;              // [CH][Vc+pad]
    T *S0, *M0, *dS1, *dM1;     // [KT][Vc+pad]
    float *E;                   // [6][CH][KT+1]
    float *red;                 // [3][NTHREADS]
};
template <typename T> __host__ __device__ size_t carve_grad(GradSmem<T> &s, char *base, int KT, int Vc) {
    Carver cv{0, base};
    const size_t ldv = Vc + pad_of<T>();
    s.dO = cv.take<T>(CH * ldv);
    s.G = cv.take<T>(CH * ldv);
    s.U = cv.take<T>(CH * ldv);
    s.S0 = cv.take<T>(KT * ldv);
    s.M0 = cv.take<T>(KT * ldv);
    s.dS1 = cv.take<T>(KT * ldv);
    s.dM1 = cv.take<T>(KT * ldv);
    s.E = cv.take<float>((size_t)6 * CH * (KT + 1));
    s.red = cv.take<float>(3 * NTHREADS);
    return cv.off;
}

// E1..E6 ([6][CH][KT+1] float32, shared) of key columns kt*KT.. of chunk bhc -> the partial
// dqbar, dp, dkappa rows (gate factors applied) and the six row partial sums of the gate factors
template <typename T, int KT>
__device__ __forceinline__ void grads_combine(const Dims &d, const float *E, int bhc, int kt, int nKt, const T *q,
                                              const T *k, const float *vec, float *dQst, float *dPst, float *dKst,
                                              float *rowp) {
    const int n = bhc % d.NC, bh = bhc / d.NC, h = bh % d.H, b = bh / d.H, t0 = n * CH, tid = threadIdx.x;
    const int K = d.K, k0 = kt * KT, lde = KT + 1;
    // combine: 4 threads per row i, each over CPT consecutive columns of the tile. A thread's q and
    // k values are loaded before its first store (a load after a store to a pointer that may alias
    // it waits for the store: one exposed latency a column), and its outputs go out as float4s.
    constexpr int CPT = KT / 4;
    static_assert(CPT % 4 == 0, "grads_combine stores float4s");
    const int i = tid >> 2, c0 = (tid & 3) * CPT;
    const float *vi = vec + (size_t)bhc * NVEC * CH;
    const float a = vi[VEC_A * CH + i], bb = vi[VEC_B * CH + i];
    const float aprev = i ? vi[VEC_A * CH + i - 1] : 1.f, bprev = i ? vi[VEC_B * CH + i - 1] : 0.f;
    const float gg = vi[VEC_G * CH + i], hh = vi[VEC_H * CH + i], pa = vi[VEC_PA * CH + i], et = vi[VEC_ETA * CH + i];
    const float qs = vi[VEC_RQ * CH + i] * d.qscale, rk = vi[VEC_RK * CH + i];
    const bool valid = t0 + i < d.T;
    const size_t rowbase = (((size_t)b * d.T + t0 + i) * d.H + h) * K + k0 + c0;
    // the raw values, 8 bytes a load (bf16: two values a register until used)
    constexpr int NLD = CPT * (int)sizeof(T) / 8;
    uint2 qraw[NLD], kraw[NLD];
#pragma unroll
    for (int v = 0; v < NLD; v++) {
        qraw[v] = valid ? *reinterpret_cast<const uint2 *>(q + rowbase + v * (8 / sizeof(T))) : make_uint2(0u, 0u);
        kraw[v] = valid ? *reinterpret_cast<const uint2 *>(k + rowbase + v * (8 / sizeof(T))) : make_uint2(0u, 0u);
    }
    const T *qv = reinterpret_cast<const T *>(qraw), *kv = reinterpret_cast<const T *>(kraw);
    float r[NRP] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    const size_t o = ((size_t)bhc * CH + i) * K + k0 + c0;
#pragma unroll
    for (int j0 = 0; j0 < CPT; j0 += 4) {
        float dqv[4], dpv[4], dkv[4];
#pragma unroll
        for (int j = j0; j < j0 + 4; j++) {
            const int cc = c0 + j;
            const float e1 = E[0 * CH * lde + i * lde + cc], e2 = E[1 * CH * lde + i * lde + cc];
            const float e3 = E[2 * CH * lde + i * lde + cc], e4 = E[3 * CH * lde + i * lde + cc];
            const float e5 = E[4 * CH * lde + i * lde + cc], e6 = E[5 * CH * lde + i * lde + cc];
            dqv[j - j0] = a * e1 - bb * e2;
            dpv[j - j0] = -aprev * e3 + bprev * e4;
            dkv[j - j0] = gg * e5 - hh * e6;
            const float qb = to_f(qv[j]) * qs, kh = to_f(kv[j]) * rk;
            r[RP_DA] += e1 * qb;
            r[RP_DB] -= e2 * qb;
            r[RP_DAP] -= e3 * pa * kh;
            r[RP_DBP] += e4 * pa * kh;
            r[RP_DG] += e5 * et * kh;
            r[RP_DH] -= e6 * et * kh;
        }
        *reinterpret_cast<float4 *>(dQst + o + j0) = make_float4(dqv[0], dqv[1], dqv[2], dqv[3]);
        *reinterpret_cast<float4 *>(dPst + o + j0) = make_float4(dpv[0], dpv[1], dpv[2], dpv[3]);
        *reinterpret_cast<float4 *>(dKst + o + j0) = make_float4(dkv[0], dkv[1], dkv[2], dkv[3]);
    }
#pragma unroll
    for (int j = 0; j < NRP; j++) {
        r[j] += __shfl_xor_sync(0xffffffffu, r[j], 1);
        r[j] += __shfl_xor_sync(0xffffffffu, r[j], 2);
    }
    if ((tid & 3) == 0)
        for (int j = 0; j < NRP; j++) rowp[(((size_t)bhc * nKt + kt) * NRP + j) * CH + i] = r[j];
}

template <typename T, int KT>
__global__ void __launch_bounds__(NTHREADS)
    mdn_bwd_state_grads_kernel(Dims d, int Vc, const T *q, const T *k, const T *d_o, const T *Gin, const T *Uall,
                               const float *Xall, const float *dXall, const float *vec, float *dQst, float *dPst,
                               float *dKst, float *rowp, float *scal, float *F) {
    extern __shared__ __align__(16) char smem[];
    GradSmem<T> s;
    carve_grad(s, smem, KT, Vc);
    constexpr bool MMA = UseMma<T>::value;
    constexpr int NB = KT / 8 > 4 ? KT / 8 : 4;         // 8-column tiles per strip
    const int nKt = d.K / KT, kt = blockIdx.x, bhc = blockIdx.y, n = bhc % d.NC, bh = bhc / d.NC;
    const int h = bh % d.H, b = bh / d.H, t0 = n * CH, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int K = d.K, k0 = kt * KT, ldv = Vc + pad_of<T>();
    const bool fcta = kt == nKt;
    const T *dOs = s.dO, *Gs = s.G, *Us = s.U, *S0s = s.S0, *M0s = s.M0, *dS1s = s.dS1, *dM1s = s.dM1;

    // E-CTA: 3 pairs x CH/16 m-tiles = 12 units; F-CTA: CH/16 m-tiles x 2 column halves = 8
    const int NUNITS = fcta ? 2 * (CH / 16) : 3 * (CH / 16);
    float acc[2][2][NB][4];
#pragma unroll
    for (int ui = 0; ui < 2; ui++)
#pragma unroll
        for (int w = 0; w < 2; w++)
#pragma unroll
            for (int nb = 0; nb < NB; nb++) acc[ui][w][nb][0] = acc[ui][w][nb][1] = acc[ui][w][nb][2] = acc[ui][w][nb][3] = 0.f;
    float pss = 0.f, psm = 0.f, pmm = 0.f;

    for (int v0 = 0; v0 < d.V; v0 += Vc) {
        __syncthreads();
        {
            const int rows_valid = min(CH, d.T - t0);
            const size_t base = ((size_t)b * d.T + t0) * d.H + h;
            load_rows(s.dO, ldv, d_o + base * d.V + v0, (size_t)d.H * d.V, CH, Vc, rows_valid);
            load_rows(s.G, ldv, Gin + base * d.V + v0, (size_t)d.H * d.V, CH, Vc, rows_valid);
            load_rows(s.U, ldv, Uall + (size_t)bhc * CH * d.V + v0, d.V, CH, Vc, CH);
            if (!fcta) {
                const size_t xs = ((size_t)bhc * 2 * K + k0) * d.V + v0, xm = xs + (size_t)K * d.V;
                // float32 states: the scalar reductions in float32, the product operands in T
                for (int e = tid; e < KT * (Vc / 4); e += blockDim.x) {
                    const int r = e / (Vc / 4), c = (e - r * (Vc / 4)) * 4;
                    const size_t o = (size_t)r * d.V + c;
                    const float4 fs0 = *reinterpret_cast<const float4 *>(Xall + xs + o);
                    const float4 fm0 = *reinterpret_cast<const float4 *>(Xall + xm + o);
                    const float4 fds = *reinterpret_cast<const float4 *>(dXall + xs + o);
                    const float4 fdm = *reinterpret_cast<const float4 *>(dXall + xm + o);
                    const float as0[4] = {fs0.x, fs0.y, fs0.z, fs0.w}, am0[4] = {fm0.x, fm0.y, fm0.z, fm0.w};
                    const float ads[4] = {fds.x, fds.y, fds.z, fds.w}, adm[4] = {fdm.x, fdm.y, fdm.z, fdm.w};
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        s.S0[r * ldv + c + j] = from_f<T>(as0[j]);
                        s.M0[r * ldv + c + j] = from_f<T>(am0[j]);
                        s.dS1[r * ldv + c + j] = from_f<T>(ads[j]);
                        s.dM1[r * ldv + c + j] = from_f<T>(adm[j]);
                        pss = fmaf(ads[j], as0[j], pss);
                        psm = fmaf(ads[j], am0[j], psm);
                        pmm = fmaf(adm[j], am0[j], pmm);
                    }
                }
            }
        }
        __syncthreads();
        // unit u of warp w (u = w, w + 8): E-CTA: E pair p (dO: E1 E2, G: E3 E4, U: E5 E6) and
        // m-tile mt, all KT columns; F-CTA: m-tile and 32 columns of F1 = dO U^T and F2 = G U^T
        const KMajor<T> Ado{dOs, ldv}, AG{Gs, ldv}, AU{Us, ldv};
#pragma unroll
        for (int ui = 0; ui < 2; ui++) {
            const int u = warp + (NTHREADS / 32) * ui;
            if (u >= NUNITS) break;
            if (!fcta) {
                const int pr = u / (CH / 16), m0 = (u % (CH / 16)) * 16;
                const KMajor<T> A = pr == 0 ? Ado : (pr == 1 ? AG : AU);
                const KMajorT<T> B1{pr < 2 ? S0s : dS1s, ldv}, B2{pr < 2 ? M0s : dM1s, ldv};
                strip_acc<MMA, KT / 8>(acc[ui][0], m0, 0, Vc, A, B1);
                strip_acc<MMA, KT / 8>(acc[ui][1], m0, 0, Vc, A, B2);
            } else {
                const int m0 = (u / 2) * 16, n0 = (u % 2) * 32;
                const KMajorT<T> BU{Us, ldv};
                strip_acc<MMA, 4>(acc[ui][0], m0, n0, Vc, Ado, BU);
                strip_acc<MMA, 4>(acc[ui][1], m0, n0, Vc, AG, BU);
            }
        }
    }
    const int g = lane >> 2, t = lane & 3;
    if (fcta) {
#pragma unroll
        for (int ui = 0; ui < 2; ui++) {
            const int u = warp + (NTHREADS / 32) * ui;
            if (u >= NUNITS) break;
            const int m0 = (u / 2) * 16, n0 = (u % 2) * 32;
#pragma unroll
            for (int which = 0; which < 2; which++) {
                float *Fo = F + ((size_t)bhc * 2 + which) * CH * CH;
#pragma unroll
                for (int nb = 0; nb < 4; nb++) {
                    const int col = n0 + 8 * nb + 2 * t;
                    Fo[(m0 + g) * CH + col] = acc[ui][which][nb][0];
                    Fo[(m0 + g) * CH + col + 1] = acc[ui][which][nb][1];
                    Fo[(m0 + g + 8) * CH + col] = acc[ui][which][nb][2];
                    Fo[(m0 + g + 8) * CH + col + 1] = acc[ui][which][nb][3];
                }
            }
        }
        return;
    }
    const int lde = KT + 1;
#pragma unroll
    for (int ui = 0; ui < 2; ui++) {
        const int u = warp + (NTHREADS / 32) * ui;
        if (u >= NUNITS) break;
        const int pr = u / (CH / 16), m0 = (u % (CH / 16)) * 16;
#pragma unroll
        for (int which = 0; which < 2; which++) {
            float *E = s.E + (2 * pr + which) * CH * lde;
#pragma unroll
            for (int nb = 0; nb < KT / 8; nb++) {
                const int col = 8 * nb + 2 * t;
                E[(m0 + g) * lde + col] = acc[ui][which][nb][0];
                E[(m0 + g) * lde + col + 1] = acc[ui][which][nb][1];
                E[(m0 + g + 8) * lde + col] = acc[ui][which][nb][2];
                E[(m0 + g + 8) * lde + col + 1] = acc[ui][which][nb][3];
            }
        }
    }
    s.red[tid] = pss;
    s.red[NTHREADS + tid] = psm;
    s.red[2 * NTHREADS + tid] = pmm;
    __syncthreads();
    if (tid < 3) {   // fixed-order sum: reproducible
        float sum = 0.f;
        for (int i = 0; i < NTHREADS; i++) sum += s.red[tid * NTHREADS + i];
        scal[((size_t)bhc * nKt + kt) * 3 + tid] = sum;
    }
    grads_combine<T, KT>(d, s.E, bhc, kt, nKt, q, k, vec, dQst, dPst, dKst, rowp);
}

// bf16 (v8): the same products with every fragment by ldmatrix (all operands are stored with the
// inner index V contiguous, so A and B both load untransposed), every operand by cp.async (the
// per-chunk states are bf16: the state passes write them so, and the three end-of-chunk dot
// products are taken here from those bf16 values in float32), and E aliasing the operand tiles
// after the last product: ~55 KB of shared memory (v6 layout: ~100 KB, 2 CTAs per SM). Units of work per warp:
// E-CTA: (pair, m-tile, 16 key columns) with both products of the pair sharing the A fragment;
// F-CTA: (m-tile, 16 columns) with F1 and F2 sharing the U^T fragment.
struct GradFastSmem {
    bf16 *dO, *G, *U;            // [CH][Vc+8]
    bf16 *S0, *M0, *dS1, *dM1;   // [KT][Vc+8]
    float *E;                    // [6][CH][KT+1], aliases the above after the products
    float *red;                  // [3][8] per-warp end-of-chunk dot products
};
__host__ __device__ inline size_t carve_grad_fast(GradFastSmem &s, char *base, int KT, int Vc) {
    Carver cv{0, base};
    const size_t ldv = Vc + 8;
    bf16 **rows[] = {&s.dO, &s.G, &s.U};
    for (int i = 0; i < 3; i++) *rows[i] = cv.take<bf16>(CH * ldv);
    bf16 **sts[] = {&s.S0, &s.M0, &s.dS1, &s.dM1};
    for (int i = 0; i < 4; i++) *sts[i] = cv.take<bf16>(KT * ldv);
    Carver ce{0, base};
    s.E = ce.take<float>((size_t)6 * CH * (KT + 1));
    if (ce.off > cv.off) cv.off = ce.off;
    s.red = cv.take<float>(3 * (NTHREADS / 32));
    return cv.off;
}
// 3 CTAs per SM (80 registers: 60 bytes of spills at KT 32) measured faster than 2 (120, none):
// 400M 1.22 -> 1.10 ms, 1B 1.95 -> 1.73 ms
template <int KT>
__global__ void __launch_bounds__(NTHREADS, 3)
    mdn_bwd_state_grads_fast_kernel(Dims d, int Vc, const bf16 *q, const bf16 *k, const bf16 *d_o, const bf16 *Gin,
                                    const bf16 *Uall, const bf16 *Xall, const bf16 *dXall, const float *vec,
                                    float *dQst, float *dPst, float *dKst, float *rowp, float *scal, float *F) {
    extern __shared__ __align__(16) char smem[];
    GradFastSmem s;
    carve_grad_fast(s, smem, KT, Vc);
    constexpr int NH = KT / 16, UPW = (3 * (CH / 16) * NH + 7) / 8;   // E units per warp (F: 2)
    const int nKt = d.K / KT, kt = blockIdx.x, bhc = blockIdx.y, n = bhc % d.NC, bh = bhc / d.NC;
    const int h = bh % d.H, b = bh / d.H, t0 = n * CH, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int K = d.K, k0 = kt * KT, ldv = Vc + 8;
    const bool fcta = kt == nKt;
    const int rows_valid = min(CH, d.T - t0);
    const size_t base = ((size_t)b * d.T + t0) * d.H + h;

    float acc[UPW > 2 ? UPW : 2][2][2][4];
#pragma unroll
    for (int ui = 0; ui < (UPW > 2 ? UPW : 2); ui++)
#pragma unroll
        for (int w = 0; w < 2; w++)
#pragma unroll
            for (int nb = 0; nb < 2; nb++) acc[ui][w][nb][0] = acc[ui][w][nb][1] = acc[ui][w][nb][2] = acc[ui][w][nb][3] = 0.f;
    float pss = 0.f, psm = 0.f, pmm = 0.f;

    for (int v0 = 0; v0 < d.V; v0 += Vc) {
        __syncthreads();   // the previous slice's products are done
        async_rows(s.dO, ldv, d_o + base * d.V + v0, (size_t)d.H * d.V, CH, Vc, rows_valid);
        async_rows(s.G, ldv, Gin + base * d.V + v0, (size_t)d.H * d.V, CH, Vc, rows_valid);
        async_rows(s.U, ldv, Uall + (size_t)bhc * CH * d.V + v0, d.V, CH, Vc, CH);
        if (!fcta) {
            const size_t xs = ((size_t)bhc * 2 * K + k0) * d.V + v0, xm = xs + (size_t)K * d.V;
            async_rows(s.S0, ldv, Xall + xs, d.V, KT, Vc, KT);
            async_rows(s.M0, ldv, Xall + xm, d.V, KT, Vc, KT);
            async_rows(s.dS1, ldv, dXall + xs, d.V, KT, Vc, KT);
            async_rows(s.dM1, ldv, dXall + xm, d.V, KT, Vc, KT);
        }
        cp_async_wait_all();
        __syncthreads();
        if (!fcta) {
            // the end-of-chunk dot products <dS1,S0>, <dS1,M0>, <dM1,M0> of the stored (bf16) states,
            // in float32
            for (int e = tid; e < KT * (Vc / 8); e += NTHREADS) {
                const int r = e / (Vc / 8), so = r * ldv + (e - r * (Vc / 8)) * 8;
                const uint4 us0 = *reinterpret_cast<const uint4 *>(s.S0 + so), um0 = *reinterpret_cast<const uint4 *>(s.M0 + so);
                const uint4 uds = *reinterpret_cast<const uint4 *>(s.dS1 + so), udm = *reinterpret_cast<const uint4 *>(s.dM1 + so);
                const __nv_bfloat162 *hs0 = reinterpret_cast<const __nv_bfloat162 *>(&us0);
                const __nv_bfloat162 *hm0 = reinterpret_cast<const __nv_bfloat162 *>(&um0);
                const __nv_bfloat162 *hds = reinterpret_cast<const __nv_bfloat162 *>(&uds);
                const __nv_bfloat162 *hdm = reinterpret_cast<const __nv_bfloat162 *>(&udm);
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const float2 s0 = __bfloat1622float2(hs0[j]), m0 = __bfloat1622float2(hm0[j]);
                    const float2 ds = __bfloat1622float2(hds[j]), dm = __bfloat1622float2(hdm[j]);
                    pss = fmaf(ds.x, s0.x, fmaf(ds.y, s0.y, pss));
                    psm = fmaf(ds.x, m0.x, fmaf(ds.y, m0.y, psm));
                    pmm = fmaf(dm.x, m0.x, fmaf(dm.y, m0.y, pmm));
                }
            }
            // unit u = warp + 8*ui: pair pr (dO: E1 E2, G: E3 E4, U: E5 E6), m-tile, 16 key columns
#pragma unroll
            for (int ui = 0; ui < UPW; ui++) {
                const int u = warp + 8 * ui;
                if (u >= 3 * (CH / 16) * NH) break;
                const int pr = u / ((CH / 16) * NH), rem = u % ((CH / 16) * NH);
                const int m0 = (rem / NH) * 16, n0 = (rem % NH) * 16;
                const bf16 *A = pr == 0 ? s.dO : (pr == 1 ? s.G : s.U);
                const bf16 *B1 = pr < 2 ? s.S0 : s.dS1, *B2 = pr < 2 ? s.M0 : s.dM1;
#pragma unroll
                for (int kk = 0; kk < 64; kk += 16) {
                    if (kk >= Vc) break;
                    uint32_t a[4], b1[4], b2[4];
                    frag_a<false>(a, A, ldv, m0, kk);
                    frag_bn2(b1, B1, ldv, kk, n0);
                    frag_bn2(b2, B2, ldv, kk, n0);
                    mma_bf16_16816(acc[ui][0][0], a[0], a[1], a[2], a[3], b1[0], b1[1]);
                    mma_bf16_16816(acc[ui][0][1], a[0], a[1], a[2], a[3], b1[2], b1[3]);
                    mma_bf16_16816(acc[ui][1][0], a[0], a[1], a[2], a[3], b2[0], b2[1]);
                    mma_bf16_16816(acc[ui][1][1], a[0], a[1], a[2], a[3], b2[2], b2[3]);
                }
            }
        } else {
            // unit u = warp + 8*ui: m-tile and 16 columns of F1 = dO U^T and F2 = G U^T
#pragma unroll
            for (int ui = 0; ui < 2; ui++) {
                const int u = warp + 8 * ui, m0 = (u >> 2) * 16, n0 = (u & 3) * 16;
#pragma unroll
                for (int kk = 0; kk < 64; kk += 16) {
                    if (kk >= Vc) break;
                    uint32_t a1[4], a2[4], bu[4];
                    frag_a<false>(a1, s.dO, ldv, m0, kk);
                    frag_a<false>(a2, s.G, ldv, m0, kk);
                    frag_bn2(bu, s.U, ldv, kk, n0);
                    mma_bf16_16816(acc[ui][0][0], a1[0], a1[1], a1[2], a1[3], bu[0], bu[1]);
                    mma_bf16_16816(acc[ui][0][1], a1[0], a1[1], a1[2], a1[3], bu[2], bu[3]);
                    mma_bf16_16816(acc[ui][1][0], a2[0], a2[1], a2[2], a2[3], bu[0], bu[1]);
                    mma_bf16_16816(acc[ui][1][1], a2[0], a2[1], a2[2], a2[3], bu[2], bu[3]);
                }
            }
        }
    }
    const int g = lane >> 2, t = lane & 3;
    if (fcta) {
#pragma unroll
        for (int ui = 0; ui < 2; ui++) {
            const int u = warp + 8 * ui, m0 = (u >> 2) * 16, n0 = (u & 3) * 16;
#pragma unroll
            for (int which = 0; which < 2; which++) {
                float *Fo = F + ((size_t)bhc * 2 + which) * CH * CH;
#pragma unroll
                for (int nb = 0; nb < 2; nb++) {
                    const int col = n0 + 8 * nb + 2 * t;
                    *reinterpret_cast<float2 *>(Fo + (m0 + g) * CH + col) = make_float2(acc[ui][which][nb][0], acc[ui][which][nb][1]);
                    *reinterpret_cast<float2 *>(Fo + (m0 + g + 8) * CH + col) = make_float2(acc[ui][which][nb][2], acc[ui][which][nb][3]);
                }
            }
        }
        return;
    }
    // per-warp dot products (fixed shuffle tree), then a fixed-order sum over the warps: reproducible
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        pss += __shfl_xor_sync(0xffffffffu, pss, off);
        psm += __shfl_xor_sync(0xffffffffu, psm, off);
        pmm += __shfl_xor_sync(0xffffffffu, pmm, off);
    }
    if (lane == 0) {
        s.red[warp] = pss;
        s.red[8 + warp] = psm;
        s.red[16 + warp] = pmm;
    }
    __syncthreads();   // every warp's products done: E may overwrite the operand tiles
    const int lde = KT + 1;
#pragma unroll
    for (int ui = 0; ui < UPW; ui++) {
        const int u = warp + 8 * ui;
        if (u >= 3 * (CH / 16) * NH) break;
        const int pr = u / ((CH / 16) * NH), rem = u % ((CH / 16) * NH);
        const int m0 = (rem / NH) * 16, n0 = (rem % NH) * 16;
#pragma unroll
        for (int which = 0; which < 2; which++) {
            float *E = s.E + (2 * pr + which) * CH * lde;
#pragma unroll
            for (int nb = 0; nb < 2; nb++) {
                const int col = n0 + 8 * nb + 2 * t;
                E[(m0 + g) * lde + col] = acc[ui][which][nb][0];
                E[(m0 + g) * lde + col + 1] = acc[ui][which][nb][1];
                E[(m0 + g + 8) * lde + col] = acc[ui][which][nb][2];
                E[(m0 + g + 8) * lde + col + 1] = acc[ui][which][nb][3];
            }
        }
    }
    if (tid < 3) {
        float sum = 0.f;
        for (int w = 0; w < 8; w++) sum += s.red[tid * 8 + w];
        scal[((size_t)bhc * nKt + kt) * 3 + tid] = sum;
    }
    __syncthreads();
    grads_combine<bf16, KT>(d, s.E, bhc, kt, nKt, q, k, vec, dQst, dPst, dKst, rowp);
}

// ------------------------------------------------------------------------------------------------
// backward, per chunk: L x L chain, gate gradients, preprocessing backward
// ------------------------------------------------------------------------------------------------
template <typename T> struct ChunkBwdSmem {
    Coef c;
    float *QK, *KK, *F1, *F2, *dG;                          // [CH][LDL]
    float *rq, *rk, *qs, *da, *db, *dm, *dgv, *dhv, *dA, *dC, *dbeta, *dlad, *deta;   // [CH]
    float *rowsum, *endsum;                                 // [NRP][CH], [3]: the state-grads sums
    T *Khs, *Qhs;                                           // [CH][KS+pad]
    // bf16 only: six [CH][CH+8] operand copies for the ldmatrix products. During the gate-gradient
    // products the splits of dGamma, Em and Ea o beta (hi, lo each); in the K-slice loop F1, F2
    // (after the Gamma factors), eta o khat and pa o khat.
    bf16 *Ob[6];
};
template <typename T> __host__ __device__ size_t carve_chunk_bwd(ChunkBwdSmem<T> &s, char *base, int KS) {
    Carver cv{0, base};
    carve_coef(cv, s.c);
    float **mats[] = {&s.QK, &s.KK, &s.F1, &s.F2, &s.dG};
    for (int i = 0; i < 5; i++) *mats[i] = cv.take<float>(CH * LDL);
    float **vecs[] = {&s.rq, &s.rk, &s.qs, &s.da, &s.db, &s.dm, &s.dgv, &s.dhv, &s.dA, &s.dC, &s.dbeta, &s.dlad, &s.deta};
    for (int i = 0; i < 13; i++) *vecs[i] = cv.take<float>(CH);
    s.rowsum = cv.take<float>(NRP * CH);
    s.endsum = cv.take<float>(3);
    s.Khs = cv.take<T>((size_t)CH * (KS + pad_of<T>()));
    s.Qhs = cv.take<T>((size_t)CH * (KS + pad_of<T>()));
    for (int i = 0; i < 6; i++) s.Ob[i] = UseMma<T>::value ? cv.take<bf16>((size_t)CH * (CH + 8)) : nullptr;
    return cv.off;
}

// 16 warps (the other kernels have 8): at ~160 KB of shared memory one CTA fills an SM, and with 8
// warps (2 a scheduler) the kernel spent most cycles with no warp ready (ncu: IPC 1.0)
#define CHUNK_BWD_THREADS 512

template <typename T>
__global__ void __launch_bounds__(CHUNK_BWD_THREADS)
    mdn_bwd_chunk_kernel(Dims d, int nKt, int KS, const T *q, const T *k, const float *log_alpha, const float *log_mu,
                         const float *beta, const float *eta, const float *vec, float *dQst, float *dPst,
                         float *dKst, const float *rowp, const float *scal, const float *F, T *dq, T *dk,
                         float *dlog_alpha, float *dlog_mu, float *dbeta, float *deta) {
    extern __shared__ __align__(16) char smem[];
    ChunkBwdSmem<T> s;
    carve_chunk_bwd(s, smem, KS);
    const Coef &c = s.c;
    constexpr bool MMA = UseMma<T>::value;
    const int bhc = blockIdx.x, n = bhc % d.NC, bh = bhc / d.NC, h = bh % d.H, b = bh / d.H;
    const int t0 = n * CH, tid = threadIdx.x, K = d.K, lds = KS + pad_of<T>();
    float *QK = s.QK, *KK = s.KK, *F1 = s.F1, *F2 = s.F2, *dG = s.dG;
    const float *G = c.G, *Ea = c.Ea, *Em = c.Em;

    const T *Khs = s.Khs, *Qhs = s.Qhs;
    const int rows_valid = min(CH, d.T - t0);
    const size_t qkbase = (((size_t)b * d.T + t0) * d.H + h) * K;
    // columns k0.. of khat and qbar into Kd, Qd (Khs, Qhs unless given): the raw rows by cp.async
    // (issue_slice), then, once they have landed, scaled in place (scale_slice; finish_slice waits
    // for every copy, then scales Khs, Qhs: it begins with a barrier and ends without one)
    auto issue_slice = [&](int k0, T *Kd, T *Qd) {
        async_rows(Kd, lds, k + qkbase + k0, (size_t)d.H * K, CH, KS, rows_valid);
        async_rows(Qd, lds, q + qkbase + k0, (size_t)d.H * K, CH, KS, rows_valid);
    };
    auto scale_slice = [&](T *Kd, T *Qd) {
        scale_rows(Kd, lds, CH, KS, s.rk);
        scale_rows(Qd, lds, CH, KS, s.qs);
    };
    auto finish_slice = [&]() {
        cp_async_wait_all();
        __syncthreads();
        scale_slice(s.Khs, s.Qhs);
    };

    // What the CTA reads before its first product is requested before the gate coefficients are
    // formed, so that one memory latency overlaps chunk_coef: F1, F2 (the state-grads kernel's
    // L x L products) and the first K slice by cp.async; the row vectors; the state-grads kernel's
    // row partial sums and end-of-chunk dot products, summed over its key tiles (a thread per row
    // and kind: these were 60 loads a thread on 64 threads).
    const float *Fi = F + (size_t)bhc * 2 * CH * CH;
    for (int e = tid; e < CH * CH; e += CHUNK_BWD_THREADS) {
        const int i = e / CH, j = e % CH;
        cp_async4(F1 + i * LDL + j, Fi + e);
        cp_async4(F2 + i * LDL + j, Fi + CH * CH + e);
    }
    issue_slice(0, s.Khs, s.Qhs);
    const float *vi = vec + (size_t)bhc * NVEC * CH;
    if (tid < CH) {
        s.rq[tid] = vi[VEC_RQ * CH + tid];
        s.rk[tid] = vi[VEC_RK * CH + tid];
        s.qs[tid] = vi[VEC_RQ * CH + tid] * d.qscale;
    }
    static_assert(NRP * CH + 3 <= CHUNK_BWD_THREADS, "a thread for each row sum");
    if (tid < NRP * CH) {
        const int j = tid / CH, i = tid % CH;
        float sum = 0.f;
#pragma unroll 4
        for (int kt = 0; kt < nKt; kt++) sum += rowp[(((size_t)bhc * nKt + kt) * NRP + j) * CH + i];
        s.rowsum[j * CH + i] = sum;
    } else if (tid < NRP * CH + 3) {
        const int j = tid - NRP * CH;
        float sum = 0.f;
        for (int kt = 0; kt < nKt; kt++) sum += scal[((size_t)bhc * nKt + kt) * 3 + j];
        s.endsum[j] = sum;
    }
    chunk_coef(c, d, b, h, t0, log_alpha, log_mu, beta, eta);   // ends with a barrier
    if (tid < CH) {
        const int i = tid;
        const float *rs = s.rowsum;
        const bool last = i == CH - 1;
        // a_prev[i+1] = a[i], b_prev[i+1] = b[i]; the end-of-chunk state terms land on row L-1
        const float dap_next = last ? 0.f : rs[RP_DAP * CH + i + 1], dbp_next = last ? 0.f : rs[RP_DBP * CH + i + 1];
        s.da[i] = rs[RP_DA * CH + i] + dap_next + (last ? s.endsum[0] : 0.f);
        s.db[i] = rs[RP_DB * CH + i] + dbp_next - (last ? s.endsum[1] : 0.f);
        s.dm[i] = last ? s.endsum[2] : 0.f;
        s.dgv[i] = rs[RP_DG * CH + i];
        s.dhv[i] = rs[RP_DH * CH + i];
    }
    for (int e = tid; e < CH * CH; e += CHUNK_BWD_THREADS) {
        const int i = e / CH, j = e % CH;
        QK[i * LDL + j] = 0.f;
        KK[i * LDL + j] = 0.f;
    }
    // QK = Qbar Khat^T, KK = Khat Khat^T, accumulated over K slices (the first finish_slice also
    // waits for F1, F2)
    for (int k0 = 0; k0 < K; k0 += KS) {
        if (k0 > 0) issue_slice(k0, s.Khs, s.Qhs);
        finish_slice();
        __syncthreads();
        auto add_qk = [=](int i, int j, float v) { QK[i * LDL + j] += v; };
        auto add_kk = [=](int i, int j, float v) { KK[i * LDL + j] += v; };
        if constexpr (MMA) {
            const bf16 *Kb = (const bf16 *)Khs, *Qb = (const bf16 *)Qhs;
            block_mma<false, true>(CH, CH, KS, Qb, lds, Kb, lds, nullptr, nullptr, add_qk);
            block_mma<false, true>(CH, CH, KS, Kb, lds, Kb, lds, nullptr, nullptr, add_kk);
        } else {
            const KMajorT<T> fkt{Khs, lds};
            block_gemm<false>(CH, CH, KS, KMajor<T>{Qhs, lds}, fkt, add_qk);
            block_gemm<false>(CH, CH, KS, KMajor<T>{Khs, lds}, fkt, add_kk);
        }
        __syncthreads();
    }
    const float *pa_src = vi + VEC_PA * CH;
    // dGamma: from QKG = (Qbar Kk^T) o Gamma, from A = (P Kk^T) o Gamma_prev (dA = -F2, strictly
    // lower), and the end-state factor g = Gamma[L-1,:]
    for (int e = tid; e < CH * CH; e += CHUNK_BWD_THREADS) {
        const int i = e / CH, j = e % CH;
        float v = 0.f;
        if (j <= i) {
            v = F1[i * LDL + j] * QK[i * LDL + j] * c.et[j];
            if (i + 1 < CH) v -= F2[(i + 1) * LDL + j] * pa_src[i + 1] * c.et[j] * KK[(i + 1) * LDL + j];
            if (i == CH - 1) v += s.dgv[j];
        }
        dG[i * LDL + j] = v;
    }
    __syncthreads();
    // Dq = F1 o Gamma (gradient of Qbar Kk^T), Dp = dA o Gamma_prev (gradient of P Kk^T), in place
    for (int e = tid; e < CH * CH; e += CHUNK_BWD_THREADS) {
        const int i = e / CH, j = e % CH;
        F1[i * LDL + j] = j <= i ? F1[i * LDL + j] * G[i * LDL + j] : 0.f;
        F2[i * LDL + j] = j < i ? -F2[i * LDL + j] * G[(i - 1) * LDL + j] : 0.f;
    }
    // Gamma = Ea diag(beta) Em, b = Ea (beta o m): P3 = dGamma Em^T (into QK), M2 = (Ea o beta)^T dGamma (into KK)
    const float *be = c.be;
    auto set_p3 = [=](int i, int l, float v) { QK[i * LDL + l] = v; };
    auto set_m2 = [=](int l, int j, float v) { KK[l * LDL + j] = v; };
    if constexpr (MMA) {
        // split copies: dGamma [i][j], Em [l][j], Ea o beta [i][l] (hi in Ob[2w], lo in Ob[2w+1])
        constexpr int ldo = CH + 8;
        for (int e = tid; e < CH * CH; e += CHUNK_BWD_THREADS) {
            const int i = e / CH, j = e % CH;
            store_split(s.Ob[0] + i * ldo + j, s.Ob[1] + i * ldo + j, dG[i * LDL + j]);
            store_split(s.Ob[2] + i * ldo + j, s.Ob[3] + i * ldo + j, Em[i * LDL + j]);
            store_split(s.Ob[4] + i * ldo + j, s.Ob[5] + i * ldo + j, Ea[i * LDL + j] * be[j]);
        }
        __syncthreads();
        block_mma_split<false, true>(CH, CH, CH, s.Ob[0], s.Ob[1], ldo, s.Ob[2], s.Ob[3], ldo, set_p3);
        block_mma_split<true, false>(CH, CH, CH, s.Ob[4], s.Ob[5], ldo, s.Ob[0], s.Ob[1], ldo, set_m2);
    } else {
        block_gemm<false>(
            CH, CH, CH, [=](int i, int j) { return dG[i * LDL + j]; }, [=](int j, int l) { return Em[l * LDL + j]; },
            set_p3);
        block_gemm<false>(
            CH, CH, CH, [=](int l, int i) { return Ea[i * LDL + l] * be[l]; },
            [=](int i, int j) { return dG[i * LDL + j]; }, set_m2);
    }
    __syncthreads();
    // the column sums below (dbeta; d log alpha, d log mu) take COL_THREADS threads a column, each
    // over every COL_THREADS'th row, then a shuffle sum within the group
    constexpr int COL_THREADS = CHUNK_BWD_THREADS / CH;
    static_assert(COL_THREADS == 8, "a column's threads are one aligned group of 8 lanes");
    const int col = tid / COL_THREADS, part = tid % COL_THREADS;
    {
        const int l = col;
        float s1 = 0.f, s2 = 0.f;
        for (int i = l + part; i < CH; i += COL_THREADS) {
            s1 = fmaf(Ea[i * LDL + l], QK[i * LDL + l], s1);
            s2 = fmaf(Ea[i * LDL + l], s.db[i], s2);
        }
        for (int o = COL_THREADS / 2; o > 0; o >>= 1) {
            s1 += __shfl_xor_sync(0xffffffffu, s1, o);
            s2 += __shfl_xor_sync(0xffffffffu, s2, o);
        }
        if (part == 0) {
            s.dbeta[l] = s1 + c.m[l] * s2;
            s.dm[l] += c.be[l] * s2;
        }
    }
    __syncthreads();
    // Ra = dEa o Ea (into QK), Rm = dEm o Em (into KK)
    for (int e = tid; e < CH * CH; e += CHUNK_BWD_THREADS) {
        const int i = e / CH, l = e % CH;
        const float dEa = l <= i ? (QK[i * LDL + l] + s.db[i] * c.m[l]) * c.be[l] : 0.f;
        const float dEm = l <= i ? KK[i * LDL + l] + (i == CH - 1 ? s.dhv[l] : 0.f) : 0.f;
        QK[i * LDL + l] = dEa * Ea[i * LDL + l];
        KK[i * LDL + l] = dEm * Em[i * LDL + l];
    }
    __syncthreads();
    // d log alpha_t = sum_{s>=t} dA_s with dA_s = rowsum_s(Ra) - colsum_s(Ra) + da_s a_s. Summed
    // as written, the large diagonal-block terms cancel and leave their rounding error on every
    // step whose true gradient is small; the same sum, rearranged exactly (Ra is lower
    // triangular), has no cancellation: sum_{s>=t} sum_{l<t} Ra[s][l] + sum_{s>=t} da_s a_s.
    // Rows first: exclusive prefix sums over l, in place (the Ra rows, then the Rm rows), a warp a
    // row by a warp scan with two elements a lane.
    for (int row = tid >> 5; row < 2 * CH; row += CHUNK_BWD_THREADS >> 5) {
        const int lane = tid & 31;
        float *Rrow = (row < CH ? QK : KK) + (row % CH) * LDL;
        const float x0 = Rrow[2 * lane], x1 = Rrow[2 * lane + 1];
        float before, through;
        warp_pair_scan(x0, x1, before, through);
        Rrow[2 * lane] = before;
        Rrow[2 * lane + 1] = before + x0;
    }
    __syncthreads();
    {
        const int t = col;
        double sa = 0.0, sm = 0.0;
        for (int r = t + part; r < CH; r += COL_THREADS) {
            sa += (double)QK[r * LDL + t] + (double)s.da[r] * c.a[r];
            sm += (double)KK[r * LDL + t] + (double)s.dm[r] * c.m[r];
        }
        for (int o = COL_THREADS / 2; o > 0; o >>= 1) {
            sa += __shfl_xor_sync(0xffffffffu, sa, o);
            sm += __shfl_xor_sync(0xffffffffu, sm, o);
        }
        if (part == 0) {
            s.dA[t] = (float)sa;   // now d log alpha_t (core part)
            s.dC[t] = (float)sm;   // d log mu_t
        }
    }
    __syncthreads();
    // K slices: dqbar = dQst + Dq (eta o khat); dkappa = dKst + Dq^T qbar + Dp^T (pa o khat);
    // dp = dPst + Dp (eta o khat). Then dkhat = eta dkappa + pa dp, dqhat = K^-1/2 dqbar, and the
    // L2-norm backward dx = r (dy - <dy, y> y), which needs whole rows' dot products.
    // The combine and the L2-norm backward run a warp per row (lanes along the row: every global
    // access coalesced) over the warp's ROWS_PER_WARP rows, with all the rows' loads issued before
    // their first use: one memory latency per column step instead of one per row (a 4-thread
    // row layout spent ~40% of this kernel waiting on global loads, at 1 CTA per SM).
    // With K <= 2L (whole rows) the products' outputs for every key column fit in the six L x L
    // float32 matrices free by now (QK, KK, dG for the first slice, Ea, Em, Gamma for the second):
    // the combine then runs once per row after the products, keeping dqhat and dkhat in registers
    // for the L2-norm backward. Wider K combines slice by slice and takes dqhat and dkhat through
    // the workspace (dQst, dKst, in place). The slices run last to first: the last one is still in
    // Khs, Qhs from the QK loop (and in bf16 the next one's copies land while one's products run).
    constexpr int ROWS_PER_WARP = CH / (CHUNK_BWD_THREADS / 32);
    const int warp = tid >> 5, lane = tid & 31, row0 = warp * ROWS_PER_WARP;
    // row i of the chunk: its q/k/dq/dk row and its workspace row (dQst, dKst, dPst), as int
    // offsets from the chunk's first rows (one 64-bit base a tensor: the 64-bit address arithmetic
    // of every load was most of this part's instructions)
    const T *qc = q + qkbase, *kc = k + qkbase;
    T *dqc = dq ? dq + qkbase : nullptr, *dkc = dk ? dk + qkbase : nullptr;
    const size_t wsbase = (size_t)bhc * CH * K;
    float *dQc = dQst + wsbase, *dKc = dKst + wsbase;
    const float *dPc = dPst + wsbase;
    const int qk_stride = d.H * K;
    auto qk_row = [&](int i) { return i * qk_stride; };
    auto ws_row = [&](int i) { return i * K; };
    // per row: <dkappa, khat>, <dp, khat>, <dqhat, qhat>, <dkhat, khat> (lane partials)
    float dots[ROWS_PER_WARP][4] = {};
    const float *et = c.et;
    // one key column of row r (chunk row i): the three sums above, then dqhat and dkhat
    auto combine = [&](int r, int i, float qraw, float kraw, float dqs, float dks, float dps, float o1, float o2,
                       float o3, float &dqh, float &dkh) {
        const float qh = qraw * s.rq[i], kh = kraw * s.rk[i];
        const float dqbar = dqs + o1, dkap = dks + o2, dp = dps + o3;
        dots[r][0] = fmaf(dkap, kh, dots[r][0]);
        dots[r][1] = fmaf(dp, kh, dots[r][1]);
        dkh = et[i] * dkap + pa_src[i] * dp;
        dqh = d.qscale * dqbar;
        dots[r][2] = fmaf(dqh, qh, dots[r][2]);
        dots[r][3] = fmaf(dkh, kh, dots[r][3]);
    };
    // the warp's rows at key column kk: raw q and k, dQst, dKst, dPst (every load issued first)
    typedef float RowVals[ROWS_PER_WARP];
    auto load_column = [&](int kk, RowVals &qraw, RowVals &kraw, RowVals &dqs, RowVals &dks, RowVals &dps) {
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            const int i = row0 + r;
            const bool valid = t0 + i < d.T;
            const int rowbase = qk_row(i), wsrow = ws_row(i);
            qraw[r] = valid ? to_f(qc[rowbase + kk]) : 0.f;
            kraw[r] = valid ? to_f(kc[rowbase + kk]) : 0.f;
            dqs[r] = dQc[wsrow + kk];
            dks[r] = dKc[wsrow + kk];
            dps[r] = dPc[wsrow + kk];
        }
    };
    const bool whole = K <= 2 * CH;
    constexpr int ldo = CH + 8;
    bf16 *F1b = s.Ob[0], *F2b = s.Ob[1], *EKb = s.Ob[2], *PKb = s.Ob[3];
    if constexpr (MMA)
        for (int e = tid; e < CH * CH; e += CHUNK_BWD_THREADS) {   // F1, F2 as product operands
            const int i = e / CH, j = e % CH;
            F1b[i * ldo + j] = __float2bfloat16_rn(F1[i * LDL + j]);
            F2b[i * ldo + j] = __float2bfloat16_rn(F2[i * LDL + j]);
        }
    // bf16: the slices alternate between two buffer pairs (Khs, Qhs and the free Ob[4], Ob[5]), the
    // next slice's copies in flight while this one's products run; float32 reloads Khs, Qhs
    const int nslices = K / KS;
    auto kbuf = [&](int si) { return MMA && ((nslices - 1 - si) & 1) ? (T *)s.Ob[4] : s.Khs; };
    auto qbuf = [&](int si) { return MMA && ((nslices - 1 - si) & 1) ? (T *)s.Ob[5] : s.Qhs; };
    for (int si = nslices - 1; si >= 0; si--) {
        const int k0 = si * KS;
        T *Kcur = kbuf(si), *Qcur = qbuf(si);
        if constexpr (MMA) {
            if (si > 0) {
                issue_slice(k0 - KS, kbuf(si - 1), qbuf(si - 1));
                cp_async_commit();
            }
            if (si < nslices - 1) {   // this slice's copies: the group before the one just issued
                if (si > 0) cp_async_wait_group<1>();
                else cp_async_wait_group<0>();
                __syncthreads();
                scale_slice(Kcur, Qcur);
            }
        } else if (si < nslices - 1) {
            issue_slice(k0, s.Khs, s.Qhs);
            finish_slice();
        }
        __syncthreads();
        // this slice's product outputs, [CH][LDL] each holding [CH][KS]
        float *O1 = whole && si == 1 ? c.Ea : QK, *O2 = whole && si == 1 ? c.Em : KK, *O3 = whole && si == 1 ? c.G : dG;
        auto set_o1 = [=](int i2, int cc, float v) { O1[i2 * LDL + cc] = v; };
        auto set_o2 = [=](int j, int cc, float v) { O2[j * LDL + cc] = v; };
        auto set_o3 = [=](int i2, int cc, float v) { O3[i2 * LDL + cc] = v; };
        if constexpr (MMA) {
            // eta o khat and pa o khat of the slice, rounded once as the products' fragments were
            // (row stride lds, as Khs and Qhs: one B stride for both terms of O2)
            for (int e = tid; e < CH * KS; e += CHUNK_BWD_THREADS) {
                const int j = row_of(e, KS), cc = e - j * KS;
                const float kv = to_f(Kcur[j * lds + cc]);
                EKb[j * lds + cc] = __float2bfloat16_rn(et[j] * kv);
                PKb[j * lds + cc] = __float2bfloat16_rn(pa_src[j] * kv);
            }
            __syncthreads();
            block_mma<false, false>(CH, KS, CH, F1b, ldo, EKb, lds, nullptr, nullptr, set_o1);
            block_mma<true, false>(CH, KS, CH, F1b, ldo, (const bf16 *)Qcur, lds, F2b, PKb, set_o2);
            block_mma<false, false>(CH, KS, CH, F2b, ldo, EKb, lds, nullptr, nullptr, set_o3);
        } else {
            auto fetak = [=](int j, int cc) { return et[j] * to_f(Kcur[j * lds + cc]); };
            block_gemm<false>(CH, KS, CH, [=](int i2, int j) { return F1[i2 * LDL + j]; }, fetak, set_o1);
            block_gemm2<false>(
                CH, KS, CH, [=](int j, int i2) { return F1[i2 * LDL + j]; },
                [=](int i2, int cc) { return to_f(Qcur[i2 * lds + cc]); }, CH,
                [=](int j, int i2) { return F2[i2 * LDL + j]; },
                [=](int i2, int cc) { return pa_src[i2] * to_f(Kcur[i2 * lds + cc]); }, set_o2);
            block_gemm<false>(CH, KS, CH, [=](int i2, int j) { return F2[i2 * LDL + j]; }, fetak, set_o3);
        }
        __syncthreads();
        if (whole) continue;
        for (int cc = lane; cc < KS; cc += 32) {
            const int kk = k0 + cc;
            float qraw[ROWS_PER_WARP], kraw[ROWS_PER_WARP], dqs[ROWS_PER_WARP], dks[ROWS_PER_WARP], dps[ROWS_PER_WARP];
            load_column(kk, qraw, kraw, dqs, dks, dps);
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) {
                const int i = row0 + r;
                const int wsrow = ws_row(i);
                float dqh, dkh;
                combine(r, i, qraw[r], kraw[r], dqs[r], dks[r], dps[r], O1[i * LDL + cc], O2[i * LDL + cc],
                        O3[i * LDL + cc], dqh, dkh);
                dQc[wsrow + kk] = dqh;
                dKc[wsrow + kk] = dkh;
            }
        }
        __syncthreads();
    }
    // whole rows: column step j of a lane is key column lane + 32 j (ascending, as the sliced order)
    constexpr int MAXJ = 2 * CH / 32;
    float dqh[ROWS_PER_WARP][MAXJ], dkh[ROWS_PER_WARP][MAXJ];
    if (whole) {
#pragma unroll
        for (int j = 0; j < MAXJ; j++) {
            const int kk = lane + 32 * j;
            if (kk >= K) continue;
            const int si = kk >= KS, cc = kk - si * KS;
            const float *O1 = si ? c.Ea : QK, *O2 = si ? c.Em : KK, *O3 = si ? c.G : dG;
            float qraw[ROWS_PER_WARP], kraw[ROWS_PER_WARP], dqs[ROWS_PER_WARP], dks[ROWS_PER_WARP], dps[ROWS_PER_WARP];
            load_column(kk, qraw, kraw, dqs, dks, dps);
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) {
                const int i = row0 + r;
                combine(r, i, qraw[r], kraw[r], dqs[r], dks[r], dps[r], O1[i * LDL + cc], O2[i * LDL + cc],
                        O3[i * LDL + cc], dqh[r][j], dkh[r][j]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++)
#pragma unroll
        for (int j = 0; j < 4; j++)
            for (int o = 16; o > 0; o >>= 1) dots[r][j] += __shfl_xor_sync(0xffffffffu, dots[r][j], o);
    // the L2-norm backward, dx = r (dy - <dy, y> y), of the lane's key columns kbase + lane + 32 j,
    // j < NJ: every q and k load of those columns is issued before the first dq or dk store (a load
    // after a store through a pointer that may alias it waits for the store: one exposed latency a
    // column). Two columns a group (four spilled 16 bytes at 128 registers in bf16; two need 120).
    constexpr int NJ = 2;
    typedef float ColumnVals[NJ][ROWS_PER_WARP];
    auto l2norm_backward = [&](int kbase, const ColumnVals &dqy, const ColumnVals &dky) {
        float qraw[NJ][ROWS_PER_WARP], kraw[NJ][ROWS_PER_WARP];
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) {
                const int i = row0 + r, kk = kbase + lane + 32 * j;
                const bool valid = t0 + i < d.T && kk < K;
                qraw[j][r] = valid ? to_f(qc[qk_row(i) + kk]) : 0.f;
                kraw[j][r] = valid ? to_f(kc[qk_row(i) + kk]) : 0.f;
            }
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) {
                const int i = row0 + r, kk = kbase + lane + 32 * j;
                if (t0 + i >= d.T || kk >= K) continue;
                const int rowbase = qk_row(i);
                const float rq_i = s.rq[i], rk_i = s.rk[i], qh = qraw[j][r] * rq_i, kh = kraw[j][r] * rk_i;
                if (dqc) dqc[rowbase + kk] = from_f<T>(rq_i * (dqy[j][r] - dots[r][2] * qh));
                if (dkc) dkc[rowbase + kk] = from_f<T>(rk_i * (dky[j][r] - dots[r][3] * kh));
            }
    };
    if (whole) {
#pragma unroll
        for (int jb = 0; jb < MAXJ; jb += NJ) {
            ColumnVals dqy, dky;
#pragma unroll
            for (int j = 0; j < NJ; j++)
#pragma unroll
                for (int r = 0; r < ROWS_PER_WARP; r++) {
                    dqy[j][r] = dqh[r][jb + j];
                    dky[j][r] = dkh[r][jb + j];
                }
            l2norm_backward(32 * jb, dqy, dky);
        }
    } else {
        for (int kbase = 0; kbase < K; kbase += 32 * NJ) {
            ColumnVals dqy, dky;
#pragma unroll
            for (int j = 0; j < NJ; j++)
#pragma unroll
                for (int r = 0; r < ROWS_PER_WARP; r++) {
                    const int kk = kbase + lane + 32 * j;
                    dqy[j][r] = kk < K ? dQc[ws_row(row0 + r) + kk] : 0.f;
                    dky[j][r] = kk < K ? dKc[ws_row(row0 + r) + kk] : 0.f;
                }
            l2norm_backward(kbase, dqy, dky);
        }
    }
    if (lane == 0)
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            const int i = row0 + r;
            s.deta[i] = dots[r][0];
            s.dlad[i] = d.use_p ? c.al[i] * dots[r][1] : 0.f;   // p = alpha khat
        }
    __syncthreads();
    if (tid < CH && t0 + tid < d.T) {
        const int r = tid;
        const size_t gi = ((size_t)b * d.T + t0 + r) * d.H + h;
        if (dlog_alpha) dlog_alpha[gi] = s.dA[r] + s.dlad[r];
        if (dlog_mu) dlog_mu[gi] = s.dC[r];
        if (dbeta) dbeta[gi] = s.dbeta[r];
        if (deta) deta[gi] = s.deta[r];
    }
}

// ------------------------------------------------------------------------------------------------
// host side
// ------------------------------------------------------------------------------------------------
const char *mdn_cuda_check_shape(const MdnCudaShape *sh) {
    if (sh->B < 1 || sh->T < 1 || sh->H < 1) return "B, T, H must be positive";
    if (sh->K < 16 || sh->K > 256 || sh->K % 16 != 0 || (sh->K > 64 && sh->K % 64 != 0))
        return "K must be 16, 32, 48, 64, 128, 192 or 256";
    if (sh->V < 16 || sh->V % 16 != 0 || (sh->V > 64 && sh->V % 64 != 0))
        return "V must be a multiple of 16 up to 64, or a multiple of 64";
    if (sh->dtype != MDN_DTYPE_F32 && sh->dtype != MDN_DTYPE_BF16) return "unknown dtype";
    return 0;
}

struct Plan {
    Dims d;
    bool fast;    // bf16 state passes of v7 (MDN_CUDA_STATE_V6=1 in the environment: v6's, for timing)
    bool fast_grads; // bf16 bwd_state_grads of v8 (MDN_CUDA_GRADS_V7=1: the v6/v7 kernel, for timing)
    int vt_store; // V tile of the backward's recompute pass
    int vt_bwd;   // V tile of the reverse state pass (d.Vt: the forward pass)
    int KT, nKt, Vc, KS;
    size_t esize;
    size_t vec, tinv, qkg, fwd_total;                          // forward workspace
    size_t x, dx, u, g, dqs, dps, dks, rowp, scal, f, bwd_total; // backward (after the forward part)
};

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

template <typename T> static size_t state_smem(int K, int Vt, bool with_tile) {
    StateSmem<T> s;
    return carve_state<T>(s, nullptr, K, Vt, with_tile);
}

// V tile of a state pass: among the tiles that divide V, keep the float32 state block [2K x Vt]
// at most 64 KB and fit in shared memory, the one with the fewest rounds of CTAs over the SMs,
// weighing a round by its tile width plus a fixed per-chunk cost (the chunk's operand loads)
// state strips per warp of the v7 kernels (1 or 2: pick_vt keeps K * Vt <= 8192)
static int fast_strips_per_warp(int K, int Vt) {
    const int nbu = Vt >= 32 ? 4 : 2, strips = (K / 16) * (Vt / (8 * nbu));
    return strips > 8 ? 2 : 1;
}
static size_t fast_smem(int K, int Vt, int mode) {
    FastSmem s;
    return carve_fast(s, nullptr, K, Vt, mode);
}

// mode: FAST_FWD, FAST_STORE or FAST_BWD; fast: the v7 bf16 kernels (else v6's)
static int pick_vt(const MdnCudaShape *sh, int mode, bool fast) {
    const bool with_tile = mode == FAST_BWD;
    static int num_sms = 0;
    if (num_sms == 0) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            num_sms = 132;
    }
    const size_t sm_smem = 228 * 1024, block_reserved = 1024;
    int best = 16;
    double best_cost = 1e30;
    for (int vt = 64; vt >= 16; vt /= 2) {
        if (sh->V % vt != 0 || 2 * sh->K * vt > 16384) continue;
        const size_t smem = fast ? fast_smem(sh->K, vt, mode)
                            : sh->dtype == MDN_DTYPE_BF16 ? state_smem<__nv_bfloat16>(sh->K, vt, with_tile)
                                                          : state_smem<float>(sh->K, vt, with_tile);
        if (smem > 227 * 1024) continue;
        const long per_sm = (long)(sm_smem / (smem + block_reserved));
        const long ctas = (long)sh->B * sh->H * (sh->V / vt);
        const long rounds = (ctas + per_sm * num_sms - 1) / (per_sm * num_sms);
        const double cost = (double)rounds * (vt + 32);
        if (cost < best_cost) { best_cost = cost; best = vt; }
    }
    return best;
}

static Plan make_plan(const MdnCudaShape *sh) {
    Plan p;
    Dims &d = p.d;
    d.B = sh->B; d.T = sh->T; d.H = sh->H; d.K = sh->K; d.V = sh->V;
    d.NC = (sh->T + CH - 1) / CH;
    d.use_p = sh->use_p_times_alpha;
    d.qscale = 1.0f / sqrtf((float)sh->K);
    const bool bf = sh->dtype == MDN_DTYPE_BF16;
    p.esize = bf ? 2 : 4;
    // V tile of the state passes: the float32 state block [2K x Vt] at most 64 KB, within the
    // shared-memory limit, and dividing V
    const char *v6 = getenv("MDN_CUDA_STATE_V6");
    p.fast = bf && !(v6 && v6[0] == '1');
    const char *g7 = getenv("MDN_CUDA_GRADS_V7");
    p.fast_grads = p.fast && !(g7 && g7[0] == '1');
    d.Vt = pick_vt(sh, FAST_FWD, p.fast);
    p.vt_store = pick_vt(sh, FAST_STORE, p.fast);
    p.vt_bwd = pick_vt(sh, FAST_BWD, p.fast);
    p.KT = sh->K % 32 == 0 ? 32 : 16;
    p.nKt = sh->K / p.KT;
    p.Vc = sh->V < 64 ? sh->V : 64;
    p.KS = sh->K < 64 ? sh->K : 64;
    const size_t nbhc = (size_t)sh->B * sh->H * d.NC;
    size_t off = 0;
    p.vec = off; off = align256(off + nbhc * NVEC * CH * 4);
    p.tinv = off; off = align256(off + nbhc * CH * CH * p.esize);
    p.qkg = off; off = align256(off + nbhc * CH * CH * p.esize);
    p.fwd_total = off;
    const size_t xsize = p.fast_grads ? 2 : 4;   // per-chunk states: bf16 (v8) or float32
    p.x = off; off = align256(off + nbhc * 2 * sh->K * sh->V * xsize);
    p.dx = off; off = align256(off + nbhc * 2 * sh->K * sh->V * xsize);
    p.u = off; off = align256(off + nbhc * CH * sh->V * p.esize);
    p.g = off; off = align256(off + (size_t)sh->B * sh->T * sh->H * sh->V * p.esize);
    p.dqs = off; off = align256(off + nbhc * CH * sh->K * 4);
    p.dps = off; off = align256(off + nbhc * CH * sh->K * 4);
    p.dks = off; off = align256(off + nbhc * CH * sh->K * 4);
    p.rowp = off; off = align256(off + nbhc * p.nKt * NRP * CH * 4);
    p.scal = off; off = align256(off + nbhc * p.nKt * 3 * 4);
    p.f = off; off = align256(off + nbhc * 2 * CH * CH * 4);
    p.bwd_total = off;
    return p;
}

size_t mdn_chunk_saved_size(const MdnCudaShape *shape) {
    if (mdn_cuda_check_shape(shape)) return 0;
    return make_plan(shape).fwd_total;
}
size_t mdn_chunk_forward_workspace_size(const MdnCudaShape *shape) {
    if (mdn_cuda_check_shape(shape)) return 0;
    return make_plan(shape).fwd_total;
}
size_t mdn_chunk_backward_workspace_size(const MdnCudaShape *shape) {
    if (mdn_cuda_check_shape(shape)) return 0;
    return make_plan(shape).bwd_total;
}

// raise a kernel's dynamic shared-memory limit to what this launch needs, then launch (with
// NTHREADS threads unless told otherwise)
template <typename Kern, typename... Args>
static cudaError_t launch_threads(Kern kern, dim3 grid, int threads, size_t smem, cudaStream_t stream, Args... args) {
    cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    kern<<<grid, threads, smem, stream>>>(args...);
    return cudaGetLastError();
}
template <typename Kern, typename... Args>
static cudaError_t launch(Kern kern, dim3 grid, size_t smem, cudaStream_t stream, Args... args) {
    return launch_threads(kern, grid, NTHREADS, smem, stream, args...);
}

template <int VT, int SPW>
static cudaError_t state_fwd_fast_vt(const Plan &p, const MdnCudaInputs *in, const char *prep, char *ws, bool store,
                                     bf16 *o, float *S_final, float *M_final, cudaStream_t stream) {
    const Dims &d = p.d;
    const float *vec = (const float *)(prep + p.vec);
    const bf16 *tinv = (const bf16 *)(prep + p.tinv), *qkg = (const bf16 *)(prep + p.qkg);
    const dim3 grid(d.V / VT, d.B * d.H);
    if (store && p.fast_grads)
        return launch(mdn_state_fwd_fast_kernel<VT, SPW, true, bf16>, grid, fast_smem(d.K, VT, FAST_STORE), stream, d,
                      (const bf16 *)in->q, (const bf16 *)in->k, (const bf16 *)in->v, in->S0, in->M0, vec, tinv, qkg,
                      (bf16 *)nullptr, (float *)nullptr, (float *)nullptr, (bf16 *)(ws + p.x), (bf16 *)(ws + p.u));
    if (store)
        return launch(mdn_state_fwd_fast_kernel<VT, SPW, true, float>, grid, fast_smem(d.K, VT, FAST_STORE), stream, d,
                      (const bf16 *)in->q, (const bf16 *)in->k, (const bf16 *)in->v, in->S0, in->M0, vec, tinv, qkg,
                      (bf16 *)nullptr, (float *)nullptr, (float *)nullptr, (float *)(ws + p.x), (bf16 *)(ws + p.u));
    return launch(mdn_state_fwd_fast_kernel<VT, SPW, false, float>, grid, fast_smem(d.K, VT, FAST_FWD), stream, d,
                  (const bf16 *)in->q, (const bf16 *)in->k, (const bf16 *)in->v, in->S0, in->M0, vec, tinv, qkg, o,
                  S_final, M_final, (float *)nullptr, (bf16 *)nullptr);
}
static cudaError_t state_fwd_fast(const Plan &p, const MdnCudaInputs *in, const char *prep, char *ws, bool store,
                                  bf16 *o, float *S_final, float *M_final, cudaStream_t stream) {
    const int vt = store ? p.vt_store : p.d.Vt;
    Plan q = p;
    q.d.Vt = vt;
    const bool two = fast_strips_per_warp(p.d.K, vt) == 2;
    if (vt == 64)
        return two ? state_fwd_fast_vt<64, 2>(q, in, prep, ws, store, o, S_final, M_final, stream)
                   : state_fwd_fast_vt<64, 1>(q, in, prep, ws, store, o, S_final, M_final, stream);
    if (vt == 32)
        return two ? state_fwd_fast_vt<32, 2>(q, in, prep, ws, store, o, S_final, M_final, stream)
                   : state_fwd_fast_vt<32, 1>(q, in, prep, ws, store, o, S_final, M_final, stream);
    return two ? state_fwd_fast_vt<16, 2>(q, in, prep, ws, store, o, S_final, M_final, stream)
               : state_fwd_fast_vt<16, 1>(q, in, prep, ws, store, o, S_final, M_final, stream);
}
template <int VT, int SPW>
static cudaError_t state_bwd_fast_vt(const Plan &p, const MdnCudaInputs *in, const bf16 *d_o, const float *dS_final,
                                     const float *dM_final, bf16 *G, MdnCudaGrads *gr, const char *prep, char *ws,
                                     cudaStream_t stream) {
    Dims d = p.d;
    d.Vt = VT;
    if (p.fast_grads)
        return launch(mdn_state_bwd_fast_kernel<VT, SPW, bf16>, dim3(d.V / VT, d.B * d.H), fast_smem(d.K, VT, FAST_BWD),
                      stream, d, (const bf16 *)in->q, (const bf16 *)in->k, d_o, dS_final, dM_final,
                      (const float *)(prep + p.vec), (const bf16 *)(prep + p.tinv), (const bf16 *)(prep + p.qkg), G,
                      (bf16 *)(ws + p.dx), gr->dS0, gr->dM0);
    return launch(mdn_state_bwd_fast_kernel<VT, SPW, float>, dim3(d.V / VT, d.B * d.H), fast_smem(d.K, VT, FAST_BWD), stream, d,
                  (const bf16 *)in->q, (const bf16 *)in->k, d_o, dS_final, dM_final, (const float *)(prep + p.vec),
                  (const bf16 *)(prep + p.tinv), (const bf16 *)(prep + p.qkg), G, (float *)(ws + p.dx), gr->dS0, gr->dM0);
}

// MDN_CUDA_PROFILE=1 in the environment: the backward times each kernel with events and prints
// one line to stderr per call (it synchronises the stream: for dev/bench_mdn, not for training)
struct Profile {
    int n = 0;
    cudaEvent_t ev[8];
    const char *name[8];
    void mark(cudaStream_t stream, const char *what) {
        if (n < 8 && cudaEventCreate(&ev[n]) == cudaSuccess && cudaEventRecord(ev[n], stream) == cudaSuccess)
            name[n++] = what;
    }
    void report() {
        if (n == 0 || cudaEventSynchronize(ev[n - 1]) != cudaSuccess) return;
        fprintf(stderr, "mdn_cuda backward:");
        for (int i = 1; i < n; i++) {
            float ms = 0.f;
            if (cudaEventElapsedTime(&ms, ev[i - 1], ev[i]) == cudaSuccess) fprintf(stderr, " %s %.3f", name[i], ms);
        }
        fprintf(stderr, " ms\n");
        for (int i = 0; i < n; i++) cudaEventDestroy(ev[i]);
    }
};

// the prepare kernel into prep (unless run_prepare is false: prep already holds its results for
// these inputs), then the forward state pass (store: the backward's recompute, into ws)
template <typename T>
static cudaError_t prepare_and_state(const Plan &p, const MdnCudaInputs *in, char *prep, bool run_prepare, char *ws,
                                     bool store, T *o, float *S_final, float *M_final, cudaStream_t stream,
                                     Profile *prof = nullptr) {
    const Dims &d = p.d;
    const unsigned nbhc = (unsigned)(d.B * d.H * d.NC);
    float *vec = (float *)(prep + p.vec);
    T *tinv = (T *)(prep + p.tinv), *qkg = (T *)(prep + p.qkg);
    if (run_prepare) {
        PrepSmem<T> ps;
        const size_t prep_smem = carve_prep<T>(ps, nullptr, d.K);
        cudaError_t err = launch_threads(mdn_prepare_kernel<T>, dim3(nbhc), PREPARE_THREADS, prep_smem, stream, d,
                                         (const T *)in->q, (const T *)in->k, in->log_alpha, in->log_mu, in->beta,
                                         in->eta, vec, tinv, qkg);
        if (err != cudaSuccess) return err;
    }
    if (prof) prof->mark(stream, "prepare");
    if constexpr (std::is_same<T, bf16>::value)
        if (p.fast) return state_fwd_fast(p, in, prep, ws, store, o, S_final, M_final, stream);
    const dim3 grid(d.V / d.Vt, d.B * d.H);
    const size_t smem = state_smem<T>(d.K, d.Vt, false);
    if (store)
        return launch(mdn_state_fwd_kernel<T, true>, grid, smem, stream, d, (const T *)in->q, (const T *)in->k,
                      (const T *)in->v, in->S0, in->M0, (const float *)vec, (const T *)tinv, (const T *)qkg, (T *)nullptr,
                      (float *)nullptr, (float *)nullptr, (float *)(ws + p.x), (T *)(ws + p.u));
    return launch(mdn_state_fwd_kernel<T, false>, grid, smem, stream, d, (const T *)in->q, (const T *)in->k,
                  (const T *)in->v, in->S0, in->M0, (const float *)vec, (const T *)tinv, (const T *)qkg, o, S_final,
                  M_final, (float *)nullptr, (T *)nullptr);
}

cudaError_t mdn_chunk_forward_cuda(const MdnCudaShape *shape, const MdnCudaInputs *in, void *o, float *S_final,
                                   float *M_final, void *saved, void *workspace, cudaStream_t stream) {
    if (mdn_cuda_check_shape(shape)) return cudaErrorInvalidValue;
    const Plan p = make_plan(shape);
    char *prep = (char *)(saved ? saved : workspace);
    if (shape->dtype == MDN_DTYPE_BF16)
        return prepare_and_state<__nv_bfloat16>(p, in, prep, true, (char *)workspace, false, (__nv_bfloat16 *)o, S_final,
                                                M_final, stream);
    return prepare_and_state<float>(p, in, prep, true, (char *)workspace, false, (float *)o, S_final, M_final, stream);
}

// A second stream of the current device and two events, made on first use, for the backward's
// two independent state passes (backward_impl).
struct SideStream {
    cudaStream_t stream = nullptr;
    cudaEvent_t fork = nullptr, join = nullptr;
};
static cudaError_t side_stream(SideStream **out) {
    static SideStream sides[64];
    int dev = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    if (dev < 0 || dev >= 64) return cudaErrorInvalidDevice;
    SideStream *s = &sides[dev];
    if (s->stream == nullptr) {
        if ((err = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking)) != cudaSuccess ||
            (err = cudaEventCreateWithFlags(&s->fork, cudaEventDisableTiming)) != cudaSuccess ||
            (err = cudaEventCreateWithFlags(&s->join, cudaEventDisableTiming)) != cudaSuccess)
            return err;
    }
    *out = s;
    return cudaSuccess;
}

template <typename T>
static cudaError_t backward_impl(const Plan &p, const MdnCudaInputs *in, const T *d_o, const float *dS_final,
                                 const float *dM_final, MdnCudaGrads *gr, const void *saved, char *ws,
                                 cudaStream_t stream) {
    const Dims &d = p.d;
    const char *pe = getenv("MDN_CUDA_PROFILE");
    Profile profile, *prof = pe && pe[0] == '1' ? &profile : nullptr;
    if (prof) prof->mark(stream, "start");
    // the prepare results: the forward's (saved), else recomputed into the workspace
    char *prep = saved ? (char *)saved : ws;
    // The recompute pass (each chunk's X0 and U, for the state gradients) and the reverse pass read
    // the same inputs and write separate workspace regions. With the forward's prepare results at
    // hand the recompute runs on a second stream beside the reverse pass: the reverse pass's CTAs
    // take 1.45 rounds of the SMs at the 400M shape, and the recompute's fill the last round's
    // room. Profiling (per-kernel times) keeps them in order on one stream.
    SideStream *side = nullptr;
    cudaError_t err;
    if (saved != nullptr && prof == nullptr) {
        if ((err = side_stream(&side)) != cudaSuccess || (err = cudaEventRecord(side->fork, stream)) != cudaSuccess ||
            (err = cudaStreamWaitEvent(side->stream, side->fork, 0)) != cudaSuccess)
            return err;
    }
    err = prepare_and_state<T>(p, in, prep, saved == nullptr, ws, true, nullptr, nullptr, nullptr,
                               side ? side->stream : stream, prof);
    if (err != cudaSuccess) return err;
    if (side && (err = cudaEventRecord(side->join, side->stream)) != cudaSuccess) return err;
    if (prof) prof->mark(stream, "recompute");
    const unsigned nbhc = (unsigned)(d.B * d.H * d.NC);
    const float *vec = (const float *)(prep + p.vec);
    const T *tinv = (const T *)(prep + p.tinv), *qkg = (const T *)(prep + p.qkg);
    T *G = gr->dv ? (T *)gr->dv : (T *)(ws + p.g);
    Dims db = d;
    db.Vt = p.vt_bwd;
    if constexpr (std::is_same<T, bf16>::value) {
        if (p.fast) {
            const bool two = fast_strips_per_warp(d.K, p.vt_bwd) == 2;
            if (p.vt_bwd == 64)
                err = two ? state_bwd_fast_vt<64, 2>(p, in, d_o, dS_final, dM_final, G, gr, prep, ws, stream)
                          : state_bwd_fast_vt<64, 1>(p, in, d_o, dS_final, dM_final, G, gr, prep, ws, stream);
            else if (p.vt_bwd == 32)
                err = two ? state_bwd_fast_vt<32, 2>(p, in, d_o, dS_final, dM_final, G, gr, prep, ws, stream)
                          : state_bwd_fast_vt<32, 1>(p, in, d_o, dS_final, dM_final, G, gr, prep, ws, stream);
            else
                err = two ? state_bwd_fast_vt<16, 2>(p, in, d_o, dS_final, dM_final, G, gr, prep, ws, stream)
                          : state_bwd_fast_vt<16, 1>(p, in, d_o, dS_final, dM_final, G, gr, prep, ws, stream);
        }
    }
    if (!p.fast) err = launch(mdn_state_bwd_kernel<T>, dim3(d.V / db.Vt, d.B * d.H), state_smem<T>(d.K, db.Vt, true), stream, db,
                 (const T *)in->q, (const T *)in->k, d_o, dS_final, dM_final, vec, tinv, qkg, G, (float *)(ws + p.dx),
                 gr->dS0, gr->dM0);
    if (err != cudaSuccess) return err;
    if (side && (err = cudaStreamWaitEvent(stream, side->join, 0)) != cudaSuccess) return err;
    if (prof) prof->mark(stream, "reverse");
    GradSmem<T> gs;
    const size_t gsmem = carve_grad<T>(gs, nullptr, p.KT, p.Vc);
    float *dqs = (float *)(ws + p.dqs), *dps = (float *)(ws + p.dps), *dks = (float *)(ws + p.dks);
    float *rowp = (float *)(ws + p.rowp), *scal = (float *)(ws + p.scal), *F = (float *)(ws + p.f);
    const dim3 ggrid(p.nKt + 1, nbhc);
    if constexpr (std::is_same<T, bf16>::value) {
        if (p.fast_grads) {
            GradFastSmem fs;
            const size_t fsmem = carve_grad_fast(fs, nullptr, p.KT, p.Vc);
            auto kern = p.KT == 32 ? mdn_bwd_state_grads_fast_kernel<32> : mdn_bwd_state_grads_fast_kernel<16>;
            err = launch(kern, ggrid, fsmem, stream, d, p.Vc, (const bf16 *)in->q, (const bf16 *)in->k, d_o,
                         (const bf16 *)G, (const bf16 *)(ws + p.u), (const bf16 *)(ws + p.x),
                         (const bf16 *)(ws + p.dx), vec, dqs, dps, dks, rowp, scal, F);
        }
    }
    if (!p.fast_grads && p.KT == 32)
        err = launch(mdn_bwd_state_grads_kernel<T, 32>, ggrid, gsmem, stream, d, p.Vc, (const T *)in->q,
                     (const T *)in->k, d_o, (const T *)G, (const T *)(ws + p.u), (const float *)(ws + p.x),
                     (const float *)(ws + p.dx), vec, dqs, dps, dks, rowp, scal, F);
    else if (!p.fast_grads)
        err = launch(mdn_bwd_state_grads_kernel<T, 16>, ggrid, gsmem, stream, d, p.Vc, (const T *)in->q,
                     (const T *)in->k, d_o, (const T *)G, (const T *)(ws + p.u), (const float *)(ws + p.x),
                     (const float *)(ws + p.dx), vec, dqs, dps, dks, rowp, scal, F);
    if (err != cudaSuccess) return err;
    if (prof) prof->mark(stream, "state_grads");
    ChunkBwdSmem<T> cs;
    const size_t csmem = carve_chunk_bwd<T>(cs, nullptr, p.KS);
    err = launch_threads(mdn_bwd_chunk_kernel<T>, dim3(nbhc), CHUNK_BWD_THREADS, csmem, stream, d, p.nKt, p.KS,
                         (const T *)in->q, (const T *)in->k, in->log_alpha, in->log_mu, in->beta, in->eta, vec, dqs,
                         dps, dks, (const float *)rowp, (const float *)scal, (const float *)F, (T *)gr->dq,
                         (T *)gr->dk, gr->dlog_alpha, gr->dlog_mu, gr->dbeta, gr->deta);
    if (prof && err == cudaSuccess) {
        prof->mark(stream, "chunk");
        prof->report();
    }
    return err;
}

cudaError_t mdn_chunk_backward_cuda(const MdnCudaShape *shape, const MdnCudaInputs *in, const void *d_o,
                                    const float *dS_final, const float *dM_final, MdnCudaGrads *grads,
                                    const void *saved, void *workspace, cudaStream_t stream) {
    if (mdn_cuda_check_shape(shape)) return cudaErrorInvalidValue;
    const Plan p = make_plan(shape);
    if (shape->dtype == MDN_DTYPE_BF16)
        return backward_impl<__nv_bfloat16>(p, in, (const __nv_bfloat16 *)d_o, dS_final, dM_final, grads, saved,
                                            (char *)workspace, stream);
    return backward_impl<float>(p, in, (const float *)d_o, dS_final, dM_final, grads, saved, (char *)workspace, stream);
}
