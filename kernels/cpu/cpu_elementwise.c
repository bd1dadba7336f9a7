/* CPU backend: activations, elementwise arithmetic and the gated residual of adaLN blocks, on
 * float32 tensors. Each formula follows PyTorch's float32 CPU kernel operation by operation
 * (same roundings in the same order), so outputs match the reference to an ulp or so. The
 * loops run element by element, which keeps them correct when y aliases an input; large ones
 * are split over the worker threads by element or row, which leaves every result unchanged. */
#include "kernels/cpu/cpu_matmul.h"

#include <math.h>

static float act_silu(float x)
{
    return x / (1.0f + expf(-x));
}

static float act_gelu_erf(float x)
{
    return x * 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
}

static float act_gelu_tanh(float x)
{
    const float beta = (float)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = 0.044715f;
    float cube = x * x * x;
    float inner = beta * (x + kappa * cube);
    return 0.5f * x * (1.0f + tanhf(inner));
}

/* transformers' QuickGELUActivation is `x * torch.sigmoid(1.702 * x)`: three tensor ops. */
static float act_quick_gelu(float x)
{
    float t = 1.702f * x;
    float s = 1.0f / (1.0f + expf(-t));
    return x * s;
}

/* y[0, n) = act(x[0, n)). */
struct act_job {
    float *y;
    const float *x;
    int64_t n;
    kn_act act;
};

#if defined(__x86_64__) && defined(__GNUC__)
/* act_gelu_tanh on y[lo, m) in eight lanes, the same operations in the same order but for
 * tanh; returns m, the end of the whole vectors. */
__attribute__((target("avx2,fma"))) static int64_t gelu_tanh_avx2(float *y, const float *x,
                                                                  int64_t lo, int64_t hi)
{
    const __m256 beta = _mm256_set1_ps((float)(M_SQRT2 * M_2_SQRTPI * 0.5));
    const __m256 kappa = _mm256_set1_ps(0.044715f), half = _mm256_set1_ps(0.5f);
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 cube = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
        __m256 inner = _mm256_mul_ps(beta, _mm256_add_ps(v, _mm256_mul_ps(kappa, cube)));
        __m256 t = _mm256_add_ps(_mm256_set1_ps(1.0f), cpu_tanh8(inner));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(half, v), t));
    }
    return i;
}
#endif

static float (*act_fn(kn_act act))(float)
{
    return act == KN_ACT_SILU        ? act_silu
           : act == KN_ACT_GELU_ERF  ? act_gelu_erf
           : act == KN_ACT_GELU_TANH ? act_gelu_tanh
                                     : act_quick_gelu;
}

/* y[0, n) = act(x[0, n)): the whole vectors in eight lanes, the tail scalar. */
static void act_row(float *y, const float *x, int64_t n, kn_act act)
{
    int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (act == KN_ACT_GELU_TANH && cpu_avx2_fma()) i = gelu_tanh_avx2(y, x, 0, n);
#endif
    float (*f)(float) = act_fn(act);
    for (; i < n; i++)
        y[i] = f(x[i]);
}

void cpu_act_row(float *x, int64_t n, kn_act act)
{
    act_row(x, x, n, act);
}

/* Elements are split in whole units of eight, so that whether an element takes the vector or
 * the scalar path depends on its index alone (only the tensor's last partial unit is scalar),
 * however the units are spread over threads. */
#define ACT_UNIT 8

static void act_range(void *p, int64_t lo, int64_t hi)
{
    const struct act_job *j = p;
    int64_t i0 = lo * ACT_UNIT, i1 = hi * ACT_UNIT < j->n ? hi * ACT_UNIT : j->n;
    act_row(j->y + i0, j->x + i0, i1 - i0, j->act);
}

int cpu_activate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_activate(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), act));
    struct act_job j = {y->data, x->data, kn_numel(x), act};
    cpu_parallel((j.n + ACT_UNIT - 1) / ACT_UNIT, j.n, act_range, &j);
    return 0;
}

enum binop { OP_ADD, OP_SUB, OP_MUL, OP_ADD_SCALED, OP_SCALE };

/* y = a op b (OP_ADD_SCALED: a + s * b; OP_SCALE: a * s). */
struct bin_job {
    float *y;
    const float *a, *b;
    float s;
    enum binop op;
};

static void bin_range(void *p, int64_t lo, int64_t hi)
{
    const struct bin_job *j = p;
    float *y = j->y, s = j->s;
    const float *a = j->a, *b = j->b;
    switch (j->op) {
    case OP_ADD:
        for (int64_t i = lo; i < hi; i++)
            y[i] = a[i] + b[i];
        break;
    case OP_SUB:
        for (int64_t i = lo; i < hi; i++)
            y[i] = a[i] - b[i];
        break;
    case OP_MUL:
        for (int64_t i = lo; i < hi; i++)
            y[i] = a[i] * b[i];
        break;
    case OP_ADD_SCALED:
        for (int64_t i = lo; i < hi; i++) {
            float t = s * b[i]; /* rounded before the add: no fused multiply-add */
            y[i] = a[i] + t;
        }
        break;
    case OP_SCALE:
        for (int64_t i = lo; i < hi; i++)
            y[i] = a[i] * s;
        break;
    }
}

static int binary(kn_tensor *y, const kn_tensor *a, const kn_tensor *b, float s, enum binop op)
{
    struct bin_job j = {y->data, a->data, b ? b->data : NULL, s, op};
    int64_t n = kn_numel(y);
    cpu_parallel(n, n, bin_range, &j);
    return 0;
}

int cpu_add(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_add(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, a), cpu_half_in(H, b)));
    return binary(y, a, b, 0.0f, OP_ADD);
}

int cpu_sub(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_sub(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, a), cpu_half_in(H, b)));
    return binary(y, a, b, 0.0f, OP_SUB);
}

int cpu_mul(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_mul(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, a), cpu_half_in(H, b)));
    return binary(y, a, b, 0.0f, OP_MUL);
}

int cpu_add_scaled(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, float s, const kn_tensor *b)
{
    if (y->dtype != KN_F32)
        CPU_HALF(
            cpu_add_scaled(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, a), s, cpu_half_in(H, b)));
    return binary(y, a, b, s, OP_ADD_SCALED);
}

int cpu_scale(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s)
{
    if (y->dtype != KN_F32) CPU_HALF(cpu_scale(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), s));
    return binary(y, x, NULL, s, OP_SCALE);
}

/* x[b, s, :] += mod[b, gate_idx, :] * y[b, s, :] over rows r = b * S + s. */
struct gate_job {
    float *x;
    const float *y, *mod;
    int64_t S, D, C;
    int gate_idx;
};

static void gate_range(void *p, int64_t lo, int64_t hi)
{
    const struct gate_job *j = p;
    int64_t D = j->D;
    for (int64_t r = lo; r < hi; r++) {
        const float *gate = j->mod + (r / j->S * j->C + j->gate_idx) * D;
        float *xr = j->x + r * D;
        const float *yr = j->y + r * D;
        for (int64_t k = 0; k < D; k++) {
            float t = gate[k] * yr[k];
            xr[k] += t;
        }
    }
}

int cpu_gate_add(kn_ctx *ctx, kn_tensor *x, const kn_tensor *y, const kn_tensor *mod, int gate_idx)
{
    if (x->dtype != KN_F32)
        CPU_HALF(cpu_gate_add(ctx, cpu_half_out(H, x, 1), cpu_half_in(H, y), cpu_half_in(H, mod),
                              gate_idx));
    int64_t B = x->shape[0], D = kn_cols(x), S = kn_numel(x) / (B * D);
    struct gate_job j = {x->data, y->data, mod->data, S, D, mod->shape[1], gate_idx};
    cpu_parallel(B * S, B * S * D, gate_range, &j);
    return 0;
}
