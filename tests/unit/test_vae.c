/* Tests of the VAE decoder against diffusers: the fixture VAE (F16 weights, computed in F32)
 * decodes the golden latent to the golden image; decoding from sampler latents applies the
 * scaling and shift first; inputs of the wrong shape are refused; a config that contradicts the
 * weights is an error naming the file and the tensor. */
#include "engine/vae.h"

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

/* Measured on the fixture: 1.6e-6 of max(1, max|golden|); the bound keeps a margin for
 * other BLAS builds. The sampler-latents path adds the rounding of the unscaling. */
#define TOL_REL 1e-5

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int read_npy(const char *name, npy_array *a)
{
    char path[512];
    snprintf(path, sizeof path, "%s/golden/components/vae_decode/%s.npy", fixtures_dir(), name);
    int rc = npy_read_f32(path, a);
    if (rc < 0) fprintf(stderr, "  %s\n", err_msg());
    return rc;
}

static double rel_err(const kn_tensor *dev, const npy_array *ref)
{
    float *host = malloc(ref->count * sizeof(float));
    double err = INFINITY, mag = 1;
    if (kn_numel(dev) == (int64_t)ref->count && kn_read_f32(ctx, dev, host) == 0) {
        err = 0;
        for (size_t i = 0; i < ref->count; i++) {
            double d = fabs((double)host[i] - ref->f32[i]);
            if (!(d <= err)) err = d;
            if (fabs(ref->f32[i]) > mag) mag = fabs(ref->f32[i]);
        }
    }
    free(host);
    return err / mag;
}

typedef enum { FROM_Z, FROM_LATENTS } input_kind;

static void decode_case(input_kind kind)
{
    npy_array z = {0}, ref = {0};
    vae *v = NULL;
    kn_tensor dz = {0}, img = {0};
    CHECK(read_npy("latents", &z) == 0 && read_npy("output", &ref) == 0);
    CHECKF(vae_load(ctx, mc, &v) == 0, "%s", err_msg());
    if (check_current_failed) goto out;
    CHECK(vae_scale_factor(v) == 8);
    if (kind == FROM_LATENTS) {
        /* What the sampler holds: (z - shift) * scaling, so that the decoder's unscaling gives
         * z back up to rounding. */
        for (size_t i = 0; i < z.count; i++)
            z.f32[i] = (z.f32[i] - mc->vae.shift_factor) * mc->vae.scaling_factor;
    }
    CHECK(kn_alloc(ctx, &dz, KN_F32, z.ndim, z.shape) == 0);
    CHECK(kn_write(ctx, &dz, z.f32, z.count * sizeof(float)) == 0);
    CHECK(kn_alloc(ctx, &img, KN_F32, ref.ndim, ref.shape) == 0);
    double t0 = now_s();
    int rc = kind == FROM_Z ? vae_decode(v, &dz, &img) : vae_decode_latents(v, &dz, &img);
    double t1 = now_s();
    CHECKF(rc == 0, "%s", err_msg());
    if (rc == 0) {
        double e = rel_err(&img, &ref);
        CHECKF(e <= TOL_REL, "relative max error %.3g", e);
        printf("  %s: rel max err %.2e, decode %.1f ms\n",
               kind == FROM_Z ? "vae_decode" : "vae_decode_latents", e, 1e3 * (t1 - t0));
    }
out:
    kn_free(ctx, &dz);
    kn_free(ctx, &img);
    npy_array_free(&z);
    npy_array_free(&ref);
    vae_free(v);
}

static void test_decode(void)
{
    decode_case(FROM_Z);
}

static void test_decode_latents(void)
{
    decode_case(FROM_LATENTS);
}

static void test_bad_shapes(void)
{
    vae *v = NULL;
    CHECKF(vae_load(ctx, mc, &v) == 0, "%s", err_msg());
    if (!v) return;
    kn_tensor z, img;
    CHECK(kn_alloc(ctx, &z, KN_F32, 4, (int64_t[]){1, 16, 4, 6}) == 0);
    CHECK(kn_alloc(ctx, &img, KN_F32, 4, (int64_t[]){1, 3, 32, 32}) == 0);
    CHECK(vae_decode(v, &z, &img) == ERR_SHAPE);
    CHECKF(strstr(err_msg(), "VAE output [1, 3, 32, 32]"), "%s", err_msg());
    kn_tensor z8 = kn_view(&z, 0, 4, (int64_t[]){1, 8, 4, 8});
    kn_tensor img2 = kn_view(&img, 0, 4, (int64_t[]){1, 3, 32, 64});
    CHECK(vae_decode(v, &z8, &img2) == ERR_SHAPE);
    CHECKF(strstr(err_msg(), "expected [B, 16, h, w]"), "%s", err_msg());
    kn_free(ctx, &z);
    kn_free(ctx, &img);
    vae_free(v);
}

static void expect_contradiction(const vae_config *cfg, const char *tensor, const char *also)
{
    model_config copy = *mc;
    copy.vae = *cfg;
    vae *v = NULL;
    int rc = vae_load(ctx, &copy, &v);
    CHECKF(rc < 0 && v == NULL, "loaded with a contradicting config (%s)", tensor);
    const char *msg = err_msg();
    CHECKF(strstr(msg, "vae/diffusion_pytorch_model.safetensors") && strstr(msg, tensor) &&
               (!also || strstr(msg, also)),
           "message \"%s\" lacks the file, %s or %s", msg, tensor, also ? also : "");
}

static void test_config_contradicts_weights(void)
{
    vae_config c = mc->vae;
    c.block_out_channels[0] = 64;
    expect_contradiction(&c, "decoder.up_blocks.3.resnets.0", "block_out_channels");

    c = mc->vae;
    c.latent_channels = 4;
    expect_contradiction(&c, "decoder.conv_in.weight", "latent_channels=4");

    c = mc->vae;
    c.layers_per_block = 1;
    expect_contradiction(&c, "decoder.up_blocks.0.resnets.2.conv1.weight", "layers_per_block=1");

    c = mc->vae;
    c.mid_block_add_attention = false;
    expect_contradiction(&c, "decoder.mid_block.attentions.0", "mid_block_add_attention");

    c = mc->vae;
    c.use_post_quant_conv = true;
    expect_contradiction(&c, "post_quant_conv.weight", NULL);

    c = mc->vae;
    c.num_blocks = 3; /* drops the 32-channel outermost level */
    expect_contradiction(&c, "decoder.up_blocks.", NULL);

    /* Channels the GroupNorm cannot split are a config error, found before the file is read. */
    c = mc->vae;
    c.norm_num_groups = 5;
    model_config copy = *mc;
    copy.vae = c;
    vae *v = NULL;
    CHECK(vae_load(ctx, &copy, &v) == ERR_FORMAT);
    CHECKF(strstr(err_msg(), "vae/config.json: block_out_channels[0]=32"), "%s", err_msg());
}

int main(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/tiny-sd35", fixtures_dir());
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0 || model_config_load(path, &mc) < 0) {
        fprintf(stderr, "setup: %s\n", err_msg());
        return 1;
    }
    RUN(test_decode);
    RUN(test_decode_latents);
    RUN(test_bad_shapes);
    RUN(test_config_contradicts_weights);
    model_config_free(mc);
    kn_ctx_destroy(ctx);
    CHECK_DONE();
}
