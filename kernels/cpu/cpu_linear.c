/* CPU backend: the linear layer (the hot path of the text encoders and the transformer), the
 * embedding lookup, and widening of weights stored as F16, BF16 or FP8 into float32 scratch.
 * F32 weights go to BLAS straight from their (possibly mmapped) memory; narrower weights are
 * widened a panel of rows at a time so that a full float32 copy of a weight never exists. */
#include "kernels/cpu/cpu_ops.h"
#include "kernels/kn_convert.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* The scalar F16 decoder is branchy; F16C decodes eight values per instruction. With few
 * activation rows the product is bound by this widening, so BF16 gets a vector twin too. */
__attribute__((target("f16c,avx"))) static void widen_f16_f16c(float *dst, const uint16_t *src,
                                                               size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++)
        dst[i] = kn_f16_to_f32(src[i]);
}

__attribute__((target("avx2"))) static void widen_bf16_avx2(float *dst, const uint16_t *src,
                                                            size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(h, 16));
    }
    for (; i < n; i++)
        dst[i] = kn_bf16_to_f32(src[i]);
}

static int have_f16c, have_avx2;

/* Run at load time, so that the widening threads only ever read the flags. */
__attribute__((constructor)) static void detect_cpu(void)
{
    __builtin_cpu_init();
    have_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
    have_avx2 = __builtin_cpu_supports("avx2");
}
#endif

static void widen_serial(float *dst, const void *src, kn_dtype dt, size_t n)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (dt == KN_F16 && have_f16c) {
        widen_f16_f16c(dst, src, n);
        return;
    }
    if (dt == KN_BF16 && have_avx2) {
        widen_bf16_avx2(dst, src, n);
        return;
    }
#endif
    kn_convert_to_f32(dst, src, dt, n);
}

/* Elements per unit of a split widening: a multiple of 8 keeps the vector loops whole. */
#define WIDEN_CHUNK ((int64_t)1 << 12)

struct widen_job {
    float *dst;
    const char *src;
    kn_dtype dt;
    int64_t n;
};

static void widen_range(void *p, int64_t lo, int64_t hi)
{
    const struct widen_job *j = p;
    int64_t off = lo * WIDEN_CHUNK, end = hi * WIDEN_CHUNK < j->n ? hi * WIDEN_CHUNK : j->n;
    widen_serial(j->dst + off, j->src + (size_t)off * kn_dtype_size(j->dt), j->dt,
                 (size_t)(end - off));
}

/* A large widening (a weight panel) is split over the worker threads. */
static void widen(float *dst, const void *src, kn_dtype dt, size_t n)
{
    struct widen_job j = {dst, src, dt, (int64_t)n};
    cpu_parallel((j.n + WIDEN_CHUNK - 1) / WIDEN_CHUNK, 2 * j.n, widen_range, &j);
}

const float *cpu_f32_span(kn_ctx *ctx, int slot, const kn_tensor *t, int64_t off, int64_t n)
{
    if (t->dtype == KN_F32) return (const float *)t->data + off;
    float *dst = cpu_scratch(ctx, slot, (size_t)(n > 0 ? n : 1) * sizeof(float));
    widen(dst, (const char *)t->data + (size_t)off * kn_dtype_size(t->dtype), t->dtype, (size_t)n);
    return dst;
}

/* y[M, N] (row stride ldy) = x[M, K] . w[N, K]^T. */
static void gemm_nt(int64_t M, int64_t N, int64_t K, const float *x, const float *w, float *y,
                    int64_t ldy)
{
    cpu_gemm g = {.M = M,
                  .N = N,
                  .K = K,
                  .alpha = 1.0f,
                  .a = x,
                  .lda = K,
                  .b = w,
                  .ldb = K,
                  .b_trans = 1,
                  .c = y,
                  .ldc = ldy};
    cpu_gemm_parallel(&g);
}

/* Rows of w widened per panel. With few activation rows the product is memory bound and a
 * panel that stays in L2 while BLAS reads it is best. With many rows every panel costs BLAS a
 * fresh packing of x, so panels are large (16 MiB) and split N evenly, which measured within a
 * few percent of a single sgemm on the whole float32 weight (bench_kernels). */
static int64_t panel_rows(int64_t M, int64_t N, int64_t K)
{
    int64_t floats = M <= 16 ? ((int64_t)64 << 10) : ((int64_t)4 << 20);
    int64_t per = floats / K > 16 ? floats / K : 16;
    int64_t panels = (N + per - 1) / per;
    int64_t rows = (N + panels - 1) / panels;
    return (rows + 15) / 16 * 16;
}

struct bias_job {
    float *y;
    const float *b;
    int64_t N;
};

static void bias_range(void *p, int64_t lo, int64_t hi)
{
    const struct bias_job *j = p;
    for (int64_t i = lo; i < hi; i++) {
        float *row = j->y + i * j->N;
        for (int64_t k = 0; k < j->N; k++)
            row[k] += j->b[k];
    }
}

int cpu_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
               const kn_tensor *b)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_linear(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), w, b));
    int64_t M = kn_rows(x), K = kn_cols(x), N = kn_cols(y);
    float *yd = y->data;
    const float *xd = x->data;
    if (M == 0 || N == 0) return 0;
    if (K == 0) {
        for (int64_t i = 0; i < M * N; i++)
            yd[i] = 0.0f;
    } else if (w->dtype == KN_F32 && M == 1) {
        /* One row against a float32 weight streams the weight once at memory speed (a
         * matrix-vector product per part). */
        gemm_nt(M, N, K, xd, w->data, yd, N);
    } else {
        /* A large float32 product is one BLAS call on the weight's own memory. Small M runs
         * panel by panel whatever the dtype: OpenBLAS's sgemm with a handful of rows and a
         * wide weight runs at a fraction of memory speed (measured 2.9 GB/s for 2 x 1536 x
         * 13824), while panels that fit in L2 run several times faster. (sgemv on such
         * panels measured slower and less steady than sgemm.) */
        int64_t step = w->dtype == KN_F32 && M > 16 ? N : panel_rows(M, N, K);
        for (int64_t n0 = 0; n0 < N; n0 += step) {
            int64_t nn = N - n0 < step ? N - n0 : step;
            const float *wp = cpu_f32_span(ctx, CPU_SLOT_WEIGHT, w, n0 * K, nn * K);
            gemm_nt(M, nn, K, xd, wp, yd + n0, N);
        }
    }
    if (b) {
        struct bias_job j = {yd, cpu_f32_span(ctx, CPU_SLOT_PARAM, b, 0, N), N};
        cpu_parallel(M, M * N, bias_range, &j);
    }
    return 0;
}

int cpu_embedding(kn_ctx *ctx, kn_tensor *y, const kn_tensor *table, const int32_t *ids, int n)
{
    if (y->dtype != KN_F32) CPU_HALF(cpu_embedding(ctx, cpu_half_out(H, y, 0), table, ids, n));
    int64_t D = kn_cols(table);
    size_t es = kn_dtype_size(table->dtype);
    float *yd = y->data;
    for (int i = 0; i < n; i++)
        widen(yd + (int64_t)i * D, (const char *)table->data + (size_t)ids[i] * (size_t)D * es,
              table->dtype, (size_t)D);
    return 0;
}
