// test_layers_cuda: every layers/*.cu kernel against its CPU twin (layers/*.c), on fresh random
// inputs, with the GPU outputs poisoned (NaN) first so that an unwritten value fails. Each check
// prints the relative error ||gpu − cpu|| / ||cpu||. Float32 activations must agree to 1e-5
// (the same arithmetic in another order; 1e-4 for long reductions); bf16 ones to 2e-2 (inputs are
// rounded to bf16 for both sides, so only the GPU's bf16 intermediates and outputs differ).
// Usage: test_layers_cuda [seed]
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "../common/cuda_common.cuh"
extern "C" {   // C headers without their own guards
#include "../common/safetensors.h"
#include "../layers/adamw.h"
}
#include "../layers/adamw.cuh"
#include "../layers/conv.cuh"
#include "../layers/conv.h"
#include "../layers/crossentropy.cuh"
#include "../layers/crossentropy.h"
#include "../layers/embedding.cuh"
#include "../layers/embedding.h"
#include "../layers/linear.cuh"
#include "../layers/linear.h"
#include "../layers/mdn_gates.cuh"
#include "../layers/mdn_gates.h"
#include "../layers/residual.h"
#include "../layers/rmsnorm.cuh"
#include "../layers/rmsnorm.h"
#include "../layers/swiglu.cuh"
#include "../layers/swiglu.h"

typedef std::vector<float> Vec;

static uint64_t rng_state = 0x1234567ULL;
static float uniform(void) {   // xorshift64*, [0, 1)
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (float)((rng_state * 2685821657736338717ULL) >> 40) / 16777216.0f;
}
// n values uniform in [lo, hi), rounded to bf16 when the test runs in bf16 (both sides see them)
static Vec rand_vec(size_t n, float lo, float hi, int round_bf16) {
    Vec v(n);
    for (size_t i = 0; i < n; i++) {
        v[i] = lo + (hi - lo) * uniform();
        if (round_bf16) v[i] = bf16_to_float(float_to_bf16(v[i]));
    }
    return v;
}

template <typename T> static T *to_dev(const Vec &h) {
    std::vector<T> tmp(h.size());
    for (size_t i = 0; i < h.size(); i++) tmp[i] = (T)h[i];
    T *d;
    cudaCheck(cudaMalloc((void **)&d, h.size() * sizeof(T) + 1));
    cudaCheck(cudaMemcpy(d, tmp.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
// a device buffer of n values, every byte 0xFF (NaN in float and bf16)
template <typename T> static T *poisoned(size_t n) {
    T *d;
    cudaCheck(cudaMalloc((void **)&d, n * sizeof(T) + 1));
    cudaCheck(cudaMemset(d, 0xFF, n * sizeof(T)));
    return d;
}
template <typename T> static Vec from_dev(const T *d, size_t n) {
    cudaCheck(cudaDeviceSynchronize());
    std::vector<T> tmp(n);
    cudaCheck(cudaMemcpy(tmp.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    Vec h(n);
    for (size_t i = 0; i < n; i++) h[i] = (float)tmp[i];
    return h;
}

static int failures = 0;
static void check(const char *what, const Vec &gpu, const Vec &cpu, double tol) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < cpu.size(); i++) {
        double d = (double)gpu[i] - cpu[i];
        diff += d * d;
        norm += (double)cpu[i] * cpu[i];
    }
    double e = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
    int ok = e <= tol;   // NaN fails
    printf("%-6s %-50s %.2e %s\n", ok ? "ok" : "FAIL", what, e, ok ? "" : "(above tolerance)");
    if (!ok) failures++;
}
// the strided column slice [rows, cols] at column `col` of a [rows, stride] matrix
static Vec slice(const Vec &x, int rows, int stride, int col, int cols) {
    Vec out((size_t)rows * cols);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) out[(size_t)r * cols + c] = x[(size_t)r * stride + col + c];
    return out;
}

template <typename T> static void test_linear(const char *tag, double tol, int bf) {
    int rows = 200, in = 96, out = 80;
    Vec x = rand_vec((size_t)rows * in, -1, 1, bf), w = rand_vec((size_t)out * in, -1, 1, bf);
    Vec dy = rand_vec((size_t)rows * out, -1, 1, bf), dw0 = rand_vec((size_t)out * in, -1, 1, 0);
    Vec y(rows * out), dx(rows * in), dw = dw0;
    linear_forward(y.data(), x.data(), w.data(), rows, in, out);
    linear_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rows, in, out);
    T *dx_d = to_dev<T>(x), *dw_d = to_dev<T>(w), *ddy = to_dev<T>(dy), *dy_d = poisoned<T>(y.size());
    T *ddx = poisoned<T>(dx.size());
    float *ddw = to_dev<float>(dw0);
    linear_forward_cuda<T, T>(dy_d, dx_d, dw_d, rows, in, out, 0);
    linear_backward_cuda<T>(ddx, ddw, ddy, dx_d, dw_d, rows, in, out, 0, 0);
    char name[96];
    snprintf(name, sizeof name, "linear forward (%s)", tag); check(name, from_dev(dy_d, y.size()), y, tol);
    snprintf(name, sizeof name, "linear backward dinp (%s)", tag); check(name, from_dev(ddx, dx.size()), dx, tol);
    snprintf(name, sizeof name, "linear backward dweight (%s)", tag); check(name, from_dev(ddw, dw.size()), dw, tol);
}

template <typename T> static void test_embedding(const char *tag, double tol, int bf) {
    int vocab = 50, n = 300, dim = 64;
    Vec table = rand_vec((size_t)vocab * dim, -1, 1, bf), dout = rand_vec((size_t)n * dim, -1, 1, 0);
    Vec dtable0 = rand_vec((size_t)vocab * dim, -1, 1, 0), dtable = dtable0, out((size_t)n * dim);
    std::vector<int> ids(n);
    for (int i = 0; i < n; i++) ids[i] = (int)(uniform() * uniform() * vocab);   // skewed: many repeats
    embedding_forward(out.data(), ids.data(), table.data(), n, dim);
    embedding_backward(dtable.data(), dout.data(), ids.data(), n, dim);
    int *dids;
    cudaCheck(cudaMalloc((void **)&dids, n * sizeof(int)));
    cudaCheck(cudaMemcpy(dids, ids.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    T *dtab = to_dev<T>(table);
    float *dout_d = to_dev<float>(dout), *ddt = to_dev<float>(dtable0), *dy = poisoned<float>(out.size());
    void *scratch;
    cudaCheck(cudaMalloc(&scratch, embedding_backward_scratch_bytes(n)));
    embedding_forward_cuda<T>(dy, dids, dtab, n, dim, 0);
    embedding_backward_cuda(ddt, dout_d, dids, n, dim, vocab, scratch, 0);
    char name[96];
    snprintf(name, sizeof name, "embedding forward (%s)", tag); check(name, from_dev(dy, out.size()), out, tol);
    snprintf(name, sizeof name, "embedding backward (%s)", tag); check(name, from_dev(ddt, dtable.size()), dtable, 1e-5);
}

// dim 192 fits the kernels' register-kept chunks; 1216 also takes their reload path (rmsnorm.cu)
template <typename T> static void test_rmsnorm(const char *tag, double tol, int bf, int dim) {
    int rows = 100;
    Vec x = rand_vec((size_t)rows * dim, -2, 2, 0), delta = rand_vec((size_t)rows * dim, -1, 1, bf);
    Vec w = rand_vec(dim, 0.5, 1.5, 0), dy = rand_vec((size_t)rows * dim, -1, 1, bf);
    Vec dx0 = rand_vec((size_t)rows * dim, -1, 1, 0), dw0 = rand_vec(dim, -1, 1, 0);
    // CPU: sum = x + delta, y = norm(sum), then the backward into dx0, dw0
    Vec sum((size_t)rows * dim), y((size_t)rows * dim), rstd(rows), dx = dx0, dw = dw0;
    residual_forward(sum.data(), x.data(), delta.data(), (long)rows * dim);
    rmsnorm_forward(y.data(), rstd.data(), sum.data(), w.data(), rows, dim, 1e-6f);
    rmsnorm_backward(dx.data(), dw.data(), dy.data(), sum.data(), w.data(), rstd.data(), rows, dim);
    float *dxd = to_dev<float>(x), *dwd = to_dev<float>(w), *dsum = poisoned<float>(sum.size());
    float *drstd = poisoned<float>(rows), *ddx = to_dev<float>(dx0), *ddw = to_dev<float>(dw0);
    float *partials = poisoned<float>((size_t)REDUCE_PARTS * dim);
    T *ddelta = to_dev<T>(delta), *dyd = poisoned<T>(y.size()), *ddy = to_dev<T>(dy), *ddx_copy = poisoned<T>(dx.size());
    residual_rmsnorm_forward_cuda<T>(dsum, dyd, drstd, dxd, ddelta, dwd, rows, dim, 1e-6f, 0);
    char name[96];
    snprintf(name, sizeof name, "residual add fused into rmsnorm: sum (%s)", tag); check(name, from_dev(dsum, sum.size()), sum, 1e-6);
    snprintf(name, sizeof name, "residual add fused into rmsnorm: out (%s)", tag); check(name, from_dev(dyd, y.size()), y, tol);
    snprintf(name, sizeof name, "rmsnorm rstd (%s)", tag); check(name, from_dev(drstd, rows), rstd, 1e-6);
    T *dyd2 = poisoned<T>(y.size());
    rmsnorm_forward_cuda<T>(dyd2, drstd, dsum, dwd, rows, dim, 1e-6f, 0);
    snprintf(name, sizeof name, "rmsnorm forward (%s)", tag); check(name, from_dev(dyd2, y.size()), y, tol);
    // the backward with the forward's output recomputed (the trainer's attention norm), then without
    float *ddx2 = to_dev<float>(dx0), *ddw2 = to_dev<float>(dw0);
    T *dnormed = poisoned<T>(y.size()), *ddx_copy2 = poisoned<T>(dx.size());
    rmsnorm_backward_cuda<T>(ddx, ddx_copy, dnormed, ddw, partials, ddy, dsum, dwd, drstd, rows, dim, 0);
    snprintf(name, sizeof name, "rmsnorm backward dinp (%s)", tag); check(name, from_dev(ddx, dx.size()), dx, 1e-5);
    snprintf(name, sizeof name, "rmsnorm backward dinp copy (%s)", tag); check(name, from_dev(ddx_copy, dx.size()), dx, tol);
    snprintf(name, sizeof name, "rmsnorm backward dweight (%s)", tag); check(name, from_dev(ddw, dim), dw, 1e-5);
    snprintf(name, sizeof name, "rmsnorm backward's recompute == forward (%s)", tag);
    check(name, from_dev(dnormed, y.size()), from_dev(dyd2, y.size()), 0.0);
    rmsnorm_backward_cuda<T>(ddx2, ddx_copy2, NULL, ddw2, partials, ddy, dsum, dwd, drstd, rows, dim, 0);
    snprintf(name, sizeof name, "rmsnorm backward without recompute: same dinp, dweight (%s)", tag);
    check(name, from_dev(ddx2, dx.size()), from_dev(ddx, dx.size()), 0.0);
    check(name, from_dev(ddw2, dim), from_dev(ddw, dim), 0.0);
    // the residual form: sum and rstd recomputed from x and delta, the same bits as from the kept ones
    float *ddx3 = to_dev<float>(dx0), *ddw3 = to_dev<float>(dw0);
    T *dnormed3 = poisoned<T>(y.size()), *ddx_copy3 = poisoned<T>(dx.size());
    residual_rmsnorm_backward_cuda<T>(ddx3, ddx_copy3, dnormed3, ddw3, partials, ddy, dxd, ddelta, dwd, rows, dim,
                                      1e-6f, 0);
    snprintf(name, sizeof name, "residual rmsnorm backward == rmsnorm backward (%s)", tag);
    check(name, from_dev(ddx3, dx.size()), from_dev(ddx, dx.size()), 0.0);
    check(name, from_dev(ddx_copy3, dx.size()), from_dev(ddx_copy, dx.size()), 0.0);
    check(name, from_dev(ddw3, dim), from_dev(ddw, dim), 0.0);
    snprintf(name, sizeof name, "residual rmsnorm backward's recompute == forward (%s)", tag);
    check(name, from_dev(dnormed3, y.size()), from_dev(dyd, y.size()), 0.0);
}

// dim 64 fits the kernels' register-kept chunks; 576 also takes their reload path (rmsnorm.cu)
template <typename T> static void test_gated_rmsnorm(const char *tag, double tol, int bf, int dim) {
    int tokens = 50, H = 3, stride = H * dim + 32, rows = tokens * H;
    Vec x = rand_vec((size_t)rows * dim, -2, 2, bf), wide = rand_vec((size_t)tokens * stride, -3, 3, bf);
    Vec w = rand_vec(dim, 0.5, 1.5, 0), dy = rand_vec((size_t)rows * dim, -1, 1, bf), dw0 = rand_vec(dim, -1, 1, 0);
    Vec gate = slice(wide, tokens, stride, 16, H * dim);   // the gate is columns 16.. of the wide buffer
    Vec y((size_t)rows * dim), rstd(rows), dx((size_t)rows * dim), dgate((size_t)rows * dim), dw = dw0;
    gated_rmsnorm_forward(y.data(), rstd.data(), x.data(), gate.data(), w.data(), rows, dim, 1e-6f);
    gated_rmsnorm_backward(dx.data(), dgate.data(), dw.data(), dy.data(), x.data(), gate.data(), w.data(), rstd.data(),
                           rows, dim);
    T *dxd = to_dev<T>(x), *dwide = to_dev<T>(wide), *dyd = poisoned<T>(y.size()), *ddy = to_dev<T>(dy);
    T *ddx = poisoned<T>(dx.size()), *ddwide = poisoned<T>(wide.size());
    float *dwd = to_dev<float>(w), *drstd = poisoned<float>(rows), *ddw = to_dev<float>(dw0);
    float *partials = poisoned<float>((size_t)REDUCE_PARTS * dim);
    gated_rmsnorm_forward_cuda<T>(dyd, drstd, dxd, dwide + 16, dwd, rows, dim, H, stride, 1e-6f, 0);
    gated_rmsnorm_backward_cuda<T>(ddx, ddwide + 16, NULL, ddw, partials, ddy, dxd, dwide + 16, dwd, drstd, rows, dim,
                                   H, stride, 0);
    char name[96];
    snprintf(name, sizeof name, "gated rmsnorm forward (%s)", tag); check(name, from_dev(dyd, y.size()), y, tol);
    snprintf(name, sizeof name, "gated rmsnorm backward dinp (%s)", tag); check(name, from_dev(ddx, dx.size()), dx, tol);
    Vec dgate_gpu = slice(from_dev(ddwide, wide.size()), tokens, stride, 16, H * dim);
    snprintf(name, sizeof name, "gated rmsnorm backward dgate (%s)", tag); check(name, dgate_gpu, dgate, tol);
    snprintf(name, sizeof name, "gated rmsnorm backward dweight (%s)", tag); check(name, from_dev(ddw, dim), dw, 1e-5);
    // with the forward's output recomputed (the trainer's --recompute 1): that output's bits, the same gradients
    T *ddx2 = poisoned<T>(dx.size()), *ddwide2 = poisoned<T>(wide.size()), *dnormed = poisoned<T>(y.size());
    float *ddw2 = to_dev<float>(dw0);
    gated_rmsnorm_backward_cuda<T>(ddx2, ddwide2 + 16, dnormed, ddw2, partials, ddy, dxd, dwide + 16, dwd, drstd, rows,
                                   dim, H, stride, 0);
    snprintf(name, sizeof name, "gated rmsnorm backward's recompute == forward (%s)", tag);
    check(name, from_dev(dnormed, y.size()), from_dev(dyd, y.size()), 0.0);
    snprintf(name, sizeof name, "gated rmsnorm backward with recompute: same gradients (%s)", tag);
    check(name, from_dev(ddx2, dx.size()), from_dev(ddx, dx.size()), 0.0);
    check(name, slice(from_dev(ddwide2, wide.size()), tokens, stride, 16, H * dim), dgate_gpu, 0.0);
    check(name, from_dev(ddw2, dim), from_dev(ddw, dim), 0.0);
}

template <typename T> static void test_conv(const char *tag, double tol, int bf) {
    int B = 2, Tl = 70, C = 48, W = 4, stride = C + 16, rows = B * Tl;
    Vec wide = rand_vec((size_t)rows * stride, -2, 2, bf), w = rand_vec((size_t)C * W, -0.5, 0.5, 0);
    Vec dout = rand_vec((size_t)rows * C, -1, 1, bf), dw0 = rand_vec((size_t)C * W, -1, 1, 0);
    Vec x = slice(wide, rows, stride, 8, C);
    Vec out((size_t)rows * C), z((size_t)rows * C), dx((size_t)rows * C), dw = dw0;
    shortconv_silu_forward(out.data(), z.data(), x.data(), w.data(), B, Tl, C, W);
    shortconv_silu_backward(dx.data(), dw.data(), dout.data(), x.data(), z.data(), w.data(), B, Tl, C, W);
    T *dwide = to_dev<T>(wide), *dy = poisoned<T>(out.size()), *ddout = to_dev<T>(dout);
    T *ddwide = poisoned<T>(wide.size());
    float *dwd = to_dev<float>(w), *ddw = to_dev<float>(dw0);
    void *scratch;
    cudaCheck(cudaMalloc(&scratch, shortconv_silu_backward_scratch_bytes(B, Tl, C, W)));
    shortconv_silu_forward_cuda<T>(dy, dwide + 8, stride, dwd, B, Tl, C, W, 0);
    shortconv_silu_backward_cuda<T>(ddwide + 8, stride, ddw, scratch, ddout, dwide + 8, stride, dwd, B, Tl, C, W, 0);
    char name[96];
    snprintf(name, sizeof name, "shortconv+silu forward (%s)", tag); check(name, from_dev(dy, out.size()), out, tol);
    // the q conv with the output correction fused: out − exp(D_log[h])·sub over H heads of C / H
    int H = 3;
    Vec sub = rand_vec((size_t)rows * C, -1, 1, bf), D_log = rand_vec(H, -2, 0, 0), corrected(out.size());
    output_correction_forward(corrected.data(), out.data(), sub.data(), D_log.data(), rows, H, C / H);
    T *dsub = to_dev<T>(sub), *dyc = poisoned<T>(out.size());
    float *dDl = to_dev<float>(D_log);
    shortconv_silu_corrected_forward_cuda<T>(dyc, dwide + 8, stride, dwd, dsub, dDl, H, B, Tl, C, W, 0);
    snprintf(name, sizeof name, "shortconv+silu forward with the output correction (%s)", tag);
    check(name, from_dev(dyc, out.size()), corrected, tol);
    Vec dx_gpu = slice(from_dev(ddwide, wide.size()), rows, stride, 8, C);
    snprintf(name, sizeof name, "shortconv+silu backward dinp (%s)", tag); check(name, dx_gpu, dx, tol);
    snprintf(name, sizeof name, "shortconv+silu backward dweight (%s)", tag); check(name, from_dev(ddw, dw.size()), dw, 1e-5);
}

template <typename T> static void test_gates(const char *tag, double tol, int bf) {
    int rows = 150, H = 3;
    float inv_tau = 0.3f, min_log_mu = -1.0f;
    Vec abme = rand_vec((size_t)rows * 4 * H, -4, 4, 0);
    Vec A_log = rand_vec(H, -1, 2.7f, 0), Mu_log = rand_vec(H, -1, 2.7f, 0), dt_bias = rand_vec(H, -7, -2, 0);
    Vec mu_bias = rand_vec(H, -7, -2, 0), log_factor = rand_vec(H, -2, 1.3f, 0);
    Vec dla = rand_vec((size_t)rows * H, -1, 1, 0), dlm = rand_vec((size_t)rows * H, -1, 1, 0);
    Vec dbeta = rand_vec((size_t)rows * H, -1, 1, 0), deta = rand_vec((size_t)rows * H, -1, 1, 0);
    Vec pg0 = rand_vec(5 * H, -1, 1, 0);
    Vec a = slice(abme, rows, 4 * H, 0, H), b = slice(abme, rows, 4 * H, H, H);
    Vec m = slice(abme, rows, 4 * H, 2 * H, H), e = slice(abme, rows, 4 * H, 3 * H, H);
    size_t n = (size_t)rows * H;
    Vec la(n), lm(n), beta(n), eta(n), da(n), db(n), dm(n), de(n), pg = pg0;
    mdn_gates_forward(la.data(), lm.data(), beta.data(), eta.data(), a.data(), b.data(), m.data(), e.data(),
                      A_log.data(), Mu_log.data(), dt_bias.data(), mu_bias.data(), log_factor.data(), rows, H, inv_tau,
                      min_log_mu);
    mdn_gates_backward(da.data(), db.data(), dm.data(), de.data(), pg.data(), pg.data() + H, pg.data() + 2 * H,
                       pg.data() + 3 * H, pg.data() + 4 * H, dla.data(), dlm.data(), dbeta.data(), deta.data(), a.data(),
                       b.data(), m.data(), e.data(), A_log.data(), Mu_log.data(), dt_bias.data(), mu_bias.data(),
                       log_factor.data(), rows, H, inv_tau, min_log_mu);
    float *dab = to_dev<float>(abme), *dA = to_dev<float>(A_log), *dMu = to_dev<float>(Mu_log);
    float *ddt = to_dev<float>(dt_bias), *dmub = to_dev<float>(mu_bias), *dlf = to_dev<float>(log_factor);
    float *g = poisoned<float>(4 * n), *dg = to_dev<float>(dla), *dpg = to_dev<float>(pg0);
    float *dg2 = to_dev<float>(dlm), *dg3 = to_dev<float>(dbeta), *dg4 = to_dev<float>(deta);
    T *dproj = poisoned<T>((size_t)rows * 4 * H);
    void *scratch;
    cudaCheck(cudaMalloc(&scratch, mdn_gates_backward_scratch_bytes(rows, H)));
    mdn_gates_forward_cuda(g, g + n, g + 2 * n, g + 3 * n, dab, dab + H, dab + 2 * H, dab + 3 * H, 4 * H, dA, dMu, ddt,
                           dmub, dlf, rows, H, inv_tau, min_log_mu, 0);
    mdn_gates_backward_cuda<T>(dproj, dproj + H, dproj + 2 * H, dproj + 3 * H, 4 * H, dpg, dpg + H, dpg + 2 * H,
                               dpg + 3 * H, dpg + 4 * H, scratch, dg, dg2, dg3, dg4, dab, dab + H, dab + 2 * H,
                               dab + 3 * H, 4 * H, dA, dMu, ddt, dmub, dlf, rows, H, inv_tau, min_log_mu, 0);
    Vec gates = from_dev(g, 4 * n), dproj_h = from_dev(dproj, (size_t)rows * 4 * H);
    const char *gate_names[4] = {"log_alpha", "log_mu", "beta", "eta"};
    const Vec *gate_ref[4] = {&la, &lm, &beta, &eta};
    const Vec *dproj_ref[4] = {&da, &db, &dm, &de};
    char name[96];
    for (int k = 0; k < 4; k++) {
        snprintf(name, sizeof name, "gates forward %s", gate_names[k]);
        check(name, Vec(gates.begin() + k * n, gates.begin() + (k + 1) * n), *gate_ref[k], 1e-5);
        snprintf(name, sizeof name, "gates backward d%c (%s)", "abme"[k], tag);
        check(name, slice(dproj_h, rows, 4 * H, k * H, H), *dproj_ref[k], tol);
    }
    snprintf(name, sizeof name, "gates backward parameter gradients (%s)", tag); check(name, from_dev(dpg, 5 * H), pg, 1e-5);
}

// the backward (the forward is fused into the q conv: test_conv). K 32: one value a lane; K 128:
// the vector paths (8 bytes a lane in bf16, 16 in float32), with dq written in place over dq_out
// as the trainer calls it
template <typename T> static void test_output_correction(const char *tag, double tol, int bf, int K) {
    int rows = 90, H = 3;
    bool in_place = K > 32;
    size_t n = (size_t)rows * H * K;
    Vec k = rand_vec(n, -1, 1, bf), D_log = rand_vec(H, -2, 0, 0);
    Vec dq_out = rand_vec(n, -1, 1, bf), dk0 = rand_vec(n, -1, 1, bf), dD0 = rand_vec(H, -1, 1, 0);
    Vec dq(n), dk = dk0, dD = dD0;
    output_correction_backward(dq.data(), dk.data(), dD.data(), dq_out.data(), k.data(), D_log.data(), rows, H, K);
    T *dk_d = to_dev<T>(k), *ddq_out = to_dev<T>(dq_out);
    T *ddq = poisoned<T>(n), *ddk = to_dev<T>(dk0);
    float *dDl = to_dev<float>(D_log), *ddD = to_dev<float>(dD0);
    void *scratch;
    cudaCheck(cudaMalloc(&scratch, output_correction_backward_scratch_bytes(rows, H)));
    if (in_place) ddq = ddq_out;
    output_correction_backward_cuda<T>(ddq, ddk, ddD, scratch, ddq_out, dk_d, dDl, rows, H, K, 0);
    char name[96];
    snprintf(name, sizeof name, "output correction backward dq (%s, K %d)", tag, K); check(name, from_dev(ddq, n), dq, tol);
    snprintf(name, sizeof name, "output correction backward dk (%s, K %d)", tag, K); check(name, from_dev(ddk, n), dk, tol);
    snprintf(name, sizeof name, "output correction backward dD_log (%s, K %d)", tag, K); check(name, from_dev(ddD, H), dD, 1e-5);
}

template <typename T> static void test_swiglu(const char *tag, double tol, int bf) {
    int rows = 80, dim = 112;
    Vec gu = rand_vec((size_t)rows * 2 * dim, -4, 4, bf), dout = rand_vec((size_t)rows * dim, -1, 1, bf);
    Vec gate = slice(gu, rows, 2 * dim, 0, dim), up = slice(gu, rows, 2 * dim, dim, dim);
    size_t n = (size_t)rows * dim;
    Vec out(n), dgate(n), dup(n);
    swiglu_forward(out.data(), gate.data(), up.data(), (long)n);
    swiglu_backward(dgate.data(), dup.data(), dout.data(), gate.data(), up.data(), (long)n);
    T *dgu = to_dev<T>(gu), *dy = poisoned<T>(n), *ddout = to_dev<T>(dout), *ddgu = poisoned<T>(gu.size());
    T *ddgu2 = poisoned<T>(gu.size()), *dy2 = poisoned<T>(n);
    swiglu_forward_cuda<T>(dy, dgu, dgu + dim, 2 * dim, rows, dim, 0);
    swiglu_backward_cuda<T>(ddgu, ddgu + dim, NULL, ddout, dgu, dgu + dim, 2 * dim, rows, dim, 0);
    // with the forward's product recomputed: the same gradients, and the forward's bits
    swiglu_backward_cuda<T>(ddgu2, ddgu2 + dim, dy2, ddout, dgu, dgu + dim, 2 * dim, rows, dim, 0);
    Vec dgu_h = from_dev(ddgu, gu.size()), y_h = from_dev(dy, n);
    char name[96];
    snprintf(name, sizeof name, "swiglu forward (%s)", tag); check(name, y_h, out, tol);
    snprintf(name, sizeof name, "swiglu backward dgate (%s)", tag); check(name, slice(dgu_h, rows, 2 * dim, 0, dim), dgate, tol);
    snprintf(name, sizeof name, "swiglu backward dup (%s)", tag); check(name, slice(dgu_h, rows, 2 * dim, dim, dim), dup, tol);
    snprintf(name, sizeof name, "swiglu backward's recompute == forward (%s)", tag);
    check(name, from_dev(dy2, n), y_h, 0.0);
    snprintf(name, sizeof name, "swiglu backward with recompute, dgate|dup (%s)", tag);
    check(name, from_dev(ddgu2, gu.size()), dgu_h, 0.0);
}

// the fused classifier against CPU linear + cross-entropy (which also checks crossentropy_*_cuda)
template <typename T> static void test_classifier(const char *tag, double tol, int bf) {
    int rows = 300, dim = 64, N = 1000, block_rows = 128;
    Vec x = rand_vec((size_t)rows * dim, -1, 1, bf), w = rand_vec((size_t)N * dim, -0.3f, 0.3f, bf);
    Vec dw0 = rand_vec((size_t)N * dim, -1, 1, 0);
    std::vector<int> targets(rows);
    int count = 0;
    for (int i = 0; i < rows; i++) {
        targets[i] = i % 7 == 3 ? -100 : (int)(uniform() * N);
        count += targets[i] >= 0;
    }
    float dloss = 1.0f / count;
    Vec logits((size_t)rows * N), losses(rows), lse(rows), dx((size_t)rows * dim), dw = dw0;
    linear_forward(logits.data(), x.data(), w.data(), rows, dim, N);
    Vec logits_ref = logits;
    crossentropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), rows, N);
    crossentropy_backward(logits.data(), logits.data(), lse.data(), targets.data(), dloss, rows, N);
    linear_backward(dx.data(), dw.data(), logits.data(), x.data(), w.data(), rows, dim, N);
    int *dt;
    cudaCheck(cudaMalloc((void **)&dt, rows * sizeof(int)));
    cudaCheck(cudaMemcpy(dt, targets.data(), rows * sizeof(int), cudaMemcpyHostToDevice));
    T *dxd = to_dev<T>(x), *dwd = to_dev<T>(w), *ddx = poisoned<T>(dx.size()), *scratch = poisoned<T>((size_t)block_rows * classifier_logits_ld(N));
    float *dlosses = poisoned<float>(rows), *ddw = to_dev<float>(dw0), *dlogits = poisoned<float>(logits.size());
    classifier_forward_backward_cuda<T>(dlosses, ddx, ddw, dlogits, dxd, dwd, dt, dloss, rows, dim, N, scratch,
                                        block_rows, 0);
    char name[96];
    snprintf(name, sizeof name, "classifier logits (%s)", tag); check(name, from_dev(dlogits, logits.size()), logits_ref, tol);
    snprintf(name, sizeof name, "classifier losses (%s)", tag); check(name, from_dev(dlosses, rows), losses, tol);
    snprintf(name, sizeof name, "classifier dinp (%s)", tag); check(name, from_dev(ddx, dx.size()), dx, tol);
    snprintf(name, sizeof name, "classifier dweight (%s)", tag); check(name, from_dev(ddw, dw.size()), dw, tol);
}

static void test_adamw(void) {
    // 5 tensors, the 2nd and 4th not decayed; a slice [begin, end) as ZeRO-1 would update
    size_t sizes[5] = {1000, 7, 3000, 13, 2500}, n = 0;
    unsigned char decay[5] = {1, 0, 1, 0, 1};
    for (int i = 0; i < 5; i++) n += sizes[i];
    size_t begin = 500, end = n - 300;
    Vec p = rand_vec(n, -1, 1, 0), g = rand_vec(n, -1, 1, 0), m0 = rand_vec(end - begin, -0.1f, 0.1f, 0);
    Vec v0 = rand_vec(end - begin, 0, 0.01f, 0);
    Vec pc = p, gc = g, mc = m0, vc = v0;
    AdamW opt;
    adamw_init(&opt, 0.9, 0.95, 1e-8, 0.1, 1.0, 5, sizes, decay);
    opt.num_updates = 6;
    double norm = 3.0;
    adamw_step(&opt, pc.data(), gc.data(), mc.data(), vc.data(), begin, end, 3e-4, norm);
    float *dp = to_dev<float>(p), *dg = to_dev<float>(g), *dm = to_dev<float>(m0), *dv = to_dev<float>(v0);
    bf16 *dcopy = poisoned<bf16>(n);
    size_t *dends;
    unsigned char *ddecay;
    cudaCheck(cudaMalloc((void **)&dends, 5 * sizeof(size_t)));
    cudaCheck(cudaMalloc((void **)&ddecay, 5));
    cudaCheck(cudaMemcpy(dends, opt.segments.end, 5 * sizeof(size_t), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(ddecay, decay, 5, cudaMemcpyHostToDevice));
    adamw_update_cuda<bf16>(dp, dcopy, dg, dm, dv, begin, end, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f,
                            (float)adamw_clip_scale(norm, 1.0), 7, dends, ddecay, 5, 0);
    check("adamw params (slice, no-decay segments)", from_dev(dp, n), pc, 1e-6);
    check("adamw m", from_dev(dm, end - begin), mc, 1e-6);
    check("adamw v", from_dev(dv, end - begin), vc, 1e-6);
    Vec copy = from_dev(dcopy, n), pc_slice(pc.begin() + begin, pc.begin() + end);
    check("adamw bf16 copy of the updated slice", Vec(copy.begin() + begin, copy.begin() + end), pc_slice, 1e-2);
    double *dpart;
    cudaCheck(cudaMalloc((void **)&dpart, REDUCE_PARTS * sizeof(double)));
    adamw_sum_squares_cuda(dpart, dg, n, 0);
    std::vector<double> part(REDUCE_PARTS);
    cudaCheck(cudaMemcpy(part.data(), dpart, REDUCE_PARTS * sizeof(double), cudaMemcpyDeviceToHost));
    double s = 0;
    for (double x : part) s += x;
    check("gradient sum of squares", Vec(1, (float)s), Vec(1, (float)adamw_sum_squares(g.data(), n)), 1e-6);
    // from a pointer that is not 16-byte aligned: the scalar path (the above took the float4 one)
    adamw_sum_squares_cuda(dpart, dg + 1, n - 1, 0);
    cudaCheck(cudaMemcpy(part.data(), dpart, REDUCE_PARTS * sizeof(double), cudaMemcpyDeviceToHost));
    s = 0;
    for (double x : part) s += x;
    check("gradient sum of squares, unaligned", Vec(1, (float)s), Vec(1, (float)adamw_sum_squares(g.data() + 1, n - 1)), 1e-6);
    adamw_free(&opt);
}

int main(int argc, char **argv) {
    if (argc > 1) rng_state = strtoull(argv[1], NULL, 10) * 0x9E3779B97F4A7C15ULL + 1;
    int num_devices = 0;
    if (cudaGetDeviceCount(&num_devices) != cudaSuccess || num_devices == 0) {
        fprintf(stderr, "error: test_layers_cuda: no CUDA device\n");
        return 1;
    }
    printf("device: %s\n", cuda_device_props()->name);
    test_linear<float>("f32", 1e-5, 0);
    test_linear<bf16>("bf16", 2e-2, 1);
    test_embedding<float>("f32", 1e-6, 0);
    test_embedding<bf16>("bf16", 1e-6, 1);
    for (int dim : {192, 1216}) {
        test_rmsnorm<float>(dim == 192 ? "f32" : "f32, wide rows", 1e-5, 0, dim);
        test_rmsnorm<bf16>(dim == 192 ? "bf16" : "bf16, wide rows", 2e-2, 1, dim);
    }
    for (int dim : {64, 576}) {
        test_gated_rmsnorm<float>(dim == 64 ? "f32" : "f32, wide rows", 1e-5, 0, dim);
        test_gated_rmsnorm<bf16>(dim == 64 ? "bf16" : "bf16, wide rows", 2e-2, 1, dim);
    }
    test_conv<float>("f32", 1e-5, 0);
    test_conv<bf16>("bf16", 2e-2, 1);
    test_gates<float>("f32", 1e-5, 0);
    test_gates<bf16>("bf16", 2e-2, 1);
    for (int K : {32, 128}) {
        test_output_correction<float>("f32", 1e-5, 0, K);
        test_output_correction<bf16>("bf16", 2e-2, 1, K);
    }
    test_swiglu<float>("f32", 1e-5, 0);
    test_swiglu<bf16>("bf16", 2e-2, 1);
    test_classifier<float>("f32", 1e-5, 0);
    test_classifier<bf16>("bf16", 2e-2, 1);
    test_adamw();
    printf("%s: %d check(s) failed\n", failures ? "FAILED" : "OK", failures);
    return failures ? 1 : 0;
}
