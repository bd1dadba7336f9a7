/* Tests of the SD3 transformer against diffusers: one forward pass of the fixture model on the
 * golden inputs (square batch of two, and a non-square single sample) matches the reference
 * output; alternating shapes through one model (arena growth, position crop cache) changes
 * nothing; skipped blocks change the output and bad skip indices are refused; sizes the model
 * cannot take are refused with a clear message; a config that contradicts the weights is an
 * error naming the file and the tensor. */
#include "engine/mmdit.h"

#include "common/err.h"
#include "engine/model_config.h"
#include "engine/npy.h"
#include "tests/unit/check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static kn_ctx *ctx;
static model_config *mc;

/* Measured on the fixture: max abs error 1.5e-6 of max(1, max|golden|); the bound keeps
 * a margin for other BLAS builds and still catches any real mistake. */
#define TOL_REL 1e-5

typedef struct golden {
    npy_array x, ctx_in, pooled, t, out;
    kn_tensor dx, dctx, dpooled, dout;
    float t_host[8];
} golden;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int upload(const npy_array *a, kn_tensor *t)
{
    int rc = kn_alloc(ctx, t, KN_F32, a->ndim, a->shape);
    return rc < 0 ? rc : kn_write(ctx, t, a->f32, a->count * sizeof(float));
}

static int read_npy(const char *dir, const char *name, npy_array *a)
{
    char path[512];
    snprintf(path, sizeof path, "%s/golden/components/%s/%s.npy", fixtures_dir(), dir, name);
    int rc = npy_read_f32(path, a);
    if (rc < 0) fprintf(stderr, "  %s\n", err_msg());
    return rc;
}

static int golden_load(const char *dir, golden *g)
{
    memset(g, 0, sizeof *g);
    if (read_npy(dir, "hidden_states", &g->x) < 0 ||
        read_npy(dir, "encoder_hidden_states", &g->ctx_in) < 0 ||
        read_npy(dir, "pooled_projections", &g->pooled) < 0 ||
        read_npy(dir, "timestep", &g->t) < 0 || read_npy(dir, "output", &g->out) < 0)
        return -1;
    if (g->t.count > sizeof g->t_host / sizeof g->t_host[0]) return -1;
    memcpy(g->t_host, g->t.f32, g->t.count * sizeof(float));
    if (upload(&g->x, &g->dx) < 0 || upload(&g->ctx_in, &g->dctx) < 0 ||
        upload(&g->pooled, &g->dpooled) < 0 ||
        kn_alloc(ctx, &g->dout, KN_F32, g->out.ndim, g->out.shape) < 0)
        return -1;
    return 0;
}

static void golden_free(golden *g)
{
    npy_array *arrs[] = {&g->x, &g->ctx_in, &g->pooled, &g->t, &g->out};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++)
        npy_array_free(arrs[i]);
    kn_tensor *ts[] = {&g->dx, &g->dctx, &g->dpooled, &g->dout};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        kn_free(ctx, ts[i]);
}

/* Max abs difference of the device output from the golden, relative to max(1, max|golden|). */
static double rel_err(golden *g, float *host)
{
    if (kn_read_f32(ctx, &g->dout, host) < 0) return INFINITY;
    double err = 0, mag = 1;
    for (size_t i = 0; i < g->out.count; i++) {
        double d = fabs((double)host[i] - g->out.f32[i]);
        if (!(d <= err)) err = d; /* NaN-propagating max */
        if (fabs(g->out.f32[i]) > mag) mag = fabs(g->out.f32[i]);
    }
    return err / mag;
}

static double forward_err(mmdit *m, golden *g, const int *skip, int n_skip, double *secs)
{
    float *host = malloc(g->out.count * sizeof(float));
    double t0 = now_s();
    int rc = mmdit_forward(m, &g->dx, g->t_host, &g->dctx, &g->dpooled, skip, n_skip, &g->dout);
    if (secs) *secs = now_s() - t0;
    double e = INFINITY;
    if (rc < 0)
        fprintf(stderr, "  forward: %s\n", err_msg());
    else
        e = rel_err(g, host);
    free(host);
    return e;
}

static void check_case(const char *dir)
{
    mmdit *m = NULL;
    golden g;
    int rc = mmdit_load(ctx, mc, &m);
    CHECKF(rc == 0, "%s", err_msg());
    CHECK(golden_load(dir, &g) == 0);
    if (rc == 0 && !check_current_failed) {
        double first, second;
        double e1 = forward_err(m, &g, NULL, 0, &first);
        double e2 = forward_err(m, &g, NULL, 0, &second);
        CHECKF(e1 <= TOL_REL, "%s: relative max error %.3g", dir, e1);
        CHECKF(e2 == e1, "%s: second forward differs (%.3g vs %.3g)", dir, e2, e1);
        printf("  %s: rel max err %.2e, forward %.1f ms (first call %.1f ms)\n", dir, e1,
               1e3 * second, 1e3 * first);
    }
    golden_free(&g);
    mmdit_free(m);
}

static void test_forward_square(void)
{
    check_case("transformer");
}

static void test_forward_nonsquare(void)
{
    check_case("transformer_24x40");
}

/* One model through small, large, small shapes: the arena grows once and the cached crop of
 * the position table follows the grid size. */
static void test_shape_changes(void)
{
    mmdit *m = NULL;
    golden sq, ns;
    CHECKF(mmdit_load(ctx, mc, &m) == 0, "%s", err_msg());
    CHECK(golden_load("transformer_24x40", &ns) == 0);
    CHECK(golden_load("transformer", &sq) == 0);
    if (!check_current_failed) {
        double e1 = forward_err(m, &ns, NULL, 0, NULL);
        double e2 = forward_err(m, &sq, NULL, 0, NULL);
        double e3 = forward_err(m, &ns, NULL, 0, NULL);
        CHECKF(e1 <= TOL_REL && e2 <= TOL_REL && e3 <= TOL_REL, "errors %.3g %.3g %.3g", e1, e2,
               e3);
    }
    golden_free(&sq);
    golden_free(&ns);
    mmdit_free(m);
}

static void test_skip_layers(void)
{
    mmdit *m = NULL;
    golden g;
    CHECKF(mmdit_load(ctx, mc, &m) == 0, "%s", err_msg());
    CHECK(golden_load("transformer_24x40", &g) == 0);
    if (!check_current_failed) {
        /* A skipped block must change the output; the empty list is the full model. */
        int one[] = {1};
        CHECK(forward_err(m, &g, one, 1, NULL) > 1e-2);
        CHECK(forward_err(m, &g, one, 0, NULL) <= TOL_REL);
        int bad[] = {3};
        int rc = mmdit_forward(m, &g.dx, g.t_host, &g.dctx, &g.dpooled, bad, 1, &g.dout);
        CHECKF(rc == ERR_RANGE && strstr(err_msg(), "skip layer 3"), "rc %d: %s", rc, err_msg());
    }
    golden_free(&g);
    mmdit_free(m);
}

/* Skip-layer guidance's conditional pass: blocks not executed, their inputs passed on, against
 * diffusers 0.32's transformer(..., skip_layers=[...]) on the square golden inputs. */
static void test_skip_layers_golden(void)
{
    static const struct {
        const char *file;
        int skip[2], n;
    } cases[] = {{"output_skip1", {1}, 1}, {"output_skip0_2", {0, 2}, 2}};
    mmdit *m = NULL;
    golden g;
    CHECKF(mmdit_load(ctx, mc, &m) == 0, "%s", err_msg());
    CHECK(golden_load("transformer", &g) == 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0] && !check_current_failed; i++) {
        npy_array_free(&g.out);
        CHECK(read_npy("transformer_skip", cases[i].file, &g.out) == 0);
        if (check_current_failed)
            break;
        double e = forward_err(m, &g, cases[i].skip, cases[i].n, NULL);
        CHECKF(e <= TOL_REL, "%s: relative max error %.3g", cases[i].file, e);
    }
    golden_free(&g);
    mmdit_free(m);
}

static void test_size_refused(void)
{
    const mmdit_config *c = &mc->mmdit;
    CHECK(mmdit_check_size(c, 64, 64) == 0);
    CHECK(mmdit_check_size(c, 2, 64) == 0);
    CHECK(mmdit_check_size(c, 66, 64) == ERR_RANGE);
    CHECKF(strstr(err_msg(), "33x32 patch grid") && strstr(err_msg(), "position table"), "%s",
           err_msg());
    CHECK(mmdit_check_size(c, 31, 32) == ERR_RANGE);
    CHECKF(strstr(err_msg(), "not a multiple of the transformer's patch size 2"), "%s", err_msg());
    CHECK(mmdit_check_size(c, 0, 32) == ERR_RANGE);

    /* The forward refuses the size before touching anything. */
    mmdit *m = NULL;
    CHECKF(mmdit_load(ctx, mc, &m) == 0, "%s", err_msg());
    kn_tensor x, enc, pooled, out;
    CHECK(kn_alloc(ctx, &x, KN_F32, 4, (int64_t[]){1, 16, 40, 66}) == 0);
    CHECK(kn_alloc(ctx, &out, KN_F32, 4, (int64_t[]){1, 16, 40, 66}) == 0);
    CHECK(kn_alloc(ctx, &enc, KN_F32, 3, (int64_t[]){1, 7, 128}) == 0);
    CHECK(kn_alloc(ctx, &pooled, KN_F32, 2, (int64_t[]){1, 80}) == 0);
    float t = 10.0f;
    if (m) {
        int rc = mmdit_forward(m, &x, &t, &enc, &pooled, NULL, 0, &out);
        CHECKF(rc == ERR_RANGE && strstr(err_msg(), "20x33 patch grid"), "rc %d: %s", rc,
               err_msg());
        /* The text embedding width is checked too. */
        kn_tensor x2 = kn_view(&x, 0, 4, (int64_t[]){1, 16, 8, 8});
        kn_tensor o2 = kn_view(&out, 0, 4, (int64_t[]){1, 16, 8, 8});
        kn_tensor e2 = kn_view(&enc, 0, 3, (int64_t[]){1, 14, 64});
        rc = mmdit_forward(m, &x2, &t, &e2, &pooled, NULL, 0, &o2);
        CHECKF(rc == ERR_SHAPE && strstr(err_msg(), "encoder_hidden_states"), "rc %d: %s", rc,
               err_msg());
    }
    kn_free(ctx, &x), kn_free(ctx, &out), kn_free(ctx, &enc), kn_free(ctx, &pooled);
    mmdit_free(m);
}

/* Loads with a doctored config; expects failure whose message names the weights file and
 * `tensor` (and `also` when not NULL). */
static void expect_contradiction(const mmdit_config *cfg, const char *tensor, const char *also)
{
    model_config copy = *mc;
    copy.mmdit = *cfg;
    mmdit *m = NULL;
    int rc = mmdit_load(ctx, &copy, &m);
    CHECKF(rc < 0 && m == NULL, "loaded with a contradicting config (%s)", tensor);
    const char *msg = err_msg();
    CHECKF(strstr(msg, "transformer/diffusion_pytorch_model.safetensors") && strstr(msg, tensor) &&
               (!also || strstr(msg, also)),
           "message \"%s\" lacks the file, %s or %s", msg, tensor, also ? also : "");
}

static void test_config_contradicts_weights(void)
{
    mmdit_config c = mc->mmdit;
    c.joint_attention_dim = 64;
    expect_contradiction(&c, "context_embedder.weight", "joint_attention_dim=64");

    c = mc->mmdit;
    c.num_dual_attention_layers = 1; /* [0]: block 1 then has a 6D modulation */
    expect_contradiction(&c, "transformer_blocks.1.norm1.linear.weight", "dual_attention_layers");

    c = mc->mmdit;
    c.num_layers = 2; /* block 1 becomes the last, with a 2D context modulation */
    expect_contradiction(&c, "transformer_blocks.1.norm1_context.linear.weight", "num_layers=2");

    c = mc->mmdit;
    c.qk_norm_rms = false;
    expect_contradiction(&c, "norm_", "has no place");

    c = mc->mmdit;
    c.pos_embed_max_size = 48;
    expect_contradiction(&c, "pos_embed.pos_embed", "pos_embed_max_size=48");

    /* A config that cannot describe any SD3 transformer is refused before the file is read. */
    c = mc->mmdit;
    c.caption_projection_dim = 96;
    model_config copy = *mc;
    copy.mmdit = c;
    mmdit *m = NULL;
    CHECK(mmdit_load(ctx, &copy, &m) == ERR_FORMAT);
    CHECKF(strstr(err_msg(), "transformer/config.json: caption_projection_dim=96"), "%s",
           err_msg());
}

/* The sinusoidal projection against torch's values for t = 500.5 (computed with
 * diffusers.models.embeddings.get_timestep_embedding(torch.tensor([500.5]), 256, True, 0)). */
static void test_timestep_proj(void)
{
    float p[256];
    mmdit_timestep_proj(500.5f, p);
    static const struct {
        int i;
        float v;
    } ref[] = {
        {0, -0.5513889789581299f}, {1, 0.6998566389083862f},    {5, -0.8538774251937866f},
        {63, 0.6178632974624634f}, {127, 0.998553991317749f},   {128, -0.8342483043670654f},
        {129, 0.714283287525177f}, {200, 0.32127416133880615f}, {255, 0.053758181631565094f}};
    for (size_t i = 0; i < sizeof ref / sizeof ref[0]; i++)
        CHECKF(fabsf(p[ref[i].i] - ref[i].v) <= 2e-6f * (1 + fabsf(ref[i].v)),
               "p[%d] = %.8g, torch %.8g", ref[i].i, p[ref[i].i], ref[i].v);
}

int main(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/tiny-sd35", fixtures_dir());
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0 || model_config_load(path, &mc) < 0) {
        fprintf(stderr, "setup: %s\n", err_msg());
        return 1;
    }
    RUN(test_timestep_proj);
    RUN(test_forward_square);
    RUN(test_forward_nonsquare);
    RUN(test_shape_changes);
    RUN(test_skip_layers);
    RUN(test_skip_layers_golden);
    RUN(test_size_refused);
    RUN(test_config_contradicts_weights);
    model_config_free(mc);
    kn_ctx_destroy(ctx);
    CHECK_DONE();
}
