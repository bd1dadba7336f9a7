/* The same bytes whatever the batch or the split: a row's (a sample's, a job's) result must not
 * change with the rows beside it, its position among them or the number of CPU threads. Op by
 * op (linear and linear_rows in float32 and bf16 products, attention, convolution, activations, norms), then the
 * whole pipeline: a job's final latents and image bytes alone, batched beside other jobs in
 * either position, on 1, 2, 3 and all threads, with the text encoders on a context of their
 * own, in fp32 and in bf16. Run again by tests/isa/test_isa.sh with oneDNN held to other
 * instruction sets. */
#include "engine/pipeline.h"
#include "kernels/kn_image.h"
#include "kernels/kn_ops.h"

#include "common/err.h"
#include "tests/unit/check.h"
#include "tests/unit/pipeline_compare.h"
#include "tests/unit/test_random.h"

#include <string.h>
#include <unistd.h>

static kn_ctx *ctx;

/* 1, 2, 3 and all online CPUs (one more than 3 where there are fewer). */
static int thread_counts(int out[4])
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int n = 0;
    out[n++] = 1;
    out[n++] = 2;
    out[n++] = 3;
    out[n++] = cpus > 3 ? (int)cpus : 4;
    return n;
}

static kn_tensor host(kn_dtype dt, int ndim, const int64_t *shape, const float *v)
{
    kn_tensor t;
    if (kn_alloc(ctx, &t, dt, ndim, shape) < 0 || kn_write_f32(ctx, &t, v) < 0)
        CHECKF(0, "%s", err_msg());
    return t;
}

/* ---- linear: rows placed among M - 1 others at every kind of position ---- */

typedef int (*linear_op)(kn_ctx *, kn_tensor *, const kn_tensor *, const kn_tensor *,
                         const kn_tensor *);

static void linear_rows(linear_op op, kn_dtype wdt, kn_dtype matmul, int64_t K, int64_t N)
{
    CHECK(kn_ctx_set_matmul(ctx, matmul) == 0);
    const int64_t R = 3; /* the rows followed */
    float *rows = rand_buf(R * K, 1.0f), *wv = rand_buf(N * K, 0.2f), *bv = rand_buf(N, 0.5f);
    kn_tensor w = host(wdt, 2, (int64_t[]){N, K}, wv), b = host(KN_F32, 1, (int64_t[]){N}, bv);
    float *ref = malloc((size_t)(R * N) * sizeof(float));
    /* The reference: each row alone, on one thread. */
    CHECK(kn_cpu_set_threads(1) == 0);
    for (int64_t r = 0; r < R; r++) {
        kn_tensor x = host(KN_F32, 2, (int64_t[]){1, K}, rows + r * K), y;
        kn_alloc(ctx, &y, KN_F32, 2, (int64_t[]){1, N});
        CHECKF(op(ctx, &y, &x, &w, &b) == 0, "%s", err_msg());
        kn_read_f32(ctx, &y, ref + r * N);
        kn_free(ctx, &x);
        kn_free(ctx, &y);
    }
    static const int64_t Ms[] = {2, 3, 31, 32, 33, 70, 300};
    int th[4], nth = thread_counts(th), bad = 0;
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
        int64_t M = Ms[mi];
        float *xv = rand_buf(M * K, 1.0f), *yv = malloc((size_t)(M * N) * sizeof(float));
        /* The followed rows first, last and in the middle (M = 2 has no middle). */
        int64_t at[3] = {0, M - 1, M > 2 ? M / 2 : -1};
        for (int64_t r = 0; r < R; r++)
            if (at[r] >= 0) memcpy(xv + at[r] * K, rows + r * K, (size_t)K * sizeof(float));
        kn_tensor x = host(KN_F32, 2, (int64_t[]){M, K}, xv), y;
        kn_alloc(ctx, &y, KN_F32, 2, (int64_t[]){M, N});
        for (int t = 0; t < nth; t++) {
            CHECK(kn_cpu_set_threads(th[t]) == 0);
            CHECKF(op(ctx, &y, &x, &w, &b) == 0, "%s", err_msg());
            kn_read_f32(ctx, &y, yv);
            for (int64_t r = 0; r < R; r++)
                if (at[r] >= 0 && memcmp(yv + at[r] * N, ref + r * N, (size_t)N * sizeof(float))) {
                    if (bad++ < 3)
                        fprintf(stderr, "  linear %s/%s K=%lld N=%lld: row at %lld of M=%lld on %d threads differs\n",
                                kn_dtype_name(wdt), kn_dtype_name(matmul), (long long)K,
                                (long long)N, (long long)at[r], (long long)M, th[t]);
                }
        }
        kn_free(ctx, &x);
        kn_free(ctx, &y);
        free(xv);
        free(yv);
    }
    CHECK(bad == 0);
    kn_free(ctx, &w);
    kn_free(ctx, &b);
    free(rows);
    free(wv);
    free(bv);
    free(ref);
    CHECK(kn_ctx_set_matmul(ctx, KN_F32) == 0);
}

static void test_linear_fp32(void)
{
    linear_rows(kn_linear, KN_F32, KN_F32, 200, 300);
    linear_rows(kn_linear, KN_BF16, KN_F32, 96, 520);
    linear_rows(kn_linear, KN_F16, KN_F32, 64, 40);
}

static void test_linear_bf16(void)
{
    linear_rows(kn_linear, KN_BF16, KN_BF16, 200, 300);
    linear_rows(kn_linear, KN_F32, KN_BF16, 96, 520);
    linear_rows(kn_linear, KN_F16, KN_BF16, 64, 40);
}

static void test_linear_rows_op(void)
{
    linear_rows(kn_linear_rows, KN_BF16, KN_F32, 200, 300);
    linear_rows(kn_linear_rows, KN_F32, KN_F32, 96, 520);
    linear_rows(kn_linear_rows, KN_BF16, KN_BF16, 200, 300);
    linear_rows(kn_linear_rows, KN_F16, KN_BF16, 64, 40);
}

/* ---- ops over samples: a sample alone, then beside others, on every thread count ---- */

typedef int (*sample_op)(kn_tensor *y, kn_tensor *x, int64_t B, void *arg);

/* x holds B samples of `per` floats; the followed sample is the first. Checks that its output
 * (out_per floats) equals what it gives alone on one thread. */
static void same_per_sample(const char *what, sample_op op, void *arg, int64_t per,
                            int64_t out_per, int ndim, const int64_t *shape1,
                            const int64_t *oshape1)
{
    float *sample = rand_buf(per, 1.0f), *ref = malloc((size_t)out_per * sizeof(float));
    int64_t s[KN_MAX_DIMS], os[KN_MAX_DIMS];
    memcpy(s, shape1, (size_t)ndim * sizeof *s);
    memcpy(os, oshape1, (size_t)ndim * sizeof *os);
    CHECK(kn_cpu_set_threads(1) == 0);
    kn_tensor x = host(KN_F32, ndim, s, sample), y;
    kn_alloc(ctx, &y, KN_F32, ndim, os);
    CHECKF(op(&y, &x, 1, arg) == 0, "%s: %s", what, err_msg());
    kn_read_f32(ctx, &y, ref);
    kn_free(ctx, &x);
    kn_free(ctx, &y);
    int th[4], nth = thread_counts(th), bad = 0;
    for (int64_t B = 2; B <= 3; B++)
        for (int64_t pos = 0; pos < B; pos++) {
            float *xv = rand_buf(B * per, 1.0f), *yv = malloc((size_t)(B * out_per) * sizeof(float));
            memcpy(xv + pos * per, sample, (size_t)per * sizeof(float));
            s[0] = os[0] = B;
            x = host(KN_F32, ndim, s, xv);
            kn_alloc(ctx, &y, KN_F32, ndim, os);
            for (int t = 0; t < nth; t++) {
                CHECK(kn_cpu_set_threads(th[t]) == 0);
                CHECKF(op(&y, &x, B, arg) == 0, "%s: %s", what, err_msg());
                kn_read_f32(ctx, &y, yv);
                if (memcmp(yv + pos * out_per, ref, (size_t)out_per * sizeof(float)) && bad++ < 3)
                    fprintf(stderr, "  %s: sample %lld of %lld on %d threads differs\n", what,
                            (long long)pos, (long long)B, th[t]);
            }
            kn_free(ctx, &x);
            kn_free(ctx, &y);
            free(xv);
            free(yv);
        }
    CHECK(bad == 0);
    free(sample);
    free(ref);
}

struct attn_arg {
    int heads, causal;
};

/* Self-attention with q = k = v = x (the projections do not matter here). */
static int attention_op(kn_tensor *y, kn_tensor *x, int64_t B, void *p)
{
    (void)B;
    const struct attn_arg *a = p;
    kn_attn_args args = {.heads = a->heads, .scale = 0.125f, .causal = a->causal};
    return kn_attention(ctx, y, x, x, x, &args);
}

static void test_attention(void)
{
    const int64_t S = 300, HD = 128;
    struct attn_arg full = {2, 0}, causal = {4, 1};
    int64_t shape[3] = {1, S, HD};
    same_per_sample("attention", attention_op, &full, S * HD, S * HD, 3, shape, shape);
    same_per_sample("causal attention", attention_op, &causal, S * HD, S * HD, 3, shape, shape);
}

struct conv_arg {
    kn_tensor w, b;
    int stride, pad;
};

static int conv_op(kn_tensor *y, kn_tensor *x, int64_t B, void *p)
{
    (void)B;
    struct conv_arg *c = p;
    return kn_conv2d(ctx, y, x, &c->w, &c->b, c->stride, c->pad);
}

static void test_conv2d(void)
{
    const int64_t C = 24, O = 40, H = 33, W = 27;
    float *wv = rand_buf(O * C * 9, 0.2f), *bv = rand_buf(O, 0.5f);
    struct conv_arg c = {host(KN_BF16, 4, (int64_t[]){O, C, 3, 3}, wv),
                         host(KN_F32, 1, (int64_t[]){O}, bv), 1, 1};
    same_per_sample("conv2d 3x3", conv_op, &c, C * H * W, O * H * W, 4,
                    (int64_t[]){1, C, H, W}, (int64_t[]){1, O, H, W});
    kn_free(ctx, &c.w);
    float *w1 = rand_buf(O * C, 0.2f);
    c.w = host(KN_F32, 4, (int64_t[]){O, C, 1, 1}, w1);
    c.pad = 0;
    same_per_sample("conv2d 1x1", conv_op, &c, C * H * W, O * H * W, 4,
                    (int64_t[]){1, C, H, W}, (int64_t[]){1, O, H, W});
    kn_free(ctx, &c.w);
    kn_free(ctx, &c.b);
    free(wv);
    free(w1);
    free(bv);
}

static int gelu_op(kn_tensor *y, kn_tensor *x, int64_t B, void *p)
{
    (void)B;
    (void)p;
    return kn_activate(ctx, y, x, KN_ACT_GELU_TANH);
}

static int norm_op(kn_tensor *y, kn_tensor *x, int64_t B, void *p)
{
    (void)B;
    (void)p;
    return kn_layer_norm(ctx, y, x, NULL, NULL, 1e-6f);
}

static void test_rowwise(void)
{
    /* 1003 columns: rows whose vector parts and tails fall anywhere in a thread's range. */
    int64_t shape[3] = {1, 77, 1003};
    same_per_sample("gelu_tanh", gelu_op, NULL, 77 * 1003, 77 * 1003, 3, shape, shape);
    same_per_sample("layer_norm", norm_op, NULL, 77 * 1003, 77 * 1003, 3, shape, shape);
}

/* ---- the pipeline: a job alone and batched, on every thread count ---- */

static void request(gen_params *p, const char *prompt, uint64_t seed, float guidance)
{
    gen_params_defaults(p);
    p->prompt = prompt;
    p->seed = seed;
    p->steps = 3;
    p->guidance = guidance;
    p->width = p->height = 64;
}

/* Runs jobs for ps[0..n) on e in one batch to their ends; the latents and image bytes of job
 * `follow` into r. */
static int run_batched(sd3_engine *e, const gen_params *ps, int n, int follow, run_result *r)
{
    gen_job *jobs[4] = {0};
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        rc = engine_job_prepare(e, &ps[i], &jobs[i]);
    while (rc == 0 && !engine_job_done(jobs[0]))
        rc = engine_step(e, jobs, n);
    *r = (run_result){0};
    if (rc == 0) {
        int64_t s[4];
        engine_job_latent_shape(jobs[follow], s);
        r->n_latents = (size_t)(s[0] * s[1] * s[2] * s[3]);
        r->latents = malloc(r->n_latents * sizeof *r->latents);
        rc = engine_job_latents(jobs[follow], r->latents, r->n_latents);
    }
    if (rc == 0 && (rc = engine_job_decode(e, jobs[follow], &r->rgb)) == 0)
        r->n_rgb = (size_t)ps[follow].count * (size_t)ps[follow].width * ps[follow].height * 3;
    for (int i = 0; i < n; i++)
        engine_job_free(jobs[i]);
    CHECKF(rc == 0, "%s", err_msg());
    return rc;
}

static int same_result(const run_result *a, const run_result *b)
{
    return a->n_latents == b->n_latents && a->n_rgb == b->n_rgb &&
           memcmp(a->latents, b->latents, a->n_latents * sizeof(float)) == 0 &&
           memcmp(a->rgb, b->rgb, a->n_rgb) == 0;
}

static void pipeline_mode(kn_dtype compute)
{
    const char *mode = engine_precision_name(compute);
    sd3_engine *e = NULL, *apart = NULL;
    engine_options o = {.device = KN_CPU, .compute = compute};
    if (load_fixture_engine(&o, &e) < 0) return;
    o.text_on_cpu = true;
    if (load_fixture_engine(&o, &apart) < 0) {
        engine_free(e);
        return;
    }
    gen_params ps[3];
    request(&ps[0], "a red fox in tall grass", 11, 4.5f);
    request(&ps[1], "a lighthouse at night", 12, 4.5f);
    request(&ps[2], "an orange cat on a sofa", 13, 4.5f);
    ps[2].count = 2;
    run_result ref, got;
    CHECK(kn_cpu_set_threads(1) == 0);
    if (run_batched(e, ps, 1, 0, &ref) < 0) goto out;
    int th[4], nth = thread_counts(th);
    for (int t = 0; t < nth; t++) {
        CHECK(kn_cpu_set_threads(th[t]) == 0);
        /* Alone, first of two, second of two, middle of three; encoders apart. */
        static const int order[4][4] = {{0}, {0, 1}, {1, 0}, {2, 0, 1}};
        static const int count[4] = {1, 2, 2, 3}, at[4] = {0, 0, 1, 1};
        for (int c = 0; c < 4; c++) {
            gen_params batch[3];
            for (int i = 0; i < count[c]; i++)
                batch[i] = ps[order[c][i]];
            if (run_batched(e, batch, count[c], at[c], &got) == 0) {
                CHECKF(same_result(&ref, &got), "%s: job %d of %d on %d threads gave other bytes",
                       mode, at[c] + 1, count[c], th[t]);
                run_result_free(&got);
            }
        }
        if (run_batched(apart, ps, 2, 0, &got) == 0) {
            CHECKF(same_result(&ref, &got),
                   "%s: text encoders apart, %d threads: other bytes", mode, th[t]);
            run_result_free(&got);
        }
    }
    run_result_free(&ref);
out:
    engine_free(e);
    engine_free(apart);
}

static void test_pipeline_fp32(void)
{
    pipeline_mode(KN_F32);
}

static void test_pipeline_bf16(void)
{
    pipeline_mode(KN_BF16);
}

int main(void)
{
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    RUN(test_linear_fp32);
    RUN(test_linear_bf16);
    RUN(test_linear_rows_op);
    RUN(test_attention);
    RUN(test_conv2d);
    RUN(test_rowwise);
    RUN(test_pipeline_fp32);
    RUN(test_pipeline_bf16);
    kn_ctx_destroy(ctx);
    CHECK_DONE();
}
