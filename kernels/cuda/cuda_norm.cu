/* CUDA backend: LayerNorm, RMSNorm, GroupNorm and the adaLN modulation that follows a LayerNorm.
 * Statistics are summed in double, like the CPU twin, so both round the same mean and variance
 * to float32; the normalisation is then PyTorch's float32 formula with explicitly rounded
 * intrinsics (no FMA contraction). 16-bit tensors are normalised in float32 and rounded where
 * torch's 16-bit modules round. */
#include "kernels/cuda/cuda_common.h"

/* GroupNorm partial sums: elements per statistics block, and at most this many blocks a group. */
#define GN_CHUNK ((int64_t)1 << 14)
#define GN_MAX_CHUNKS 256

/* Mean and 1/sqrt(biased variance + eps) of row x[0, D), two passes in double. */
template <typename T>
static __device__ void row_moments(const T *x, int64_t D, float eps, double *red, float *mean_out,
                                   float *rstd_out)
{
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        s += (double)to_f(x[j]);
    double mean = D ? block_sum(s, red) / (double)D : 0.0;
    double v = 0.0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        double d = (double)to_f(x[j]) - mean;
        v += d * d;
    }
    v = block_sum(v, red);
    float var = D ? (float)(v / (double)D) : 0.0f;
    *mean_out = (float)mean;
    *rstd_out = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
}

/* (x * rstd + (-rstd * mean)) * w + b per row (w, b NULL: no affine), rounded once at the end
 * as torch's fused layer_norm kernel does for 16-bit tensors. */
template <typename T>
__global__ void layer_norm_kernel(T *y, const T *x, int64_t D, const void *w, kn_dtype wdt,
                                  const void *b, kn_dtype bdt, float eps)
{
    __shared__ double red[32];
    const T *xr = x + blockIdx.x * D;
    T *yr = y + blockIdx.x * D;
    float mean, rstd;
    row_moments(xr, D, eps, red, &mean, &rstd);
    float bias = __fmul_rn(-rstd, mean);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        float t = __fadd_rn(__fmul_rn(to_f(xr[j]), rstd), bias);
        if (w) t = __fmul_rn(t, load_any(w, wdt, j));
        if (b) t = __fadd_rn(t, load_any(b, bdt, j));
        yr[j] = from_f<T>(t);
    }
}

int cuda_layer_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                    const kn_tensor *b, float eps)
{
    int64_t R = kn_rows(x), D = kn_cols(x);
    if (R == 0) return 0;
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act(x->dtype, [&](auto tag) {
        using T = decltype(tag);
        layer_norm_kernel<T><<<(unsigned)R, cuda_row_threads(D), 0, s>>>(
            (T *)y->data, (const T *)x->data, D, w ? w->data : NULL, w ? w->dtype : KN_F32,
            b ? b->data : NULL, b ? b->dtype : KN_F32, eps);
        return cuda_launched("kn_layer_norm");
    });
}

/* Value j of the normalised row: x * rs, then w * that; diffusers' RMSNorm rounds the
 * normalised value to the 16-bit weight dtype before the product. */
template <typename T>
static __device__ __forceinline__ T rms_value(float x, float rs, const void *w, kn_dtype wdt,
                                              int64_t j)
{
    float t = __fmul_rn(x, rs);
    if (w) t = __fmul_rn(load_any(w, wdt, j), round_to<T>(t));
    return from_f<T>(t);
}

/* x * rsqrt(mean(x^2) + eps), then w * that. */
template <typename T>
__global__ void rms_norm_kernel(T *y, const T *x, int64_t D, const void *w, kn_dtype wdt, float eps)
{
    __shared__ double red[32];
    const T *xr = x + blockIdx.x * D;
    T *yr = y + blockIdx.x * D;
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        float v = to_f(xr[j]);
        s += (double)__fmul_rn(v, v);
    }
    float rs = rms_rstd(block_sum(s, red), D, eps);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        yr[j] = rms_value<T>(to_f(xr[j]), rs, w, wdt, j);
}

int cuda_rms_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps)
{
    int64_t R = kn_rows(x), D = kn_cols(x);
    if (R == 0) return 0;
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act(x->dtype, [&](auto tag) {
        using T = decltype(tag);
        rms_norm_kernel<T><<<(unsigned)R, cuda_row_threads(D), 0, s>>>(
            (T *)y->data, (const T *)x->data, D, w ? w->data : NULL, w ? w->dtype : KN_F32, eps);
        return cuda_launched("kn_rms_norm");
    });
}

/* One row of a joined q/k/v product per block: its q, k or v part (blockIdx.y) into row row0 +
 * r % n of sample r / n, each head of q and k RMS-normalised by one warp (w NULL: copied). */
template <typename T>
__global__ void qkv_split_kernel(T *q, T *k, T *v, const T *qkv, int64_t n, int64_t L, int64_t row0,
                                 int64_t D, int64_t Dh, const void *qw, const void *kw,
                                 kn_dtype qdt, kn_dtype kdt, float eps)
{
    const int64_t r = blockIdx.x;
    const int part = blockIdx.y;
    const T *src = qkv + r * 3 * D + part * D;
    T *dst = (part == 0 ? q : part == 1 ? k : v) + ((r / n) * L + row0 + r % n) * D;
    const void *w = part == 0 ? qw : part == 1 ? kw : NULL;
    const kn_dtype wdt = part == 0 ? qdt : kdt;
    if (!w) {
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
            dst[j] = src[j];
        return;
    }
    const int lane = threadIdx.x % 32;
    for (int64_t h = threadIdx.x / 32; h < D / Dh; h += blockDim.x / 32) {
        const T *xh = src + h * Dh;
        double s = 0.0;
        for (int64_t j = lane; j < Dh; j += 32) {
            float x = to_f(xh[j]);
            s += (double)__fmul_rn(x, x);
        }
        float rs = rms_rstd(warp_sum(s), Dh, eps);
        for (int64_t j = lane; j < Dh; j += 32)
            dst[h * Dh + j] = rms_value<T>(to_f(xh[j]), rs, w, wdt, j);
    }
}

int cuda_qkv_split(kn_ctx *ctx, kn_tensor *q, kn_tensor *k, kn_tensor *v, int64_t row0,
                   const kn_tensor *qkv, int heads, const kn_tensor *q_norm,
                   const kn_tensor *k_norm, float eps)
{
    const int64_t rows = qkv->shape[0] * qkv->shape[1], D = q->shape[2];
    if (rows == 0) return 0;
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act(qkv->dtype, [&](auto tag) {
        using T = decltype(tag);
        qkv_split_kernel<T><<<dim3((unsigned)rows, 3), cuda_row_threads(D), 0, s>>>(
            (T *)q->data, (T *)k->data, (T *)v->data, (const T *)qkv->data, qkv->shape[1],
            q->shape[1], row0, D, D / heads, q_norm ? q_norm->data : NULL,
            k_norm ? k_norm->data : NULL, q_norm ? q_norm->dtype : KN_F32,
            k_norm ? k_norm->dtype : KN_F32, eps);
        return cuda_launched("kn_qkv_split");
    });
}

/* diffusers' AdaLayerNormZero: LayerNorm(x) * (1 + scale) + shift, one block per token. */
template <typename T>
__global__ void ln_modulate_kernel(T *y, const T *x, const T *mod, int64_t S, int64_t D, int64_t C,
                                   int shift_idx, int scale_idx, float eps)
{
    __shared__ double red[32];
    int64_t row = blockIdx.x, n = row / S;
    const T *xr = x + row * D, *shift = mod + (n * C + shift_idx) * D;
    const T *scale = mod + (n * C + scale_idx) * D;
    T *yr = y + row * D;
    float mean, rstd;
    row_moments(xr, D, eps, red, &mean, &rstd);
    float bias = __fmul_rn(-rstd, mean);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        float t = round_to<T>(__fadd_rn(__fmul_rn(to_f(xr[j]), rstd), bias));
        float s1 = round_to<T>(__fadd_rn(1.0f, to_f(scale[j])));
        t = round_to<T>(__fmul_rn(t, s1));
        yr[j] = from_f<T>(__fadd_rn(t, to_f(shift[j])));
    }
}

int cuda_ln_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *mod,
                     int shift_idx, int scale_idx, float eps)
{
    int64_t B = x->shape[0], D = kn_cols(x), S = kn_numel(x) / (B * D), C = mod->shape[1];
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act(x->dtype, [&](auto tag) {
        using T = decltype(tag);
        ln_modulate_kernel<T><<<(unsigned)(B * S), cuda_row_threads(D), 0, s>>>(
            (T *)y->data, (const T *)x->data, (const T *)mod->data, S, D, C, shift_idx, scale_idx,
            eps);
        return cuda_launched("kn_ln_modulate");
    });
}

/* Partial sums of x and x^2 (double) over chunk blockIdx.x of group blockIdx.y; the groups of
 * one sample are contiguous, so group (n, g) is elements [(n groups + g) len, + len). */
template <typename T>
__global__ void gn_partial_kernel(double *part, const T *x, int64_t len, int64_t chunk)
{
    __shared__ double red[32];
    const T *xg = x + blockIdx.y * len;
    int64_t lo = blockIdx.x * chunk, hi = lo + chunk < len ? lo + chunk : len;
    double s = 0.0, ss = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        double v = (double)to_f(xg[i]);
        s += v;
        ss += v * v;
    }
    s = block_sum(s, red);
    ss = block_sum(ss, red);
    if (threadIdx.x == 0) {
        part[(blockIdx.y * gridDim.x + blockIdx.x) * 2] = s;
        part[(blockIdx.y * gridDim.x + blockIdx.x) * 2 + 1] = ss;
    }
}

/* stats[2 g] = mean, stats[2 g + 1] = rstd of each group, from its chunks' partial sums. */
__global__ void gn_finish_kernel(float *stats, const double *part, int64_t ngroups, int chunks,
                                 int64_t len, float eps)
{
    int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (g >= ngroups) return;
    double s = 0.0, ss = 0.0;
    for (int c = 0; c < chunks; c++) {
        s += part[(g * chunks + c) * 2];
        ss += part[(g * chunks + c) * 2 + 1];
    }
    double mean = s / (double)len, var = ss / (double)len - mean * mean;
    float v = var > 0.0 ? (float)var : 0.0f;
    stats[2 * g] = (float)mean;
    stats[2 * g + 1] = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(v, eps)));
}

/* PyTorch's folded affine: y = x * (rstd w) + (-(rstd w) mean + b). */
template <typename T>
__global__ void gn_apply_kernel(T *y, const T *x, const float *stats, const void *w, kn_dtype wdt,
                                const void *b, kn_dtype bdt, int64_t C, int64_t HW, int64_t cg,
                                int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t nc = i / HW, c = nc % C, g = nc / C * (C / cg) + c / cg;
        float scale = __fmul_rn(stats[2 * g + 1], load_any(w, wdt, c));
        float bias = __fadd_rn(__fmul_rn(-scale, stats[2 * g]), load_any(b, bdt, c));
        y[i] = from_f<T>(__fadd_rn(__fmul_rn(to_f(x[i]), scale), bias));
    }
}

int cuda_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                    const kn_tensor *b, int groups, float eps)
{
    int64_t B = x->shape[0], C = x->shape[1], n = kn_numel(x), HW = n / (B * C), cg = C / groups;
    int64_t len = cg * HW, ngroups = B * groups;
    int64_t chunks = (len + GN_CHUNK - 1) / GN_CHUNK;
    if (chunks > GN_MAX_CHUNKS) chunks = GN_MAX_CHUNKS;
    if (chunks < 1) chunks = 1;
    int64_t chunk = (len + chunks - 1) / chunks;
    size_t part_bytes = (size_t)(ngroups * chunks) * 2 * sizeof(double);
    char *buf = (char *)cuda_scratch(ctx, CUDA_SLOT_PARAM2,
                                     part_bytes + (size_t)ngroups * 2 * sizeof(float));
    if (!buf) return err_code();
    double *part = (double *)buf;
    float *stats = (float *)(buf + part_bytes);
    cudaStream_t s = cuda_st(ctx)->stream;
    unsigned grid = cuda_grid(ctx, n);
    return with_act(x->dtype, [&](auto tag) {
        using T = decltype(tag);
        gn_partial_kernel<T><<<dim3((unsigned)chunks, (unsigned)ngroups), CUDA_THREADS, 0, s>>>(
            part, (const T *)x->data, len, chunk);
        KN_TRY(cuda_launched("kn_group_norm"));
        gn_finish_kernel<<<(unsigned)((ngroups + 127) / 128), 128, 0, s>>>(stats, part, ngroups,
                                                                           (int)chunks, len, eps);
        KN_TRY(cuda_launched("kn_group_norm"));
        gn_apply_kernel<T><<<grid, CUDA_THREADS, 0, s>>>((T *)y->data, (const T *)x->data, stats,
                                                         w->data, w->dtype, b->data, b->dtype, C,
                                                         HW, cg, n);
        return cuda_launched("kn_group_norm");
    });
}
