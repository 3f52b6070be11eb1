// conv.cu: see conv.cuh. z[t,c] = sum_i w[c,i]·x[t-W+1+i, c] (zero before the row's start).
// Each thread owns N adjacent channels (one 8-byte access: at 16 bytes the registers held fewer
// threads an SM and both directions ran slower) and a tile of consecutive time steps of one sequence.
// Forward: a tile of CONV_TILE_FWD steps, unrolled at compile time: the thread issues the loads of
// all its rows (the tile and its W−1 halo rows, those L1/L2 hits of the tile before) before their
// first use, then computes from registers. (A 16-step window slid down in a runtime loop spent ~40%
// of its instructions moving the window: 0.27 -> 0.19 ms for the 400M layer's q, k, v.) For q, the
// forward also applies the output correction (shortconv_silu_corrected_forward_cuda).
// Backward, fused into one pass per tile of CONV_TILE_BWD steps: dz = dout·silu'(z) (z recomputed
// from a W-step window of x) is kept in a second window, dinp[s,c] = sum_i w[c,i]·dz[s+W-1-i, c] is
// emitted W−1 steps behind, and dw[c,i] = sum_t dz[t,c]·x[t-W+1+i, c] is summed per thread, then
// over a block's threads in a fixed order into one partial per row block: deterministic, and no
// float32 dz buffer. x and dout are loaded CONV_PREFETCH steps ahead. (The forward's unrolled form,
// tried here with the tile's dz halo recomputed, ran 25-60% slower: 25 loads and 11 sigmoids per 8
// outputs.) Both directions were bound by instructions more than by memory until sigmoidf_ used the
// fast exponential and division (common/cuda_common.cuh).
#include <type_traits>

#include "conv.cuh"

#include "packed.cuh"

#define CONV_TILE_FWD 4    // forward: time steps per thread, unrolled
#define CONV_TILE_BWD 16   // backward: time steps per thread, a sliding window
#define CONV_PREFETCH 2    // backward: steps of x and dout loaded ahead (a thread's loads in flight)
#define CONV_WARPS 8   // tiles per block (threadIdx.y); threadIdx.x runs over 32 channel groups

// channels per thread for W taps: 8 bytes, 4 for windows longer than 4 (the registers of the windows)
template <typename T, int W> struct ConvVec {
    static constexpr int bytes = 8 / (W <= 4 ? 1 : 2);
    static constexpr int n = bytes / sizeof(T) > 0 ? bytes / sizeof(T) : 1;
};

// the raw N values at p (one access), and their conversion: the backward issues loads steps ahead
template <int N, typename T> __device__ __forceinline__ Packed<T, N> load_packed(const T *p) {
    return *reinterpret_cast<const Packed<T, N> *>(p);
}
template <int N, typename T> __device__ __forceinline__ void unpack(float *out, const Packed<T, N> &x) {
#pragma unroll
    for (int i = 0; i < N; i++) out[i] = to_float(x.v[i]);
}

// the raw N values at p (one access) when `valid`, else zeros; converted where used
template <int N, typename T> __device__ __forceinline__ Packed<T, N> load_packed_or_zero(const T *p, bool valid) {
    if (valid) return *reinterpret_cast<const Packed<T, N> *>(p);
    Packed<T, N> zero;
#pragma unroll
    for (int i = 0; i < N; i++) zero.v[i] = from_float<T>(0.0f);
    return zero;
}

// w[i][k] = weight[(c0 + k)·W + i]: the thread's N channels' taps are N·W consecutive floats, read
// 16 bytes at a time when aligned (scalar reads, 128 bytes apart across the warp, cost more
// load instructions than the thread's whole tile of activations)
template <int N, int W> __device__ __forceinline__ void load_conv_weights(float (&w)[W][N], const float *weight,
                                                                         int c0) {
    const float *p = weight + (size_t)c0 * W;
    if constexpr ((N * W) % 4 == 0) {
        if ((uintptr_t)p % 16 == 0) {
#pragma unroll
            for (int j = 0; j < N * W; j += 4) {
                float4 v = *reinterpret_cast<const float4 *>(p + j);
                w[j % W][j / W] = v.x;
                w[(j + 1) % W][(j + 1) / W] = v.y;
                w[(j + 2) % W][(j + 2) / W] = v.z;
                w[(j + 3) % W][(j + 3) / W] = v.w;
            }
            return;
        }
    }
#pragma unroll
    for (int j = 0; j < N * W; j++) w[j % W][j / W] = p[j];
}

// the tile'th tile of TILE steps (tiles numbered sequence by sequence): flat rows [r0, r0 + len)
template <int TILE> __device__ __forceinline__ void conv_tile(int tile, int Tlen, int *r0, int *t0, int *len) {
    int tiles_per_seq = (Tlen + TILE - 1) / TILE;
    int b = tile / tiles_per_seq;
    *t0 = (tile - b * tiles_per_seq) * TILE;
    *r0 = b * Tlen + *t0;
    *len = min(TILE, Tlen - *t0);
}

// z = sum_i w[i]·x[j + i] over the thread's N channels, x given as loaded rows
template <typename T, int N, int W, int R>
__device__ __forceinline__ void conv_taps(float (&z)[N], const float (&w)[W][N], const Packed<T, N> (&x)[R], int j) {
#pragma unroll
    for (int k = 0; k < N; k++) {
        z[k] = 0.0f;
#pragma unroll
        for (int i = 0; i < W; i++) z[k] += w[i][k] * to_float(x[j + i].v[k]);
    }
}

template <typename T, int N, int W>
__global__ void __launch_bounds__(32 * CONV_WARPS, 2) shortconv_silu_forward_kernel(T *out, const T *inp, int in_stride,
                                                                                 const float *weight, const T *sub,
                                                                                 const float *D_log, int head_dim,
                                                                                 int num_tiles, int Tlen, int C) {
    int c0 = (blockIdx.x * 32 + threadIdx.x) * N, tile = blockIdx.y * CONV_WARPS + threadIdx.y;
    if (c0 >= C || tile >= num_tiles) return;
    int r0, t0, len;
    conv_tile<CONV_TILE_FWD>(tile, Tlen, &r0, &t0, &len);
    // x[j] is step t0 − (W−1) + j: the W−1 steps before the tile (zeros before the sequence's
    // start), then the tile's steps (zeros past its end)
    const T *seq = inp + (size_t)(r0 - t0) * in_stride + c0;
    Packed<T, N> x[CONV_TILE_FWD + W - 1];
#pragma unroll
    for (int j = 0; j < CONV_TILE_FWD + W - 1; j++) {
        int t = t0 - (W - 1) + j;
        x[j] = load_packed_or_zero<N>(seq + (size_t)t * in_stride, t >= 0 && t < t0 + len);
    }
    // the output correction's subtrahend rows (the thread's N channels are in one head)
    Packed<T, N> sub_rows[CONV_TILE_FWD];
    float c_sub = 0.0f;
    if (sub != NULL) {
#pragma unroll
        for (int s = 0; s < CONV_TILE_FWD; s++)
            sub_rows[s] = load_packed_or_zero<N>(sub + (size_t)(r0 + s) * C + c0, s < len);
        c_sub = expf(D_log[c0 / head_dim]);
    }
    float w[W][N];
    load_conv_weights<N, W>(w, weight, c0);
#pragma unroll
    for (int s = 0; s < CONV_TILE_FWD; s++) {
        if (s >= len) break;
        float z[N], y[N];
        conv_taps<T, N, W>(z, w, x, s);
#pragma unroll
        for (int k = 0; k < N; k++) y[k] = z[k] * sigmoidf_(z[k]);
        if (sub != NULL)
#pragma unroll
            for (int k = 0; k < N; k++) y[k] -= c_sub * to_float(sub_rows[s].v[k]);
        store_floats<N>(out + (size_t)(r0 + s) * C + c0, y);
    }
}

template <typename T, int N, int W>
__global__ void __launch_bounds__(32 * CONV_WARPS, 2) shortconv_silu_backward_kernel(T *dinp, int dinp_stride,
                                                                                  float *partials, const T *dout,
                                                                                  const T *inp, int in_stride,
                                                                                  const float *weight, int num_tiles,
                                                                                  int Tlen, int C) {
    __shared__ float dw_s[CONV_WARPS][32][N * W + 1];
    int c0 = (blockIdx.x * 32 + threadIdx.x) * N, part = blockIdx.y;
    int tiles_per_part = ceil_div(num_tiles, gridDim.y);
    int tile_end = min(num_tiles, (part + 1) * tiles_per_part);
    float w[W][N], dw[W][N];
#pragma unroll
    for (int i = 0; i < W; i++)
#pragma unroll
        for (int k = 0; k < N; k++) w[i][k] = dw[i][k] = 0.0f;
    if (c0 < C) load_conv_weights<N, W>(w, weight, c0);
    if (c0 < C)
        for (int tile = part * tiles_per_part + threadIdx.y; tile < tile_end; tile += CONV_WARPS) {
            int r0, t0, len;
            conv_tile<CONV_TILE_BWD>(tile, Tlen, &r0, &t0, &len);
            const T *xb = inp + (size_t)(r0 - t0) * in_stride + c0;   // this sequence's step 0
            float x[W][N], dz[W][N];   // windows; index W-1 is the newest step
#pragma unroll
            for (int i = 0; i < W; i++)
#pragma unroll
                for (int k = 0; k < N; k++) x[i][k] = dz[i][k] = 0.0f;
#pragma unroll
            for (int i = 0; i < W - 1; i++) {
                int t = t0 - (W - 1) + i;
                if (t >= 0) load_floats<N>(x[i + 1], xb + (size_t)t * in_stride);
            }
            // steps u = t0 .. t0+len+W-2: dz at u; dinp at u−(W−1) once the window holds dz[u−W+1 .. u]
            int u_end = min(Tlen, t0 + len + W - 1);
            // x and dout of steps u .. u+CONV_PREFETCH-1 (those before u_end)
            Packed<T, N> x_ahead[CONV_PREFETCH], g_ahead[CONV_PREFETCH];
#pragma unroll
            for (int j = 0; j < CONV_PREFETCH; j++)
                if (t0 + j < u_end) {
                    x_ahead[j] = load_packed<N>(xb + (size_t)(t0 + j) * in_stride);
                    g_ahead[j] = load_packed<N>(dout + (size_t)(r0 + j) * C + c0);
                }
            // unrolled by two: the compiler renames part of the window and prefetch shifts away
            // (0.40 -> 0.36 ms for the 400M layer's q, k, v; by four, or a deeper prefetch, more
            // registers and no gain)
#pragma unroll 2
            for (int u = t0; u < t0 + len + W - 1; u++) {
                Packed<T, N> x_cur = x_ahead[0], g_cur = g_ahead[0];
#pragma unroll
                for (int j = 0; j + 1 < CONV_PREFETCH; j++) {
                    x_ahead[j] = x_ahead[j + 1];
                    g_ahead[j] = g_ahead[j + 1];
                }
                if (u + CONV_PREFETCH < u_end) {
                    x_ahead[CONV_PREFETCH - 1] = load_packed<N>(xb + (size_t)(u + CONV_PREFETCH) * in_stride);
                    g_ahead[CONV_PREFETCH - 1] = load_packed<N>(dout + (size_t)(r0 - t0 + u + CONV_PREFETCH) * C + c0);
                }
#pragma unroll
                for (int i = 0; i < W - 1; i++)
#pragma unroll
                    for (int k = 0; k < N; k++) {
                        x[i][k] = x[i + 1][k];
                        dz[i][k] = dz[i + 1][k];
                    }
                if (u < u_end) {
                    unpack<N>(x[W - 1], x_cur);
                    float g[N];
                    unpack<N>(g, g_cur);
#pragma unroll
                    for (int k = 0; k < N; k++) {
                        float z = 0.0f;
#pragma unroll
                        for (int i = 0; i < W; i++) z += w[i][k] * x[i][k];
                        float s = sigmoidf_(z);
                        dz[W - 1][k] = g[k] * s * (1.0f + z * (1.0f - s));
                    }
                    if (u < t0 + len)
#pragma unroll
                        for (int i = 0; i < W; i++)
#pragma unroll
                            for (int k = 0; k < N; k++) dw[i][k] += dz[W - 1][k] * x[i][k];
                } else {
#pragma unroll
                    for (int k = 0; k < N; k++) x[W - 1][k] = dz[W - 1][k] = 0.0f;
                }
                int s = u - (W - 1);
                if (s >= t0) {
                    float d[N];
#pragma unroll
                    for (int k = 0; k < N; k++) {
                        d[k] = 0.0f;
#pragma unroll
                        for (int i = 0; i < W; i++) d[k] += w[i][k] * dz[W - 1 - i][k];
                    }
                    store_floats<N>(dinp + (size_t)(r0 - t0 + s) * dinp_stride + c0, d);
                }
            }
        }
#pragma unroll
    for (int i = 0; i < W; i++)
#pragma unroll
        for (int k = 0; k < N; k++) dw_s[threadIdx.y][threadIdx.x][k * W + i] = dw[i][k];
    __syncthreads();
    // the block's partial for its channels: sum over threadIdx.y in order
    int nvals = 32 * N * W, base = blockIdx.x * 32 * N * W;
    for (int j = threadIdx.y * 32 + threadIdx.x; j < nvals; j += 32 * CONV_WARPS) {
        if (base + j >= C * W) break;
        float s = 0.0f;
        for (int y = 0; y < CONV_WARPS; y++) s += dw_s[y][j / (N * W)][j % (N * W)];
        partials[(size_t)part * C * W + base + j] = s;
    }
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

size_t shortconv_silu_backward_scratch_bytes(int B, int Tlen, int C, int W) {
    (void)B;
    (void)Tlen;
    return align256((size_t)REDUCE_PARTS * C * W * sizeof(float));
}

static int conv_num_tiles(int B, int Tlen, int tile) { return B * ceil_div(Tlen, tile); }

// the backward's row blocks (weight-gradient partials): at most REDUCE_PARTS, and few enough that
// each of a block's warps has a tile (with REDUCE_PARTS at the 1B shape, B4 T4096, half the warps
// of every block had none). A function of the shape only: the same partials on any device.
static int conv_backward_parts(int B, int Tlen) {
    return min(REDUCE_PARTS, ceil_div(conv_num_tiles(B, Tlen, CONV_TILE_BWD), CONV_WARPS));
}

template <typename T, int N, int W>
static void conv_forward_launch(T *out, const T *inp, int in_stride, const float *weight, const T *sub,
                                const float *D_log, int head_dim, int B, int Tlen, int C, cudaStream_t stream) {
    int tiles = conv_num_tiles(B, Tlen, CONV_TILE_FWD);
    dim3 grid(ceil_div(C / N, 32), ceil_div(tiles, CONV_WARPS));
    shortconv_silu_forward_kernel<T, N, W><<<grid, dim3(32, CONV_WARPS), 0, stream>>>(
        out, inp, in_stride, weight, sub, D_log, head_dim, tiles, Tlen, C);
    cudaCheck(cudaGetLastError());
}

template <typename T, int N, int W>
static void conv_backward_launch(T *dinp, int dinp_stride, float *partials, const T *dout, const T *inp,
                                 int in_stride, const float *weight, int B, int Tlen, int C, cudaStream_t stream) {
    int tiles = conv_num_tiles(B, Tlen, CONV_TILE_BWD);
    dim3 grid(ceil_div(C / N, 32), conv_backward_parts(B, Tlen));
    shortconv_silu_backward_kernel<T, N, W><<<grid, dim3(32, CONV_WARPS), 0, stream>>>(
        dinp, dinp_stride, partials, dout, inp, in_stride, weight, tiles, Tlen, C);
    cudaCheck(cudaGetLastError());
}

// whether every row of every operand starts on an N-value boundary
template <typename T>
static bool conv_vectorizable(int N, int C, int in_stride, int other_stride, const void *a, const void *b,
                              const void *c) {
    size_t bytes = (size_t)N * sizeof(T);
    return C % N == 0 && in_stride % N == 0 && other_stride % N == 0 && is_aligned(a, bytes) && is_aligned(b, bytes) &&
           is_aligned(c, bytes);
}

template <typename T, int W>
static void conv_forward_w(T *out, const T *inp, int in_stride, const float *weight, const T *sub, const float *D_log,
                           int head_dim, int B, int Tlen, int C, cudaStream_t stream) {
    constexpr int N = ConvVec<T, W>::n;
    if (conv_vectorizable<T>(N, C, in_stride, C, out, inp, sub != NULL ? sub : inp) && head_dim % N == 0)
        conv_forward_launch<T, N, W>(out, inp, in_stride, weight, sub, D_log, head_dim, B, Tlen, C, stream);
    else
        conv_forward_launch<T, 1, W>(out, inp, in_stride, weight, sub, D_log, head_dim, B, Tlen, C, stream);
}

template <typename T, int W>
static void conv_backward_w(T *dinp, int dinp_stride, float *partials, const T *dout, const T *inp, int in_stride,
                            const float *weight, int B, int Tlen, int C, cudaStream_t stream) {
    constexpr int N = ConvVec<T, W>::n;
    if (conv_vectorizable<T>(N, C, in_stride, dinp_stride, dinp, dout, inp))
        conv_backward_launch<T, N, W>(dinp, dinp_stride, partials, dout, inp, in_stride, weight, B, Tlen, C, stream);
    else
        conv_backward_launch<T, 1, W>(dinp, dinp_stride, partials, dout, inp, in_stride, weight, B, Tlen, C, stream);
}

static void conv_check_width(int W) {
    if (W < 1 || W > CONV_MAX_W) {
        fprintf(stderr, "error: conv.cu: conv_size %d outside 1..%d\n", W, CONV_MAX_W);
        exit(EXIT_FAILURE);
    }
}

// f(std::integral_constant<int, W>()) for the run-time width W: the kernels take it as a template
// parameter (their windows live in registers)
template <class F> static void with_conv_width(int W, const F &f) {
    conv_check_width(W);
    switch (W) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 5: f(std::integral_constant<int, 5>()); break;
    case 6: f(std::integral_constant<int, 6>()); break;
    case 7: f(std::integral_constant<int, 7>()); break;
    default: f(std::integral_constant<int, 8>()); break;
    }
}

template <typename T>
static void conv_forward(T *out, const T *inp, int in_stride, const float *weight, const T *sub, const float *D_log,
                         int head_dim, int B, int Tlen, int C, int W, cudaStream_t stream) {
    with_conv_width(W, [&](auto w) {
        conv_forward_w<T, decltype(w)::value>(out, inp, in_stride, weight, sub, D_log, head_dim, B, Tlen, C, stream);
    });
}

template <typename T>
void shortconv_silu_forward_cuda(T *out, const T *inp, int in_stride, const float *weight, int B, int Tlen, int C,
                                 int W, cudaStream_t stream) {
    conv_forward<T>(out, inp, in_stride, weight, NULL, NULL, C, B, Tlen, C, W, stream);
}

template <typename T>
void shortconv_silu_corrected_forward_cuda(T *out, const T *inp, int in_stride, const float *weight, const T *sub,
                                           const float *D_log, int H, int B, int Tlen, int C, int W,
                                           cudaStream_t stream) {
    if (H < 1 || C % H != 0) {
        fprintf(stderr, "error: conv.cu: %d channels do not split into %d heads\n", C, H);
        exit(EXIT_FAILURE);
    }
    conv_forward<T>(out, inp, in_stride, weight, sub, D_log, C / H, B, Tlen, C, W, stream);
}

template <typename T>
void shortconv_silu_backward_cuda(T *dinp, int dinp_stride, float *dweight, void *scratch, const T *dout,
                                  const T *inp, int in_stride, const float *weight, int B, int Tlen, int C, int W,
                                  cudaStream_t stream) {
    float *partials = (float *)scratch;
    with_conv_width(W, [&](auto w) {
        conv_backward_w<T, decltype(w)::value>(dinp, dinp_stride, partials, dout, inp, in_stride, weight, B, Tlen, C,
                                               stream);
    });
    reduce_partials_add_cuda(dweight, partials, conv_backward_parts(B, Tlen), C * W, stream);
}

template void shortconv_silu_forward_cuda<float>(float *, const float *, int, const float *, int, int, int, int,
                                                 cudaStream_t);
template void shortconv_silu_forward_cuda<bf16>(bf16 *, const bf16 *, int, const float *, int, int, int, int,
                                                cudaStream_t);
template void shortconv_silu_corrected_forward_cuda<float>(float *, const float *, int, const float *, const float *,
                                                           const float *, int, int, int, int, int, cudaStream_t);
template void shortconv_silu_corrected_forward_cuda<bf16>(bf16 *, const bf16 *, int, const float *, const bf16 *,
                                                          const float *, int, int, int, int, int, cudaStream_t);
template void shortconv_silu_backward_cuda<float>(float *, int, float *, void *, const float *, const float *, int,
                                                  const float *, int, int, int, int, cudaStream_t);
template void shortconv_silu_backward_cuda<bf16>(bf16 *, int, float *, void *, const bf16 *, const bf16 *, int,
                                                 const float *, int, int, int, int, cudaStream_t);
