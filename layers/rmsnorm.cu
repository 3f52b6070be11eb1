// rmsnorm.cu: see rmsnorm.cuh. One warp per row (dim is 128..2048 here); the backward kernels also
// sum the weight gradients (below, before rmsnorm_backward_kernel).
// With x̂ = x·r, r = (mean(x²)+eps)^-1/2, y = x̂·w: dx = r·(w∘dy − x̂·mean(x̂∘w∘dy)).
// Every lane moves N adjacent values per access (4 for the float32 residual stream: 16 bytes; 8 for
// the bf16 gated norm's rows: 16 bytes) when the shapes allow, one value otherwise.
// A row is two passes (the sums, then the outputs); a lane keeps its first CACHE chunks of the row
// in registers between them and issues every load of a chunk before the first use, so a row costs
// one memory latency, not three (reloading the row doubled these kernels' times at 400M). Chunks
// past CACHE (rows wider than 32·N·CACHE values) are read again. The forwards give the same bits
// as loop-and-reload; the rmsnorm backward forms dinp + dx as (dinp + r·w∘dy) − r²·mean(..)·x
// (two cached values a chunk, not three), the gated one r·(w∘dy∘σ(g) − x̂·mean(..)): float32
// rounding differences from the CPU twin's order, within the tests' bounds.
#include "rmsnorm.cuh"

#include "packed.cuh"

#define ROWS_PER_BLOCK 8   // warps per block in the row kernels

// whether float32 rows and T rows of dim values can be accessed N at a time
template <typename T>
static bool rows_vectorizable(int N, int dim, const float *f1, const float *f2, const float *f3, const T *t1,
                              const T *t2) {
    return dim % N == 0 && is_aligned(f1, N * sizeof(float)) && is_aligned(f2, N * sizeof(float)) &&
           is_aligned(f3, N * sizeof(float)) && is_aligned(t1, N * sizeof(T)) && is_aligned(t2, N * sizeof(T));
}

#define RMS_CACHE 8   // row chunks kept in registers: 1024 float32 values a row with N = 4

template <typename T, int N>
__global__ void rmsnorm_forward_kernel(float *sum, T *out, float *rstd, const float *x, const T *delta,
                                       const float *weight, int rows, int dim, float eps) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * dim;
    float ss = 0.0f, kept[RMS_CACHE][N];
    // v = x (+ delta, written to sum) for the chunk at c, and its sum of squares
    auto first_pass = [&](int c, float *v) {
        load_floats<N>(v, x + base + c);
        if (delta != NULL) {
            float d[N];
            load_floats<N>(d, delta + base + c);
#pragma unroll
            for (int k = 0; k < N; k++) v[k] += d[k];
            store_floats<N>(sum + base + c, v);
        }
#pragma unroll
        for (int k = 0; k < N; k++) ss += v[k] * v[k];
    };
#pragma unroll
    for (int i = 0; i < RMS_CACHE; i++)
        if ((i * 32 + lane) * N < dim) first_pass((i * 32 + lane) * N, kept[i]);
    for (int c = (RMS_CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
        float v[N];
        first_pass(c, v);
    }
    ss = warp_reduce_sum(ss);
    float r = rsqrtf(ss / dim + eps);
    auto second_pass = [&](int c, float *v) {
        float w[N];
        load_floats<N>(w, weight + c);
#pragma unroll
        for (int k = 0; k < N; k++) v[k] = v[k] * r * w[k];
        store_floats<N>(out + base + c, v);
    };
#pragma unroll
    for (int i = 0; i < RMS_CACHE; i++)
        if ((i * 32 + lane) * N < dim) second_pass((i * 32 + lane) * N, kept[i]);
    const float *src = delta != NULL ? sum : x;   // the lane reads back only what it wrote itself
    for (int c = (RMS_CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
        float v[N];
        load_floats<N>(v, src + base + c);
        second_pass(c, v);
    }
    if (lane == 0) rstd[row] = r;
}

template <typename T>
static void rmsnorm_forward_launch(float *sum, T *out, float *rstd, const float *x, const T *delta,
                                   const float *weight, int rows, int dim, float eps, cudaStream_t stream) {
    int blocks = ceil_div(rows, ROWS_PER_BLOCK);
    if (rows_vectorizable<T>(4, dim, x, weight, sum != NULL ? sum : x, out, delta != NULL ? delta : out))
        rmsnorm_forward_kernel<T, 4><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(sum, out, rstd, x, delta, weight,
                                                                                 rows, dim, eps);
    else
        rmsnorm_forward_kernel<T, 1><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(sum, out, rstd, x, delta, weight,
                                                                                 rows, dim, eps);
    cudaCheck(cudaGetLastError());
}

template <typename T>
void rmsnorm_forward_cuda(T *out, float *rstd, const float *inp, const float *weight, int rows, int dim, float eps,
                          cudaStream_t stream) {
    rmsnorm_forward_launch<T>(NULL, out, rstd, inp, (const T *)NULL, weight, rows, dim, eps, stream);
}

template <typename T>
void residual_rmsnorm_forward_cuda(float *sum, T *out, float *rstd, const float *x, const T *delta,
                                   const float *weight, int rows, int dim, float eps, cudaStream_t stream) {
    rmsnorm_forward_launch<T>(sum, out, rstd, x, delta, weight, rows, dim, eps, stream);
}

// The weight gradients are summed in the row kernels: a block owns one of REDUCE_PARTS consecutive
// row ranges, its warps take the range's rows in turn, and each warp adds its rows' dweight terms to
// its own float32 row of shared memory (a lane only ever touches its own columns: no atomics, a
// fixed order). At the end the block adds its warps' rows in order into partials[part], which
// reduce_partials_add_cuda sums. (A second, column-parallel pass re-read dout and the input: 26% of
// the rmsnorm backward's bytes, 37% of the gated norm's.)
// warps a backward block: the grid is REDUCE_PARTS blocks, so the block size sets the occupancy.
// The rmsnorm kernel needs 128 registers (two blocks of 8 warps an SM at most: with 12 warps at 80
// registers it spilled and ran 30% slower); the gated norm's ~60 allow 16 warps a block (0.206 ->
// 0.195 ms at the 400M shape).
#define RMS_BWD_WARPS 8
#define GATED_BWD_WARPS 16

// warps of a backward block, at most max_warps, whose per-warp dweight rows of dim floats fit the
// device's shared memory
static int backward_warps(int dim, int max_warps) {
    size_t per_warp = (size_t)dim * sizeof(float);
    size_t warps = cuda_device_props()->sharedMemPerBlockOptin / per_warp;
    if (warps == 0) {
        fprintf(stderr, "error: rmsnorm.cu: a row of %d values is too wide for the backward's shared memory\n", dim);
        exit(EXIT_FAILURE);
    }
    return warps < (size_t)max_warps ? (int)warps : max_warps;
}

// the start of both backward kernels: this block's rows [r0, r1) (its part), and the calling warp's
// dweight row in shared memory, zeroed
__device__ __forceinline__ float *begin_dweight_rows(float *dw_s, int rows, int dim, int *r0, int *r1) {
    int rows_per_part = ceil_div(rows, gridDim.x);
    *r0 = blockIdx.x * rows_per_part;
    *r1 = min(rows, *r0 + rows_per_part);
    float *dw_row = dw_s + (size_t)(threadIdx.x / 32) * dim;
    for (int c = threadIdx.x % 32; c < dim; c += 32) dw_row[c] = 0.0f;
    __syncwarp();   // the lanes then add to other lanes' zeroed columns
    return dw_row;
}

// dw_s[warp][c] += v[k] for the N columns at c (a lane's own columns)
template <int N> __device__ __forceinline__ void add_to_row(float *dw_row, int c, const float *v) {
    if constexpr (N % 4 == 0) {   // c and dim are multiples of N: 16-byte aligned
#pragma unroll
        for (int k = 0; k < N; k += 4) {
            float4 *p = reinterpret_cast<float4 *>(dw_row + c + k), a = *p;
            *p = make_float4(a.x + v[k], a.y + v[k + 1], a.z + v[k + 2], a.w + v[k + 3]);
        }
    } else {
#pragma unroll
        for (int k = 0; k < N; k++) dw_row[c + k] += v[k];
    }
}

// partials[part, c] = the block's warps' rows summed in order
__device__ void write_row_partials(float *partials, const float *dw_s, int dim) {
    __syncthreads();
    int warps = blockDim.x / 32;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < warps; w++) sum += dw_s[(size_t)w * dim + c];
        partials[(size_t)blockIdx.x * dim + c] = sum;
    }
}

// RESID: the input is x = inp + delta, the residual add the forward fused into this norm, and r is
// recomputed from it (rstd unused): the trainer's backward keeps neither the sum nor r of the MLP
// norm. Both are formed as the forward forms them (the same chunk order, the same sums): the same bits,
// when both kernels take the same vector width (4 wherever the rows allow 16-byte accesses, as the
// trainer's do; test_layers_cuda checks the bits).
template <typename T, int N, bool RESID>
__global__ void __launch_bounds__(32 * RMS_BWD_WARPS, 2)
    rmsnorm_backward_kernel(float *dinp, T *dinp_copy, T *normed, float *partials, const T *dout, const float *inp,
                            const T *delta, const float *weight, const float *rstd, float eps, int rows, int dim) {
    extern __shared__ float dw_s[];   // [warps][dim]
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32, r0, r1;
    float *dw_row = begin_dweight_rows(dw_s, rows, dim, &r0, &r1);
    for (int row = r0 + warp; row < r1; row += warps) {
        size_t base = (size_t)row * dim;
        float r, dot = 0.0f;
        // per chunk: x, and the incoming gradient plus the part of dx that does not depend on dot,
        // part = d + r·w∘dy (two cached values instead of x, w∘dy and d: 32 registers fewer)
        float kx[RMS_CACHE][N], kpart[RMS_CACHE][N];
        auto load_x = [&](int c, float *x) {
            load_floats<N>(x, inp + base + c);
            if constexpr (RESID) {
                float d[N];
                load_floats<N>(d, delta + base + c);
#pragma unroll
                for (int k = 0; k < N; k++) x[k] += d[k];
            }
        };
        if constexpr (RESID) {   // r as the forward: the cached chunks' sums of squares, then the rest
            float ss = 0.0f;
#pragma unroll
            for (int i = 0; i < RMS_CACHE; i++)
                if ((i * 32 + lane) * N < dim) {
                    load_x((i * 32 + lane) * N, kx[i]);
#pragma unroll
                    for (int k = 0; k < N; k++) ss += kx[i][k] * kx[i][k];
                }
            for (int c = (RMS_CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
                float x[N];
                load_x(c, x);
#pragma unroll
                for (int k = 0; k < N; k++) ss += x[k] * x[k];
            }
            ss = warp_reduce_sum(ss);
            r = rsqrtf(ss / dim + eps);
        } else {
            r = rstd[row];
        }
        // have_x: x is already in registers (RESID's cached chunks)
        auto load_chunk = [&](int c, float *x, float *part, bool first, bool have_x) {
            float w[N], dy[N], dw[N];
            if (!have_x) load_x(c, x);
            load_floats<N>(w, weight + c);
            load_floats<N>(dy, dout + base + c);
            load_floats<N>(part, dinp + base + c);   // loaded with the others: it does not depend on dot
#pragma unroll
            for (int k = 0; k < N; k++) {
                dw[k] = x[k] * r * dy[k];
                if (first) dot += dw[k] * w[k];
                part[k] += r * (w[k] * dy[k]);
            }
            if (first) add_to_row<N>(dw_row, c, dw);
            if (first && normed != NULL) {   // the forward's expression: the same bits
                float y[N];
#pragma unroll
                for (int k = 0; k < N; k++) y[k] = x[k] * r * w[k];
                store_floats<N>(normed + base + c, y);
            }
        };
#pragma unroll
        for (int i = 0; i < RMS_CACHE; i++)
            if ((i * 32 + lane) * N < dim) load_chunk((i * 32 + lane) * N, kx[i], kpart[i], true, RESID);
        for (int c = (RMS_CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
            float x[N], part[N];
            load_chunk(c, x, part, true, false);
        }
        dot = warp_reduce_sum(dot) / dim;
        const float rrdot = r * r * dot;
        auto second_pass = [&](int c, const float *x, float *part) {
#pragma unroll
            for (int k = 0; k < N; k++) part[k] -= rrdot * x[k];
            store_floats<N>(dinp + base + c, part);
            if (dinp_copy != NULL) store_floats<N>(dinp_copy + base + c, part);
        };
#pragma unroll
        for (int i = 0; i < RMS_CACHE; i++)
            if ((i * 32 + lane) * N < dim) second_pass((i * 32 + lane) * N, kx[i], kpart[i]);
        for (int c = (RMS_CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
            float x[N], part[N];
            load_chunk(c, x, part, false, false);
            second_pass(c, x, part);
        }
    }
    write_row_partials(partials, dw_s, dim);
}

// launches kernel on REDUCE_PARTS blocks of backward_warps(dim, max_warps) warps with their dweight rows
template <typename Kernel, typename... Args>
static void launch_backward(Kernel kernel, int max_warps, int dim, cudaStream_t stream, Args... args) {
    int warps = backward_warps(dim, max_warps);
    size_t smem = (size_t)warps * dim * sizeof(float);
    if (smem > 48 * 1024)
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    kernel<<<REDUCE_PARTS, 32 * warps, smem, stream>>>(args...);
    cudaCheck(cudaGetLastError());
}

template <typename T, bool RESID>
static void rmsnorm_backward_launch(float *dinp, T *dinp_copy, T *normed, float *scratch, const T *dout,
                                    const float *inp, const T *delta, const float *weight, const float *rstd,
                                    float eps, int rows, int dim, cudaStream_t stream) {
    if (rows_vectorizable<T>(4, dim, dinp, inp, weight, dout, dinp_copy != NULL ? dinp_copy : dout) &&
        is_aligned(normed, 4 * sizeof(T)) && is_aligned(delta, 4 * sizeof(T)))
        launch_backward(rmsnorm_backward_kernel<T, 4, RESID>, RMS_BWD_WARPS, dim, stream, dinp, dinp_copy, normed,
                        scratch, dout, inp, delta, weight, rstd, eps, rows, dim);
    else
        launch_backward(rmsnorm_backward_kernel<T, 1, RESID>, RMS_BWD_WARPS, dim, stream, dinp, dinp_copy, normed,
                        scratch, dout, inp, delta, weight, rstd, eps, rows, dim);
}

template <typename T>
void rmsnorm_backward_cuda(float *dinp, T *dinp_copy, T *normed, float *dweight, float *scratch, const T *dout,
                           const float *inp, const float *weight, const float *rstd, int rows, int dim,
                           cudaStream_t stream) {
    rmsnorm_backward_launch<T, false>(dinp, dinp_copy, normed, scratch, dout, inp, (const T *)NULL, weight, rstd, 0.0f,
                                      rows, dim, stream);
    reduce_partials_add_cuda(dweight, scratch, REDUCE_PARTS, dim, stream);
}

template <typename T>
void residual_rmsnorm_backward_cuda(float *dinp, T *dinp_copy, T *normed, float *dweight, float *scratch,
                                    const T *dout, const float *x, const T *delta, const float *weight, int rows,
                                    int dim, float eps, cudaStream_t stream) {
    rmsnorm_backward_launch<T, true>(dinp, dinp_copy, normed, scratch, dout, x, delta, weight, (const float *)NULL, eps,
                                     rows, dim, stream);
    reduce_partials_add_cuda(dweight, scratch, REDUCE_PARTS, dim, stream);
}

// ---- gated norm ----
// row chunks kept in registers (CACHE): 1 for rows of at most 32·N values (the 400M heads, 256 bf16),
// else 2 (512 bf16 values, the 1B heads). A second chunk's registers where one suffices cost
// occupancy (backward 95 registers with two, 79 with one).
template <int N> static int gated_cache(int dim) { return dim <= 32 * N ? 1 : 2; }
// the gate row of head-vector row r
__device__ __forceinline__ size_t gate_row(int r, int H, int gate_stride, int dim) {
    int token = r / H;
    return (size_t)token * gate_stride + (size_t)(r - token * H) * dim;
}

template <typename T, int N, int CACHE>
__global__ void gated_rmsnorm_forward_kernel(T *out, float *rstd, const T *inp, const T *gate, const float *weight,
                                             int rows, int dim, int H, int gate_stride, float eps) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * dim, gbase = gate_row(row, H, gate_stride, dim);
    float ss = 0.0f, kv[CACHE][N], kg[CACHE][N], kw[CACHE][N];
    // the input, the gate and the weight of the chunk at c (the sum of squares only when asked)
    auto load_chunk = [&](int c, float *v, float *g, float *w, bool add_to_ss) {
        load_floats<N>(v, inp + base + c);
        load_floats<N>(g, gate + gbase + c);
        load_floats<N>(w, weight + c);
        if (add_to_ss)
#pragma unroll
            for (int k = 0; k < N; k++) ss += v[k] * v[k];
    };
#pragma unroll
    for (int i = 0; i < CACHE; i++)
        if ((i * 32 + lane) * N < dim) load_chunk((i * 32 + lane) * N, kv[i], kg[i], kw[i], true);
    for (int c = (CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
        float v[N], g[N], w[N];
        load_chunk(c, v, g, w, true);
    }
    ss = warp_reduce_sum(ss);
    float r = rsqrtf(ss / dim + eps);
    auto store_chunk = [&](int c, float *v, const float *g, const float *w) {
#pragma unroll
        for (int k = 0; k < N; k++) v[k] = v[k] * r * w[k] * sigmoidf_(g[k]);
        store_floats<N>(out + base + c, v);
    };
#pragma unroll
    for (int i = 0; i < CACHE; i++)
        if ((i * 32 + lane) * N < dim) store_chunk((i * 32 + lane) * N, kv[i], kg[i], kw[i]);
    for (int c = (CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
        float v[N], g[N], w[N];
        load_chunk(c, v, g, w, false);
        store_chunk(c, v, g, w);
    }
    if (lane == 0) rstd[row] = r;
}

template <typename T, int N, int CACHE>
__global__ void __launch_bounds__(32 * GATED_BWD_WARPS)
    gated_rmsnorm_backward_kernel(T *dinp, T *dgate, T *normed, float *partials, const T *dout, const T *inp,
                                  const T *gate, const float *weight, const float *rstd, int rows, int dim, int H,
                                  int gate_stride) {
    extern __shared__ float dw_s[];   // [warps][dim]
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32, r0, r1;
    float *dw_row = begin_dweight_rows(dw_s, rows, dim, &r0, &r1);
    for (int row = r0 + warp; row < r1; row += warps) {
        size_t base = (size_t)row * dim, gbase = gate_row(row, H, gate_stride, dim);
        float r = rstd[row], dot = 0.0f;
        // per chunk: x and w∘dy∘sigmoid(g), what the second pass needs
        float kx[CACHE][N], kwdys[CACHE][N];
        // loads the chunk at c; with first true also writes its gate gradient and adds to dot and dweight
        auto load_chunk = [&](int c, float *x, float *wdys, bool first) {
            float g[N], w[N], dy[N];
            load_floats<N>(x, inp + base + c);
            load_floats<N>(g, gate + gbase + c);
            load_floats<N>(w, weight + c);
            load_floats<N>(dy, dout + base + c);
            float dg[N], dw[N], y[N];
#pragma unroll
            for (int k = 0; k < N; k++) {
                float s = sigmoidf_(g[k]), xhat = x[k] * r;
                dw[k] = dy[k] * s * xhat;
                dg[k] = dw[k] * w[k] * (1.0f - s);
                if (first) dot += dw[k] * w[k];
                wdys[k] = w[k] * dy[k] * s;
                y[k] = xhat * w[k] * s;   // the forward's expression: the same bits
            }
            if (first) {
                store_floats<N>(dgate + gbase + c, dg);
                add_to_row<N>(dw_row, c, dw);
                if (normed != NULL) store_floats<N>(normed + base + c, y);
            }
        };
#pragma unroll
        for (int i = 0; i < CACHE; i++)
            if ((i * 32 + lane) * N < dim) load_chunk((i * 32 + lane) * N, kx[i], kwdys[i], true);
        for (int c = (CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
            float x[N], wdys[N];
            load_chunk(c, x, wdys, true);
        }
        dot = warp_reduce_sum(dot) / dim;
        auto store_chunk = [&](int c, const float *x, const float *wdys) {
            float dx[N];
#pragma unroll
            for (int k = 0; k < N; k++) dx[k] = r * (wdys[k] - x[k] * r * dot);
            store_floats<N>(dinp + base + c, dx);
        };
#pragma unroll
        for (int i = 0; i < CACHE; i++)
            if ((i * 32 + lane) * N < dim) store_chunk((i * 32 + lane) * N, kx[i], kwdys[i]);
        for (int c = (CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
            float x[N], wdys[N];
            load_chunk(c, x, wdys, false);
            store_chunk(c, x, wdys);
        }
    }
    write_row_partials(partials, dw_s, dim);
}

// whether the gated norm's T rows (and the gate's rows, gate_stride apart) allow N-value accesses
template <typename T>
static bool gated_vectorizable(int N, int dim, int gate_stride, const float *weight, const T *a, const T *b,
                               const T *c, const T *d) {
    size_t bytes = (size_t)N * sizeof(T);
    return dim % N == 0 && gate_stride % N == 0 && is_aligned(weight, N * sizeof(float)) && is_aligned(a, bytes) &&
           is_aligned(b, bytes) && is_aligned(c, bytes) && is_aligned(d, bytes);
}

template <typename T>
void gated_rmsnorm_forward_cuda(T *out, float *rstd, const T *inp, const T *gate, const float *weight,
                                int rows, int dim, int H, int gate_stride, float eps, cudaStream_t stream) {
    constexpr int V = Vec16<T>::n;
    int blocks = ceil_div(rows, ROWS_PER_BLOCK);
    if (gated_vectorizable<T>(V, dim, gate_stride, weight, out, inp, gate, gate)) {
        if (gated_cache<V>(dim) == 1)
            gated_rmsnorm_forward_kernel<T, V, 1><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(
                out, rstd, inp, gate, weight, rows, dim, H, gate_stride, eps);
        else
            gated_rmsnorm_forward_kernel<T, V, 2><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(
                out, rstd, inp, gate, weight, rows, dim, H, gate_stride, eps);
    } else {
        gated_rmsnorm_forward_kernel<T, 1, 2><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(out, rstd, inp, gate, weight,
                                                                                          rows, dim, H, gate_stride, eps);
    }
    cudaCheck(cudaGetLastError());
}

template <typename T>
void gated_rmsnorm_backward_cuda(T *dinp, T *dgate, T *normed, float *dweight, float *scratch, const T *dout,
                                 const T *inp, const T *gate, const float *weight, const float *rstd, int rows,
                                 int dim, int H, int gate_stride, cudaStream_t stream) {
    constexpr int V = Vec16<T>::n;
    if (gated_vectorizable<T>(V, dim, gate_stride, weight, dinp, dgate, dout, inp) && is_aligned(gate, 16) &&
        is_aligned(normed, 16)) {
        if (gated_cache<V>(dim) == 1)
            launch_backward(gated_rmsnorm_backward_kernel<T, V, 1>, GATED_BWD_WARPS, dim, stream, dinp, dgate, normed,
                            scratch, dout, inp, gate, weight, rstd, rows, dim, H, gate_stride);
        else
            launch_backward(gated_rmsnorm_backward_kernel<T, V, 2>, GATED_BWD_WARPS, dim, stream, dinp, dgate, normed,
                            scratch, dout, inp, gate, weight, rstd, rows, dim, H, gate_stride);
    } else {
        launch_backward(gated_rmsnorm_backward_kernel<T, 1, 2>, GATED_BWD_WARPS, dim, stream, dinp, dgate, normed,
                        scratch, dout, inp, gate, weight, rstd, rows, dim, H, gate_stride);
    }
    reduce_partials_add_cuda(dweight, scratch, REDUCE_PARTS, dim, stream);
}

#define INSTANTIATE(T)                                                                                            \
    template void rmsnorm_forward_cuda<T>(T *, float *, const float *, const float *, int, int, float,             \
                                          cudaStream_t);                                                          \
    template void residual_rmsnorm_forward_cuda<T>(float *, T *, float *, const float *, const T *, const float *, \
                                                   int, int, float, cudaStream_t);                                \
    template void rmsnorm_backward_cuda<T>(float *, T *, T *, float *, float *, const T *, const float *,          \
                                           const float *, const float *, int, int, cudaStream_t);                 \
    template void residual_rmsnorm_backward_cuda<T>(float *, T *, T *, float *, float *, const T *, const float *, \
                                                    const T *, const float *, int, int, float, cudaStream_t);     \
    template void gated_rmsnorm_forward_cuda<T>(T *, float *, const T *, const T *, const float *, int, int, int,  \
                                                int, float, cudaStream_t);                                        \
    template void gated_rmsnorm_backward_cuda<T>(T *, T *, T *, float *, float *, const T *, const T *, const T *, \
                                                 const float *, const float *, int, int, int, int, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(bf16)
