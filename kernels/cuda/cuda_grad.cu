/* CUDA backend: the input gradients of the transformer's ops other than attention (kn_grad.h):
 * the linear layer and the patch embedding as cuBLAS products, tanh-GELU and the adaLN gate
 * elementwise, the LayerNorm of ln_modulate one block per row and the q/k RMSNorm of qkv_split
 * one warp per head. 16-bit tensors are read and written in their dtype and computed in
 * float32, rows 16 bytes at a time where their width and addresses allow; the row statistics
 * are summed in double like the forward norms. */
#include "kernels/cuda/cuda_common.h"

extern "C" {
#include "kernels/kn_grad.h"
}

#include <math.h>

#include <initializer_list>
#include <type_traits>

/* V consecutive elements of T, loaded or stored in one access of V * sizeof(T) bytes. */
template <typename T, int V> struct alignas(sizeof(T) * V) pack {
    T e[V];
};

template <typename T, int V>
static __device__ __forceinline__ void load_vec(float (&f)[V], const T *p)
{
    pack<T, V> x = *(const pack<T, V> *)p;
#pragma unroll
    for (int i = 0; i < V; i++)
        f[i] = to_f(x.e[i]);
}

template <typename T, int V>
static __device__ __forceinline__ void store_vec(T *p, const float (&f)[V])
{
    pack<T, V> x;
#pragma unroll
    for (int i = 0; i < V; i++)
        x.e[i] = from_f<T>(f[i]);
    *(pack<T, V> *)p = x;
}

/* Whether rows of `cols` elements of es bytes, starting at each of ptrs, can be read 16 bytes
 * at a time. */
static bool wide_rows(int64_t cols, size_t es, std::initializer_list<const void *> ptrs)
{
    bool ok = cols * (int64_t)es % 16 == 0;
    for (const void *p : ptrs)
        ok = ok && (uintptr_t)p % 16 == 0;
    return ok;
}

/* Calls f(T(), std::integral_constant<int, V>()) with T the element type of activation dtype dt
 * and V the elements per access: 16 bytes' worth when `wide`, else one. */
template <typename F> static int with_act_vec(kn_dtype dt, bool wide, F &&f)
{
    return with_act(dt, [&](auto tag) {
        using T = decltype(tag);
        if (wide) return f(tag, std::integral_constant<int, 16 / sizeof(T)>());
        return f(tag, std::integral_constant<int, 1>());
    });
}

/* ---- products ---- */

static cudaError_t zero(kn_ctx *ctx, kn_tensor *t)
{
    return cudaMemsetAsync(t->data, 0, kn_nbytes(t), cuda_st(ctx)->stream);
}

/* dx[M, K] = dy[M, N] . w[N, K]. Column-major: dx^T [K, M] = w^T [K, N] . dy^T [N, M]. A float32
 * product widens a narrower weight a panel of its rows at a time, as kn_linear does; the panels
 * split the sum over N, each adding to what the previous ones left in dx. */
int cuda_linear_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *w)
{
    static const char op[] = "kn_linear_grad";
    int64_t M = kn_rows(dy), N = kn_cols(dy), K = kn_cols(dx);
    kn_dtype dt = dy->dtype;
    if (M == 0 || K == 0) return 0;
    if (N == 0) {
        cudaError_t e = zero(ctx, dx);
        return e == cudaSuccess ? 0 : cuda_fail(op, e);
    }
    cuda_gemm g = {CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, NULL, K,  0,    dy->data, N,
                   0,           dx->data,    K, 0, 1, dt,   dt, 1.0f, 0.0f};
    if (dt != KN_F32 || w->dtype == KN_F32) {
        if (!(g.a = cuda_as_dtype(ctx, CUDA_SLOT_WEIGHT, w, dt, op))) return err_code();
        return cuda_gemm_run(ctx, &g, op);
    }
    int64_t step = CUDA_PANEL_FLOATS / K;
    if (step < 16) step = 16;
    for (int64_t n0 = 0; n0 < N; n0 += step) {
        int64_t nn = N - n0 < step ? N - n0 : step;
        void *buf = cuda_scratch(ctx, CUDA_SLOT_WEIGHT, (size_t)(nn * K) * sizeof(float));
        if (!buf) return err_code();
        const char *wp = (const char *)w->data + (size_t)(n0 * K) * kn_dtype_size(w->dtype);
        KN_TRY(cuda_convert(ctx, buf, KN_F32, wp, w->dtype, nn * K, op));
        g.k = nn;
        g.a = buf;
        g.b = (const float *)dy->data + n0;
        g.beta = n0 == 0 ? 0.0f : 1.0f;
        KN_TRY(cuda_gemm_run(ctx, &g, op));
    }
    return 0;
}

/* The patch embedding's gradient: each token's C p p features f = (c, a, e) are one product,
 * Y [B gh gw, C p p] = dtok [B gh gw, D] . w [D, C p p] (column-major Y^T = w^T . dtok^T), then
 * moved to their pixels. */
int cuda_patch_embed_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dtok, const kn_tensor *w,
                          int p)
{
    static const char op[] = "kn_patch_embed_grad";
    int64_t T = kn_rows(dtok), D = kn_cols(dtok), C = dx->shape[1], F = C * p * p;
    kn_dtype dt = dtok->dtype;
    if (kn_numel(dx) == 0) return 0;
    if (D == 0) {
        cudaError_t e = zero(ctx, dx);
        return e == cudaSuccess ? 0 : cuda_fail(op, e);
    }
    const void *wd = cuda_as_dtype(ctx, CUDA_SLOT_WEIGHT, w, dt, op);
    void *y = cuda_scratch(ctx, CUDA_SLOT_WORK, (size_t)(T * F) * kn_dtype_size(dt));
    if (!wd || !y) return err_code();
    cuda_gemm g = {CUBLAS_OP_N, CUBLAS_OP_N, F, T, D, wd, F,  0,    dtok->data, D,
                   0,           y,           F, 0, 1, dt, dt, 1.0f, 0.0f};
    KN_TRY(cuda_gemm_run(ctx, &g, op));
    unpatch_strides st = {p, 1, (int64_t)p * p};
    return cuda_unpatch(ctx, dx, y, p, st, op);
}

/* ---- elementwise ---- */

/* d/dx of 0.5 x (1 + tanh(u)), u = beta (x + kappa x^3). */
static __device__ __forceinline__ float gelu_tanh_slope(float x)
{
    const float beta = (float)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = 0.044715f;
    float x2 = x * x, t = tanhf(beta * (x + kappa * x2 * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * beta * (1.0f + 3.0f * kappa * x2);
}

/* nv vectors of V elements: dx = dy * gelu'(x). */
template <typename T, int V>
__global__ void gelu_tanh_grad_kernel(T *dx, const T *dy, const T *x, int64_t nv)
{
    GRID_STRIDE(i, nv)
    {
        float g[V], xv[V];
        load_vec(g, dy + i * V);
        load_vec(xv, x + i * V);
#pragma unroll
        for (int e = 0; e < V; e++)
            g[e] *= gelu_tanh_slope(xv[e]);
        store_vec(dx + i * V, g);
    }
}

int cuda_activate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *x,
                       kn_act act)
{
    if (act != KN_ACT_GELU_TANH)
        return err_set(ERR_INVALID, "kn_activate_grad: only tanh-GELU has a gradient");
    int64_t n = kn_numel(x);
    if (n == 0) return 0;
    bool wide = wide_rows(n, kn_dtype_size(x->dtype), {dx->data, dy->data, x->data});
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act_vec(x->dtype, wide, [&](auto tag, auto vw) {
        using T = decltype(tag);
        constexpr int V = decltype(vw)::value;
        gelu_tanh_grad_kernel<T, V><<<cuda_grid(ctx, n / V), CUDA_THREADS, 0, s>>>(
            (T *)dx->data, (const T *)dy->data, (const T *)x->data, n / V);
        return cuda_launched("kn_activate_grad");
    });
}

/* dy[b, s, j] = mod[b, gate, j] * dx[b, s, j], nv vectors of V elements (V divides D). */
template <typename T, int V>
__global__ void gate_grad_kernel(T *dy, const T *dx, const T *mod, int64_t S, int64_t D, int64_t C,
                                 int gate, int64_t nv)
{
    GRID_STRIDE(i, nv)
    {
        int64_t e0 = i * V, b = e0 / (S * D), j = e0 % D;
        float g[V], m[V];
        load_vec(g, dx + e0);
        load_vec(m, mod + (b * C + gate) * D + j);
#pragma unroll
        for (int e = 0; e < V; e++)
            g[e] = __fmul_rn(m[e], g[e]);
        store_vec(dy + e0, g);
    }
}

int cuda_gate_grad(kn_ctx *ctx, kn_tensor *dy, const kn_tensor *dx, const kn_tensor *mod,
                   int gate_idx)
{
    int64_t B = dx->shape[0], D = kn_cols(dx), n = kn_numel(dx), C = mod->shape[1];
    if (n == 0) return 0;
    int64_t S = n / (B * D);
    bool wide = wide_rows(D, kn_dtype_size(dx->dtype), {dy->data, dx->data, mod->data});
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act_vec(dx->dtype, wide, [&](auto tag, auto vw) {
        using T = decltype(tag);
        constexpr int V = decltype(vw)::value;
        gate_grad_kernel<T, V><<<cuda_grid(ctx, n / V), CUDA_THREADS, 0, s>>>(
            (T *)dy->data, (const T *)dx->data, (const T *)mod->data, S, D, C, gate_idx, n / V);
        return cuda_launched("kn_gate_grad");
    });
}

/* ---- norms ---- */

/* One row per block, V elements per access: with g = dy (1 + scale), xhat = (x - mean) rstd,
 * dx = rstd (g - mean(g) - xhat mean(g xhat)). The moments are the forward's (two passes in
 * double); dx may be dy, each element being read before the same thread writes it. */
template <typename T, int V>
__global__ void ln_modulate_grad_kernel(T *dx, const T *dy, const T *x, const T *mod, int64_t S,
                                        int64_t D, int64_t C, int scale_idx, float eps)
{
    __shared__ double red[32];
    const int64_t row = blockIdx.x;
    const T *xr = x + row * D, *gr = dy + row * D, *sc = mod + (row / S * C + scale_idx) * D;
    T *dr = dx + row * D;
    /* f(j, x, dy, scale) for each vector of the row; dy and scale only when `grads`. */
    auto each = [&](bool grads, auto f) {
        for (int64_t j = threadIdx.x * V; j < D; j += (int64_t)blockDim.x * V) {
            float xv[V], gv[V] = {}, sv[V] = {};
            load_vec(xv, xr + j);
            if (grads) {
                load_vec(gv, gr + j);
                load_vec(sv, sc + j);
            }
            f(j, xv, gv, sv);
        }
    };
    double s = 0.0;
    each(false, [&](int64_t, float(&xv)[V], float(&)[V], float(&)[V]) {
        for (int e = 0; e < V; e++)
            s += (double)xv[e];
    });
    const double mean = block_sum(s, red) / (double)D;
    s = 0.0;
    each(false, [&](int64_t, float(&xv)[V], float(&)[V], float(&)[V]) {
        for (int e = 0; e < V; e++)
            s += ((double)xv[e] - mean) * ((double)xv[e] - mean);
    });
    const float rstd = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(block_sum(s, red) / D), eps)));
    const float m = (float)mean;
    double sg = 0.0, sgx = 0.0;
    each(true, [&](int64_t, float(&xv)[V], float(&gv)[V], float(&sv)[V]) {
        for (int e = 0; e < V; e++) {
            float g = gv[e] * (1.0f + sv[e]);
            sg += (double)g;
            sgx += (double)g * ((xv[e] - m) * rstd);
        }
    });
    const float mg = (float)(block_sum(sg, red) / D), mgx = (float)(block_sum(sgx, red) / D);
    each(true, [&](int64_t j, float(&xv)[V], float(&gv)[V], float(&sv)[V]) {
        for (int e = 0; e < V; e++)
            gv[e] = rstd * (gv[e] * (1.0f + sv[e]) - mg - (xv[e] - m) * rstd * mgx);
        store_vec(dr + j, gv);
    });
}

int cuda_ln_modulate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *x,
                          const kn_tensor *mod, int scale_idx, float eps)
{
    int64_t B = x->shape[0], D = kn_cols(x), R = kn_rows(x), C = mod->shape[1];
    if (R == 0 || D == 0) return 0;
    bool wide = wide_rows(D, kn_dtype_size(x->dtype), {dx->data, dy->data, x->data, mod->data});
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act_vec(x->dtype, wide, [&](auto tag, auto vw) {
        using T = decltype(tag);
        constexpr int V = decltype(vw)::value;
        ln_modulate_grad_kernel<T, V><<<(unsigned)R, cuda_row_threads(D / V), 0, s>>>(
            (T *)dx->data, (const T *)dy->data, (const T *)x->data, (const T *)mod->data, R / B, D,
            C, scale_idx, eps);
        return cuda_launched("kn_ln_modulate_grad");
    });
}

/* One row r of dqkv per block, its q, k or v part (blockIdx.y) from row row0 + r % n of sample
 * r / n of dq, dk or dv; each head of q and k back through its RMSNorm y = w x rs by one warp,
 * with g = w dy: dx = rs g - x rs^3 mean(g x). V elements per access (V divides Dh). */
template <typename T, int V>
__global__ void qkv_split_grad_kernel(T *dqkv, const T *dq, const T *dk, const T *dv, const T *qkv,
                                      int64_t n, int64_t L, int64_t row0, int64_t D, int64_t Dh,
                                      const void *qw, const void *kw, kn_dtype qdt, kn_dtype kdt,
                                      float eps)
{
    const int64_t r = blockIdx.x;
    const int part = blockIdx.y;
    const T *src = (part == 0 ? dq : part == 1 ? dk : dv) + ((r / n) * L + row0 + r % n) * D;
    const T *x = qkv + r * 3 * D + part * D;
    T *dst = dqkv + r * 3 * D + part * D;
    const void *w = part == 0 ? qw : part == 1 ? kw : NULL;
    const kn_dtype wdt = part == 0 ? qdt : kdt;
    if (!w) {
        for (int64_t j = threadIdx.x * V; j < D; j += (int64_t)blockDim.x * V)
            *(pack<T, V> *)(dst + j) = *(const pack<T, V> *)(src + j);
        return;
    }
    const int lane = threadIdx.x % 32;
    for (int64_t h = threadIdx.x / 32; h < D / Dh; h += blockDim.x / 32) {
        auto each = [&](auto f) {
            for (int64_t j = lane * V; j < Dh; j += 32 * V) {
                float xv[V], gv[V];
                load_vec(xv, x + h * Dh + j);
                load_vec(gv, src + h * Dh + j);
                for (int e = 0; e < V; e++)
                    gv[e] *= load_any(w, wdt, j + e);
                f(j, xv, gv);
            }
        };
        double ss = 0.0, sgx = 0.0;
        each([&](int64_t, float(&xv)[V], float(&gv)[V]) {
            for (int e = 0; e < V; e++) {
                ss += (double)__fmul_rn(xv[e], xv[e]);
                sgx += (double)gv[e] * xv[e];
            }
        });
        const float rs = rms_rstd(warp_sum(ss), Dh, eps);
        const float c = rs * rs * rs * (float)(warp_sum(sgx) / (double)Dh);
        each([&](int64_t j, float(&xv)[V], float(&gv)[V]) {
            for (int e = 0; e < V; e++)
                gv[e] = rs * gv[e] - xv[e] * c;
            store_vec(dst + h * Dh + j, gv);
        });
    }
}

int cuda_qkv_split_grad(kn_ctx *ctx, kn_tensor *dqkv, const kn_tensor *dq, const kn_tensor *dk,
                        const kn_tensor *dv, int64_t row0, const kn_tensor *qkv, int heads,
                        const kn_tensor *q_norm, const kn_tensor *k_norm, float eps)
{
    const int64_t rows = qkv->shape[0] * qkv->shape[1], D = dq->shape[2], Dh = D / heads;
    if (rows == 0 || D == 0) return 0;
    bool wide = wide_rows(Dh, kn_dtype_size(qkv->dtype),
                          {dqkv->data, dq->data, dk->data, dv->data, qkv->data});
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act_vec(qkv->dtype, wide, [&](auto tag, auto vw) {
        using T = decltype(tag);
        constexpr int V = decltype(vw)::value;
        qkv_split_grad_kernel<T, V><<<dim3((unsigned)rows, 3), cuda_row_threads(D), 0, s>>>(
            (T *)dqkv->data, (const T *)dq->data, (const T *)dk->data, (const T *)dv->data,
            (const T *)qkv->data, qkv->shape[1], dq->shape[1], row0, D, Dh,
            q_norm ? q_norm->data : NULL, k_norm ? k_norm->data : NULL,
            q_norm ? q_norm->dtype : KN_F32, k_norm ? k_norm->dtype : KN_F32, eps);
        return cuda_launched("kn_qkv_split_grad");
    });
}
