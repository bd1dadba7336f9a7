/* The published SD3.5-medium layout loads unchanged: a directory written by
 * `tools/make_bench_model.py --tiny` (the published configs with only their size keys shrunk,
 * every other key as published; F16 CLIP-L, CLIP-G and T5 in the two shards the published index
 * names; BF16 transformer and VAE, the VAE file holding the encoder too) is read by
 * model_config_load and each component's loader, keeps its stored dtypes, and runs one forward
 * of every component with finite outputs. The tokenizers are not read here (test_t5_tokenizer
 * and test_clip_tokenizer hold them to the references). Needs the Python environment of
 * `make deps` (numpy) to write the directory: $PYTHON, default build/pyenv/bin/python. */
#include "engine/clip_text.h"
#include "engine/mmdit.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "engine/t5_encoder.h"
#include "engine/vae.h"

#include "common/err.h"
#include "tests/unit/check.h"

#include <ftw.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char tmp_root[512];
static char model[600];
static model_config *mc;
static kn_ctx *ctx;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void component_dir(char *buf, size_t n, const char *sub)
{
    snprintf(buf, n, "%s/%s", model, sub);
}

/* Every tensor of the component's archive has the published dtype. */
static void expect_dtype(const char *sub, const char *stem, kn_dtype want, size_t files)
{
    char dir[700];
    component_dir(dir, sizeof dir, sub);
    st_archive *a = NULL;
    CHECKF(st_archive_open(dir, stem, &a) == 0, "%s", err_msg());
    if (!a) return;
    size_t n = st_count(a), wrong = 0;
    const char *first_file = st_at(a, 0)->file;
    size_t other_file = 0;
    for (size_t i = 0; i < n; i++) {
        wrong += st_at(a, i)->tensor.dtype != want;
        other_file += strcmp(st_at(a, i)->file, first_file) != 0;
    }
    CHECKF(wrong == 0, "%s: %zu of %zu tensors are not %s", sub, wrong, n, kn_dtype_name(want));
    CHECKF((files > 1) == (other_file > 0), "%s: tensors in %s file", sub,
           other_file ? "more than one" : "one");
    st_archive_close(a);
}

static size_t numel(const kn_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

/* A small deterministic ramp, so that every input is defined and not all alike. */
static void fill(kn_tensor *t)
{
    size_t n = numel(t);
    float *h = malloc(n * sizeof *h);
    for (size_t i = 0; h && i < n; i++)
        h[i] = (float)((int)(i % 17) - 8) / 8.0f;
    CHECK(h && kn_write_f32(ctx, t, h) == 0);
    free(h);
}

static bool all_finite(const kn_tensor *t)
{
    size_t n = numel(t);
    float *h = malloc(n * sizeof *h);
    bool ok = h && kn_read_f32(ctx, t, h) == 0;
    for (size_t i = 0; ok && i < n; i++)
        ok = isfinite(h[i]);
    free(h);
    return ok;
}

/* The keys as published; the values that --tiny leaves alone keep their published meaning. */
static void test_configs(void)
{
    CHECK(mc->clip_l.hidden_act == CFG_ACT_QUICK_GELU && mc->clip_g.hidden_act == CFG_ACT_GELU);
    /* eos_token_id 2 is the legacy value: the pooled row is the argmax of the ids */
    CHECK(mc->clip_l.eos_token_id == 2 && mc->clip_l.vocab_size == 49408);
    CHECK(mc->has_t5 && mc->t5.vocab_size == 32128 && mc->t5.is_gated_act);
    CHECK(mc->t5.dense_act == CFG_ACT_GELU_TANH && mc->t5.d_kv == 64);
    CHECK(mc->mmdit.qk_norm_rms && mc->mmdit.num_dual_attention_layers == 2);
    CHECK(mc->mmdit.patch_size == 2 && mc->mmdit.in_channels == 16);
    CHECK(!mc->vae.use_post_quant_conv && mc->vae.latent_channels == 16);
    CHECK(fabsf(mc->vae.scaling_factor - 1.5305f) < 1e-6f);
    CHECK(fabsf(mc->vae.shift_factor - 0.0609f) < 1e-6f);
    CHECK(mc->scheduler.shift == 3.0 && !mc->scheduler.use_dynamic_shifting);
}

static void test_layout(void)
{
    expect_dtype("text_encoder", "model", KN_F16, 1);
    expect_dtype("text_encoder_2", "model", KN_F16, 1);
    expect_dtype("text_encoder_3", "model", KN_F16, 2);
    expect_dtype("transformer", "diffusion_pytorch_model", KN_BF16, 1);
    expect_dtype("vae", "diffusion_pytorch_model", KN_BF16, 1);
    char dir[700];
    component_dir(dir, sizeof dir, "vae");
    st_archive *a = NULL;
    CHECK(st_archive_open(dir, "diffusion_pytorch_model", &a) == 0);
    CHECK(a && st_find(a, "encoder.conv_in.weight") && st_find(a, "encoder.conv_out.weight"));
    st_archive_close(a);
}

static void test_text_encoders(void)
{
    static const int32_t ids[] = {49406, 320, 2368, 49407, 49407};
    static const int32_t t5_ids[] = {3, 9, 1712, 1};
    const struct {
        const char *sub;
        const clip_config *cfg;
    } clips[] = {{"text_encoder", &mc->clip_l}, {"text_encoder_2", &mc->clip_g}};
    char dir[700];
    for (int k = 0; k < 2; k++) {
        component_dir(dir, sizeof dir, clips[k].sub);
        clip_text *m = NULL;
        CHECKF(clip_text_load(ctx, dir, clips[k].cfg, &m) == 0, "%s", err_msg());
        if (!m) continue;
        kn_tensor seq, pooled;
        CHECK(kn_alloc(ctx, &seq, KN_F32, 3, (int64_t[]){1, 5, clips[k].cfg->hidden_size}) == 0);
        CHECK(kn_alloc(ctx, &pooled, KN_F32, 2, (int64_t[]){1, clips[k].cfg->projection_dim}) == 0);
        CHECKF(clip_text_forward(m, ids, 5, &seq, &pooled) == 0, "%s", err_msg());
        CHECKF(all_finite(&seq) && all_finite(&pooled), "%s", clips[k].sub);
        kn_free(ctx, &seq), kn_free(ctx, &pooled);
        clip_text_free(m);
    }
    component_dir(dir, sizeof dir, "text_encoder_3");
    t5_encoder *t5 = NULL;
    CHECKF(t5_encoder_load(ctx, dir, &mc->t5, &t5) == 0, "%s", err_msg());
    if (!t5) return;
    kn_tensor out;
    CHECK(kn_alloc(ctx, &out, KN_F32, 3, (int64_t[]){1, 4, mc->t5.d_model}) == 0);
    CHECKF(t5_encoder_forward(t5, t5_ids, 4, &out) == 0, "%s", err_msg());
    CHECK(all_finite(&out));
    kn_free(ctx, &out);
    t5_encoder_free(t5);
}

static void test_transformer_and_vae(void)
{
    mmdit *m = NULL;
    CHECKF(mmdit_load(ctx, mc, &m) == 0, "%s", err_msg());
    vae *v = NULL;
    CHECKF(vae_load(ctx, mc, &v) == 0, "%s", err_msg());
    if (!m || !v) goto out;
    kn_tensor x, enc, pooled, vel, img;
    const mmdit_config *c = &mc->mmdit;
    CHECK(kn_alloc(ctx, &x, KN_F32, 4, (int64_t[]){1, c->in_channels, 8, 8}) == 0);
    CHECK(kn_alloc(ctx, &vel, KN_F32, 4, (int64_t[]){1, c->out_channels, 8, 8}) == 0);
    CHECK(kn_alloc(ctx, &enc, KN_F32, 3, (int64_t[]){1, 7, c->joint_attention_dim}) == 0);
    CHECK(kn_alloc(ctx, &pooled, KN_F32, 2, (int64_t[]){1, c->pooled_projection_dim}) == 0);
    CHECK(kn_alloc(ctx, &img, KN_F32, 4, (int64_t[]){1, 3, 64, 64}) == 0);
    fill(&x), fill(&enc), fill(&pooled);
    float t = 1000.0f;
    CHECKF(mmdit_forward(m, &x, &t, &enc, &pooled, NULL, 0, &vel) == 0, "%s", err_msg());
    CHECK(all_finite(&vel));
    CHECKF(vae_decode_latents(v, &vel, &img) == 0, "%s", err_msg());
    CHECK(all_finite(&img));
    kn_free(ctx, &x), kn_free(ctx, &vel), kn_free(ctx, &enc), kn_free(ctx, &pooled);
    kn_free(ctx, &img);
out:
    mmdit_free(m);
    vae_free(v);
}

int main(void)
{
    const char *base = getenv("TMPDIR"), *py = getenv("PYTHON");
    snprintf(tmp_root, sizeof tmp_root, "%s/focus-pub-XXXXXX", base ? base : P_tmpdir);
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(model, sizeof model, "%s/sd35", tmp_root);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' tools/make_bench_model.py --tiny '%s'",
             py ? py : "build/pyenv/bin/python", model);
    int rc = system(cmd);
    if (rc != 0 || kn_ctx_create(KN_CPU, 0, &ctx) < 0 || model_config_load(model, &mc) < 0) {
        fprintf(stderr, "%s: status %d; %s\n", cmd, rc, err_msg());
        printf("RESULT passed=0 failed=1\n");
        nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        return 1;
    }
    RUN(test_configs);
    RUN(test_layout);
    RUN(test_text_encoders);
    RUN(test_transformer_and_vae);
    model_config_free(mc);
    kn_ctx_destroy(ctx);
    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    CHECK_DONE();
}
