// linear.cu: the three products of a bias-free linear layer through cuBLASLt.
// cuBLASLt is column-major; a row-major X [r, c] is the column-major matrix Xᶜ [c, r] with the same
// leading dimension, so every row-major product below is written as its column-major transpose:
//   forward   outᶜ [out, rows]  = (Wᶜ)ᵀ · inpᶜ       W: [in, out]ᶜ, inp: [in, rows]ᶜ
//   dinp      dinpᶜ [in, rows]  = Wᶜ · doutᶜ
//   dweight   dWᶜ [in, out]    += inpᶜ · (doutᶜ)ᵀ
#include "linear.cuh"

#include <string.h>

#define LINEAR_WORKSPACE_BYTES (32u << 20)
#define LINEAR_MAX_PLANS 128

typedef struct {
    int m, n, k, lda, ldb, ldd, transa, transb;
    cudaDataType_t atype, dtype;
    int accumulate;
    int align_a, align_b, align_d;   // pointer alignments the algorithm may assume
} PlanKey;

typedef struct {
    PlanKey key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    cublasLtMatmulAlgo_t algo;
} Plan;

static cublasLtHandle_t lt_handle;
static void *lt_workspace;
static Plan plans[LINEAR_MAX_PLANS];
static int num_plans;

static int pointer_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int align = 256;
    while (align > 1 && (a % align) != 0) align /= 2;
    return align;
}

static const Plan *get_plan(const PlanKey *key) {
    for (int i = 0; i < num_plans; i++)
        if (memcmp(&plans[i].key, key, sizeof(PlanKey)) == 0) return &plans[i];
    if (lt_handle == NULL) {
        cublasCheck(cublasLtCreate(&lt_handle));
        cudaCheck(cudaMalloc(&lt_workspace, LINEAR_WORKSPACE_BYTES));
    }
    if (num_plans == LINEAR_MAX_PLANS) {
        fprintf(stderr, "error: linear.cu: more than %d matmul shapes\n", LINEAR_MAX_PLANS);
        exit(EXIT_FAILURE);
    }
    Plan *plan = &plans[num_plans];
    memset(plan, 0, sizeof(Plan));
    plan->key = *key;
    cublasOperation_t ta = key->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasCheck(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    cublasCheck(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    // stored shapes (before the op): A is m×k (or k×m transposed), B is k×n (or n×k)
    cublasCheck(cublasLtMatrixLayoutCreate(&plan->a_layout, key->atype, key->transa ? key->k : key->m,
                                           key->transa ? key->m : key->k, key->lda));
    cublasCheck(cublasLtMatrixLayoutCreate(&plan->b_layout, key->atype, key->transb ? key->n : key->k,
                                           key->transb ? key->k : key->n, key->ldb));
    cublasCheck(cublasLtMatrixLayoutCreate(&plan->d_layout, key->dtype, key->m, key->n, key->ldd));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = LINEAR_WORKSPACE_BYTES;
    uint32_t aa = key->align_a, ab = key->align_b, ad = key->align_d;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad, sizeof(ad)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad, sizeof(ad)));
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(lt_handle, plan->desc, plan->a_layout, plan->b_layout,
                                               plan->d_layout, plan->d_layout, pref, 1, &result, &found));
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    if (found == 0) {
        fprintf(stderr, "error: linear.cu: cuBLASLt has no algorithm for m=%d n=%d k=%d\n", key->m, key->n, key->k);
        exit(EXIT_FAILURE);
    }
    plan->algo = result.algo;
    num_plans++;
    return plan;
}

// column-major D [m, n] (+)= op(A) · op(B)
static void matmul_lt(void *d, cudaDataType_t dtype, int ldd, const void *a, int lda, int transa,
                      const void *b, int ldb, int transb, cudaDataType_t atype, int m, int n, int k,
                      int accumulate, cudaStream_t stream) {
    PlanKey key;
    memset(&key, 0, sizeof(key));   // padding bytes take part in the memcmp
    key.m = m; key.n = n; key.k = k; key.lda = lda; key.ldb = ldb; key.ldd = ldd;
    key.transa = transa; key.transb = transb; key.atype = atype; key.dtype = dtype;
    key.accumulate = accumulate;
    key.align_a = pointer_alignment(a); key.align_b = pointer_alignment(b); key.align_d = pointer_alignment(d);
    const Plan *plan = get_plan(&key);
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasCheck(cublasLtMatmul(lt_handle, plan->desc, &alpha, a, plan->a_layout, b, plan->b_layout, &beta,
                               d, plan->d_layout, d, plan->d_layout, &plan->algo, lt_workspace,
                               LINEAR_WORKSPACE_BYTES, stream));
}

template <typename T, typename Tout>
void linear_forward_strided_cuda(Tout *out, int out_ld, const T *inp, const T *weight, int rows, int in_dim,
                                 int out_dim, cudaStream_t stream) {
    matmul_lt(out, CudaType<Tout>::value, out_ld, weight, in_dim, 1, inp, in_dim, 0, CudaType<T>::value, out_dim, rows,
              in_dim, 0, stream);
}

template <typename T>
void linear_backward_strided_cuda(T *dinp, float *dweight, const T *dout, int dout_ld, const T *inp, const T *weight,
                                  int rows, int in_dim, int out_dim, int accumulate_dinp, cudaStream_t stream) {
    if (dinp != NULL)
        matmul_lt(dinp, CudaType<T>::value, in_dim, weight, in_dim, 0, dout, dout_ld, 0, CudaType<T>::value, in_dim,
                  rows, out_dim, accumulate_dinp, stream);
    if (dweight != NULL)
        matmul_lt(dweight, CUDA_R_32F, in_dim, inp, in_dim, 0, dout, dout_ld, 1, CudaType<T>::value, in_dim, out_dim,
                  rows, 1, stream);
}

template <typename T, typename Tout>
void linear_forward_cuda(Tout *out, const T *inp, const T *weight, int rows, int in_dim, int out_dim,
                         cudaStream_t stream) {
    linear_forward_strided_cuda<T, Tout>(out, out_dim, inp, weight, rows, in_dim, out_dim, stream);
}

template <typename T>
void linear_backward_cuda(T *dinp, float *dweight, const T *dout, const T *inp, const T *weight,
                          int rows, int in_dim, int out_dim, int accumulate_dinp, cudaStream_t stream) {
    linear_backward_strided_cuda<T>(dinp, dweight, dout, out_dim, inp, weight, rows, in_dim, out_dim, accumulate_dinp,
                                    stream);
}

void linear_cuda_free(void) {
    for (int i = 0; i < num_plans; i++) {
        cublasLtMatrixLayoutDestroy(plans[i].a_layout);
        cublasLtMatrixLayoutDestroy(plans[i].b_layout);
        cublasLtMatrixLayoutDestroy(plans[i].d_layout);
        cublasLtMatmulDescDestroy(plans[i].desc);
    }
    num_plans = 0;
    if (lt_handle != NULL) {
        cudaCheck(cudaFree(lt_workspace));
        cublasCheck(cublasLtDestroy(lt_handle));
        lt_handle = NULL;
    }
}

template void linear_forward_strided_cuda<float, float>(float *, int, const float *, const float *, int, int, int,
                                                        cudaStream_t);
template void linear_forward_strided_cuda<bf16, bf16>(bf16 *, int, const bf16 *, const bf16 *, int, int, int,
                                                      cudaStream_t);
template void linear_backward_strided_cuda<float>(float *, float *, const float *, int, const float *, const float *,
                                                  int, int, int, int, cudaStream_t);
template void linear_backward_strided_cuda<bf16>(bf16 *, float *, const bf16 *, int, const bf16 *, const bf16 *, int,
                                                 int, int, int, cudaStream_t);
template void linear_forward_cuda<float, float>(float *, const float *, const float *, int, int, int, cudaStream_t);
template void linear_forward_cuda<bf16, bf16>(bf16 *, const bf16 *, const bf16 *, int, int, int, cudaStream_t);
template void linear_forward_cuda<bf16, float>(float *, const bf16 *, const bf16 *, int, int, int, cudaStream_t);
template void linear_backward_cuda<float>(float *, float *, const float *, const float *, const float *, int, int,
                                          int, int, cudaStream_t);
template void linear_backward_cuda<bf16>(bf16 *, float *, const bf16 *, const bf16 *, const bf16 *, int, int, int,
                                         int, cudaStream_t);
