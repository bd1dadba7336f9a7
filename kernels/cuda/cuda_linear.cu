/* CUDA backend: the matrix products (linear layers, convolutions) through cuBLAS, and the
 * embedding lookup. float32 activations multiply in full float32 (no TF32 unless the context
 * asks for it), with narrower weights widened a panel at a time into scratch, like the CPU
 * backend; F16/BF16 activations multiply in their own dtype with float32 accumulation, through
 * cuBLASLt with the bias added in the epilogue, as PyTorch's addmm does for 16-bit tensors. */
#include "kernels/cuda/cuda_common.h"

/* im2col block budget in elements. */
#define CONV_COL_ELEMS ((int64_t)32 << 20)

static cudaDataType_t cuda_type(kn_dtype dt)
{
    return dt == KN_F16 ? CUDA_R_16F : dt == KN_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

int cuda_gemm_run(kn_ctx *ctx, const cuda_gemm *g, const char *what)
{
    cuda_state *st = cuda_st(ctx);
    if (g->m == 0 || g->n == 0 || g->batch == 0) return 0;
    cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
    if (g->ab == KN_F32) ct = st->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F_PEDANTIC;
    cublasStatus_t s = cublasGemmStridedBatchedEx_64(
        st->blas, g->ta, g->tb, g->m, g->n, g->k, &g->alpha, g->a, cuda_type(g->ab), g->lda,
        g->stride_a, g->b, cuda_type(g->ab), g->ldb, g->stride_b, &g->beta, g->c,
        cuda_type(g->cdt), g->ldc, g->stride_c, g->batch, ct, CUBLAS_GEMM_DEFAULT);
    return s == CUBLAS_STATUS_SUCCESS ? 0 : cublas_fail(what, s);
}

/* y[i] = y[i] + b[(i / inner) % period], the sum rounded to T. */
template <typename T>
__global__ void bias_kernel(T *y, const void *b, kn_dtype bdt, int64_t n, int64_t inner,
                            int64_t period)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(__fadd_rn(to_f(y[i]), load_any(b, bdt, (i / inner) % period)));
}

static int add_bias(kn_ctx *ctx, kn_tensor *y, const kn_tensor *b, int64_t inner, int64_t period,
                    const char *what)
{
    int64_t n = kn_numel(y);
    if (n == 0) return 0;
    unsigned grid = cuda_grid(ctx, n);
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act(y->dtype, [&](auto tag) {
        using T = decltype(tag);
        bias_kernel<T><<<grid, CUDA_THREADS, 0, s>>>((T *)y->data, b->data, b->dtype, n, inner,
                                                     period);
        return cuda_launched(what);
    });
}

/* y[M, N] = x . w^T + b in F16/BF16 through cuBLASLt, then tanh-GELU when gelu (cuBLASLt's
 * GELU epilogue is the tanh approximation); returns 1 when cuBLASLt has no kernel for the
 * case, so that the caller falls back to cuBLAS and separate bias and activation passes. */
static int linear_lt(kn_ctx *ctx, void *y, const void *x, const void *w, const void *b,
                     kn_dtype dt, int64_t M, int64_t N, int64_t K, bool gelu)
{
    cuda_state *st = cuda_st(ctx);
    cudaDataType_t t = cuda_type(dt);
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = gelu ? (b ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU)
                                  : (b ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
    int32_t bias_type = (int32_t)t;
    float alpha = 1.0f, beta = 0.0f;
    cublasStatus_t s = cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    if (s == CUBLAS_STATUS_SUCCESS && b)
        s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b);
    if (s == CUBLAS_STATUS_SUCCESS && b)
        s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                           sizeof bias_type);
    /* Column-major view of the row-major product: y^T [N, M] = (w [N, K] read as K x N)^T . x^T. */
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&la, t, K, N, K);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&lb, t, K, M, K);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&lc, t, N, M, N);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmul(st->lt, op, &alpha, w, la, x, lb, &beta, y, lc, y, lc, NULL,
                           st->lt_work, st->lt_work_size, st->stream);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED) return 1;
    return s == CUBLAS_STATUS_SUCCESS ? 0 : cublas_fail("kn_linear (cuBLASLt)", s);
}

/* y = x . w^T + b, then act when has_act. */
static int linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                  const kn_tensor *b, bool has_act, kn_act act)
{
    static const char op[] = "kn_linear";
    int64_t M = kn_rows(x), K = kn_cols(x), N = kn_cols(y);
    kn_dtype dt = x->dtype;
    size_t es = kn_dtype_size(dt);
    if (M == 0 || N == 0) return 0;
    if (K == 0) {
        cudaError_t e = cudaMemsetAsync(y->data, 0, kn_nbytes(y), cuda_st(ctx)->stream);
        if (e != cudaSuccess) return cuda_fail(op, e);
        return b ? add_bias(ctx, y, b, 1, N, op) : 0;
    }
    cuda_gemm g = {CUBLAS_OP_T, CUBLAS_OP_N, 0, M, K, NULL, K, 0, x->data, K, 0, NULL, N, 0, 1,
                   dt, dt, 1.0f, 0.0f};
    if (dt != KN_F32) {
        const void *wd = cuda_as_dtype(ctx, CUDA_SLOT_WEIGHT, w, dt, op);
        const void *bd = b ? cuda_as_dtype(ctx, CUDA_SLOT_PARAM, b, dt, op) : NULL;
        if (!wd || (b && !bd)) return err_code();
        bool gelu = has_act && act == KN_ACT_GELU_TANH;
        int rc = linear_lt(ctx, y->data, x->data, wd, bd, dt, M, N, K, gelu);
        if (rc < 0 || (rc == 0 && (gelu || !has_act))) return rc;
        if (rc == 0) return cuda_activate(ctx, y, y, act);
        g.m = N;
        g.a = wd;
        g.c = y->data;
        KN_TRY(cuda_gemm_run(ctx, &g, op));
        if (b) KN_TRY(add_bias(ctx, y, b, 1, N, op));
        return has_act ? cuda_activate(ctx, y, y, act) : 0;
    }
    int64_t step = N;
    if (w->dtype != KN_F32) {
        step = CUDA_PANEL_FLOATS / K;
        if (step < 16) step = 16;
    }
    for (int64_t n0 = 0; n0 < N; n0 += step) {
        int64_t nn = N - n0 < step ? N - n0 : step;
        const void *wp = (const char *)w->data + (size_t)(n0 * K) * kn_dtype_size(w->dtype);
        if (w->dtype != KN_F32) {
            void *buf = cuda_scratch(ctx, CUDA_SLOT_WEIGHT, (size_t)(nn * K) * sizeof(float));
            if (!buf) return err_code();
            KN_TRY(cuda_convert(ctx, buf, KN_F32, wp, w->dtype, nn * K, op));
            wp = buf;
        }
        g.m = nn;
        g.a = wp;
        g.c = (char *)y->data + (size_t)n0 * es;
        KN_TRY(cuda_gemm_run(ctx, &g, op));
    }
    if (b) KN_TRY(add_bias(ctx, y, b, 1, N, op));
    return has_act ? cuda_activate(ctx, y, y, act) : 0;
}

int cuda_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                const kn_tensor *b)
{
    return linear(ctx, y, x, w, b, false, KN_ACT_SILU);
}

int cuda_linear_act(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                    const kn_tensor *b, kn_act act)
{
    return linear(ctx, y, x, w, b, true, act);
}

template <typename T>
__global__ void embedding_kernel(T *y, const void *table, kn_dtype tdt, const int32_t *ids,
                                 int64_t n, int64_t D)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * D;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(load_any(table, tdt, (int64_t)ids[i / D] * D + i % D));
}

int cuda_embedding(kn_ctx *ctx, kn_tensor *y, const kn_tensor *table, const int32_t *ids, int n)
{
    int64_t D = kn_cols(table);
    if (n == 0 || D == 0) return 0;
    cudaStream_t s = cuda_st(ctx)->stream;
    int32_t *dids = (int32_t *)cuda_scratch(ctx, CUDA_SLOT_PARAM, (size_t)n * sizeof *ids);
    if (!dids) return err_code();
    cudaError_t e = cudaMemcpyAsync(dids, ids, (size_t)n * sizeof *ids, cudaMemcpyHostToDevice, s);
    if (e != cudaSuccess) return cuda_fail("kn_embedding", e);
    unsigned grid = cuda_grid(ctx, n * D);
    return with_act(y->dtype, [&](auto tag) {
        using T = decltype(tag);
        embedding_kernel<T><<<grid, CUDA_THREADS, 0, s>>>((T *)y->data, table->data,
                                                          table->dtype, dids, n, D);
        return cuda_launched("kn_embedding");
    });
}

struct conv_geom {
    int64_t C, H, W, kh, kw, Ho, Wo, stride, pad;
};

/* Columns of output rows [oy0, oy0 + nr) of one image: col[(c, ky, kx)][(oy, ox)]. */
template <typename T>
__global__ void im2col_kernel(T *col, const T *x, conv_geom g, int64_t oy0, int64_t nr)
{
    int64_t np = nr * g.Wo, n = g.C * g.kh * g.kw * np;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t ck = i / np, p = i % np;
        int64_t kx = ck % g.kw, ky = ck / g.kw % g.kh, c = ck / (g.kw * g.kh);
        int64_t iy = (oy0 + p / g.Wo) * g.stride - g.pad + ky;
        int64_t ix = p % g.Wo * g.stride - g.pad + kx;
        col[i] = iy >= 0 && iy < g.H && ix >= 0 && ix < g.W ? x[(c * g.H + iy) * g.W + ix]
                                                            : from_f<T>(0.0f);
    }
}

int cuda_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                const kn_tensor *b, int stride, int pad)
{
    static const char op[] = "kn_conv2d";
    conv_geom g = {x->shape[1], x->shape[2], x->shape[3], w->shape[2], w->shape[3],
                   y->shape[2], y->shape[3], stride, pad};
    int64_t B = x->shape[0], O = w->shape[0], CK = g.C * g.kh * g.kw, P = g.Ho * g.Wo;
    kn_dtype dt = x->dtype;
    size_t es = kn_dtype_size(dt);
    if (B == 0 || O == 0 || P == 0) return 0;
    /* Conv weights are at most a few million elements, so the whole of one is converted. */
    const void *wd = cuda_as_dtype(ctx, CUDA_SLOT_WEIGHT, w, dt, op);
    if (!wd) return err_code();
    /* Column-major view: y_n^T [P, O] = col^T [P, CK] . w^T [CK, O]. */
    cuda_gemm gm = {CUBLAS_OP_N, CUBLAS_OP_N, P, O, CK, NULL, P, 0, wd, CK, 0, NULL, P, O * P, 1,
                    dt, dt, 1.0f, 0.0f};
    if (g.kh == 1 && g.kw == 1 && stride == 1 && pad == 0) {
        gm.a = x->data;
        gm.stride_a = g.C * P;
        gm.c = y->data;
        gm.batch = B;
        KN_TRY(cuda_gemm_run(ctx, &gm, op));
    } else {
        int64_t rows = CONV_COL_ELEMS / (CK * g.Wo > 0 ? CK * g.Wo : 1);
        if (rows < 1) rows = 1;
        if (rows > g.Ho) rows = g.Ho;
        void *col = cuda_scratch(ctx, CUDA_SLOT_WORK, (size_t)(rows * g.Wo * CK) * es);
        if (!col) return err_code();
        cudaStream_t s = cuda_st(ctx)->stream;
        for (int64_t n = 0; n < B; n++) {
            const char *xn = (const char *)x->data + (size_t)(n * g.C * g.H * g.W) * es;
            char *yn = (char *)y->data + (size_t)(n * O * P) * es;
            for (int64_t oy0 = 0; oy0 < g.Ho; oy0 += rows) {
                int64_t nr = g.Ho - oy0 < rows ? g.Ho - oy0 : rows, np = nr * g.Wo;
                unsigned grid = cuda_grid(ctx, CK * np);
                KN_TRY(with_act(dt, [&](auto tag) {
                    using T = decltype(tag);
                    im2col_kernel<T><<<grid, CUDA_THREADS, 0, s>>>((T *)col, (const T *)xn, g,
                                                                   oy0, nr);
                    return cuda_launched(op);
                }));
                gm.m = np;
                gm.a = col;
                gm.lda = np;
                gm.c = yn + (size_t)(oy0 * g.Wo) * es;
                KN_TRY(cuda_gemm_run(ctx, &gm, op));
            }
        }
    }
    return b ? add_bias(ctx, y, b, P, O, op) : 0;
}

int cuda_linear_rows(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                     const kn_tensor *b)
{
    return cuda_linear(ctx, y, x, w, b);
}
