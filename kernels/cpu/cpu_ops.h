/* Internal to kernels/: the CPU backend's op entry points (the twins of kn_ops.h and
 * kn_image.h) and the helpers the cpu_*.c files share. The front-ends in kernels/kn_ops.c and
 * kernels/kn_image_ops.c have checked shapes and dtypes before any of these runs. The ops
 * compute on F32 activations; 16-bit ones go through CPU_HALF below. Weights may be of any
 * float dtype. Not for use outside kernels/. */
#ifndef FOCUS_KERNELS_CPU_CPU_OPS_H
#define FOCUS_KERNELS_CPU_CPU_OPS_H

#include "kernels/kn_backend.h"
#include "kernels/kn_image.h"
#include "kernels/kn_ops.h"

#include <setjmp.h>

/* Scratch slot use, so that an op's buffers never collide (slot 0 is also kn_copy's). */
enum {
    CPU_SLOT_WEIGHT = 0, /* a panel of widened weight rows */
    CPU_SLOT_WORK = 1,   /* attention scores */
    CPU_SLOT_PARAM = 2,  /* a widened bias or norm weight */
    CPU_SLOT_PARAM2 = 3, /* a second widened parameter (a norm's bias) */
};

/* Below this many elements touched a loop runs on the calling thread alone: waking the
 * workers costs more than the other cores save. */
#define CPU_PAR_MIN ((int64_t)1 << 15)

/* fn(arg, lo, hi) over [0, n) split into contiguous ranges, one per thread of the pool, when
 * `work` (elements touched) reaches CPU_PAR_MIN; otherwise fn(arg, 0, n) on the caller (also
 * when another caller holds the pool). Returns when every range is done. Range k of p is
 * [n k / p, n (k + 1) / p). fn may run cpu_mm_run(g, 0), never cpu_parallel. */
typedef void (*cpu_range_fn)(void *arg, int64_t lo, int64_t hi);
void cpu_parallel(int64_t n, int64_t work, cpu_range_fn fn, void *arg);

/* Threads that share a cpu_parallel loop, the caller included (starts the pool). */
int cpu_pool_threads(void);

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* Whether the AVX2 + FMA paths below may run on this CPU. */
static inline int cpu_avx2_fma(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* exp of eight floats <= 0 (Cephes' expf: Cody-Waite reduction by ln 2 and a degree-5
 * polynomial, within an ulp or two of expf); below -87.3 the result is 0, and NaN stays NaN. */
__attribute__((target("avx2,fma"))) static inline __m256 cpu_exp8_nonpos(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.33654f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(lo, x);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_cvtps_epi32(fx);
    e = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
/* tanh of eight floats as Cephes' tanhf computes it: an odd polynomial below 0.625 and
 * (1 - e) / (1 + e) with e = exp(-2|x|) above; within a few ulps of tanhf, as PyTorch's own
 * vectorised tanh is. */
__attribute__((target("avx2,fma"))) static inline __m256 cpu_tanh8(__m256 x)
{
    const __m256 neg0 = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 ax = _mm256_andnot_ps(neg0, x);
    __m256 e = cpu_exp8_nonpos(_mm256_mul_ps(ax, _mm256_set1_ps(-2.0f)));
    __m256 big = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
    __m256 z = _mm256_mul_ps(x, x);
    __m256 q = _mm256_set1_ps(-5.70498872745e-3f);
    q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(2.06390887954e-2f));
    q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(-5.37397155531e-2f));
    q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(1.33314422036e-1f));
    q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(-3.33332819422e-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(q, z), x, x);
    __m256 t = _mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
    return _mm256_or_ps(t, _mm256_and_ps(neg0, x));
}
#endif

/* Row statistics (cpu_norm.c): float32 sums in 32 lanes combined pairwise, in an order fixed
 * by the row's length. The sum of x[0, n); of (x - c)^2; of a * b; the mean and 1/sqrt(biased
 * variance + eps) in two passes; 1/sqrt(mean(x^2) + eps), an RMSNorm's scale. */
float cpu_sum_lanes(const float *x, int64_t n);
float cpu_sum_sq_lanes(const float *x, int64_t n, float c);
float cpu_dot_lanes(const float *a, const float *b, int64_t n);
void cpu_moments(const float *x, int64_t n, float eps, float *mean, float *rstd);
float cpu_rms_scale(const float *x, int64_t n, float eps);

/* Where the rows of a joined q/k/v product go and how its heads are normalised, for
 * kn_qkv_split and its gradient (cpu_norm.c): row r of qkv [B, n, 3D] is row row0 + r % n of
 * sample r / n of q, k and v [B, L, D], at element cpu_qkv_row_at; qw and kw are the widened
 * norm weights [Dh], or NULL for none. cpu_qkv_rows_init: 0, or -1 with the error set. */
typedef struct cpu_qkv_rows {
    const float *qw, *kw;
    int64_t n, L, row0, D, Dh;
    float eps;
} cpu_qkv_rows;
int cpu_qkv_rows_init(kn_ctx *ctx, cpu_qkv_rows *g, const kn_tensor *qkv, const kn_tensor *q,
                      int64_t row0, int heads, const kn_tensor *q_norm, const kn_tensor *k_norm,
                      float eps);
static inline int64_t cpu_qkv_row_at(const cpu_qkv_rows *g, int64_t r)
{
    return ((r / g->n) * g->L + g->row0 + r % g->n) * g->D;
}

/* 16-bit activations (cpu_half.c): an op whose output is F16 or BF16 runs itself again on
 * float32 twins and rounds its outputs back, by
 *     if (y->dtype != KN_F32) CPU_HALF(cpu_op(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x)));
 * cpu_half_in gives t itself when it is F32 (or NULL), else a widened copy; cpu_half_out gives
 * a twin that cpu_half_finish rounds into t (load: widen t's values into it first, for an
 * output the op also reads). cpu_half_finish frees the twins and returns rc. A twin is made
 * while the op's arguments are evaluated, before the op runs, so a twin that cannot be
 * allocated jumps back to CPU_HALF (longjmp), which frees the others and returns the error
 * without running the op. The state is the thread's own (the F32 run of an op never comes
 * back through CPU_HALF), so that nothing local to the op changes between setjmp and longjmp. */
#define CPU_HALF_MAX 8
typedef struct cpu_half {
    kn_tensor twin[CPU_HALF_MAX];
    kn_tensor *dst[CPU_HALF_MAX];
    int n;
    jmp_buf no_memory;
} cpu_half;
cpu_half *cpu_half_begin(void);
const kn_tensor *cpu_half_in(cpu_half *h, const kn_tensor *t);
kn_tensor *cpu_half_out(cpu_half *h, kn_tensor *t, int load);
int cpu_half_finish(cpu_half *h, int rc);
#define CPU_HALF(call)                                                                             \
    do {                                                                                           \
        cpu_half *const H = cpu_half_begin();                                                      \
        if (setjmp(H->no_memory)) return cpu_half_finish(H, -1);                                   \
        return cpu_half_finish(H, (call));                                                         \
    } while (0)

/* Elements [off, off + n) of float tensor t as float32: t's own memory when it is F32,
 * otherwise widened into scratch `slot` (valid until the slot's next use); NULL, with the
 * error set, when the scratch cannot grow. */
const float *cpu_f32_span(kn_ctx *ctx, int slot, const kn_tensor *t, int64_t off, int64_t n);

int cpu_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
               const kn_tensor *b);
int cpu_linear_act(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, kn_act act);
int cpu_linear_rows(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                    const kn_tensor *b);
int cpu_embedding(kn_ctx *ctx, kn_tensor *y, const kn_tensor *table, const int32_t *ids, int n);
int cpu_layer_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, float eps);
int cpu_rms_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps);
int cpu_qkv_split(kn_ctx *ctx, kn_tensor *q, kn_tensor *k, kn_tensor *v, int64_t row0,
                  const kn_tensor *qkv, int heads, const kn_tensor *q_norm, const kn_tensor *k_norm,
                  float eps);
int cpu_activate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act);
int cpu_add(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int cpu_sub(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int cpu_mul(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int cpu_add_scaled(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, float s, const kn_tensor *b);
int cpu_scale(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s);
int cpu_attention(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                  const kn_tensor *v, const kn_attn_args *args);

int cpu_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
               const kn_tensor *b, int stride, int pad);
int cpu_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, int groups, float eps);
int cpu_upsample_nearest2x(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int cpu_transpose(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int cpu_ln_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *mod,
                    int shift_idx, int scale_idx, float eps);
int cpu_gate_add(kn_ctx *ctx, kn_tensor *x, const kn_tensor *y, const kn_tensor *mod, int gate_idx);

#endif
