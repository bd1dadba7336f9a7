/* CPU backend: activations, elementwise arithmetic and the gated residual of adaLN blocks, on
 * float32 tensors. Each formula follows PyTorch's float32 CPU kernel operation by operation
 * (same roundings in the same order), so outputs match the reference to an ulp or so. The
 * loops run element by element, which keeps them correct when y aliases an input. */
#include "kernels/cpu/cpu_ops.h"

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

int cpu_activate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act)
{
    (void)ctx;
    int64_t n = kn_numel(x);
    const float *xd = x->data;
    float *yd = y->data;
    float (*f)(float) = act == KN_ACT_SILU        ? act_silu
                        : act == KN_ACT_GELU_ERF  ? act_gelu_erf
                        : act == KN_ACT_GELU_TANH ? act_gelu_tanh
                                                  : act_quick_gelu;
    for (int64_t i = 0; i < n; i++)
        yd[i] = f(xd[i]);
    return 0;
}

int cpu_add(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    (void)ctx;
    int64_t n = kn_numel(y);
    const float *ad = a->data, *bd = b->data;
    float *yd = y->data;
    for (int64_t i = 0; i < n; i++)
        yd[i] = ad[i] + bd[i];
    return 0;
}

int cpu_sub(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    (void)ctx;
    int64_t n = kn_numel(y);
    const float *ad = a->data, *bd = b->data;
    float *yd = y->data;
    for (int64_t i = 0; i < n; i++)
        yd[i] = ad[i] - bd[i];
    return 0;
}

int cpu_mul(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    (void)ctx;
    int64_t n = kn_numel(y);
    const float *ad = a->data, *bd = b->data;
    float *yd = y->data;
    for (int64_t i = 0; i < n; i++)
        yd[i] = ad[i] * bd[i];
    return 0;
}

int cpu_add_scaled(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, float s, const kn_tensor *b)
{
    (void)ctx;
    int64_t n = kn_numel(y);
    const float *ad = a->data, *bd = b->data;
    float *yd = y->data;
    for (int64_t i = 0; i < n; i++) {
        float t = s * bd[i]; /* rounded before the add: no fused multiply-add */
        yd[i] = ad[i] + t;
    }
    return 0;
}

int cpu_scale(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s)
{
    (void)ctx;
    int64_t n = kn_numel(y);
    const float *xd = x->data;
    float *yd = y->data;
    for (int64_t i = 0; i < n; i++)
        yd[i] = xd[i] * s;
    return 0;
}

int cpu_gate_add(kn_ctx *ctx, kn_tensor *x, const kn_tensor *y, const kn_tensor *mod, int gate_idx)
{
    (void)ctx;
    int64_t B = x->shape[0], D = kn_cols(x), S = kn_numel(x) / (B * D), C = mod->shape[1];
    float *xd = x->data;
    const float *yd = y->data, *md = mod->data;
    for (int64_t b = 0; b < B; b++) {
        const float *gate = md + (b * C + gate_idx) * D;
        for (int64_t s = 0; s < S; s++) {
            float *xr = xd + (b * S + s) * D;
            const float *yr = yd + (b * S + s) * D;
            for (int64_t j = 0; j < D; j++) {
                float t = gate[j] * yr[j];
                xr[j] += t;
            }
        }
    }
    return 0;
}
