// linear.c: the CPU matmuls of linear.h, all three as C[m,n] (+)= sum_k A[m,k] B[k,n]:
//   forward  out  [rows, out] = inp [rows, in] · Wᵀ      A = inp,   B = Wᵀ (packed), k = in
//   dinp     dinp [rows, in]  = dout [rows, out] · W     A = dout,  B = W,          k = out
//   dweight  dW   [out, in]  += doutᵀ · inp              A = doutᵀ (packed), B = inp, k = rows
// One register-blocked micro-kernel does the work: an MR x NR tile of C lives in vector registers
// while k runs innermost, each step one broadcast of A per row times two vectors of a B row
// (MR*2 independent multiply-adds per step, enough to fill the FMA pipes). Around it, k is cut
// into blocks of KC (the B slice of a block stays in L1/L2) and the outputs into tiles handed to
// OpenMP threads (schedule(dynamic): the machine is shared).
//
// Determinism: every output element is summed by exactly one thread, sequentially in k from 0 to
// K-1 (a k-block continues from the value the previous block stored), i.e. in the order of the
// naive loop. Results are therefore independent of the thread count and of the tile sizes; for a
// given binary they are bit-identical from run to run. (Whether a*b+c is fused into one FMA is the
// compiler's choice per build, e.g. with -march=native.)
#include "linear.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "../common/utils.h"

// One SIMD register: 256-bit where AVX exists (8 floats / 4 doubles), else 128-bit (SSE2, NEON).
// MR = 6 rows x 2 vectors = 12 accumulators + 2 B vectors + 1 broadcast fit the 16 registers.
#ifdef __AVX__
#define VEC_BYTES 32
#else
#define VEC_BYTES 16
#endif
typedef real vec __attribute__((vector_size(VEC_BYTES)));
enum {
    VEC_LEN = VEC_BYTES / sizeof(real),
    MR = 6,               // rows of the register tile
    NR = 2 * VEC_LEN,     // columns of the register tile (16 floats with AVX)
    KC = 256,             // k per block: a B slice of KC x NR stays in L1
    FWD_ROWS = 480,       // forward: rows per task (their inputs, 480 x in, stay in L2)
    FWD_OUT = 128,        // forward: outputs per task (their packed weights, KC x 128)
    DINP_ROWS = 96,       // dinp: rows per task
    TILE_IN = 128,        // dinp and dweight: in-columns per task
    DW_OUT = 96,          // dweight: weight rows per task (packed doutᵀ, KC x 96)
};

static inline vec load_vec(const real *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void store_vec(real *p, vec v) { memcpy(p, &v, sizeof v); }
static inline int min_int(int a, int b) { return a < b ? a : b; }

// c[r, 0:NR] = (accumulate ? c[r, :] : 0) + sum_k a[r][k * a_step] * b[k * ldb + 0:NR] for r < MR.
// The a[r] are row pointers (a partial tile repeats a valid row; its results are not stored).
static void micro_kernel(int K, const real *const a[MR], size_t a_step, const real *b, size_t ldb,
                         real *c, size_t ldc, int accumulate) {
    vec acc[MR][2];
    for (int r = 0; r < MR; r++) {
        acc[r][0] = accumulate ? load_vec(c + r * ldc) : (vec){0};
        acc[r][1] = accumulate ? load_vec(c + r * ldc + VEC_LEN) : (vec){0};
    }
    const real *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
    for (int k = 0; k < K; k++, b += ldb) {
        vec b0 = load_vec(b), b1 = load_vec(b + VEC_LEN);
        size_t ka = (size_t)k * a_step;
        real x0 = a0[ka], x1 = a1[ka], x2 = a2[ka], x3 = a3[ka], x4 = a4[ka], x5 = a5[ka];
        acc[0][0] += x0 * b0; acc[0][1] += x0 * b1;
        acc[1][0] += x1 * b0; acc[1][1] += x1 * b1;
        acc[2][0] += x2 * b0; acc[2][1] += x2 * b1;
        acc[3][0] += x3 * b0; acc[3][1] += x3 * b1;
        acc[4][0] += x4 * b0; acc[4][1] += x4 * b1;
        acc[5][0] += x5 * b0; acc[5][1] += x5 * b1;
    }
    for (int r = 0; r < MR; r++) {
        store_vec(c + r * ldc, acc[r][0]);
        store_vec(c + r * ldc + VEC_LEN, acc[r][1]);
    }
}

// The micro-kernel on an mr x nr corner of C (mr <= MR, nr <= NR; b is valid for NR columns):
// full tiles go straight to C, partial ones through a local tile.
static void tile_kernel(int K, const real *const a[MR], size_t a_step, const real *b, size_t ldb,
                        real *c, size_t ldc, int mr, int nr, int accumulate) {
    if (mr == MR && nr == NR) {
        micro_kernel(K, a, a_step, b, ldb, c, ldc, accumulate);
        return;
    }
    real local[MR * NR] = {0};
    if (accumulate)
        for (int r = 0; r < mr; r++) memcpy(local + r * NR, c + r * ldc, nr * sizeof(real));
    micro_kernel(K, a, a_step, b, ldb, local, NR, accumulate);
    for (int r = 0; r < mr; r++) memcpy(c + r * ldc, local + r * NR, nr * sizeof(real));
}

// row pointers of an MR-row tile of A: row r at base + r * stride, rows past mr repeat row 0
static void row_pointers(const real *rows[MR], const real *base, size_t stride, int mr) {
    for (int r = 0; r < MR; r++) rows[r] = base + (r < mr ? r : 0) * stride;
}

// Copy columns [0, nr) of kc rows (row k at src + k * ld) into a zero-padded [kc, NR] panel.
static void pack_panel(real *panel, const real *src, size_t ld, int kc, int nr) {
    for (int k = 0; k < kc; k++) {
        memcpy(panel + (size_t)k * NR, src + (size_t)k * ld, nr * sizeof(real));
        for (int j = nr; j < NR; j++) panel[(size_t)k * NR + j] = 0;
    }
}

// The B operand of an NR-column panel: rows of src (stride ld) directly when all NR columns
// exist, else a zero-padded copy in `scratch`. Returns the panel and sets its row stride.
static const real *b_panel(real *scratch, const real *src, size_t ld, int kc, int nr, size_t *ldb) {
    if (nr == NR) {
        *ldb = ld;
        return src;
    }
    pack_panel(scratch, src, ld, kc, nr);
    *ldb = NR;
    return scratch;
}

void linear_forward(real *out, const real *inp, const real *weight, int rows, int in_dim, int out_dim) {
    int row_tiles = (rows + FWD_ROWS - 1) / FWD_ROWS, out_tiles = (out_dim + FWD_OUT - 1) / FWD_OUT;
    #pragma omp parallel
    {
        // Wᵀ of the task's outputs, one [kc, NR] panel per NR outputs: panel[p][k][j] = W[o + p*NR + j][k0 + k]
        real *panel = (real *)xmalloc((size_t)KC * FWD_OUT * sizeof(real));
        #pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < row_tiles * out_tiles; task++) {
            int i_begin = (task / out_tiles) * FWD_ROWS, i_end = min_int(i_begin + FWD_ROWS, rows);
            int o_begin = (task % out_tiles) * FWD_OUT, o_count = min_int(FWD_OUT, out_dim - o_begin);
            int num_panels = (o_count + NR - 1) / NR;
            for (int k0 = 0; k0 < in_dim; k0 += KC) {
                int kc = min_int(KC, in_dim - k0);
                for (int p = 0; p < num_panels; p++) {
                    real *dst = panel + (size_t)p * kc * NR;
                    int nr = min_int(NR, o_count - p * NR);
                    for (int j = 0; j < NR; j++) {
                        const real *w = weight + (size_t)(o_begin + p * NR + j) * in_dim + k0;
                        if (j < nr) for (int k = 0; k < kc; k++) dst[(size_t)k * NR + j] = w[k];
                        else for (int k = 0; k < kc; k++) dst[(size_t)k * NR + j] = 0;
                    }
                }
                for (int p = 0; p < num_panels; p++) {
                    int nr = min_int(NR, o_count - p * NR);
                    for (int i = i_begin; i < i_end; i += MR) {
                        int mr = min_int(MR, i_end - i);
                        const real *a[MR];
                        row_pointers(a, inp + (size_t)i * in_dim + k0, in_dim, mr);
                        tile_kernel(kc, a, 1, panel + (size_t)p * kc * NR, NR, out + (size_t)i * out_dim + o_begin + p * NR,
                                    out_dim, mr, nr, k0 > 0);
                    }
                }
            }
        }
        free(panel);
    }
}

static void linear_backward_input(real *dinp, const real *dout, const real *weight, int rows, int in_dim, int out_dim) {
    int row_tiles = (rows + DINP_ROWS - 1) / DINP_ROWS, in_tiles = (in_dim + TILE_IN - 1) / TILE_IN;
    #pragma omp parallel
    {
        real *scratch = (real *)xmalloc((size_t)KC * NR * sizeof(real));   // a partial panel of W
        #pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < row_tiles * in_tiles; task++) {
            int i_begin = (task / in_tiles) * DINP_ROWS, i_end = min_int(i_begin + DINP_ROWS, rows);
            int n_begin = (task % in_tiles) * TILE_IN, n_end = min_int(n_begin + TILE_IN, in_dim);
            for (int k0 = 0; k0 < out_dim; k0 += KC) {
                int kc = min_int(KC, out_dim - k0);
                for (int n = n_begin; n < n_end; n += NR) {
                    int nr = min_int(NR, n_end - n);
                    size_t ldb;
                    const real *b = b_panel(scratch, weight + (size_t)k0 * in_dim + n, in_dim, kc, nr, &ldb);
                    for (int i = i_begin; i < i_end; i += MR) {
                        int mr = min_int(MR, i_end - i);
                        const real *a[MR];
                        row_pointers(a, dout + (size_t)i * out_dim + k0, out_dim, mr);
                        tile_kernel(kc, a, 1, b, ldb, dinp + (size_t)i * in_dim + n, in_dim, mr, nr, k0 > 0);
                    }
                }
            }
        }
        free(scratch);
    }
}

static void linear_backward_weight(real *dweight, const real *dout, const real *inp, int rows, int in_dim, int out_dim) {
    int out_tiles = (out_dim + DW_OUT - 1) / DW_OUT, in_tiles = (in_dim + TILE_IN - 1) / TILE_IN;
    #pragma omp parallel
    {
        // doutᵀ of the task's weight rows: packed[k][m] = dout[k0 + k][o_begin + m], so the MR values
        // one k step broadcasts are adjacent instead of a row of dout (out_dim values) apart
        real *packed = (real *)xmalloc((size_t)KC * DW_OUT * sizeof(real));
        real *scratch = (real *)xmalloc((size_t)KC * NR * sizeof(real));
        #pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < out_tiles * in_tiles; task++) {
            int o_begin = (task / in_tiles) * DW_OUT, o_count = min_int(DW_OUT, out_dim - o_begin);
            int n_begin = (task % in_tiles) * TILE_IN, n_end = min_int(n_begin + TILE_IN, in_dim);
            for (int k0 = 0; k0 < rows; k0 += KC) {
                int kc = min_int(KC, rows - k0);
                for (int k = 0; k < kc; k++)
                    memcpy(packed + (size_t)k * DW_OUT, dout + (size_t)(k0 + k) * out_dim + o_begin, o_count * sizeof(real));
                for (int n = n_begin; n < n_end; n += NR) {
                    int nr = min_int(NR, n_end - n);
                    size_t ldb;
                    const real *b = b_panel(scratch, inp + (size_t)k0 * in_dim + n, in_dim, kc, nr, &ldb);
                    for (int m = 0; m < o_count; m += MR) {
                        int mr = min_int(MR, o_count - m);
                        const real *a[MR];
                        row_pointers(a, packed + m, 1, mr);
                        tile_kernel(kc, a, DW_OUT, b, ldb, dweight + (size_t)(o_begin + m) * in_dim + n, in_dim, mr, nr, 1);
                    }
                }
            }
        }
        free(packed);
        free(scratch);
    }
}

void linear_backward(real *dinp, real *dweight, const real *dout, const real *inp, const real *weight,
                     int rows, int in_dim, int out_dim) {
    if (dinp != NULL) linear_backward_input(dinp, dout, weight, rows, in_dim, out_dim);
    linear_backward_weight(dweight, dout, inp, rows, in_dim, out_dim);
}
