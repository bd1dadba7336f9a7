/* CPU backend: the input gradients of the transformer's elementwise and row-wise ops (kn_grad.h):
 * the tanh GELU, the adaLN LayerNorm modulation and gate, the q/k RMSNorm of the joined qkv
 * product, and the patch embedding. Float32 activations (16-bit ones through CPU_HALF); a row's
 * statistics are the forward's own lane sums (cpu_norm.c), so that its mean and scale are the
 * forward's bits, and every loop is split over the worker threads by element or row only. */
#include "kernels/cpu/cpu_matmul.h"
#include "kernels/kn_grad.h"
#include "kernels/kn_patch.h"

#include "common/err.h"

#include <math.h>
#include <string.h>

/* d/dx of 0.5 x (1 + tanh(u)), u = beta (x + kappa x^3):
 *   0.5 (1 + t) + 0.5 x (1 - t^2) beta (1 + 3 kappa x^2). */
static float gelu_tanh_grad(float x, float dy)
{
    const float beta = (float)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = 0.044715f;
    float t = tanhf(beta * (x + kappa * x * x * x));
    float du = beta * (1.0f + 3.0f * kappa * x * x);
    return dy * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* gelu_tanh_grad on [lo, hi) in eight lanes, the same operations but for tanh; returns the end
 * of the whole vectors. */
__attribute__((target("avx2,fma"))) static int64_t
gelu_tanh_grad_avx2(float *dx, const float *dy, const float *x, int64_t lo, int64_t hi)
{
    const __m256 beta = _mm256_set1_ps((float)(M_SQRT2 * M_2_SQRTPI * 0.5));
    const __m256 kappa = _mm256_set1_ps(0.044715f), half = _mm256_set1_ps(0.5f);
    const __m256 one = _mm256_set1_ps(1.0f), three_kappa = _mm256_set1_ps(3.0f * 0.044715f);
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), v2 = _mm256_mul_ps(v, v);
        __m256 cube = _mm256_mul_ps(v2, v);
        __m256 t = cpu_tanh8(_mm256_mul_ps(beta, _mm256_add_ps(v, _mm256_mul_ps(kappa, cube))));
        __m256 du = _mm256_mul_ps(beta, _mm256_add_ps(one, _mm256_mul_ps(three_kappa, v2)));
        __m256 a = _mm256_mul_ps(half, _mm256_add_ps(one, t));
        __m256 b = _mm256_mul_ps(
            _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_sub_ps(one, _mm256_mul_ps(t, t))), du);
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_add_ps(a, b)));
    }
    return i;
}
#endif

struct act_grad_job {
    float *dx;
    const float *dy, *x;
    int64_t n;
};

/* Units of eight elements, as cpu_activate splits: whether an element takes the vector or the
 * scalar path depends on its index alone. */
#define GRAD_UNIT 8

static void act_grad_range(void *p, int64_t lo, int64_t hi)
{
    const struct act_grad_job *j = p;
    int64_t i = lo * GRAD_UNIT, end = hi * GRAD_UNIT < j->n ? hi * GRAD_UNIT : j->n;
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpu_avx2_fma()) i = gelu_tanh_grad_avx2(j->dx, j->dy, j->x, i, end);
#endif
    for (; i < end; i++)
        j->dx[i] = gelu_tanh_grad(j->x[i], j->dy[i]);
}

int cpu_activate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *x,
                      kn_act act)
{
    if (dx->dtype != KN_F32)
        CPU_HALF(cpu_activate_grad(ctx, cpu_half_out(H, dx, 0), cpu_half_in(H, dy),
                                   cpu_half_in(H, x), act));
    if (act != KN_ACT_GELU_TANH)
        return err_set(ERR_INVALID, "kn_activate_grad: no gradient for activation %d", (int)act);
    struct act_grad_job j = {dx->data, dy->data, x->data, kn_numel(x)};
    cpu_parallel((j.n + GRAD_UNIT - 1) / GRAD_UNIT, 2 * j.n, act_grad_range, &j);
    return 0;
}

/* Rows r = b * S + s of D values against the adaLN table mod[B, C, D] (chunk idx). */
struct mod_grad_job {
    float *out;
    const float *g, *x, *mod;
    int64_t S, D, C;
    int idx;
    float eps;
    int *rc; /* a thread's failure */
};

static const float *mod_chunk(const struct mod_grad_job *j, int64_t r)
{
    return j->mod + (r / j->S * j->C + j->idx) * j->D;
}

/* dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy (1 + scale), xhat the forward's. Row by
 * row: g into dx first (dx may be dy), then the two sums, then dx. */
static void ln_modulate_grad_range(void *p, int64_t lo, int64_t hi)
{
    const struct mod_grad_job *j = p;
    const int64_t D = j->D;
    float *xhat = cpu_mm_thread_buffer((size_t)D * sizeof(float));
    if (!xhat) {
        __atomic_store_n(j->rc, ERR_NOMEM, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t r = lo; r < hi; r++) {
        const float *scale = mod_chunk(j, r), *x = j->x + r * D, *dy = j->g + r * D;
        float *dx = j->out + r * D, mean, rstd;
        cpu_moments(x, D, j->eps, &mean, &rstd);
        const float bias = -rstd * mean; /* the forward's xhat: x rstd + bias */
        for (int64_t k = 0; k < D; k++) {
            xhat[k] = x[k] * rstd + bias;
            dx[k] = dy[k] * (1.0f + scale[k]);
        }
        float mg = cpu_sum_lanes(dx, D) / (float)D, mgx = cpu_dot_lanes(dx, xhat, D) / (float)D;
        for (int64_t k = 0; k < D; k++)
            dx[k] = rstd * (dx[k] - mg - xhat[k] * mgx);
    }
}

int cpu_ln_modulate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *x,
                         const kn_tensor *mod, int scale_idx, float eps)
{
    if (dx->dtype != KN_F32)
        CPU_HALF(cpu_ln_modulate_grad(ctx, cpu_half_out(H, dx, 0), cpu_half_in(H, dy),
                                      cpu_half_in(H, x), cpu_half_in(H, mod), scale_idx, eps));
    int64_t B = x->shape[0], D = kn_cols(x), S = kn_numel(x) / (B * D);
    int rc = 0;
    struct mod_grad_job j = {dx->data, dy->data,      x->data,   mod->data, S,
                             D,        mod->shape[1], scale_idx, eps,       &rc};
    cpu_parallel(B * S, 4 * B * S * D, ln_modulate_grad_range, &j);
    return rc < 0 ? err_set(rc, "kn_ln_modulate_grad: out of memory for a row") : 0;
}

static void gate_grad_range(void *p, int64_t lo, int64_t hi)
{
    const struct mod_grad_job *j = p;
    const int64_t D = j->D;
    for (int64_t r = lo; r < hi; r++) {
        const float *gate = mod_chunk(j, r), *dx = j->g + r * D;
        float *dy = j->out + r * D;
        for (int64_t k = 0; k < D; k++)
            dy[k] = gate[k] * dx[k];
    }
}

int cpu_gate_grad(kn_ctx *ctx, kn_tensor *dy, const kn_tensor *dx, const kn_tensor *mod,
                  int gate_idx)
{
    if (dy->dtype != KN_F32)
        CPU_HALF(cpu_gate_grad(ctx, cpu_half_out(H, dy, 0), cpu_half_in(H, dx), cpu_half_in(H, mod),
                               gate_idx));
    int64_t B = dx->shape[0], D = kn_cols(dx), S = kn_numel(dx) / (B * D);
    struct mod_grad_job j = {dy->data, dx->data,      NULL,     mod->data, S,
                             D,        mod->shape[1], gate_idx, 0.0f,      NULL};
    cpu_parallel(B * S, B * S * D, gate_grad_range, &j);
    return 0;
}

/* Rows of dqkv [B, n, 3D], from the rows of dq, dk and dv that the forward wrote. */
struct qkv_grad_job {
    float *dqkv;
    const float *dq, *dk, *dv, *qkv;
    cpu_qkv_rows g;
};

/* Back through y = w (x rs), rs = 1 / sqrt(mean(x^2) + eps), over one head of Dh:
 *   dx = rs (w dy) - x rs^3 mean(x w dy). */
static void rms_grad_head(float *dx, const float *dy, const float *x, const float *w, int64_t Dh,
                          float eps)
{
    float rs = cpu_rms_scale(x, Dh, eps);
    for (int64_t k = 0; k < Dh; k++)
        dx[k] = w[k] * dy[k];
    float m = cpu_dot_lanes(dx, x, Dh) / (float)Dh, c = rs * rs * rs * m;
    for (int64_t k = 0; k < Dh; k++)
        dx[k] = rs * dx[k] - x[k] * c;
}

static void qkv_split_grad_range(void *p, int64_t lo, int64_t hi)
{
    const struct qkv_grad_job *j = p;
    const cpu_qkv_rows *g = &j->g;
    const int64_t D = g->D;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = j->qkv + r * 3 * D;
        float *out = j->dqkv + r * 3 * D;
        const int64_t at = cpu_qkv_row_at(g, r);
        if (g->qw) {
            for (int64_t h = 0; h < D; h += g->Dh) {
                rms_grad_head(out + h, j->dq + at + h, x + h, g->qw, g->Dh, g->eps);
                rms_grad_head(out + D + h, j->dk + at + h, x + D + h, g->kw, g->Dh, g->eps);
            }
        } else {
            memcpy(out, j->dq + at, (size_t)D * sizeof(float));
            memcpy(out + D, j->dk + at, (size_t)D * sizeof(float));
        }
        memcpy(out + 2 * D, j->dv + at, (size_t)D * sizeof(float));
    }
}

int cpu_qkv_split_grad(kn_ctx *ctx, kn_tensor *dqkv, const kn_tensor *dq, const kn_tensor *dk,
                       const kn_tensor *dv, int64_t row0, const kn_tensor *qkv, int heads,
                       const kn_tensor *q_norm, const kn_tensor *k_norm, float eps)
{
    if (dqkv->dtype != KN_F32)
        CPU_HALF(cpu_qkv_split_grad(ctx, cpu_half_out(H, dqkv, 0), cpu_half_in(H, dq),
                                    cpu_half_in(H, dk), cpu_half_in(H, dv), row0,
                                    cpu_half_in(H, qkv), heads, q_norm, k_norm, eps));
    struct qkv_grad_job j = {
        .dqkv = dqkv->data, .dq = dq->data, .dk = dk->data, .dv = dv->data, .qkv = qkv->data};
    if (cpu_qkv_rows_init(ctx, &j.g, qkv, dq, row0, heads, q_norm, k_norm, eps) < 0) return -1;
    const int64_t rows = qkv->shape[0] * j.g.n;
    cpu_parallel(rows, 3 * rows * 3 * j.g.D, qkv_split_grad_range, &j);
    return 0;
}

/* The per-token image gradients t[B, gh*gw, C*p*p] (features ordered (c, a, e), w's own) into
 * the image dx[B, C, gh*p, gw*p], one image row (n, c, i) per unit. */
struct scatter_job {
    float *dx;
    const float *t;
    int64_t C, H, W, p;
};

static void scatter_range(void *arg, int64_t lo, int64_t hi)
{
    const struct scatter_job *j = arg;
    const int64_t p = j->p, gw = j->W / p, gh = j->H / p, F = j->C * p * p;
    for (int64_t u = lo; u < hi; u++) {
        const int64_t i = u % j->H, c = u / j->H % j->C, n = u / (j->H * j->C);
        const int64_t r = i / p, a = i % p;
        const float *tok = j->t + ((n * gh + r) * gw) * F + (c * p + a) * p;
        float *row = j->dx + u * j->W;
        for (int64_t s = 0; s < gw; s++)
            memcpy(row + s * p, tok + s * F, (size_t)p * sizeof(float));
    }
}

int cpu_patch_embed_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dtok, const kn_tensor *w,
                         int p)
{
    if (dx->dtype != KN_F32)
        CPU_HALF(cpu_patch_embed_grad(ctx, cpu_half_out(H, dx, 0), cpu_half_in(H, dtok), w, p));
    const int64_t C = dx->shape[1], F = C * p * p;
    /* dtok . w viewed as [D, C p p]: kn_linear_grad's product, then the pixels moved. */
    int64_t ws[2] = {w->shape[0], F}, ts[3] = {dtok->shape[0], dtok->shape[1], F};
    kn_tensor wf = kn_reshape(w, 2, ws), t;
    int rc = kn_alloc(ctx, &t, KN_F32, 3, ts);
    if (rc < 0) return rc;
    if ((rc = cpu_linear_grad(ctx, &t, dtok, &wf)) == 0) {
        struct scatter_job j = {dx->data, t.data, C, dx->shape[2], dx->shape[3], p};
        int64_t units = dx->shape[0] * C * j.H;
        cpu_parallel(units, kn_numel(dx), scatter_range, &j);
    }
    kn_free(ctx, &t);
    return rc;
}
