/* CPU backend: LayerNorm, RMSNorm, GroupNorm and the adaLN modulation that follows a LayerNorm,
 * on float32 activations. Row statistics are float32 sums in 32 lanes combined pairwise, in an
 * order fixed by the row's length (as accurate as PyTorch's cascaded float sums, and vectorised
 * by the compiler: plain C, so every CPU sums alike); the normalisation itself is then written
 * in PyTorch's float32 order of operations. Large inputs are split over the worker threads by
 * row (or group), never inside one row's sums. */
#include "kernels/cpu/cpu_ops.h"

#include <math.h>
#include <string.h>

#define SUM_LANES 32

/* acc[0] after adding its upper halves onto its lower ones, then the tail's sum. */
static float lanes_total(float acc[SUM_LANES], float tail)
{
    for (int w = SUM_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++)
            acc[l] += acc[l + w];
    return acc[0] + tail;
}

float cpu_sum_lanes(const float *x, int64_t n)
{
    float acc[SUM_LANES] = {0}, tail = 0.0f;
    int64_t i = 0;
    for (; i + SUM_LANES <= n; i += SUM_LANES)
        for (int l = 0; l < SUM_LANES; l++)
            acc[l] += x[i + l];
    for (; i < n; i++)
        tail += x[i];
    return lanes_total(acc, tail);
}

float cpu_sum_sq_lanes(const float *x, int64_t n, float c)
{
    float acc[SUM_LANES] = {0}, tail = 0.0f;
    int64_t i = 0;
    for (; i + SUM_LANES <= n; i += SUM_LANES)
        for (int l = 0; l < SUM_LANES; l++) {
            float d = x[i + l] - c;
            acc[l] += d * d;
        }
    for (; i < n; i++) {
        float d = x[i] - c;
        tail += d * d;
    }
    return lanes_total(acc, tail);
}

float cpu_dot_lanes(const float *a, const float *b, int64_t n)
{
    float acc[SUM_LANES] = {0}, tail = 0.0f;
    int64_t i = 0;
    for (; i + SUM_LANES <= n; i += SUM_LANES)
        for (int l = 0; l < SUM_LANES; l++)
            acc[l] += a[i + l] * b[i + l];
    for (; i < n; i++)
        tail += a[i] * b[i];
    return lanes_total(acc, tail);
}

void cpu_moments(const float *x, int64_t n, float eps, float *mean_out, float *rstd_out)
{
    float mean = n ? cpu_sum_lanes(x, n) / (float)n : 0.0f;
    float var = n ? cpu_sum_sq_lanes(x, n, mean) / (float)n : 0.0f;
    *mean_out = mean;
    *rstd_out = 1.0f / sqrtf(var + eps);
}

/* PyTorch's layer_norm kernel: (x * rstd + (-rstd * mean)) * w + b. */
static void layer_norm_row(float *y, const float *x, int64_t D, const float *w, const float *b,
                           float eps)
{
    float mean, rstd;
    cpu_moments(x, D, eps, &mean, &rstd);
    float bias = -rstd * mean;
    for (int64_t j = 0; j < D; j++) {
        float t = x[j] * rstd + bias;
        if (w) t *= w[j];
        if (b) t += b[j];
        y[j] = t;
    }
}

/* One job shape for the row-wise norms: rows of D floats, optional affine parameters, and for
 * ln_modulate the adaLN table mod[B, C, D] whose batch is r / S. */
struct norm_job {
    float *y;
    const float *x, *w, *b, *mod;
    int64_t D, S, C;
    int shift_idx, scale_idx;
    float eps;
};

static void layer_norm_range(void *p, int64_t lo, int64_t hi)
{
    const struct norm_job *j = p;
    for (int64_t r = lo; r < hi; r++)
        layer_norm_row(j->y + r * j->D, j->x + r * j->D, j->D, j->w, j->b, j->eps);
}

int cpu_layer_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, float eps)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_layer_norm(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), w, b, eps));
    int64_t R = kn_rows(x), D = kn_cols(x);
    struct norm_job j = {.y = y->data, .x = x->data, .D = D, .eps = eps};
    j.w = w ? cpu_f32_span(ctx, CPU_SLOT_PARAM, w, 0, D) : NULL;
    j.b = b ? cpu_f32_span(ctx, CPU_SLOT_PARAM2, b, 0, D) : NULL;
    if ((w && !j.w) || (b && !j.b)) return -1;
    cpu_parallel(R, R * D, layer_norm_range, &j);
    return 0;
}

/* `x * torch.rsqrt(x.pow(2).mean(-1) + eps)`, then `w * that`: two roundings, as in torch. */
float cpu_rms_scale(const float *x, int64_t n, float eps)
{
    float var = n ? cpu_sum_sq_lanes(x, n, 0.0f) / (float)n : 0.0f;
    return 1.0f / sqrtf(var + eps);
}

static void rms_norm_row(float *y, const float *x, int64_t D, const float *w, float eps)
{
    float rs = cpu_rms_scale(x, D, eps);
    for (int64_t k = 0; k < D; k++) {
        float t = x[k] * rs;
        y[k] = w ? w[k] * t : t;
    }
}

static void rms_norm_range(void *p, int64_t lo, int64_t hi)
{
    const struct norm_job *j = p;
    for (int64_t r = lo; r < hi; r++)
        rms_norm_row(j->y + r * j->D, j->x + r * j->D, j->D, j->w, j->eps);
}

int cpu_rms_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_rms_norm(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), w, eps));
    int64_t R = kn_rows(x), D = kn_cols(x);
    struct norm_job j = {.y = y->data, .x = x->data, .D = D, .eps = eps};
    j.w = w ? cpu_f32_span(ctx, CPU_SLOT_PARAM, w, 0, D) : NULL;
    if (w && !j.w) return -1;
    cpu_parallel(R, R * D, rms_norm_range, &j);
    return 0;
}

int cpu_qkv_rows_init(kn_ctx *ctx, cpu_qkv_rows *g, const kn_tensor *qkv, const kn_tensor *q,
                      int64_t row0, int heads, const kn_tensor *q_norm, const kn_tensor *k_norm,
                      float eps)
{
    *g = (cpu_qkv_rows){.n = qkv->shape[1],
                        .L = q->shape[1],
                        .row0 = row0,
                        .D = q->shape[2],
                        .Dh = q->shape[2] / heads,
                        .eps = eps};
    if (!q_norm) return 0;
    g->qw = cpu_f32_span(ctx, CPU_SLOT_PARAM, q_norm, 0, g->Dh);
    g->kw = cpu_f32_span(ctx, CPU_SLOT_PARAM2, k_norm, 0, g->Dh);
    return g->qw && g->kw ? 0 : -1;
}

struct qkv_job {
    float *q, *k, *v;
    const float *qkv;
    cpu_qkv_rows g;
};

static void qkv_split_range(void *p, int64_t lo, int64_t hi)
{
    const struct qkv_job *j = p;
    const cpu_qkv_rows *g = &j->g;
    const int64_t D = g->D;
    for (int64_t r = lo; r < hi; r++) {
        const float *src = j->qkv + r * 3 * D;
        const int64_t at = cpu_qkv_row_at(g, r);
        float *q = j->q + at, *k = j->k + at;
        if (g->qw) {
            for (int64_t h = 0; h < D; h += g->Dh) {
                rms_norm_row(q + h, src + h, g->Dh, g->qw, g->eps);
                rms_norm_row(k + h, src + D + h, g->Dh, g->kw, g->eps);
            }
        } else {
            memcpy(q, src, (size_t)D * sizeof(float));
            memcpy(k, src + D, (size_t)D * sizeof(float));
        }
        memcpy(j->v + at, src + 2 * D, (size_t)D * sizeof(float));
    }
}

int cpu_qkv_split(kn_ctx *ctx, kn_tensor *q, kn_tensor *k, kn_tensor *v, int64_t row0,
                  const kn_tensor *qkv, int heads, const kn_tensor *q_norm, const kn_tensor *k_norm,
                  float eps)
{
    if (q->dtype != KN_F32)
        CPU_HALF(cpu_qkv_split(ctx, cpu_half_out(H, q, 1), cpu_half_out(H, k, 1),
                               cpu_half_out(H, v, 1), row0, cpu_half_in(H, qkv), heads, q_norm,
                               k_norm, eps));
    struct qkv_job j = {.q = q->data, .k = k->data, .v = v->data, .qkv = qkv->data};
    if (cpu_qkv_rows_init(ctx, &j.g, qkv, q, row0, heads, q_norm, k_norm, eps) < 0) return -1;
    const int64_t rows = qkv->shape[0] * j.g.n;
    cpu_parallel(rows, rows * 3 * j.g.D, qkv_split_range, &j);
    return 0;
}

/* Groups of cg channels of HW values each; group i is sample i / groups. */
struct group_job {
    float *y;
    const float *x, *w, *b;
    int64_t groups, cg, HW;
    float eps;
};

/* PyTorch's group_norm kernel folds the statistics and the affine parameters into one scale
 * and bias per channel: y = x * (rstd * w) + (-(rstd * w) * mean + b). */
static void group_norm_range(void *p, int64_t lo, int64_t hi)
{
    const struct group_job *j = p;
    int64_t cg = j->cg, HW = j->HW;
    for (int64_t i = lo; i < hi; i++) {
        int64_t c0 = i % j->groups * cg;
        const float *xg = j->x + i * cg * HW;
        float *yg = j->y + i * cg * HW;
        float mean, rstd;
        cpu_moments(xg, cg * HW, j->eps, &mean, &rstd);
        for (int64_t c = 0; c < cg; c++) {
            float scale = rstd * j->w[c0 + c];
            float bias = -scale * mean + j->b[c0 + c];
            for (int64_t k = 0; k < HW; k++)
                yg[c * HW + k] = xg[c * HW + k] * scale + bias;
        }
    }
}

int cpu_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, int groups, float eps)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_group_norm(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), w, b, groups, eps));
    int64_t B = x->shape[0], C = x->shape[1], HW = kn_numel(x) / (B * C);
    struct group_job j = {y->data,
                          x->data,
                          cpu_f32_span(ctx, CPU_SLOT_PARAM, w, 0, C),
                          cpu_f32_span(ctx, CPU_SLOT_PARAM2, b, 0, C),
                          groups,
                          C / groups,
                          HW,
                          eps};
    if (!j.w || !j.b) return -1;
    cpu_parallel(B * groups, B * C * HW, group_norm_range, &j);
    return 0;
}

/* diffusers' AdaLayerNormZero: `norm(x) * (1 + scale[:, None]) + shift[:, None]`. */
static void ln_modulate_range(void *p, int64_t lo, int64_t hi)
{
    const struct norm_job *j = p;
    int64_t D = j->D;
    for (int64_t r = lo; r < hi; r++) {
        const float *shift = j->mod + (r / j->S * j->C + j->shift_idx) * D;
        const float *scale = j->mod + (r / j->S * j->C + j->scale_idx) * D;
        float *yr = j->y + r * D;
        layer_norm_row(yr, j->x + r * D, D, NULL, NULL, j->eps);
        for (int64_t k = 0; k < D; k++) {
            float s1 = 1.0f + scale[k];
            float t = yr[k] * s1;
            yr[k] = t + shift[k];
        }
    }
}

int cpu_ln_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *mod,
                    int shift_idx, int scale_idx, float eps)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_ln_modulate(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), cpu_half_in(H, mod),
                                 shift_idx, scale_idx, eps));
    int64_t B = x->shape[0], D = kn_cols(x), S = kn_numel(x) / (B * D);
    struct norm_job j = {.y = y->data,
                         .x = x->data,
                         .mod = mod->data,
                         .D = D,
                         .S = S,
                         .C = mod->shape[1],
                         .shift_idx = shift_idx,
                         .scale_idx = scale_idx,
                         .eps = eps};
    cpu_parallel(B * S, B * S * D, ln_modulate_range, &j);
    return 0;
}
