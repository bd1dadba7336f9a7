/* Tests of the input-gradient ops and the attention maps (kn_grad.h) on the CPU backend. Each
 * op is checked four ways: against a straightforward double-precision reference of its
 * formula; against central differences of the project's own forward op (the directional
 * derivative of a random linear functional of its output along a random direction, in
 * float32), which checks the formula itself; row by row for equal bits whatever the batch
 * around a sample and the thread count; and in 16-bit activations against float32. Then the
 * front-ends' errors, which must leave the outputs untouched. Each check prints the error it
 * measured beside its bound. */
#include "kernels/kn_convert.h"
#include "kernels/kn_grad.h"
#include "kernels/kn_image.h"
#include "kernels/kn_ops.h"

#include "common/err.h"
#include "tests/unit/check.h"
#include "tests/unit/test_random.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

static kn_ctx *ctx;

/* ---- helpers ---- */

/* A tensor of dtype dt holding v rounded to dt; v is updated to the rounded values. */
static kn_tensor make(kn_dtype dt, int ndim, const int64_t *shape, float *v)
{
    kn_tensor t;
    CHECK(kn_alloc(ctx, &t, dt, ndim, shape) == 0);
    CHECK(kn_write_f32(ctx, &t, v) == 0);
    CHECK(kn_read_f32(ctx, &t, v) == 0);
    return t;
}

/* A tensor of random values in [-amp, amp) of dtype dt; *vals (malloc'ed) receives them. */
static kn_tensor rand_tensor(kn_dtype dt, int ndim, const int64_t *shape, float amp, float **vals)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    float *v = rand_buf(n, amp);
    kn_tensor t = make(dt, ndim, shape, v);
    if (vals)
        *vals = v;
    else
        free(v);
    return t;
}

static kn_tensor empty(kn_dtype dt, int ndim, const int64_t *shape)
{
    kn_tensor t;
    CHECK(kn_alloc(ctx, &t, dt, ndim, shape) == 0);
    CHECK(kn_fill(ctx, &t, 0.0f) == 0);
    return t;
}

/* t's values as float32 (malloc'ed). */
static float *values(const kn_tensor *t)
{
    float *v = malloc((size_t)(kn_numel(t) > 0 ? kn_numel(t) : 1) * sizeof(float));
    CHECK(kn_read_f32(ctx, t, v) == 0);
    return v;
}

static void free_all(kn_tensor *const *ts, int n)
{
    for (int i = 0; i < n; i++)
        kn_free(ctx, ts[i]);
}

/* Frees the n host buffers of ps. */
static void free_bufs(void *const *ps, int n)
{
    for (int i = 0; i < n; i++)
        free(ps[i]);
}

static double max_abs_d(const double *x, int64_t n)
{
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* Norm-wise: max |got - ref| <= rel * max |ref|. Prints the measured ratio. */
static int close_norm(const float *got, const double *ref, int64_t n, double rel, const char *what)
{
    double worst = 0.0, scale = max_abs_d(ref, n);
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= worst)) worst = e;
    }
    double ratio = scale > 0 ? worst / scale : worst;
    printf("  %-44s max error %.2e of max |ref| (bound %.0e)\n", what, ratio, rel);
    return ratio <= rel;
}

/* Elementwise: |got - ref| <= abs + rel * scale[i] (scale NULL: |ref|). */
static int close_each(const float *got, const double *ref, const double *scale, int64_t n,
                      double abs_tol, double rel, const char *what)
{
    double worst = 0.0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        double s = scale ? scale[i] : fabs(ref[i]);
        double e = fabs((double)got[i] - ref[i]) / (abs_tol + rel * s);
        if (!(e <= worst)) worst = e, at = i;
    }
    printf("  %-44s worst element at %.2f of its bound (%.0e + %.0e x scale)\n", what, worst,
           abs_tol, rel);
    if (!(worst <= 1.0))
        fprintf(stderr, "  %s: element %lld is %.9g, reference %.9g\n", what, (long long)at,
                (double)got[at], ref[at]);
    return worst <= 1.0;
}

static double *dvec(int64_t n)
{
    return calloc((size_t)(n > 0 ? n : 1), sizeof(double));
}

/* 1, 2, 3 and all online CPUs (4 where there are fewer). */
static int thread_counts(int out[4])
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    out[0] = 1, out[1] = 2, out[2] = 3, out[3] = cpus > 3 ? (int)cpus : 4;
    return 4;
}

/* ---- finite differences ---- */

/* The loss of a forward op at input x (n floats): sum u . forward(x) in double. */
typedef double (*loss_fn)(void *arg, const float *x);

/* Central differences of f at x along e, against the analytic sum g . e: the relative error
 * |fd - g.e| / sum |g e| must stay below tol. The inputs are O(1); with a step h the
 * truncation error is O(h^2) times the third derivative and float32's rounding of the loss
 * adds about 1e-7 sum |u y| / h. */
static void fd_check(const char *what, loss_fn f, void *arg, const float *x, const float *g,
                     int64_t n, float h, double tol)
{
    float *e = rand_buf(n, 1.0f), *xp = malloc((size_t)n * sizeof(float));
    double an = 0.0, mag = 0.0;
    for (int64_t i = 0; i < n; i++) {
        an += (double)g[i] * e[i];
        mag += fabs((double)g[i] * e[i]);
    }
    for (int64_t i = 0; i < n; i++)
        xp[i] = x[i] + h * e[i];
    double lp = f(arg, xp);
    for (int64_t i = 0; i < n; i++)
        xp[i] = x[i] - h * e[i];
    double lm = f(arg, xp);
    double fd = (lp - lm) / (2.0 * (double)h), rel = fabs(fd - an) / (mag > 0 ? mag : 1.0);
    printf("  %-44s finite differences off by %.2e of sum |g e| (bound %.0e)\n", what, rel, tol);
    CHECKF(rel <= tol, "%s: derivative %.9g, finite differences %.9g", what, an, fd);
    free(e);
    free(xp);
}

static double dot_u(const float *u, const kn_tensor *y)
{
    float *v = values(y);
    double s = 0.0;
    for (int64_t i = 0; i < kn_numel(y); i++)
        s += (double)u[i] * v[i];
    free(v);
    return s;
}

/* ---- kn_linear_grad ---- */

static void linear_case(kn_dtype matmul, kn_dtype wdt, int64_t M, int64_t N, int64_t K)
{
    int64_t ys[2] = {M, N}, ws[2] = {N, K}, xs[2] = {M, K};
    float *dyv, *wv;
    kn_tensor dy = rand_tensor(KN_F32, 2, ys, 1.0f, &dyv), w = rand_tensor(wdt, 2, ws, 0.5f, &wv);
    kn_tensor dx = empty(KN_F32, 2, xs);
    CHECK(kn_ctx_set_matmul(ctx, matmul) == 0);
    CHECKF(kn_linear_grad(ctx, &dx, &dy, &w) == 0, "%s", err_msg());
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
    if (matmul == KN_BF16) { /* the product's operands, whose products float32 holds exactly */
        for (int64_t i = 0; i < M * N; i++)
            dyv[i] = kn_bf16_to_f32(kn_f32_to_bf16(dyv[i]));
        for (int64_t i = 0; i < N * K; i++)
            wv[i] = kn_bf16_to_f32(kn_f32_to_bf16(wv[i]));
    }
    double *ref = dvec(M * K), *mag = dvec(M * K);
    for (int64_t i = 0; i < M; i++)
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                double t = (double)dyv[i * N + n] * wv[n * K + k];
                ref[i * K + k] += t;
                mag[i * K + k] += fabs(t);
            }
    float *got = values(&dx);
    char what[96];
    snprintf(what, sizeof what, "linear_grad %s w, %s products, %lldx%lldx%lld", kn_dtype_name(wdt),
             kn_dtype_name(matmul), (long long)M, (long long)N, (long long)K);
    /* float32 sums of N terms: a few ulp of the sum of magnitudes. */
    CHECK(close_each(got, ref, mag, M * K, 1e-30, 1e-5, what));
    free(got);
    free(ref);
    free(mag);
    free(dyv);
    free(wv);
    free_all((kn_tensor *[]){&dy, &w, &dx}, 3);
}

struct linear_fd {
    kn_tensor *w;
    const float *u;
    int64_t M, N, K;
};

static double linear_loss(void *p, const float *x)
{
    struct linear_fd *a = p;
    int64_t xs[2] = {a->M, a->K}, ys[2] = {a->M, a->N};
    float *xv = malloc((size_t)(a->M * a->K) * sizeof(float));
    memcpy(xv, x, (size_t)(a->M * a->K) * sizeof(float));
    kn_tensor xt = make(KN_F32, 2, xs, xv), y = empty(KN_F32, 2, ys);
    CHECKF(kn_linear(ctx, &y, &xt, a->w, NULL) == 0, "%s", err_msg());
    double l = dot_u(a->u, &y);
    free(xv);
    free_all((kn_tensor *[]){&xt, &y}, 2);
    return l;
}

static void test_linear_grad(void)
{
    static const kn_dtype wdts[] = {KN_F32, KN_BF16, KN_F16};
    for (int m = 0; m < 2; m++)
        for (size_t i = 0; i < sizeof wdts / sizeof wdts[0]; i++) {
            kn_dtype mm = m ? KN_BF16 : KN_F32;
            linear_case(mm, wdts[i], 1, 37, 53);
            linear_case(mm, wdts[i], 5, 300, 1000);  /* 4 column chunks, the last short */
            linear_case(mm, wdts[i], 100, 130, 260); /* two row tiles, the last partial */
        }
    /* The product is linear: only rounding separates the differences from the derivative. */
    struct linear_fd a = {.M = 7, .N = 40, .K = 90};
    int64_t ws[2] = {a.N, a.K}, ys[2] = {a.M, a.N}, xs[2] = {a.M, a.K};
    float *uv, *xv;
    kn_tensor w = rand_tensor(KN_F32, 2, ws, 0.5f, NULL), u = rand_tensor(KN_F32, 2, ys, 1.0f, &uv);
    kn_tensor x = rand_tensor(KN_F32, 2, xs, 1.0f, &xv), dx = empty(KN_F32, 2, xs);
    a.w = &w, a.u = uv;
    CHECK(kn_linear_grad(ctx, &dx, &u, &w) == 0);
    float *g = values(&dx);
    fd_check("linear_grad against kn_linear", linear_loss, &a, xv, g, a.M * a.K, 0.25f, 1e-5);
    free(g);
    free(uv);
    free(xv);
    free_all((kn_tensor *[]){&w, &u, &x, &dx}, 4);
}

/* Rows followed among M - 1 others at the first, last and middle positions, on every thread
 * count, against each row alone on one thread. */
static void linear_rows_invariant(kn_dtype matmul, kn_dtype wdt, int64_t N, int64_t K)
{
    CHECK(kn_ctx_set_matmul(ctx, matmul) == 0);
    const int64_t R = 3;
    float *rows = rand_buf(R * N, 1.0f), *ref = malloc((size_t)(R * K) * sizeof(float));
    kn_tensor w = rand_tensor(wdt, 2, (int64_t[]){N, K}, 0.2f, NULL);
    CHECK(kn_cpu_set_threads(1) == 0);
    for (int64_t r = 0; r < R; r++) {
        kn_tensor dy = make(KN_F32, 2, (int64_t[]){1, N}, rows + r * N);
        kn_tensor dx = empty(KN_F32, 2, (int64_t[]){1, K});
        CHECKF(kn_linear_grad(ctx, &dx, &dy, &w) == 0, "%s", err_msg());
        CHECK(kn_read_f32(ctx, &dx, ref + r * K) == 0);
        free_all((kn_tensor *[]){&dy, &dx}, 2);
    }
    static const int64_t Ms[] = {2, 33, 49, 97, 300};
    int th[4], nth = thread_counts(th), bad = 0;
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
        int64_t M = Ms[mi], at[3] = {0, M - 1, M > 2 ? M / 2 : -1};
        float *dyv = rand_buf(M * N, 1.0f);
        for (int64_t r = 0; r < R; r++)
            if (at[r] >= 0) memcpy(dyv + at[r] * N, rows + r * N, (size_t)N * sizeof(float));
        kn_tensor dy = make(KN_F32, 2, (int64_t[]){M, N}, dyv);
        kn_tensor dx = empty(KN_F32, 2, (int64_t[]){M, K});
        for (int t = 0; t < nth; t++) {
            CHECK(kn_cpu_set_threads(th[t]) == 0);
            CHECKF(kn_linear_grad(ctx, &dx, &dy, &w) == 0, "%s", err_msg());
            float *got = values(&dx);
            for (int64_t r = 0; r < R; r++)
                if (at[r] >= 0 && memcmp(got + at[r] * K, ref + r * K, (size_t)K * sizeof(float)) &&
                    bad++ < 3)
                    fprintf(stderr,
                            "  linear_grad %s/%s: row at %lld of M=%lld, %d threads differs\n",
                            kn_dtype_name(wdt), kn_dtype_name(matmul), (long long)at[r],
                            (long long)M, th[t]);
            free(got);
        }
        free(dyv);
        free_all((kn_tensor *[]){&dy, &dx}, 2);
    }
    CHECK(bad == 0);
    CHECK(kn_cpu_set_threads(th[3]) == 0);
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
    free(rows);
    free(ref);
    kn_free(ctx, &w);
}

static void test_linear_grad_invariant(void)
{
    linear_rows_invariant(KN_F32, KN_F32, 200, 300);
    linear_rows_invariant(KN_F32, KN_BF16, 96, 520);
    linear_rows_invariant(KN_BF16, KN_BF16, 200, 300);
    linear_rows_invariant(KN_BF16, KN_F16, 64, 40);
}

/* ---- row-wise ops: a sample alone, then beside others in each position ---- */

/* An op on B samples: in (B x in_per floats) to out (B x out_per floats), F32. */
typedef int (*sample_op)(void *arg, kn_tensor *out, const kn_tensor *in);

static void same_per_sample(const char *what, sample_op op, void *arg, int ndim, const int64_t *in1,
                            const int64_t *out1)
{
    int64_t is[KN_MAX_DIMS], os[KN_MAX_DIMS], per = 1, out_per = 1;
    memcpy(is, in1, (size_t)ndim * sizeof *is);
    memcpy(os, out1, (size_t)ndim * sizeof *os);
    for (int i = 1; i < ndim; i++)
        per *= is[i], out_per *= os[i];
    float *sample = rand_buf(per, 1.0f);
    CHECK(kn_cpu_set_threads(1) == 0);
    kn_tensor x = make(KN_F32, ndim, is, sample), y = empty(KN_F32, ndim, os);
    CHECKF(op(arg, &y, &x) == 0, "%s: %s", what, err_msg());
    float *ref = values(&y);
    free_all((kn_tensor *[]){&x, &y}, 2);
    int th[4], nth = thread_counts(th), bad = 0;
    for (int64_t B = 2; B <= 3; B++)
        for (int64_t pos = 0; pos < B; pos++) {
            float *xv = rand_buf(B * per, 1.0f);
            memcpy(xv + pos * per, sample, (size_t)per * sizeof(float));
            is[0] = os[0] = B;
            x = make(KN_F32, ndim, is, xv), y = empty(KN_F32, ndim, os);
            for (int t = 0; t < nth; t++) {
                CHECK(kn_cpu_set_threads(th[t]) == 0);
                CHECKF(op(arg, &y, &x) == 0, "%s: %s", what, err_msg());
                float *got = values(&y);
                if (memcmp(got + pos * out_per, ref, (size_t)out_per * sizeof(float)) && bad++ < 3)
                    fprintf(stderr, "  %s: sample %lld of %lld on %d threads differs\n", what,
                            (long long)pos, (long long)B, th[t]);
                free(got);
            }
            free(xv);
            free_all((kn_tensor *[]){&x, &y}, 2);
        }
    CHECK(bad == 0);
    CHECK(kn_cpu_set_threads(th[3]) == 0);
    free(sample);
    free(ref);
}

/* ---- kn_activate_grad ---- */

static double gelu_tanh_d(double x)
{
    const double beta = sqrt(2.0 / M_PI), kappa = 0.044715;
    double t = tanh(beta * (x + kappa * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * beta * (1.0 + 3.0 * kappa * x * x);
}

struct act_fd {
    const float *u;
    int64_t n;
};

static double act_loss(void *p, const float *x)
{
    struct act_fd *a = p;
    float *xv = malloc((size_t)a->n * sizeof(float));
    memcpy(xv, x, (size_t)a->n * sizeof(float));
    kn_tensor xt = make(KN_F32, 1, &a->n, xv), y = empty(KN_F32, 1, &a->n);
    CHECK(kn_activate(ctx, &y, &xt, KN_ACT_GELU_TANH) == 0);
    double l = dot_u(a->u, &y);
    free(xv);
    free_all((kn_tensor *[]){&xt, &y}, 2);
    return l;
}

static int act_grad_op(void *arg, kn_tensor *out, const kn_tensor *in)
{
    (void)arg;
    return kn_activate_grad(ctx, out, in, in, KN_ACT_GELU_TANH);
}

static void test_activate_grad(void)
{
    int64_t n = 1003; /* whole vectors and a tail */
    float *xv, *dyv;
    kn_tensor x = rand_tensor(KN_F32, 1, &n, 4.0f, &xv),
              dy = rand_tensor(KN_F32, 1, &n, 1.0f, &dyv);
    kn_tensor dx = empty(KN_F32, 1, &n);
    CHECK(kn_activate_grad(ctx, &dx, &dy, &x, KN_ACT_GELU_TANH) == 0);
    double *ref = dvec(n), *scale = dvec(n);
    for (int64_t i = 0; i < n; i++) {
        ref[i] = dyv[i] * gelu_tanh_d(xv[i]);
        scale[i] = fabs(dyv[i]) * (1.0 + fabs(xv[i]));
    }
    float *got = values(&dx);
    /* float32 tanh within a few ulp, then a few roundings: 1e-6 of |dy| (1 + |x|). */
    CHECK(close_each(got, ref, scale, n, 1e-30, 1e-6, "activate_grad gelu_tanh f32"));
    struct act_fd a = {dyv, n};
    fd_check("activate_grad against kn_activate", act_loss, &a, xv, got, n, 1e-2f, 1e-5);
    /* In place, dx = dy. */
    CHECK(kn_activate_grad(ctx, &dy, &dy, &x, KN_ACT_GELU_TANH) == 0);
    float *inplace = values(&dy);
    CHECK(memcmp(inplace, got, (size_t)n * sizeof(float)) == 0);
    /* bf16: the same op on the bf16-rounded inputs, rounded once. */
    float *xb = malloc((size_t)n * sizeof(float)), *db = malloc((size_t)n * sizeof(float));
    memcpy(xb, xv, (size_t)n * sizeof(float));
    memcpy(db, dyv, (size_t)n * sizeof(float));
    kn_tensor x16 = make(KN_BF16, 1, &n, xb), dy16 = make(KN_BF16, 1, &n, db);
    kn_tensor dx16 = empty(KN_BF16, 1, &n);
    CHECK(kn_activate_grad(ctx, &dx16, &dy16, &x16, KN_ACT_GELU_TANH) == 0);
    float *g16 = values(&dx16);
    CHECK(close_norm(g16, ref, n, 1e-2, "activate_grad bf16 against f32 reference"));
    int64_t shape[3] = {1, 77, 1003};
    same_per_sample("activate_grad", act_grad_op, NULL, 3, shape, shape);
    CHECK(kn_activate_grad(ctx, &dx, &dy, &x, KN_ACT_SILU) == ERR_INVALID);
    free(ref);
    free(scale);
    free(got);
    free(inplace);
    free(g16);
    free(xv);
    free(dyv);
    free(xb);
    free(db);
    free_all((kn_tensor *[]){&x, &dy, &dx, &x16, &dy16, &dx16}, 6);
}

/* ---- kn_ln_modulate_grad and kn_gate_grad ---- */

/* The double reference of kn_ln_modulate_grad; scale receives each element's magnitude. */
static void ln_modulate_ref(double *dx, double *mag, const float *x, const float *dy,
                            const float *mod, int64_t B, int64_t S, int64_t D, int64_t C, int si,
                            double eps)
{
    double *g = dvec(D), *xh = dvec(D);
    for (int64_t r = 0; r < B * S; r++) {
        const float *xr = x + r * D, *dr = dy + r * D, *sc = mod + (r / S * C + si) * D;
        double mean = 0, var = 0, mg = 0, mgx = 0, amg = 0, amgx = 0;
        for (int64_t k = 0; k < D; k++)
            mean += xr[k] / (double)D;
        for (int64_t k = 0; k < D; k++)
            var += (xr[k] - mean) * (xr[k] - mean) / (double)D;
        double rstd = 1.0 / sqrt(var + eps);
        for (int64_t k = 0; k < D; k++) {
            g[k] = dr[k] * (1.0 + sc[k]);
            xh[k] = (xr[k] - mean) * rstd;
            mg += g[k] / D, mgx += g[k] * xh[k] / D;
            amg += fabs(g[k]) / D, amgx += fabs(g[k] * xh[k]) / D;
        }
        for (int64_t k = 0; k < D; k++) {
            dx[r * D + k] = rstd * (g[k] - mg - xh[k] * mgx);
            mag[r * D + k] = rstd * (fabs(g[k]) + amg + fabs(xh[k]) * amgx);
        }
    }
    free(g);
    free(xh);
}

struct mod_fd {
    const kn_tensor *mod;
    const float *u, *other; /* gate_add: the residual x */
    int64_t shape[3];
};

static double ln_modulate_loss(void *p, const float *x)
{
    struct mod_fd *a = p;
    int64_t n = a->shape[0] * a->shape[1] * a->shape[2];
    float *xv = malloc((size_t)n * sizeof(float));
    memcpy(xv, x, (size_t)n * sizeof(float));
    kn_tensor xt = make(KN_F32, 3, a->shape, xv), y = empty(KN_F32, 3, a->shape);
    CHECK(kn_ln_modulate(ctx, &y, &xt, a->mod, 0, 1, 1e-6f) == 0);
    double l = dot_u(a->u, &y);
    free(xv);
    free_all((kn_tensor *[]){&xt, &y}, 2);
    return l;
}

static double gate_add_loss(void *p, const float *yv)
{
    struct mod_fd *a = p;
    int64_t n = a->shape[0] * a->shape[1] * a->shape[2];
    float *xv = malloc((size_t)n * sizeof(float)), *y2 = malloc((size_t)n * sizeof(float));
    memcpy(xv, a->other, (size_t)n * sizeof(float));
    memcpy(y2, yv, (size_t)n * sizeof(float));
    kn_tensor xt = make(KN_F32, 3, a->shape, xv), yt = make(KN_F32, 3, a->shape, y2);
    CHECK(kn_gate_add(ctx, &xt, &yt, a->mod, 2) == 0);
    double l = dot_u(a->u, &xt);
    free(xv);
    free(y2);
    free_all((kn_tensor *[]){&xt, &yt}, 2);
    return l;
}

/* mod[B]: B copies of one sample's table, so that every sample sees the same one. */
struct mod_arg {
    kn_tensor mod[4];
};

static int ln_modulate_grad_op(void *arg, kn_tensor *out, const kn_tensor *in)
{
    struct mod_arg *m = arg;
    /* x = in, dy = in: any values serve. */
    return kn_ln_modulate_grad(ctx, out, in, in, &m->mod[in->shape[0]], 1, 1e-6f);
}

static void test_ln_modulate_grad(void)
{
    const int64_t B = 2, S = 5, D = 300, C = 3;
    int64_t xs[3] = {B, S, D}, ms[3] = {B, C, D};
    float *xv, *dyv, *mv;
    kn_tensor x = rand_tensor(KN_F32, 3, xs, 2.0f, &xv),
              dy = rand_tensor(KN_F32, 3, xs, 1.0f, &dyv);
    kn_tensor mod = rand_tensor(KN_F32, 3, ms, 0.5f, &mv), dx = empty(KN_F32, 3, xs);
    for (int64_t i = 0; i < B * S * D; i++)
        xv[i] += 0.7f; /* a mean away from 0 */
    kn_free(ctx, &x);
    x = make(KN_F32, 3, xs, xv);
    CHECK(kn_ln_modulate_grad(ctx, &dx, &dy, &x, &mod, 1, 1e-6f) == 0);
    double *ref = dvec(B * S * D), *mag = dvec(B * S * D);
    ln_modulate_ref(ref, mag, xv, dyv, mv, B, S, D, C, 1, 1e-6);
    float *got = values(&dx);
    /* Three float32 passes over the row: 1e-5 of the terms' magnitudes. */
    CHECK(close_each(got, ref, mag, B * S * D, 1e-30, 1e-5, "ln_modulate_grad f32"));
    struct mod_fd a = {.mod = &mod, .u = dyv, .shape = {B, S, D}};
    fd_check("ln_modulate_grad against kn_ln_modulate", ln_modulate_loss, &a, xv, got, B * S * D,
             1e-2f, 1e-4);
    /* In place. */
    CHECK(kn_ln_modulate_grad(ctx, &dy, &dy, &x, &mod, 1, 1e-6f) == 0);
    float *inplace = values(&dy);
    CHECK(memcmp(inplace, got, (size_t)(B * S * D) * sizeof(float)) == 0);
    /* bf16 activations. */
    kn_tensor x16 = make(KN_BF16, 3, xs, xv), dy16 = make(KN_BF16, 3, xs, dyv);
    kn_tensor m16 = make(KN_BF16, 3, ms, mv), dx16 = empty(KN_BF16, 3, xs);
    CHECK(kn_ln_modulate_grad(ctx, &dx16, &dy16, &x16, &m16, 1, 1e-6f) == 0);
    float *g16 = values(&dx16);
    ln_modulate_ref(ref, mag, xv, dyv, mv, B, S, D, C, 1, 1e-6); /* at the rounded inputs */
    CHECK(close_norm(g16, ref, B * S * D, 1e-2, "ln_modulate_grad bf16"));
    struct mod_arg m;
    float *m1 = rand_buf(C * 77, 0.5f), *m3 = malloc((size_t)(3 * C * 77) * sizeof(float));
    for (int s = 0; s < 3; s++)
        memcpy(m3 + s * C * 77, m1, (size_t)(C * 77) * sizeof(float));
    for (int64_t b = 1; b <= 3; b++)
        m.mod[b] = make(KN_F32, 3, (int64_t[]){b, C, 77}, m3);
    same_per_sample("ln_modulate_grad", ln_modulate_grad_op, &m, 3, (int64_t[]){1, 40, 77},
                    (int64_t[]){1, 40, 77});
    free(m1);
    free(m3);
    free_all((kn_tensor *[]){&m.mod[1], &m.mod[2], &m.mod[3]}, 3);
    free(ref);
    free(mag);
    free(got);
    free(inplace);
    free(g16);
    free(xv);
    free(dyv);
    free(mv);
    free_all((kn_tensor *[]){&x, &dy, &mod, &dx, &x16, &dy16, &m16, &dx16}, 8);
}

static void test_gate_grad(void)
{
    const int64_t B = 2, S = 7, D = 33, C = 4;
    int64_t xs[3] = {B, S, D}, ms[3] = {B, C, D};
    float *dxv, *mv, *resv;
    kn_tensor dx = rand_tensor(KN_F32, 3, xs, 1.0f, &dxv),
              mod = rand_tensor(KN_F32, 3, ms, 1.0f, &mv);
    kn_tensor dy = empty(KN_F32, 3, xs), res = rand_tensor(KN_F32, 3, xs, 1.0f, &resv);
    CHECK(kn_gate_grad(ctx, &dy, &dx, &mod, 2) == 0);
    float *got = values(&dy);
    int exact = 1;
    for (int64_t r = 0; r < B * S; r++)
        for (int64_t k = 0; k < D; k++)
            exact &= got[r * D + k] == mv[(r / S * C + 2) * D + k] * dxv[r * D + k];
    CHECKF(exact, "gate_grad is not gate * dx, one float32 product");
    struct mod_fd a = {.mod = &mod, .u = dxv, .other = resv, .shape = {B, S, D}};
    float *y0 = rand_buf(B * S * D, 1.0f);
    fd_check("gate_grad against kn_gate_add", gate_add_loss, &a, y0, got, B * S * D, 0.25f, 1e-5);
    CHECK(kn_gate_grad(ctx, &dx, &dx, &mod, 2) == 0); /* in place */
    float *inplace = values(&dx);
    CHECK(memcmp(inplace, got, (size_t)(B * S * D) * sizeof(float)) == 0);
    free(got);
    free(inplace);
    free(y0);
    free(dxv);
    free(mv);
    free(resv);
    free_all((kn_tensor *[]){&dx, &mod, &dy, &res}, 4);
}

/* ---- kn_qkv_split_grad ---- */

struct qkv_case {
    int64_t B, n, L, row0, D;
    int heads, norm;
    kn_tensor qw, kw;
    const float *uq, *uk, *uv; /* the loss's weights on q, k, v [B, L, D] */
};

static void qkv_ref(const struct qkv_case *c, const float *qkv, const float *dq, const float *dk,
                    const float *dv, const float *qw, const float *kw, double *out, double *mag)
{
    const int64_t D = c->D, Dh = D / c->heads;
    for (int64_t r = 0; r < c->B * c->n; r++) {
        const int64_t at = ((r / c->n) * c->L + c->row0 + r % c->n) * D;
        for (int part = 0; part < 3; part++) {
            const float *g = (part == 0 ? dq : part == 1 ? dk : dv) + at;
            const float *x = qkv + r * 3 * D + part * D, *w = part == 0 ? qw : kw;
            double *o = out + r * 3 * D + part * D, *m = mag + r * 3 * D + part * D;
            for (int64_t h = 0; h < D; h += Dh) {
                double ms = 0, s = 0, as = 0;
                for (int64_t k = h; k < h + Dh; k++)
                    ms += (double)x[k] * x[k] / Dh;
                double rs = 1.0 / sqrt(ms + 1e-6);
                for (int64_t k = h; k < h + Dh && part < 2 && c->norm; k++)
                    s += (double)x[k] * w[k - h] * g[k] / Dh,
                        as += fabs(x[k] * w[k - h] * g[k]) / Dh;
                for (int64_t k = h; k < h + Dh; k++) {
                    if (part == 2 || !c->norm) {
                        o[k] = g[k], m[k] = fabs(g[k]);
                    } else {
                        o[k] = rs * w[k - h] * g[k] - x[k] * rs * rs * rs * s;
                        m[k] = rs * fabs(w[k - h] * g[k]) + fabs(x[k]) * rs * rs * rs * as;
                    }
                }
            }
        }
    }
}

static double qkv_loss(void *p, const float *x)
{
    struct qkv_case *c = p;
    int64_t js[3] = {c->B, c->n, 3 * c->D}, os[3] = {c->B, c->L, c->D};
    float *xv = malloc((size_t)(c->B * c->n * 3 * c->D) * sizeof(float));
    memcpy(xv, x, (size_t)(c->B * c->n * 3 * c->D) * sizeof(float));
    kn_tensor qkv = make(KN_F32, 3, js, xv), q = empty(KN_F32, 3, os), k = empty(KN_F32, 3, os),
              v = empty(KN_F32, 3, os);
    CHECK(kn_qkv_split(ctx, &q, &k, &v, c->row0, &qkv, c->heads, c->norm ? &c->qw : NULL,
                       c->norm ? &c->kw : NULL, 1e-6f) == 0);
    double l = dot_u(c->uq, &q) + dot_u(c->uk, &k) + dot_u(c->uv, &v);
    free(xv);
    free_all((kn_tensor *[]){&qkv, &q, &k, &v}, 4);
    return l;
}

static void qkv_case_run(struct qkv_case *c, kn_dtype dt)
{
    const int64_t D = c->D, Dh = D / c->heads;
    int64_t js[3] = {c->B, c->n, 3 * D}, os[3] = {c->B, c->L, D};
    float *xv, *dqv, *dkv, *dvv, *qwv, *kwv;
    kn_tensor qkv = rand_tensor(dt, 3, js, 2.0f, &xv), dq = rand_tensor(dt, 3, os, 1.0f, &dqv);
    kn_tensor dk = rand_tensor(dt, 3, os, 1.0f, &dkv), dv = rand_tensor(dt, 3, os, 1.0f, &dvv);
    c->qw = rand_tensor(KN_F32, 1, &Dh, 1.0f, &qwv);
    c->kw = rand_tensor(KN_F32, 1, &Dh, 1.0f, &kwv);
    kn_tensor dqkv = empty(dt, 3, js);
    CHECKF(kn_qkv_split_grad(ctx, &dqkv, &dq, &dk, &dv, c->row0, &qkv, c->heads,
                             c->norm ? &c->qw : NULL, c->norm ? &c->kw : NULL, 1e-6f) == 0,
           "%s", err_msg());
    int64_t n = c->B * c->n * 3 * D;
    double *ref = dvec(n), *mag = dvec(n);
    qkv_ref(c, xv, dqv, dkv, dvv, qwv, kwv, ref, mag);
    float *got = values(&dqkv);
    char what[96];
    snprintf(what, sizeof what, "qkv_split_grad %s%s", kn_dtype_name(dt), c->norm ? " normed" : "");
    if (dt == KN_F32)
        CHECK(close_each(got, ref, mag, n, 1e-30, 1e-5, what));
    else /* one rounding of the output to bf16: 2^-8 of each element's magnitude */
        CHECK(close_each(got, ref, mag, n, 1e-30, 8e-3, what));
    if (dt == KN_F32) {
        c->uq = dqv, c->uk = dkv, c->uv = dvv;
        snprintf(what, sizeof what, "qkv_split_grad%s against kn_qkv_split",
                 c->norm ? " normed" : "");
        fd_check(what, qkv_loss, c, xv, got, n, 1e-2f, 1e-4);
    }
    free(ref);
    free(mag);
    free(got);
    free(xv);
    free(dqv);
    free(dkv);
    free(dvv);
    free(qwv);
    free(kwv);
    free_all((kn_tensor *[]){&qkv, &dq, &dk, &dv, &c->qw, &c->kw, &dqkv}, 7);
}

struct qkv_inv {
    kn_tensor qw, kw;
};

/* in = qkv [B, 30, 3 * 64]; the gradients dq = dk = dv are rows of in's q part. */
static int qkv_grad_op(void *arg, kn_tensor *out, const kn_tensor *in)
{
    struct qkv_inv *a = arg;
    int64_t os[3] = {in->shape[0], 40, 64};
    kn_tensor g = empty(KN_F32, 3, os);
    CHECK(kn_fill(ctx, &g, 0.5f) == 0);
    int rc = kn_qkv_split_grad(ctx, out, &g, &g, &g, 7, in, 2, &a->qw, &a->kw, 1e-6f);
    kn_free(ctx, &g);
    return rc;
}

static void test_qkv_split_grad(void)
{
    struct qkv_case c = {.B = 2, .n = 9, .L = 20, .row0 = 4, .D = 96, .heads = 3, .norm = 1};
    qkv_case_run(&c, KN_F32);
    qkv_case_run(&c, KN_BF16);
    c.norm = 0;
    qkv_case_run(&c, KN_F32);
    struct qkv_inv a = {rand_tensor(KN_F32, 1, (int64_t[]){32}, 1.0f, NULL),
                        rand_tensor(KN_F32, 1, (int64_t[]){32}, 1.0f, NULL)};
    same_per_sample("qkv_split_grad", qkv_grad_op, &a, 3, (int64_t[]){1, 30, 192},
                    (int64_t[]){1, 30, 192});
    free_all((kn_tensor *[]){&a.qw, &a.kw}, 2);
}

/* ---- kn_patch_embed_grad ---- */

struct patch_fd {
    const kn_tensor *w;
    const float *u;
    int64_t B, C, D, H, W, p;
};

/* kn_conv2d (kernel and stride p) then kn_transpose to tokens [B, gh*gw, D]. */
static double patch_loss(void *arg, const float *x)
{
    struct patch_fd *a = arg;
    const int64_t gh = a->H / a->p, gw = a->W / a->p;
    int64_t xs[4] = {a->B, a->C, a->H, a->W}, ys[4] = {a->B, a->D, gh, gw};
    int64_t cs[3] = {a->B, a->D, gh * gw}, ts[3] = {a->B, gh * gw, a->D};
    float *xv = malloc((size_t)(a->B * a->C * a->H * a->W) * sizeof(float));
    memcpy(xv, x, (size_t)(a->B * a->C * a->H * a->W) * sizeof(float));
    kn_tensor xt = make(KN_F32, 4, xs, xv), y = empty(KN_F32, 4, ys), tok = empty(KN_F32, 3, ts);
    CHECK(kn_conv2d(ctx, &y, &xt, a->w, NULL, (int)a->p, 0) == 0);
    kn_tensor yc = kn_reshape(&y, 3, cs);
    CHECK(kn_transpose(ctx, &tok, &yc) == 0);
    double l = dot_u(a->u, &tok);
    free(xv);
    free_all((kn_tensor *[]){&xt, &y, &tok}, 3);
    return l;
}

static void test_patch_embed_grad(void)
{
    struct patch_fd a = {.B = 2, .C = 3, .D = 40, .H = 6, .W = 8, .p = 2};
    const int64_t gh = a.H / a.p, gw = a.W / a.p, S = gh * gw, p = a.p;
    int64_t ts[3] = {a.B, S, a.D}, ws[4] = {a.D, a.C, p, p}, xs[4] = {a.B, a.C, a.H, a.W};
    float *tv, *wv;
    kn_tensor dtok = rand_tensor(KN_F32, 3, ts, 1.0f, &tv),
              w = rand_tensor(KN_BF16, 4, ws, 0.5f, &wv);
    kn_tensor dx = empty(KN_F32, 4, xs);
    CHECKF(kn_patch_embed_grad(ctx, &dx, &dtok, &w, (int)p) == 0, "%s", err_msg());
    int64_t n = a.B * a.C * a.H * a.W;
    double *ref = dvec(n), *mag = dvec(n);
    for (int64_t b = 0; b < a.B; b++)
        for (int64_t c = 0; c < a.C; c++)
            for (int64_t i = 0; i < a.H; i++)
                for (int64_t jx = 0; jx < a.W; jx++) {
                    int64_t tok = (i / p) * gw + jx / p, at = ((b * a.C + c) * a.H + i) * a.W + jx;
                    for (int64_t d = 0; d < a.D; d++) {
                        double t = (double)tv[(b * S + tok) * a.D + d] *
                                   wv[((d * a.C + c) * p + i % p) * p + jx % p];
                        ref[at] += t;
                        mag[at] += fabs(t);
                    }
                }
    float *got = values(&dx);
    CHECK(close_each(got, ref, mag, n, 1e-30, 1e-5, "patch_embed_grad f32"));
    a.w = &w, a.u = tv;
    float *x0 = rand_buf(n, 1.0f);
    fd_check("patch_embed_grad against conv2d + transpose", patch_loss, &a, x0, got, n, 0.25f,
             1e-5);
    kn_tensor t16 = make(KN_BF16, 3, ts, tv), dx16 = empty(KN_BF16, 4, xs);
    CHECK(kn_ctx_set_matmul(ctx, KN_BF16) == 0);
    CHECK(kn_patch_embed_grad(ctx, &dx16, &t16, &w, (int)p) == 0);
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
    float *g16 = values(&dx16);
    CHECK(close_norm(g16, ref, n, 1e-2, "patch_embed_grad bf16"));
    free(ref);
    free(mag);
    free(got);
    free(g16);
    free(x0);
    free(tv);
    free(wv);
    free_all((kn_tensor *[]){&dtok, &w, &dx, &t16, &dx16}, 5);
}

/* ---- attention: maps and gradient ---- */

/* Cases are written in this order: B, Sq, Sk, H, Dh, scale, sel, n_sel, rows, with_do. */
struct attn_case {
    int64_t B, Sq, Sk;
    int H, Dh;
    float scale;
    const int32_t *sel;
    int n_sel;
    int64_t rows;
    int with_do;
};

/* Softmax probabilities in double: P[((b H + h) Sq + i) Sk + j]. */
static double *ref_probs(const struct attn_case *c, const float *q, const float *k)
{
    const int64_t HD = c->H * c->Dh;
    double *P = dvec(c->B * c->H * c->Sq * c->Sk);
    for (int64_t b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int64_t i = 0; i < c->Sq; i++) {
                double *row = P + ((b * c->H + h) * c->Sq + i) * c->Sk, mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < c->Sk; j++) {
                    double s = 0;
                    for (int d = 0; d < c->Dh; d++)
                        s += (double)q[(b * c->Sq + i) * HD + h * c->Dh + d] *
                             k[(b * c->Sk + j) * HD + h * c->Dh + d];
                    row[j] = s * c->scale;
                    mx = row[j] > mx ? row[j] : mx;
                }
                for (int64_t j = 0; j < c->Sk; j++)
                    sum += (row[j] = exp(row[j] - mx));
                for (int64_t j = 0; j < c->Sk; j++)
                    row[j] /= sum;
            }
    return P;
}

/* The double reference of kn_attention_grad (dq, dk, dv of shapes q, k, k). */
static void ref_attention_grad(const struct attn_case *c, const float *q, const float *k,
                               const float *v, const float *dout, const float *dmaps, double *dq,
                               double *dk, double *dv)
{
    const int64_t HD = c->H * c->Dh, Sq = c->Sq, Sk = c->Sk;
    double *P = ref_probs(c, q, k), *dS = dvec(Sk), *o = dvec(c->Dh);
    for (int64_t b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int64_t i = 0; i < Sq; i++) {
                const double *p = P + ((b * c->H + h) * Sq + i) * Sk;
                const float *doi = dout ? dout + (b * Sq + i) * HD + h * c->Dh : NULL;
                double drow = 0, gp = 0;
                for (int d = 0; d < c->Dh; d++) {
                    o[d] = 0;
                    for (int64_t j = 0; j < Sk; j++)
                        o[d] += p[j] * v[(b * Sk + j) * HD + h * c->Dh + d];
                    drow += doi ? doi[d] * o[d] : 0;
                }
                for (int64_t j = 0; j < Sk; j++) {
                    dS[j] = 0;
                    for (int d = 0; d < c->Dh && doi; d++)
                        dS[j] += (double)doi[d] * v[(b * Sk + j) * HD + h * c->Dh + d];
                }
                for (int s = 0; s < c->n_sel && i < c->rows; s++) {
                    double g = dmaps[(b * c->n_sel + s) * c->rows + i] / c->H;
                    dS[c->sel[s]] += g;
                    gp += g * p[c->sel[s]];
                }
                for (int64_t j = 0; j < Sk; j++)
                    dS[j] = p[j] * (dS[j] - drow - gp);
                for (int64_t j = 0; j < Sk; j++)
                    for (int d = 0; d < c->Dh; d++) {
                        int64_t qi = (b * Sq + i) * HD + h * c->Dh + d;
                        int64_t kj = (b * Sk + j) * HD + h * c->Dh + d;
                        dq[qi] += c->scale * dS[j] * k[kj];
                        dk[kj] += c->scale * dS[j] * q[qi];
                        dv[kj] += doi ? p[j] * doi[d] : 0;
                    }
            }
    free(P);
    free(dS);
    free(o);
}

/* The tensors of one attention case and the outputs of its gradient. */
struct attn_run {
    kn_tensor q, k, v, o, lse, dout, dmaps, dq, dk, dv;
};

/* Forward with lse, then the gradient, activations in dt (host values already rounded). */
static int attn_run(const struct attn_case *c, kn_dtype dt, const float *qv, const float *kv,
                    const float *vv, const float *dov, const float *dmv, struct attn_run *r)
{
    const int64_t HD = c->H * c->Dh;
    int64_t qs[3] = {c->B, c->Sq, HD}, ks[3] = {c->B, c->Sk, HD}, ls[3] = {c->B, c->H, c->Sq};
    int64_t ms[3] = {c->B, c->n_sel, c->rows};
    float *t[5];
    const float *src[5] = {qv, kv, vv, dov, dmv};
    const int64_t n[5] = {c->B * c->Sq * HD, c->B * c->Sk * HD, c->B * c->Sk * HD,
                          c->B * c->Sq * HD, c->B * c->n_sel * c->rows};
    for (int i = 0; i < 5; i++) {
        t[i] = malloc((size_t)(n[i] > 0 ? n[i] : 1) * sizeof(float));
        if (src[i]) memcpy(t[i], src[i], (size_t)n[i] * sizeof(float));
    }
    r->q = make(dt, 3, qs, t[0]), r->k = make(dt, 3, ks, t[1]), r->v = make(dt, 3, ks, t[2]);
    r->dout = make(dt, 3, qs, t[3]), r->dmaps = make(KN_F32, 3, ms, t[4]);
    r->o = empty(dt, 3, qs), r->lse = empty(KN_F32, 3, ls);
    r->dq = empty(dt, 3, qs), r->dk = empty(dt, 3, ks), r->dv = empty(dt, 3, ks);
    for (int i = 0; i < 5; i++)
        free(t[i]);
    kn_attn_args args = {.heads = c->H, .scale = c->scale, .lse = &r->lse};
    kn_map_grad map = {&r->dmaps, c->sel, c->n_sel, c->rows};
    int rc = kn_attention(ctx, &r->o, &r->q, &r->k, &r->v, &args);
    if (rc == 0)
        rc = kn_attention_grad(ctx, &r->dq, &r->dk, &r->dv, c->with_do ? &r->dout : NULL, &r->q,
                               &r->k, &r->v, &r->o, &args, c->n_sel ? &map : NULL);
    CHECKF(rc == 0, "%s", err_msg());
    return rc;
}

static void attn_free(struct attn_run *r)
{
    free_all((kn_tensor *[]){&r->q, &r->k, &r->v, &r->o, &r->lse, &r->dout, &r->dmaps, &r->dq,
                             &r->dk, &r->dv},
             10);
}

/* Random inputs of a case: q, k, v, do, dmaps (malloc'ed). */
struct attn_inputs {
    float *q, *k, *v, *dout, *dmaps;
};

static struct attn_inputs attn_inputs(const struct attn_case *c)
{
    const int64_t HD = c->H * c->Dh;
    return (struct attn_inputs){
        rand_buf(c->B * c->Sq * HD, 1.0f), rand_buf(c->B * c->Sk * HD, 1.0f),
        rand_buf(c->B * c->Sk * HD, 1.0f), rand_buf(c->B * c->Sq * HD, 1.0f),
        rand_buf(c->B * c->n_sel * c->rows, 1.0f)};
}

static void attn_inputs_free(struct attn_inputs *in)
{
    free(in->q);
    free(in->k);
    free(in->v);
    free(in->dout);
    free(in->dmaps);
}

/* The loss whose gradient kn_attention_grad gives: sum do . o + sum dmaps . maps, the maps
 * from kn_attention_maps on the forward's lse. x = q | k | v. */
struct attn_fd {
    const struct attn_case *c;
    const float *dout, *dmaps;
};

static double attn_loss(void *p, const float *x)
{
    struct attn_fd *a = p;
    const struct attn_case *c = a->c;
    const int64_t HD = c->H * c->Dh, nq = c->B * c->Sq * HD, nk = c->B * c->Sk * HD;
    struct attn_run r;
    struct attn_case fwd = *c;
    fwd.n_sel = 0; /* the gradient is not needed here */
    attn_run(&fwd, KN_F32, x, x + nq, x + nq + nk, a->dout, NULL, &r);
    kn_tensor maps = empty(KN_F32, 3, (int64_t[]){c->B, c->n_sel, c->rows});
    CHECK(kn_attention_maps(ctx, &maps, &r.q, &r.k, &r.lse, c->sel, c->n_sel, c->rows, c->H,
                            c->scale) == 0);
    double l = (c->with_do ? dot_u(a->dout, &r.o) : 0.0) + dot_u(a->dmaps, &maps);
    kn_free(ctx, &maps);
    attn_free(&r);
    return l;
}

static void attention_case(const struct attn_case *c, const char *name)
{
    const int64_t HD = c->H * c->Dh, nq = c->B * c->Sq * HD, nk = c->B * c->Sk * HD;
    struct attn_inputs in = attn_inputs(c);
    struct attn_run r;
    if (attn_run(c, KN_F32, in.q, in.k, in.v, in.dout, in.dmaps, &r) < 0) return;
    double *dq = dvec(nq), *dk = dvec(nk), *dv = dvec(nk);
    ref_attention_grad(c, in.q, in.k, in.v, c->with_do ? in.dout : NULL, in.dmaps, dq, dk, dv);
    float *gq = values(&r.dq), *gk = values(&r.dk), *gv = values(&r.dv);
    char what[96];
    /* float32 sums over Sk or Sq terms of products of O(1) values. */
    snprintf(what, sizeof what, "attention_grad dq %s", name);
    CHECK(close_norm(gq, dq, nq, 1e-5, what));
    snprintf(what, sizeof what, "attention_grad dk %s", name);
    CHECK(close_norm(gk, dk, nk, 1e-5, what));
    snprintf(what, sizeof what, "attention_grad dv %s", name);
    if (c->with_do) {
        CHECK(close_norm(gv, dv, nk, 1e-5, what));
    } else {
        int zero = 1;
        for (int64_t i = 0; i < nk; i++)
            zero &= gv[i] == 0.0f;
        CHECKF(zero, "%s: dv is not zero without do", name);
    }
    /* Against the forward: q, k and v perturbed together. */
    float *x = malloc((size_t)(nq + 2 * nk) * sizeof(float)),
          *g = malloc((size_t)(nq + 2 * nk) * sizeof(float));
    memcpy(x, in.q, (size_t)nq * sizeof(float));
    memcpy(x + nq, in.k, (size_t)nk * sizeof(float));
    memcpy(x + nq + nk, in.v, (size_t)nk * sizeof(float));
    memcpy(g, gq, (size_t)nq * sizeof(float));
    memcpy(g + nq, gk, (size_t)nk * sizeof(float));
    memcpy(g + nq + nk, gv, (size_t)nk * sizeof(float));
    struct attn_fd a = {c, in.dout, in.dmaps};
    snprintf(what, sizeof what, "attention_grad %s against kn_attention", name);
    fd_check(what, attn_loss, &a, x, g, nq + 2 * nk, 1e-2f, 1e-4);
    free_bufs((void *[]){x, g, dq, dk, dv, gq, gk, gv}, 8);
    attn_free(&r);
    attn_inputs_free(&in);
}

static void test_attention_maps(void)
{
    static const int32_t sel[3] = {69, 3, 40};
    struct attn_case c = {2, 70, 70, 3, 16, 0.25f, sel, 3, 50, 0};
    struct attn_inputs in = attn_inputs(&c);
    struct attn_case fwd = c;
    fwd.n_sel = 0;
    struct attn_run r;
    if (attn_run(&fwd, KN_F32, in.q, in.k, in.v, in.dout, NULL, &r) < 0) return;
    kn_tensor maps = empty(KN_F32, 3, (int64_t[]){c.B, c.n_sel, c.rows});
    CHECKF(kn_attention_maps(ctx, &maps, &r.q, &r.k, &r.lse, sel, 3, c.rows, c.H, c.scale) == 0,
           "%s", err_msg());
    double *P = ref_probs(&c, in.q, in.k), *ref = dvec(c.B * 3 * c.rows);
    for (int64_t b = 0; b < c.B; b++)
        for (int s = 0; s < 3; s++)
            for (int64_t p = 0; p < c.rows; p++)
                for (int h = 0; h < c.H; h++)
                    ref[(b * 3 + s) * c.rows + p] +=
                        P[((b * c.H + h) * c.Sq + p) * c.Sk + sel[s]] / c.H;
    float *got = values(&maps);
    /* exp of a float32 score less a float32 lse: a few ulp of the score's size, relative. */
    CHECK(close_each(got, ref, NULL, c.B * 3 * c.rows, 1e-12, 2e-5, "attention_maps f32"));
    /* Every key selected: each row of the maps sums to one. */
    int32_t all[70];
    for (int j = 0; j < 70; j++)
        all[j] = j;
    kn_tensor full = empty(KN_F32, 3, (int64_t[]){c.B, 70, c.Sq});
    CHECK(kn_attention_maps(ctx, &full, &r.q, &r.k, &r.lse, all, 70, c.Sq, c.H, c.scale) == 0);
    float *fv = values(&full);
    double worst = 0;
    for (int64_t b = 0; b < c.B; b++)
        for (int64_t p = 0; p < c.Sq; p++) {
            double s = 0;
            for (int j = 0; j < 70; j++)
                s += fv[(b * 70 + j) * c.Sq + p];
            worst = fabs(s - 1.0) > worst ? fabs(s - 1.0) : worst;
        }
    printf("  %-44s rows sum to 1 within %.2e (bound 1e-5)\n", "attention_maps all keys", worst);
    CHECK(worst <= 1e-5);
    free(P);
    free(ref);
    free(got);
    free(fv);
    kn_free(ctx, &maps);
    kn_free(ctx, &full);
    attn_free(&r);
    attn_inputs_free(&in);
}

static void test_attention_grad(void)
{
    /* Duplicate selections add up; rows below Sq; blocks of 64 with a short tail. */
    static const int32_t sel[4] = {65, 3, 10, 3};
    struct attn_case c = {2, 70, 70, 2, 16, 0.25f, sel, 4, 50, 1};
    attention_case(&c, "do + maps");
    c.with_do = 0;
    attention_case(&c, "maps alone (do NULL)");
    c.with_do = 1, c.n_sel = 0;
    attention_case(&c, "do alone");
    struct attn_case x = {1, 37, 130, 3, 8, 0.3f, sel, 4, 37, 1};
    attention_case(&x, "Sq 37, Sk 130");
}

/* The identities of the map term: selecting every key with dmaps = 1 differentiates a sum of
 * ones (zero gradient); selecting the last (text) keys alone still reaches every (image) key
 * through the log-sum-exp. */
static void test_attention_map_identities(void)
{
    int32_t all[48], text[4] = {44, 45, 46, 47};
    for (int j = 0; j < 48; j++)
        all[j] = j;
    struct attn_case c = {1, 48, 48, 2, 16, 0.25f, all, 48, 30, 0};
    struct attn_inputs in = attn_inputs(&c);
    float *ones = malloc(48 * 30 * sizeof(float));
    for (int i = 0; i < 48 * 30; i++)
        ones[i] = 1.0f;
    struct attn_run r;
    if (attn_run(&c, KN_F32, in.q, in.k, in.v, NULL, ones, &r) < 0) return;
    float *gq = values(&r.dq), *gk = values(&r.dk);
    double mq = 0, mk = 0;
    for (int64_t i = 0; i < kn_numel(&r.dq); i++)
        mq = fabs(gq[i]) > mq ? fabs(gq[i]) : mq, mk = fabs(gk[i]) > mk ? fabs(gk[i]) : mk;
    printf("  %-44s max |dq| %.2e, max |dk| %.2e (bound 1e-6)\n", "maps of every key summed", mq,
           mk);
    CHECK(mq <= 1e-6 && mk <= 1e-6);
    free(gq);
    free(gk);
    attn_free(&r);
    c.sel = text, c.n_sel = 4;
    if (attn_run(&c, KN_F32, in.q, in.k, in.v, NULL, in.dmaps, &r) < 0) return;
    gk = values(&r.dk);
    int reached = 1;
    for (int64_t j = 0; j < 44; j++) {
        double m = 0;
        for (int d = 0; d < 32; d++)
            m = fabs(gk[j * 32 + d]) > m ? fabs(gk[j * 32 + d]) : m;
        reached &= m > 1e-4;
    }
    CHECKF(reached, "an unselected key got no gradient from the maps");
    free(gk);
    free(ones);
    attn_free(&r);
    attn_inputs_free(&in);
}

/* One sample's dq, dk, dv alone on one thread against the same sample beside others. */
static void attention_invariant(kn_dtype matmul)
{
    CHECK(kn_ctx_set_matmul(ctx, matmul) == 0);
    static const int32_t sel[2] = {5, 100};
    struct attn_case one = {1, 130, 130, 2, 32, 0.2f, sel, 2, 90, 1};
    const int64_t per = one.Sq * 64, mper = 2 * one.rows;
    struct attn_inputs in = attn_inputs(&one);
    CHECK(kn_cpu_set_threads(1) == 0);
    struct attn_run r;
    if (attn_run(&one, KN_F32, in.q, in.k, in.v, in.dout, in.dmaps, &r) < 0) return;
    float *ref[3] = {values(&r.dq), values(&r.dk), values(&r.dv)};
    attn_free(&r);
    int th[4], nth = thread_counts(th), bad = 0;
    for (int64_t pos = 0; pos < 3; pos++) {
        struct attn_case c = one;
        c.B = 3;
        struct attn_inputs many = attn_inputs(&c);
        memcpy(many.q + pos * per, in.q, (size_t)per * sizeof(float));
        memcpy(many.k + pos * per, in.k, (size_t)per * sizeof(float));
        memcpy(many.v + pos * per, in.v, (size_t)per * sizeof(float));
        memcpy(many.dout + pos * per, in.dout, (size_t)per * sizeof(float));
        memcpy(many.dmaps + pos * mper, in.dmaps, (size_t)mper * sizeof(float));
        for (int t = 0; t < nth; t++) {
            CHECK(kn_cpu_set_threads(th[t]) == 0);
            if (attn_run(&c, KN_F32, many.q, many.k, many.v, many.dout, many.dmaps, &r) < 0) break;
            kn_tensor *outs[3] = {&r.dq, &r.dk, &r.dv};
            for (int o = 0; o < 3; o++) {
                float *got = values(outs[o]);
                if (memcmp(got + pos * per, ref[o], (size_t)per * sizeof(float)) && bad++ < 3)
                    fprintf(stderr,
                            "  attention_grad %s: output %d of sample %lld, %d threads differs\n",
                            kn_dtype_name(matmul), o, (long long)pos, th[t]);
                free(got);
            }
            attn_free(&r);
        }
        attn_inputs_free(&many);
    }
    CHECK(bad == 0);
    CHECK(kn_cpu_set_threads(th[3]) == 0);
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
    for (int o = 0; o < 3; o++)
        free(ref[o]);
    attn_inputs_free(&in);
}

static void test_attention_grad_invariant(void)
{
    attention_invariant(KN_F32);
    attention_invariant(KN_BF16);
}

/* bf16 activations and products against the double reference at the same (rounded) inputs. */
static void test_attention_grad_bf16(void)
{
    static const int32_t sel[3] = {2, 60, 99};
    struct attn_case c = {1, 100, 100, 2, 32, 0.18f, sel, 3, 80, 1};
    const int64_t nq = c.Sq * 64;
    struct attn_inputs in = attn_inputs(&c);
    struct attn_run r;
    CHECK(kn_ctx_set_matmul(ctx, KN_BF16) == 0);
    int rc = attn_run(&c, KN_BF16, in.q, in.k, in.v, in.dout, in.dmaps, &r);
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
    if (rc < 0) return;
    float *rq = values(&r.q), *rk = values(&r.k), *rv = values(&r.v), *rd = values(&r.dout);
    double *dq = dvec(nq), *dk = dvec(nq), *dv = dvec(nq);
    ref_attention_grad(&c, rq, rk, rv, rd, in.dmaps, dq, dk, dv);
    float *gq = values(&r.dq), *gk = values(&r.dk), *gv = values(&r.dv);
    /* bf16 operands of every product (P and dS rounded to 2^-8) and bf16 outputs. */
    CHECK(close_norm(gq, dq, nq, 1e-2, "attention_grad dq bf16"));
    CHECK(close_norm(gk, dk, nq, 1e-2, "attention_grad dk bf16"));
    CHECK(close_norm(gv, dv, nq, 1e-2, "attention_grad dv bf16"));
    free_bufs((void *[]){rq, rk, rv, rd, dq, dk, dv, gq, gk, gv}, 10);
    attn_free(&r);
    attn_inputs_free(&in);
}

/* ---- errors: the right code, and nothing written ---- */

/* Whether t still holds `sentinel` everywhere. */
static int untouched(const kn_tensor *t, float sentinel)
{
    float *v = values(t);
    int same = 1;
    for (int64_t i = 0; i < kn_numel(t); i++)
        same &= v[i] == sentinel;
    free(v);
    return same;
}

#define EXPECT_ERR(call, code, out)                                                                \
    do {                                                                                           \
        CHECK(kn_fill(ctx, (out), 7.0f) == 0);                                                     \
        int rc_ = (call);                                                                          \
        CHECKF(rc_ == (code), "%s gave %d (%s)", #call, rc_, rc_ < 0 ? err_msg() : "");            \
        CHECKF(untouched((out), 7.0f), "%s wrote its output", #call);                              \
    } while (0)

static void test_errors(void)
{
    int64_t s23[2] = {2, 3}, s24[2] = {2, 4}, s34[2] = {3, 4}, s43[2] = {4, 3};
    kn_tensor a23 = empty(KN_F32, 2, s23), a24 = empty(KN_F32, 2, s24), w34 = empty(KN_F32, 2, s34);
    kn_tensor w43 = empty(KN_F32, 2, s43), h24 = empty(KN_BF16, 2, s24),
              o24 = empty(KN_F32, 2, s24);
    /* linear_grad: dy [2, 3], w [3, 4] -> dx [2, 4] */
    EXPECT_ERR(kn_linear_grad(ctx, &o24, &a23, &w43), ERR_SHAPE, &o24);
    EXPECT_ERR(kn_linear_grad(ctx, &a23, &a23, &w34), ERR_SHAPE, &a23);
    EXPECT_ERR(kn_linear_grad(ctx, &h24, &a23, &w34), ERR_INVALID, &h24);
    EXPECT_ERR(kn_activate_grad(ctx, &o24, &a24, &a23, KN_ACT_GELU_TANH), ERR_SHAPE, &o24);
    EXPECT_ERR(kn_activate_grad(ctx, &o24, &a24, &a24, KN_ACT_SILU), ERR_INVALID, &o24);
    EXPECT_ERR(kn_activate_grad(ctx, &o24, &h24, &a24, KN_ACT_GELU_TANH), ERR_INVALID, &o24);
    /* the adaLN grads: x [1, 2, 4], mod [1, 3, 4] */
    int64_t xs[3] = {1, 2, 4}, ms[3] = {1, 3, 4}, bad_ms[3] = {1, 3, 5};
    kn_tensor x = empty(KN_F32, 3, xs), dy = empty(KN_F32, 3, xs), dx = empty(KN_F32, 3, xs);
    kn_tensor mod = empty(KN_F32, 3, ms), bad_mod = empty(KN_F32, 3, bad_ms);
    EXPECT_ERR(kn_ln_modulate_grad(ctx, &dx, &dy, &x, &mod, 3, 1e-6f), ERR_RANGE, &dx);
    EXPECT_ERR(kn_ln_modulate_grad(ctx, &dx, &dy, &x, &bad_mod, 1, 1e-6f), ERR_SHAPE, &dx);
    EXPECT_ERR(kn_ln_modulate_grad(ctx, &dx, &dy, &dx, &mod, 1, 1e-6f), ERR_INVALID, &dx);
    EXPECT_ERR(kn_gate_grad(ctx, &dy, &dx, &mod, -1), ERR_RANGE, &dy);
    EXPECT_ERR(kn_gate_grad(ctx, &o24, &dx, &mod, 1), ERR_SHAPE, &o24);
    /* qkv_split_grad: dq [1, 4, 6] with 2 heads, qkv [1, 2, 18] */
    int64_t qs[3] = {1, 4, 6}, js[3] = {1, 2, 18}, hs[1] = {3};
    kn_tensor dq = empty(KN_F32, 3, qs), qkv = empty(KN_F32, 3, js), dqkv = empty(KN_F32, 3, js);
    kn_tensor nw = empty(KN_F32, 1, hs);
    EXPECT_ERR(kn_qkv_split_grad(ctx, &dqkv, &dq, &dq, &dq, 3, &qkv, 2, NULL, NULL, 1e-6f),
               ERR_SHAPE, &dqkv);
    EXPECT_ERR(kn_qkv_split_grad(ctx, &dqkv, &dq, &dq, &dq, 0, &qkv, 4, NULL, NULL, 1e-6f),
               ERR_SHAPE, &dqkv);
    EXPECT_ERR(kn_qkv_split_grad(ctx, &dqkv, &dq, &dq, &dq, 0, &qkv, 2, &nw, NULL, 1e-6f),
               ERR_INVALID, &dqkv);
    /* attention: q, k [1, 4, 6], 2 heads */
    int64_t ls[3] = {1, 2, 4}, mps[3] = {1, 1, 3};
    kn_tensor q = empty(KN_F32, 3, qs), lse = empty(KN_F32, 3, ls), maps = empty(KN_F32, 3, mps);
    kn_tensor g1 = empty(KN_F32, 3, qs), g2 = empty(KN_F32, 3, qs), g3 = empty(KN_F32, 3, qs);
    int32_t sel_ok[1] = {2}, sel_bad[1] = {4};
    EXPECT_ERR(kn_attention_maps(ctx, &maps, &q, &q, &lse, sel_bad, 1, 3, 2, 0.5f), ERR_RANGE,
               &maps);
    EXPECT_ERR(kn_attention_maps(ctx, &maps, &q, &q, &lse, sel_ok, 1, 5, 2, 0.5f), ERR_RANGE,
               &maps);
    EXPECT_ERR(kn_attention_maps(ctx, &maps, &q, &q, &lse, sel_ok, 1, 2, 2, 0.5f), ERR_SHAPE,
               &maps);
    EXPECT_ERR(kn_attention_maps(ctx, &maps, &q, &q, &lse, sel_ok, 1, 3, 4, 0.5f), ERR_SHAPE,
               &maps);
    kn_attn_args args = {.heads = 2, .scale = 0.5f, .lse = &lse};
    kn_map_grad mg = {&maps, sel_bad, 1, 3};
    EXPECT_ERR(kn_attention_grad(ctx, &g1, &g2, &g3, &q, &q, &q, &q, &q, &args, &mg), ERR_RANGE,
               &g1);
    mg.sel = sel_ok;
    EXPECT_ERR(kn_attention_grad(ctx, &g1, &g2, &g1, &q, &q, &q, &q, &q, &args, &mg), ERR_INVALID,
               &g1);
    args.causal = 1;
    EXPECT_ERR(kn_attention_grad(ctx, &g1, &g2, &g3, &q, &q, &q, &q, &q, &args, &mg), ERR_INVALID,
               &g1);
    args.causal = 0, args.lse = NULL;
    EXPECT_ERR(kn_attention_grad(ctx, &g1, &g2, &g3, &q, &q, &q, &q, &q, &args, &mg), ERR_INVALID,
               &g1);
    args.lse = &lse, args.heads = 4;
    EXPECT_ERR(kn_attention_grad(ctx, &g1, &g2, &g3, &q, &q, &q, &q, &q, &args, &mg), ERR_SHAPE,
               &g1);
    /* patch_embed_grad: dtok [1, 6, 5], w [5, 2, 2, 2], dx [1, 2, 4, 6] */
    int64_t ts[3] = {1, 6, 5}, ws[4] = {5, 2, 2, 2}, ps[4] = {1, 2, 4, 6}, bad_ps[4] = {1, 2, 4, 5};
    kn_tensor dtok = empty(KN_F32, 3, ts), pw = empty(KN_F32, 4, ws), pdx = empty(KN_F32, 4, ps);
    kn_tensor bad_pdx = empty(KN_F32, 4, bad_ps);
    EXPECT_ERR(kn_patch_embed_grad(ctx, &bad_pdx, &dtok, &pw, 2), ERR_SHAPE, &bad_pdx);
    EXPECT_ERR(kn_patch_embed_grad(ctx, &pdx, &dtok, &pw, 3), ERR_SHAPE, &pdx);
    EXPECT_ERR(kn_patch_embed_grad(ctx, &pdx, &dtok, &pw, 0), ERR_INVALID, &pdx);
    free_all((kn_tensor *[]){&a23, &a24,     &w34, &w43,  &h24,  &o24, &x,      &dy,  &dx,
                             &mod, &bad_mod, &dq,  &qkv,  &dqkv, &nw,  &q,      &lse, &maps,
                             &g1,  &g2,      &g3,  &dtok, &pw,   &pdx, &bad_pdx},
             25);
}

int main(void)
{
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    RUN(test_linear_grad);
    RUN(test_linear_grad_invariant);
    RUN(test_activate_grad);
    RUN(test_ln_modulate_grad);
    RUN(test_gate_grad);
    RUN(test_qkv_split_grad);
    RUN(test_patch_embed_grad);
    RUN(test_attention_maps);
    RUN(test_attention_grad);
    RUN(test_attention_map_identities);
    RUN(test_attention_grad_invariant);
    RUN(test_attention_grad_bf16);
    RUN(test_errors);
    kn_ctx_destroy(ctx);
    CHECK_DONE();
}
