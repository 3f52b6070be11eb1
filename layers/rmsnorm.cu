// rmsnorm.cu: see rmsnorm.cuh. One warp per row for the row-wise parts (dim is 128..2048 here);
// the weight gradients in a second, column-parallel pass over the rows.
// With x̂ = x·r, r = (mean(x²)+eps)^-1/2, y = x̂·w: dx = r·(w∘dy − x̂·mean(x̂∘w∘dy)).
// Every lane moves N adjacent values per access (4 for the float32 residual stream: 16 bytes; 8 for
// the bf16 gated norm's rows: 16 bytes) when the shapes allow, one value otherwise.
// A row is two passes (the sums, then the outputs); a lane keeps its first CACHE chunks of the row
// in registers between them and issues every load of a chunk before the first use, so a row costs
// one memory latency, not three (reloading the row doubled these kernels' times at 400M). Chunks
// past CACHE (rows wider than 32·N·CACHE values) are read again. The forwards give the same bits
// as loop-and-reload; the backwards round w·dy (w·dy·sigmoid(g)) on its own where the compiler
// used to fuse it into the subtraction: last-bit differences.
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

template <typename T, int N>
__global__ void __launch_bounds__(32 * ROWS_PER_BLOCK, 2) rmsnorm_backward_kernel(float *dinp, T *dinp_copy, const T *dout, const float *inp,
                                        const float *weight, const float *rstd, int rows, int dim) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * dim;
    float r = rstd[row], dot = 0.0f;
    // per chunk: x, w∘dy, and the incoming gradient d (loaded with the others: it does not depend on dot)
    float kx[RMS_CACHE][N], kwdy[RMS_CACHE][N], kd[RMS_CACHE][N];
    auto load_chunk = [&](int c, float *x, float *wdy, float *d, bool add_to_dot) {
        float w[N], dy[N];
        load_floats<N>(x, inp + base + c);
        load_floats<N>(w, weight + c);
        load_floats<N>(dy, dout + base + c);
        load_floats<N>(d, dinp + base + c);
#pragma unroll
        for (int k = 0; k < N; k++) {
            if (add_to_dot) dot += x[k] * r * w[k] * dy[k];
            wdy[k] = w[k] * dy[k];
        }
    };
#pragma unroll
    for (int i = 0; i < RMS_CACHE; i++)
        if ((i * 32 + lane) * N < dim) load_chunk((i * 32 + lane) * N, kx[i], kwdy[i], kd[i], true);
    for (int c = (RMS_CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
        float x[N], wdy[N], d[N];
        load_chunk(c, x, wdy, d, true);
    }
    dot = warp_reduce_sum(dot) / dim;
    auto second_pass = [&](int c, const float *x, const float *wdy, float *d) {
#pragma unroll
        for (int k = 0; k < N; k++) d[k] += r * (wdy[k] - x[k] * r * dot);
        store_floats<N>(dinp + base + c, d);
        if (dinp_copy != NULL) store_floats<N>(dinp_copy + base + c, d);
    };
#pragma unroll
    for (int i = 0; i < RMS_CACHE; i++)
        if ((i * 32 + lane) * N < dim) second_pass((i * 32 + lane) * N, kx[i], kwdy[i], kd[i]);
    for (int c = (RMS_CACHE * 32 + lane) * N; c < dim; c += 32 * N) {
        float x[N], wdy[N], d[N];
        load_chunk(c, x, wdy, d, false);
        second_pass(c, x, wdy, d);
    }
}

// the dweight kernels' end: the block's 8 row groups (threadIdx.y) hold per-thread sums of N columns
// each; add them in a fixed order into partials[part, the block's 32·N columns]
template <int N>
__device__ void write_column_partials(const float (&acc)[N], float *partials, int part, int dim) {
    __shared__ float acc_s[8][32 * N + 1];
#pragma unroll
    for (int k = 0; k < N; k++) acc_s[threadIdx.y][threadIdx.x * N + k] = acc[k];
    __syncthreads();
    for (int j = threadIdx.y * 32 + threadIdx.x; j < 32 * N; j += 32 * 8) {
        int col = blockIdx.x * 32 * N + j;
        if (col >= dim) break;
        float s = 0.0f;
        for (int y = 0; y < 8; y++) s += acc_s[y][j];
        partials[(size_t)part * dim + col] = s;
    }
}

// partials[part, c] = sum over this part's rows of dout[r,c]·inp[r,c]·rstd[r]; a thread owns N columns
template <typename T, int N>
__global__ void rmsnorm_dweight_kernel(float *partials, const T *dout, const float *inp, const float *rstd,
                                       int rows, int dim) {
    int c = (blockIdx.x * 32 + threadIdx.x) * N, part = blockIdx.y;
    int rows_per_part = ceil_div(rows, gridDim.y);
    int r0 = part * rows_per_part, r1 = min(rows, r0 + rows_per_part);
    float acc[N];
#pragma unroll
    for (int k = 0; k < N; k++) acc[k] = 0.0f;
    if (c < dim)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            float dy[N], x[N], rs = rstd[r];
            load_floats<N>(dy, dout + (size_t)r * dim + c);
            load_floats<N>(x, inp + (size_t)r * dim + c);
#pragma unroll
            for (int k = 0; k < N; k++) acc[k] += dy[k] * x[k] * rs;
        }
    write_column_partials<N>(acc, partials, part, dim);
}

template <typename T>
void rmsnorm_backward_cuda(float *dinp, T *dinp_copy, float *dweight, float *scratch, const T *dout,
                           const float *inp, const float *weight, const float *rstd, int rows, int dim,
                           cudaStream_t stream) {
    int blocks = ceil_div(rows, ROWS_PER_BLOCK);
    if (rows_vectorizable<T>(4, dim, dinp, inp, weight, dout, dinp_copy != NULL ? dinp_copy : dout)) {
        rmsnorm_backward_kernel<T, 4><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(dinp, dinp_copy, dout, inp, weight,
                                                                                  rstd, rows, dim);
        cudaCheck(cudaGetLastError());
        rmsnorm_dweight_kernel<T, 4><<<dim3(ceil_div(dim, 32 * 4), REDUCE_PARTS), dim3(32, 8), 0, stream>>>(
            scratch, dout, inp, rstd, rows, dim);
    } else {
        rmsnorm_backward_kernel<T, 1><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(dinp, dinp_copy, dout, inp, weight,
                                                                                  rstd, rows, dim);
        cudaCheck(cudaGetLastError());
        rmsnorm_dweight_kernel<T, 1><<<dim3(ceil_div(dim, 32), REDUCE_PARTS), dim3(32, 8), 0, stream>>>(
            scratch, dout, inp, rstd, rows, dim);
    }
    cudaCheck(cudaGetLastError());
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
__global__ void gated_rmsnorm_backward_kernel(T *dinp, T *dgate, const T *dout, const T *inp, const T *gate,
                                              const float *weight, const float *rstd, int rows, int dim, int H,
                                              int gate_stride) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * dim, gbase = gate_row(row, H, gate_stride, dim);
    float r = rstd[row], dot = 0.0f;
    // per chunk: x and w∘dy∘sigmoid(g), what the second pass needs
    float kx[CACHE][N], kwdys[CACHE][N];
    // loads the chunk at c; with first true also writes its gate gradient and adds to dot
    auto load_chunk = [&](int c, float *x, float *wdys, bool first) {
        float g[N], w[N], dy[N];
        load_floats<N>(x, inp + base + c);
        load_floats<N>(g, gate + gbase + c);
        load_floats<N>(w, weight + c);
        load_floats<N>(dy, dout + base + c);
        float dg[N];
#pragma unroll
        for (int k = 0; k < N; k++) {
            float s = sigmoidf_(g[k]), xhat = x[k] * r;
            dg[k] = dy[k] * xhat * w[k] * s * (1.0f - s);
            if (first) dot += xhat * w[k] * dy[k] * s;
            wdys[k] = w[k] * dy[k] * s;
        }
        if (first) store_floats<N>(dgate + gbase + c, dg);
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

template <typename T, int N>
__global__ void gated_rmsnorm_dweight_kernel(float *partials, const T *dout, const T *inp, const T *gate,
                                             const float *rstd, int rows, int dim, int H, int gate_stride) {
    int c = (blockIdx.x * 32 + threadIdx.x) * N, part = blockIdx.y;
    int rows_per_part = ceil_div(rows, gridDim.y);
    int r0 = part * rows_per_part, r1 = min(rows, r0 + rows_per_part);
    float acc[N];
#pragma unroll
    for (int k = 0; k < N; k++) acc[k] = 0.0f;
    if (c < dim)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            float dy[N], x[N], g[N], rs = rstd[r];
            load_floats<N>(dy, dout + (size_t)r * dim + c);
            load_floats<N>(x, inp + (size_t)r * dim + c);
            load_floats<N>(g, gate + gate_row(r, H, gate_stride, dim) + c);
#pragma unroll
            for (int k = 0; k < N; k++) acc[k] += dy[k] * sigmoidf_(g[k]) * x[k] * rs;
        }
    write_column_partials<N>(acc, partials, part, dim);
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
void gated_rmsnorm_backward_cuda(T *dinp, T *dgate, float *dweight, float *scratch, const T *dout, const T *inp,
                                 const T *gate, const float *weight, const float *rstd, int rows, int dim, int H,
                                 int gate_stride, cudaStream_t stream) {
    constexpr int V = Vec16<T>::n;
    int blocks = ceil_div(rows, ROWS_PER_BLOCK);
    if (gated_vectorizable<T>(V, dim, gate_stride, weight, dinp, dgate, dout, inp) && is_aligned(gate, 16)) {
        if (gated_cache<V>(dim) == 1)
            gated_rmsnorm_backward_kernel<T, V, 1><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(
                dinp, dgate, dout, inp, gate, weight, rstd, rows, dim, H, gate_stride);
        else
            gated_rmsnorm_backward_kernel<T, V, 2><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(
                dinp, dgate, dout, inp, gate, weight, rstd, rows, dim, H, gate_stride);
        cudaCheck(cudaGetLastError());
        gated_rmsnorm_dweight_kernel<T, V><<<dim3(ceil_div(dim, 32 * V), REDUCE_PARTS), dim3(32, 8), 0, stream>>>(
            scratch, dout, inp, gate, rstd, rows, dim, H, gate_stride);
    } else {
        gated_rmsnorm_backward_kernel<T, 1, 2><<<blocks, 32 * ROWS_PER_BLOCK, 0, stream>>>(
            dinp, dgate, dout, inp, gate, weight, rstd, rows, dim, H, gate_stride);
        cudaCheck(cudaGetLastError());
        gated_rmsnorm_dweight_kernel<T, 1><<<dim3(ceil_div(dim, 32), REDUCE_PARTS), dim3(32, 8), 0, stream>>>(
            scratch, dout, inp, gate, rstd, rows, dim, H, gate_stride);
    }
    cudaCheck(cudaGetLastError());
    reduce_partials_add_cuda(dweight, scratch, REDUCE_PARTS, dim, stream);
}

#define INSTANTIATE(T)                                                                                            \
    template void rmsnorm_forward_cuda<T>(T *, float *, const float *, const float *, int, int, float,             \
                                          cudaStream_t);                                                          \
    template void residual_rmsnorm_forward_cuda<T>(float *, T *, float *, const float *, const T *, const float *, \
                                                   int, int, float, cudaStream_t);                                \
    template void rmsnorm_backward_cuda<T>(float *, T *, float *, float *, const T *, const float *, const float *, \
                                           const float *, int, int, cudaStream_t);                                \
    template void gated_rmsnorm_forward_cuda<T>(T *, float *, const T *, const T *, const float *, int, int, int,  \
                                                int, float, cudaStream_t);                                        \
    template void gated_rmsnorm_backward_cuda<T>(T *, T *, float *, float *, const T *, const T *, const T *,      \
                                                 const float *, const float *, int, int, int, int, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(bf16)
