/* CPU backend: the linear layer (the hot path of the text encoders and the transformer) with
 * its bias and activation as the product's epilogue (kn_linear, kn_linear_act), its input
 * gradient (kn_linear_grad: the same tiles with the weight read untransposed), the embedding
 * lookup, and widening of weights stored as F16, BF16 or FP8 to float32. */
#include "kernels/cpu/cpu_matmul.h"
#include "kernels/kn_grad.h"

#include "common/err.h"

#include <string.h>

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

void cpu_widen(float *dst, const void *src, kn_dtype dt, size_t n)
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

void cpu_weight_panel(float *dst, const void *w, kn_dtype dt, int64_t ldw, int trans, int64_t n0,
                      int64_t nt, int64_t K)
{
    const size_t es = kn_dtype_size(dt);
    const char *src = w;
    if (!trans) {
        for (int64_t r = 0; r < nt; r++)
            cpu_widen(dst + r * K, src + (size_t)((n0 + r) * ldw) * es, dt, (size_t)K);
        return;
    }
    float row[MM_TILE_N];
    for (int64_t r = 0; r < K; r++) {
        cpu_widen(row, src + (size_t)(r * ldw + n0) * es, dt, (size_t)nt);
        for (int64_t c = 0; c < nt; c++)
            dst[c * K + r] = row[c];
    }
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
    cpu_widen(j->dst + off, j->src + (size_t)off * kn_dtype_size(j->dt), j->dt,
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
    if (!dst) return NULL;
    widen(dst, (const char *)t->data + (size_t)off * kn_dtype_size(t->dtype), t->dtype, (size_t)n);
    return dst;
}

/* y = act(x . w^T + b), each row alone when single (one-row tiles); with trans y = x . w. */
static int linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                  const kn_tensor *b, int single, int trans, int has_act, kn_act act)
{
    int64_t M = kn_rows(x), K = kn_cols(x), N = kn_cols(y);
    float *yd = y->data;
    if (M == 0 || N == 0) return 0;
    const float *bias = b ? cpu_f32_span(ctx, CPU_SLOT_PARAM, b, 0, N) : NULL;
    if (b && !bias) return -1;
    cpu_mm g = {.M = M,
                .N = N,
                .K = K,
                .a = x->data,
                .lda = K,
                .b = w->data,
                .ldb = kn_cols(w),
                .b_form = trans ? MM_PLAIN_KN : MM_PLAIN_NT,
                .b_dtype = w->dtype,
                .pack_chunks = !single,
                .single_rows = single,
                .bias = bias,
                .has_act = has_act,
                .act = act,
                .c = yd,
                .ldc = N};
    if (K == 0) { /* an empty sum: act(bias), or act(0) */
        for (int64_t i = 0; i < M; i++) {
            float *row = yd + i * N;
            if (bias)
                memcpy(row, bias, (size_t)N * sizeof(float));
            else
                memset(row, 0, (size_t)N * sizeof(float));
            if (has_act) cpu_act_row(row, N, act);
        }
        return 0;
    }
    /* A bf16 context multiplies weights packed once; a float32 one widens (and for whole tiles
     * packs) a chunk of rows per task, so that a full float32 copy of a 16-bit weight never
     * exists. */
    if (ctx->matmul == KN_BF16 && !(g.packed = cpu_packed_get(ctx, w, KN_BF16, single, trans)))
        return err_code();
    int rc = cpu_mm_run(&g, 1);
    return rc < 0 ? err_prefix(rc, "a [%lld, %lld] x [%lld, %lld]%s product: ", (long long)M,
                               (long long)K, (long long)kn_rows(w), (long long)kn_cols(w),
                               trans ? "" : "^T")
                  : 0;
}

int cpu_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
               const kn_tensor *b)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_linear(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), w, b));
    return linear(ctx, y, x, w, b, 0, 0, 0, KN_ACT_SILU);
}

int cpu_linear_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *w)
{
    if (dx->dtype != KN_F32)
        CPU_HALF(cpu_linear_grad(ctx, cpu_half_out(H, dx, 0), cpu_half_in(H, dy), w));
    return linear(ctx, dx, dy, w, NULL, 0, 1, 0, KN_ACT_SILU);
}

int cpu_linear_act(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, kn_act act)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_linear_act(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), w, b, act));
    return linear(ctx, y, x, w, b, 0, 0, 1, act);
}

int cpu_linear_rows(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                    const kn_tensor *b)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_linear_rows(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), w, b));
    return linear(ctx, y, x, w, b, 1, 0, 0, KN_ACT_SILU);
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
