/* CPU backend: LayerNorm, RMSNorm, GroupNorm and the adaLN modulation that follows a LayerNorm,
 * on float32 activations. Row statistics are summed in double, which gives the correctly
 * rounded float32 mean and variance that PyTorch's cascaded float sums approximate; the
 * normalisation itself is then written in PyTorch's float32 order of operations. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>

/* Mean and 1/sqrt(biased variance + eps) of n floats, two passes in double. */
static void moments(const float *x, int64_t n, float eps, float *mean_out, float *rstd_out)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += x[i];
    double mean = n ? s / (double)n : 0.0;
    double v = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - mean;
        v += d * d;
    }
    float var = n ? (float)(v / (double)n) : 0.0f;
    *mean_out = (float)mean;
    *rstd_out = 1.0f / sqrtf(var + eps);
}

/* PyTorch's layer_norm kernel: (x * rstd + (-rstd * mean)) * w + b. */
static void layer_norm_row(float *y, const float *x, int64_t D, const float *w, const float *b,
                           float eps)
{
    float mean, rstd;
    moments(x, D, eps, &mean, &rstd);
    float bias = -rstd * mean;
    for (int64_t j = 0; j < D; j++) {
        float t = x[j] * rstd + bias;
        if (w) t *= w[j];
        if (b) t += b[j];
        y[j] = t;
    }
}

int cpu_layer_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, float eps)
{
    int64_t R = kn_rows(x), D = kn_cols(x);
    const float *wd = w ? cpu_f32_span(ctx, CPU_SLOT_PARAM, w, 0, D) : NULL;
    const float *bd = b ? cpu_f32_span(ctx, CPU_SLOT_PARAM2, b, 0, D) : NULL;
    for (int64_t r = 0; r < R; r++)
        layer_norm_row((float *)y->data + r * D, (const float *)x->data + r * D, D, wd, bd, eps);
    return 0;
}

/* `x * torch.rsqrt(x.pow(2).mean(-1) + eps)`, then `w * that`: two roundings, as in torch. */
int cpu_rms_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps)
{
    int64_t R = kn_rows(x), D = kn_cols(x);
    const float *wd = w ? cpu_f32_span(ctx, CPU_SLOT_PARAM, w, 0, D) : NULL;
    for (int64_t r = 0; r < R; r++) {
        const float *xr = (const float *)x->data + r * D;
        float *yr = (float *)y->data + r * D;
        double s = 0.0;
        for (int64_t j = 0; j < D; j++) {
            float sq = xr[j] * xr[j];
            s += sq;
        }
        float var = D ? (float)(s / (double)D) : 0.0f;
        float rs = 1.0f / sqrtf(var + eps);
        for (int64_t j = 0; j < D; j++) {
            float t = xr[j] * rs;
            yr[j] = wd ? wd[j] * t : t;
        }
    }
    return 0;
}

/* PyTorch's group_norm kernel folds the statistics and the affine parameters into one scale
 * and bias per channel: y = x * (rstd * w) + (-(rstd * w) * mean + b). */
int cpu_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, int groups, float eps)
{
    int64_t B = x->shape[0], C = x->shape[1], HW = kn_numel(x) / (B * C), cg = C / groups;
    const float *wd = cpu_f32_span(ctx, CPU_SLOT_PARAM, w, 0, C);
    const float *bd = cpu_f32_span(ctx, CPU_SLOT_PARAM2, b, 0, C);
    for (int64_t n = 0; n < B; n++) {
        for (int64_t g = 0; g < groups; g++) {
            int64_t c0 = g * cg;
            const float *xg = (const float *)x->data + (n * C + c0) * HW;
            float *yg = (float *)y->data + (n * C + c0) * HW;
            float mean, rstd;
            moments(xg, cg * HW, eps, &mean, &rstd);
            for (int64_t c = 0; c < cg; c++) {
                float scale = rstd * wd[c0 + c];
                float bias = -scale * mean + bd[c0 + c];
                for (int64_t i = 0; i < HW; i++)
                    yg[c * HW + i] = xg[c * HW + i] * scale + bias;
            }
        }
    }
    return 0;
}

/* diffusers' AdaLayerNormZero: `norm(x) * (1 + scale[:, None]) + shift[:, None]`. */
int cpu_ln_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *mod,
                    int shift_idx, int scale_idx, float eps)
{
    (void)ctx;
    int64_t B = x->shape[0], D = kn_cols(x), S = kn_numel(x) / (B * D), C = mod->shape[1];
    const float *md = mod->data;
    for (int64_t n = 0; n < B; n++) {
        const float *shift = md + (n * C + shift_idx) * D;
        const float *scale = md + (n * C + scale_idx) * D;
        for (int64_t s = 0; s < S; s++) {
            float *yr = (float *)y->data + (n * S + s) * D;
            layer_norm_row(yr, (const float *)x->data + (n * S + s) * D, D, NULL, NULL, eps);
            for (int64_t j = 0; j < D; j++) {
                float s1 = 1.0f + scale[j];
                float t = yr[j] * s1;
                yr[j] = t + shift[j];
            }
        }
    }
    return 0;
}
