// linear.c: the CPU matmuls of linear.h.
// All three products are written as inner loops over a contiguous row (vectorisable), with tiles
// that keep the reused operand in cache:
//   forward  out[i,o]  = <inp[i,:], W[o,:]>        tiles of W rows, 4 input rows at a time
//   dinp     dinp[i,:] = sum_o dout[i,o] W[o,:]    tiles of rows, 4 W rows per pass over a row
//   dweight  dW[o,:]  += sum_i dout[i,o] inp[i,:]  tiles of W rows, 4 input rows per pass
// `omp simd reduction` lets the compiler reorder the dot products' sums (no -ffast-math needed).
#include "linear.h"

#include <stddef.h>

#define TILE_OUT 64   // W rows per tile: 64 x in_dim values stay in L2 while every input row passes
#define TILE_ROWS 64  // rows of dinp per tile in the backward

void linear_forward(real *out, const real *inp, const real *weight, int rows, int in_dim, int out_dim) {
    int num_tiles = (out_dim + TILE_OUT - 1) / TILE_OUT;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int tile = 0; tile < num_tiles; tile++) {
        int o_begin = tile * TILE_OUT, o_end = o_begin + TILE_OUT < out_dim ? o_begin + TILE_OUT : out_dim;
        int i = 0;
        for (; i + 4 <= rows; i += 4) {
            const real *x0 = inp + (size_t)i * in_dim, *x1 = x0 + in_dim, *x2 = x1 + in_dim, *x3 = x2 + in_dim;
            for (int o = o_begin; o < o_end; o++) {
                const real *w = weight + (size_t)o * in_dim;
                real s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                #pragma omp simd reduction(+:s0, s1, s2, s3)
                for (int k = 0; k < in_dim; k++) {
                    s0 += x0[k] * w[k];
                    s1 += x1[k] * w[k];
                    s2 += x2[k] * w[k];
                    s3 += x3[k] * w[k];
                }
                out[(size_t)i * out_dim + o] = s0;
                out[(size_t)(i + 1) * out_dim + o] = s1;
                out[(size_t)(i + 2) * out_dim + o] = s2;
                out[(size_t)(i + 3) * out_dim + o] = s3;
            }
        }
        for (; i < rows; i++) {
            const real *x = inp + (size_t)i * in_dim;
            for (int o = o_begin; o < o_end; o++) {
                const real *w = weight + (size_t)o * in_dim;
                real s = 0;
                #pragma omp simd reduction(+:s)
                for (int k = 0; k < in_dim; k++) s += x[k] * w[k];
                out[(size_t)i * out_dim + o] = s;
            }
        }
    }
}

static void linear_backward_input(real *dinp, const real *dout, const real *weight, int rows, int in_dim, int out_dim) {
    int num_tiles = (rows + TILE_ROWS - 1) / TILE_ROWS;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int tile = 0; tile < num_tiles; tile++) {
        int i_begin = tile * TILE_ROWS, i_end = i_begin + TILE_ROWS < rows ? i_begin + TILE_ROWS : rows;
        for (int i = i_begin; i < i_end; i++)
            for (int k = 0; k < in_dim; k++) dinp[(size_t)i * in_dim + k] = 0;
        int o = 0;
        for (; o + 4 <= out_dim; o += 4) {
            const real *w0 = weight + (size_t)o * in_dim, *w1 = w0 + in_dim, *w2 = w1 + in_dim, *w3 = w2 + in_dim;
            for (int i = i_begin; i < i_end; i++) {
                const real *d = dout + (size_t)i * out_dim + o;
                real d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
                real *dx = dinp + (size_t)i * in_dim;
                #pragma omp simd
                for (int k = 0; k < in_dim; k++) dx[k] += d0 * w0[k] + d1 * w1[k] + d2 * w2[k] + d3 * w3[k];
            }
        }
        for (; o < out_dim; o++) {
            const real *w = weight + (size_t)o * in_dim;
            for (int i = i_begin; i < i_end; i++) {
                real d = dout[(size_t)i * out_dim + o];
                real *dx = dinp + (size_t)i * in_dim;
                #pragma omp simd
                for (int k = 0; k < in_dim; k++) dx[k] += d * w[k];
            }
        }
    }
}

static void linear_backward_weight(real *dweight, const real *dout, const real *inp, int rows, int in_dim, int out_dim) {
    int num_tiles = (out_dim + TILE_OUT - 1) / TILE_OUT;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int tile = 0; tile < num_tiles; tile++) {
        int o_begin = tile * TILE_OUT, o_end = o_begin + TILE_OUT < out_dim ? o_begin + TILE_OUT : out_dim;
        int i = 0;
        for (; i + 4 <= rows; i += 4) {
            const real *x0 = inp + (size_t)i * in_dim, *x1 = x0 + in_dim, *x2 = x1 + in_dim, *x3 = x2 + in_dim;
            const real *d0 = dout + (size_t)i * out_dim, *d1 = d0 + out_dim, *d2 = d1 + out_dim, *d3 = d2 + out_dim;
            for (int o = o_begin; o < o_end; o++) {
                real c0 = d0[o], c1 = d1[o], c2 = d2[o], c3 = d3[o];
                real *dw = dweight + (size_t)o * in_dim;
                #pragma omp simd
                for (int k = 0; k < in_dim; k++) dw[k] += c0 * x0[k] + c1 * x1[k] + c2 * x2[k] + c3 * x3[k];
            }
        }
        for (; i < rows; i++) {
            const real *x = inp + (size_t)i * in_dim;
            for (int o = o_begin; o < o_end; o++) {
                real c = dout[(size_t)i * out_dim + o];
                real *dw = dweight + (size_t)o * in_dim;
                #pragma omp simd
                for (int k = 0; k < in_dim; k++) dw[k] += c * x[k];
            }
        }
    }
}

void linear_backward(real *dinp, real *dweight, const real *dout, const real *inp, const real *weight,
                     int rows, int in_dim, int out_dim) {
    if (dinp != NULL) linear_backward_input(dinp, dout, weight, rows, in_dim, out_dim);
    linear_backward_weight(dweight, dout, inp, rows, in_dim, out_dim);
}
