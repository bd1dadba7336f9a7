/* The AutoencoderKL decoder (spec section 6; diffusers' Decoder, UNetMidBlock2D,
 * UpDecoderBlock2D, ResnetBlock2D, Upsample2D and the mid block's AttnProcessor2_0), for any
 * vae_config, as a sequence of kernel ops.
 *
 * Activations rotate through three equal buffers of the largest activation's size (a resnet
 * reads one, uses one for temporaries and writes the third), so memory stays at three images
 * of the widest stage: at 1024x1024 with SD3's channels, three 256-channel 1024x1024 buffers.
 * The mid attention over h*w tokens relies on kn_attention's blocked softmax. Not here: the
 * encoder, tiling, post-processing to pixels. */
#include "engine/vae.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "engine/safetensors.h"
#include "kernels/kn_image.h"
#include "kernels/kn_ops.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VAE_EPS 1e-6f /* every GroupNorm of the decoder */
#define VAE_MAX_NAME 160
#define VAE_NBUF 3

typedef struct wb {
    kn_tensor w, b;
} wb;

typedef struct resnet {
    int64_t cin, cout;
    wb norm1, conv1, norm2, conv2, shortcut; /* shortcut.w.data NULL when cin == cout */
} resnet;

typedef struct up_block {
    int64_t cout;
    int nres;
    resnet *res;
    bool upsample;
    wb up_conv;
} up_block;

struct vae {
    kn_ctx *ctx;
    vae_config cfg;
    st_archive *ar;
    kn_tensor **loaded; /* every weight tensor, for kn_free */
    int n_loaded, cap_loaded;

    wb post_quant, conv_in, norm_out, conv_out;
    resnet mid[2];
    bool mid_attn;
    wb attn_norm, attn_q, attn_k, attn_v, attn_out;
    up_block *ups;

    kn_tensor arena;
    kn_dtype act; /* activation dtype: KN_F32 (default), KN_BF16 or KN_F16 */
};

const vae_config *vae_get_config(const vae *v)
{
    return &v->cfg;
}

int vae_scale_factor(const vae *v)
{
    return 1 << (v->cfg.num_blocks - 1);
}

/* ---- loading ---- */

static int load_tensor(vae *v, kn_tensor *dst, const char *name, int ndim, const int64_t *shape,
                       const char *why)
{
    kn_tensor host;
    int rc = st_weight_cfg(v->ar, name, ndim, shape, why, &host);
    if (rc < 0) return rc;
    if ((rc = kn_weight(v->ctx, dst, &host)) < 0)
        return err_prefix(rc, "%s: tensor %s: ", st_archive_path(v->ar), name);
    if (v->n_loaded == v->cap_loaded) {
        v->cap_loaded = v->cap_loaded ? 2 * v->cap_loaded : 128;
        v->loaded = xrealloc(v->loaded, (size_t)v->cap_loaded * sizeof *v->loaded);
    }
    v->loaded[v->n_loaded++] = dst;
    return 0;
}

/* `prefix.weight` of shape wshape and `prefix.bias` [wshape[0]]. */
static int load_wb(vae *v, wb *p, const char *prefix, int ndim, const int64_t *wshape,
                   const char *why)
{
    char name[VAE_MAX_NAME];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = load_tensor(v, &p->w, name, ndim, wshape, why);
    if (rc < 0) return rc;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return load_tensor(v, &p->b, name, 1, wshape, why);
}

static int load_conv(vae *v, wb *p, const char *prefix, int64_t cout, int64_t cin, int64_t k,
                     const char *why)
{
    return load_wb(v, p, prefix, 4, (int64_t[]){cout, cin, k, k}, why);
}

static int load_norm(vae *v, wb *p, const char *prefix, int64_t c, const char *why)
{
    return load_wb(v, p, prefix, 1, (int64_t[]){c}, why);
}

static int load_resnet(vae *v, resnet *r, const char *pre, int64_t cin, int64_t cout,
                       const char *why)
{
    char name[VAE_MAX_NAME];
    int rc;
    r->cin = cin, r->cout = cout;
    snprintf(name, sizeof name, "%s.norm1", pre);
    if ((rc = load_norm(v, &r->norm1, name, cin, why)) < 0) return rc;
    snprintf(name, sizeof name, "%s.conv1", pre);
    if ((rc = load_conv(v, &r->conv1, name, cout, cin, 3, why)) < 0) return rc;
    snprintf(name, sizeof name, "%s.norm2", pre);
    if ((rc = load_norm(v, &r->norm2, name, cout, why)) < 0) return rc;
    snprintf(name, sizeof name, "%s.conv2", pre);
    if ((rc = load_conv(v, &r->conv2, name, cout, cout, 3, why)) < 0) return rc;
    if (cin == cout) return 0;
    snprintf(name, sizeof name, "%s.conv_shortcut", pre);
    return load_conv(v, &r->shortcut, name, cout, cin, 1, why);
}

static int load_mid_attention(vae *v, int64_t c, const char *why)
{
    /* Files from before diffusers 0.14 name the projections query/key/value/proj_attn;
     * diffusers renames them on load, and so do we. */
    static const char *const cur[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    static const char *const old[4] = {"query", "key", "value", "proj_attn"};
    const char *pre = "decoder.mid_block.attentions.0";
    const char *const *names = cur;
    if (!st_find(v->ar, "decoder.mid_block.attentions.0.to_q.weight") &&
        st_find(v->ar, "decoder.mid_block.attentions.0.query.weight"))
        names = old;
    char name[VAE_MAX_NAME];
    snprintf(name, sizeof name, "%s.group_norm", pre);
    int rc = load_norm(v, &v->attn_norm, name, c, why);
    wb *lins[4] = {&v->attn_q, &v->attn_k, &v->attn_v, &v->attn_out};
    for (int i = 0; i < 4 && rc == 0; i++) {
        snprintf(name, sizeof name, "%s.%s", pre, names[i]);
        rc = load_wb(v, lins[i], name, 2, (int64_t[]){c, c}, why);
    }
    return rc;
}

static int check_config(const vae_config *c, const char *file)
{
    if (c->num_blocks < 1 || c->num_blocks > 8)
        return err_set(ERR_FORMAT, "%s: block_out_channels has %d entries, expected 1..8", file,
                       c->num_blocks);
    if (c->latent_channels < 1 || c->out_channels < 1 || c->layers_per_block < 0 ||
        c->norm_num_groups < 1)
        return err_set(ERR_FORMAT,
                       "%s: latent_channels=%d, out_channels=%d, layers_per_block=%d, "
                       "norm_num_groups=%d: out of range",
                       file, c->latent_channels, c->out_channels, c->layers_per_block,
                       c->norm_num_groups);
    for (int i = 0; i < c->num_blocks; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_num_groups)
            return err_set(ERR_FORMAT,
                           "%s: block_out_channels[%d]=%d is not a positive multiple of "
                           "norm_num_groups=%d",
                           file, i, c->block_out_channels[i], c->norm_num_groups);
    if (c->scaling_factor == 0.0f) return err_set(ERR_FORMAT, "%s: scaling_factor is 0", file);
    return 0;
}

/* Tensors that exist only in a larger or differently built decoder than the config describes:
 * refuse them rather than decode with a different network than the file holds. */
static int check_extra(vae *v)
{
    const vae_config *c = &v->cfg;
    char name[VAE_MAX_NAME], why[VAE_MAX_NAME];
    snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.0.conv1.weight", c->num_blocks);
    snprintf(why, sizeof why, "block_out_channels has %d entries", c->num_blocks);
    const st_entry *e = st_find(v->ar, name);
    for (int i = 0; i < c->num_blocks && !e; i++) {
        snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d.conv1.weight", i,
                 c->layers_per_block + 1);
        snprintf(why, sizeof why, "layers_per_block=%d", c->layers_per_block);
        e = st_find(v->ar, name);
    }
    if (!e && !v->mid_attn) {
        snprintf(why, sizeof why, "mid_block_add_attention is false");
        e = st_find(v->ar, "decoder.mid_block.attentions.0.group_norm.weight");
    }
    if (!e && !c->use_post_quant_conv) {
        snprintf(why, sizeof why, "use_post_quant_conv is false");
        e = st_find(v->ar, "post_quant_conv.weight");
    }
    if (e)
        return err_set(ERR_SHAPE, "%s: tensor %s is present but the config says %s", e->file,
                       e->name, why);
    return 0;
}

static int load_all(vae *v)
{
    const vae_config *c = &v->cfg;
    const int nb = c->num_blocks;
    const int64_t top = c->block_out_channels[nb - 1], lat = c->latent_channels;
    char why[VAE_MAX_NAME], name[VAE_MAX_NAME];
    int rc = 0;
    if (c->use_post_quant_conv) {
        snprintf(why, sizeof why, "latent_channels=%d", c->latent_channels);
        if ((rc = load_conv(v, &v->post_quant, "post_quant_conv", lat, lat, 1, why)) < 0) return rc;
    }
    snprintf(why, sizeof why, "latent_channels=%d, block_out_channels[%d]=%lld", c->latent_channels,
             nb - 1, (long long)top);
    if ((rc = load_conv(v, &v->conv_in, "decoder.conv_in", top, lat, 3, why)) < 0) return rc;
    snprintf(why, sizeof why, "block_out_channels[%d]=%lld", nb - 1, (long long)top);
    for (int j = 0; j < 2; j++) {
        snprintf(name, sizeof name, "decoder.mid_block.resnets.%d", j);
        if ((rc = load_resnet(v, &v->mid[j], name, top, top, why)) < 0) return rc;
    }
    if (v->mid_attn && (rc = load_mid_attention(v, top, why)) < 0) return rc;

    v->ups = xcalloc((size_t)nb, sizeof *v->ups);
    int64_t prev = top;
    for (int i = 0; i < nb; i++) {
        up_block *u = &v->ups[i];
        u->cout = c->block_out_channels[nb - 1 - i];
        u->nres = c->layers_per_block + 1;
        u->res = xcalloc((size_t)u->nres, sizeof *u->res);
        u->upsample = i < nb - 1;
        snprintf(why, sizeof why, "block_out_channels=[..%lld -> %lld..], layers_per_block=%d",
                 (long long)prev, (long long)u->cout, c->layers_per_block);
        for (int j = 0; j < u->nres; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            if ((rc = load_resnet(v, &u->res[j], name, j ? u->cout : prev, u->cout, why)) < 0)
                return rc;
        }
        if (u->upsample) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            if ((rc = load_conv(v, &u->up_conv, name, u->cout, u->cout, 3, why)) < 0) return rc;
        }
        prev = u->cout;
    }
    snprintf(why, sizeof why, "block_out_channels[0]=%d, out_channels=%d", c->block_out_channels[0],
             c->out_channels);
    if ((rc = load_norm(v, &v->norm_out, "decoder.conv_norm_out", prev, why)) < 0 ||
        (rc = load_conv(v, &v->conv_out, "decoder.conv_out", c->out_channels, prev, 3, why)) < 0)
        return rc;
    return check_extra(v);
}

int vae_load(kn_ctx *ctx, const model_config *mc, vae **out)
{
    *out = NULL;
    size_t n = strlen(mc->path) + sizeof "/vae/config.json";
    char *dir = xmalloc(n), *cfg_file = xmalloc(n);
    snprintf(dir, n, "%s/vae", mc->path);
    snprintf(cfg_file, n, "%s/config.json", dir);
    int rc = check_config(&mc->vae, cfg_file);
    vae *v = NULL;
    if (rc == 0) {
        v = xcalloc(1, sizeof *v);
        v->ctx = ctx;
        v->cfg = mc->vae;
        v->mid_attn = mc->vae.mid_block_add_attention;
        rc = st_archive_open(dir, "diffusion_pytorch_model", &v->ar);
        if (rc == 0) rc = load_all(v);
    }
    if (rc < 0) {
        vae_free(v);
        err_prefix(rc, "loading %s: ", dir);
    } else {
        *out = v;
    }
    free(cfg_file);
    free(dir);
    return rc;
}

void vae_free(vae *v)
{
    if (!v) return;
    for (int i = 0; i < v->n_loaded; i++)
        kn_free(v->ctx, v->loaded[i]);
    kn_free(v->ctx, &v->arena);
    if (v->ups)
        for (int i = 0; i < v->cfg.num_blocks; i++)
            free(v->ups[i].res);
    free(v->ups);
    free(v->loaded);
    st_archive_close(v->ar);
    free(v);
}

/* ---- decoding ---- */

/* The scratch of one decode: three rotating activation buffers, the mid attention's q, k, v, o
 * and a latent-sized buffer. */
typedef struct vae_run {
    vae *m;
    int64_t B, cap; /* cap: elements of each rotating buffer */
    kn_tensor buf[VAE_NBUF];
    kn_tensor q, k, v, o; /* [B, h*w, C_top] */
    kn_tensor zbuf;       /* [B, latent_channels, h, w] */
} vae_run;

static kn_tensor img(const kn_tensor *buf, int64_t B, int64_t C, int64_t H, int64_t W)
{
    return kn_view(buf, 0, 4, (int64_t[]){B, C, H, W});
}

/* Elements of the largest activation a decode of an h x w latent produces, per sample. */
static int64_t largest_activation(const vae *v, int64_t h, int64_t w)
{
    int64_t r = h * w, c = v->cfg.block_out_channels[v->cfg.num_blocks - 1];
    int64_t m = (c > v->cfg.latent_channels ? c : v->cfg.latent_channels) * r;
    for (int i = 0; i < v->cfg.num_blocks; i++) {
        const up_block *u = &v->ups[i];
        int64_t wide = c > u->cout ? c : u->cout;
        if (wide * r > m) m = wide * r;
        c = u->cout;
        if (u->upsample) {
            r *= 4;
            if (c * r > m) m = c * r;
        }
    }
    return m;
}

/* Elements of the scratch of a decode: the rotating buffers (cap each), q, k, v, o (att each)
 * and the latent copy. */
static int64_t run_elements(const vae *v, int64_t B, int64_t h, int64_t w, int64_t *cap,
                            int64_t *att)
{
    const int64_t top = v->cfg.block_out_channels[v->cfg.num_blocks - 1];
    *cap = B * largest_activation(v, h, w);
    *att = v->mid_attn ? B * h * w * top : 0;
    return VAE_NBUF * *cap + 4 * *att + B * v->cfg.latent_channels * h * w;
}

uint64_t vae_scratch_bytes(const vae *v, int64_t B, int64_t h, int64_t w)
{
    int64_t cap, att;
    return (uint64_t)run_elements(v, B, h, w, &cap, &att) * kn_dtype_size(v->act);
}

static int setup_run(vae *v, vae_run *run, int64_t B, int64_t h, int64_t w)
{
    const int64_t top = v->cfg.block_out_channels[v->cfg.num_blocks - 1];
    int64_t cap, att;
    const int64_t total = run_elements(v, B, h, w, &cap, &att);
    if (!v->arena.data || kn_numel(&v->arena) < total || v->arena.dtype != v->act) {
        kn_free(v->ctx, &v->arena);
        int rc = kn_alloc(v->ctx, &v->arena, v->act, 1, &total);
        if (rc < 0)
            return err_prefix(rc, "VAE scratch for batch %lld, latent %lldx%lld: ", (long long)B,
                              (long long)h, (long long)w);
    }
    *run = (vae_run){.m = v, .B = B, .cap = cap};
    int64_t off = 0;
    for (int i = 0; i < VAE_NBUF; i++, off += cap)
        run->buf[i] = kn_view(&v->arena, off, 1, &cap);
    kn_tensor *qkvo[4] = {&run->q, &run->k, &run->v, &run->o};
    for (int i = 0; i < 4; i++, off += att)
        *qkvo[i] = kn_view(&v->arena, off, 3, (int64_t[]){B, h * w, top});
    run->zbuf = kn_view(&v->arena, off, 4, (int64_t[]){B, v->cfg.latent_channels, h, w});
    return 0;
}

static int norm_silu(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const wb *n, int groups)
{
    int rc = kn_group_norm(ctx, y, x, &n->w, &n->b, groups, VAE_EPS);
    return rc < 0 ? rc : kn_activate(ctx, y, y, KN_ACT_SILU);
}

/* ResnetBlock2D without a time embedding: out = shortcut(x) +
 * conv2(silu(gn2(conv1(silu(gn1(x)))))). x is buffer `in` [B, cin, H, W]; returns the buffer
 * holding the output. */
static int resnet_forward(vae_run *run, const resnet *r, int in, int64_t H, int64_t W, int *out)
{
    kn_ctx *ctx = run->m->ctx;
    const int g = run->m->cfg.norm_num_groups, t = (in + 1) % VAE_NBUF, y = (in + 2) % VAE_NBUF;
    kn_tensor X = img(&run->buf[in], run->B, r->cin, H, W);
    kn_tensor Ti = img(&run->buf[t], run->B, r->cin, H, W);
    kn_tensor To = img(&run->buf[t], run->B, r->cout, H, W);
    kn_tensor Y = img(&run->buf[y], run->B, r->cout, H, W);
    int rc;
    if ((rc = norm_silu(ctx, &Ti, &X, &r->norm1, g)) < 0 ||
        (rc = kn_conv2d(ctx, &Y, &Ti, &r->conv1.w, &r->conv1.b, 1, 1)) < 0 ||
        (rc = norm_silu(ctx, &Y, &Y, &r->norm2, g)) < 0 ||
        (rc = kn_conv2d(ctx, &To, &Y, &r->conv2.w, &r->conv2.b, 1, 1)) < 0)
        return rc;
    if (r->shortcut.w.data) {
        if ((rc = kn_conv2d(ctx, &Y, &X, &r->shortcut.w, &r->shortcut.b, 1, 0)) < 0 ||
            (rc = kn_add(ctx, &Y, &Y, &To)) < 0)
            return rc;
    } else if ((rc = kn_add(ctx, &Y, &X, &To)) < 0) {
        return rc;
    }
    *out = y;
    return 0;
}

/* The mid block's single-head self-attention over the h*w positions, residual added in place
 * on buffer `in` (rescale_output_factor is 1). */
static int mid_attention(vae_run *run, int in, int64_t C, int64_t H, int64_t W)
{
    vae *v = run->m;
    kn_ctx *ctx = v->ctx;
    const int64_t B = run->B, HW = H * W;
    const int t = (in + 1) % VAE_NBUF, y = (in + 2) % VAE_NBUF;
    kn_tensor X = img(&run->buf[in], B, C, H, W);
    kn_tensor T = img(&run->buf[t], B, C, H, W);
    kn_tensor Tc = kn_view(&run->buf[t], 0, 3, (int64_t[]){B, C, HW});
    kn_tensor Tt = kn_view(&run->buf[t], 0, 3, (int64_t[]){B, HW, C});
    kn_tensor Yc = kn_view(&run->buf[y], 0, 3, (int64_t[]){B, C, HW});
    kn_tensor Yt = kn_view(&run->buf[y], 0, 3, (int64_t[]){B, HW, C});
    kn_tensor X3 = kn_view(&run->buf[in], 0, 3, (int64_t[]){B, C, HW});
    kn_attn_args args = {.heads = 1, .scale = (float)(1.0 / sqrt((double)C))};
    int rc;
    if ((rc = kn_group_norm(ctx, &T, &X, &v->attn_norm.w, &v->attn_norm.b, v->cfg.norm_num_groups,
                            VAE_EPS)) < 0 ||
        (rc = kn_transpose(ctx, &Yt, &Tc)) < 0 ||
        (rc = kn_linear(ctx, &run->q, &Yt, &v->attn_q.w, &v->attn_q.b)) < 0 ||
        (rc = kn_linear(ctx, &run->k, &Yt, &v->attn_k.w, &v->attn_k.b)) < 0 ||
        (rc = kn_linear(ctx, &run->v, &Yt, &v->attn_v.w, &v->attn_v.b)) < 0 ||
        (rc = kn_attention(ctx, &run->o, &run->q, &run->k, &run->v, &args)) < 0 ||
        (rc = kn_linear(ctx, &Tt, &run->o, &v->attn_out.w, &v->attn_out.b)) < 0 ||
        (rc = kn_transpose(ctx, &Yc, &Tt)) < 0)
        return rc;
    return kn_add(ctx, &X3, &X3, &Yc);
}

/* Upsample2D: nearest 2x, then a 3x3 conv; returns the buffer holding [B, C, 2H, 2W]. */
static int upsample(vae_run *run, const wb *conv, int in, int64_t C, int64_t H, int64_t W, int *out)
{
    const int t = (in + 1) % VAE_NBUF, y = (in + 2) % VAE_NBUF;
    kn_tensor X = img(&run->buf[in], run->B, C, H, W);
    kn_tensor T = img(&run->buf[t], run->B, C, 2 * H, 2 * W);
    kn_tensor Y = img(&run->buf[y], run->B, C, 2 * H, 2 * W);
    int rc;
    if ((rc = kn_upsample_nearest2x(run->m->ctx, &T, &X)) < 0 ||
        (rc = kn_conv2d(run->m->ctx, &Y, &T, &conv->w, &conv->b, 1, 1)) < 0)
        return rc;
    *out = y;
    return 0;
}

static int decoder_forward(vae_run *run, const kn_tensor *z, kn_tensor *image)
{
    vae *v = run->m;
    kn_ctx *ctx = v->ctx;
    const vae_config *c = &v->cfg;
    const int64_t B = run->B, top = c->block_out_channels[c->num_blocks - 1];
    int64_t H = z->shape[2], W = z->shape[3];
    int rc, cur = 0;

    const kn_tensor *zin = z;
    kn_tensor pq = img(&run->buf[1], B, c->latent_channels, H, W);
    if (c->use_post_quant_conv) {
        if ((rc = kn_conv2d(ctx, &pq, z, &v->post_quant.w, &v->post_quant.b, 1, 0)) < 0) return rc;
        zin = &pq;
    }
    kn_tensor x0 = img(&run->buf[0], B, top, H, W);
    if ((rc = kn_conv2d(ctx, &x0, zin, &v->conv_in.w, &v->conv_in.b, 1, 1)) < 0 ||
        (rc = resnet_forward(run, &v->mid[0], cur, H, W, &cur)) < 0 ||
        (v->mid_attn && (rc = mid_attention(run, cur, top, H, W)) < 0) ||
        (rc = resnet_forward(run, &v->mid[1], cur, H, W, &cur)) < 0)
        return err_prefix(rc, "VAE mid block: ");

    for (int i = 0; i < c->num_blocks; i++) {
        const up_block *u = &v->ups[i];
        for (int j = 0; j < u->nres; j++)
            if ((rc = resnet_forward(run, &u->res[j], cur, H, W, &cur)) < 0)
                return err_prefix(rc, "VAE up block %d, resnet %d: ", i, j);
        if (u->upsample) {
            if ((rc = upsample(run, &u->up_conv, cur, u->cout, H, W, &cur)) < 0)
                return err_prefix(rc, "VAE up block %d, upsampler: ", i);
            H *= 2, W *= 2;
        }
    }

    const int64_t c0 = c->block_out_channels[0];
    kn_tensor X = img(&run->buf[cur], B, c0, H, W);
    kn_tensor T = img(&run->buf[(cur + 1) % VAE_NBUF], B, c0, H, W);
    /* In 16-bit modes the last conv writes into X's buffer (free by then), then widens. */
    kn_tensor out = v->act == KN_F32 ? *image : img(&run->buf[cur], B, c->out_channels, H, W);
    if ((rc = norm_silu(ctx, &T, &X, &v->norm_out, c->norm_num_groups)) < 0 ||
        (rc = kn_conv2d(ctx, &out, &T, &v->conv_out.w, &v->conv_out.b, 1, 1)) < 0 ||
        (v->act != KN_F32 && (rc = kn_copy(ctx, image, &out)) < 0))
        return err_prefix(rc, "VAE output: ");
    return 0;
}

static int check_io(const vae *v, const kn_tensor *z, const kn_tensor *image, const char *what)
{
    const int f = vae_scale_factor(v);
    char s1[64], s2[64];
    if (z->ndim != 4 || z->shape[0] < 1 || z->shape[1] != v->cfg.latent_channels ||
        z->shape[2] < 1 || z->shape[3] < 1 || z->dtype != KN_F32)
        return err_set(ERR_SHAPE, "VAE input %s: %s %s, expected [B, %d, h, w] F32", what,
                       kn_shape_str(z, s1, sizeof s1), kn_dtype_name(z->dtype),
                       v->cfg.latent_channels);
    if (image->ndim != 4 || image->shape[0] != z->shape[0] ||
        image->shape[1] != v->cfg.out_channels || image->shape[2] != z->shape[2] * f ||
        image->shape[3] != z->shape[3] * f || image->dtype != KN_F32)
        return err_set(ERR_SHAPE, "VAE output %s %s for input %s: expected [B, %d, %d h, %d w]",
                       kn_shape_str(image, s1, sizeof s1), kn_dtype_name(image->dtype),
                       kn_shape_str(z, s2, sizeof s2), v->cfg.out_channels, f, f);
    return 0;
}

int vae_set_compute(vae *v, kn_dtype act)
{
    if (act != KN_F32 && act != KN_BF16 && act != KN_F16)
        return err_set(ERR_INVALID, "VAE compute dtype %s: expected F32, BF16 or F16",
                       kn_dtype_name(act));
    if (act != v->act) kn_free(v->ctx, &v->arena);
    v->act = act;
    return 0;
}

/* The float32 latents as the compute dtype: z itself in float32 mode, else converted into
 * run->zbuf. */
static int latents_in(vae_run *run, const kn_tensor *z, const kn_tensor **out)
{
    *out = z;
    if (run->m->act == KN_F32) return 0;
    *out = &run->zbuf;
    return kn_copy(run->m->ctx, &run->zbuf, z);
}

int vae_decode(vae *v, const kn_tensor *z, kn_tensor *image)
{
    vae_run run;
    const kn_tensor *zin;
    int rc = check_io(v, z, image, "z");
    if (rc < 0 || (rc = setup_run(v, &run, z->shape[0], z->shape[2], z->shape[3])) < 0 ||
        (rc = latents_in(&run, z, &zin)) < 0)
        return rc;
    return decoder_forward(&run, zin, image);
}

int vae_decode_latents(vae *v, const kn_tensor *latents, kn_tensor *image)
{
    vae_run run;
    int rc = check_io(v, latents, image, "latents");
    if (rc < 0 ||
        (rc = setup_run(v, &run, latents->shape[0], latents->shape[2], latents->shape[3])) < 0)
        return rc;
    /* The shift is added from a filled buffer: the kernels have no add-a-scalar op. */
    kn_tensor shift = kn_view(&run.buf[0], 0, 4, latents->shape);
    const kn_tensor *lat;
    if ((rc = latents_in(&run, latents, &lat)) < 0 ||
        (rc = kn_scale(v->ctx, &run.zbuf, lat, 1.0f / v->cfg.scaling_factor)) < 0 ||
        (rc = kn_fill(v->ctx, &shift, v->cfg.shift_factor)) < 0 ||
        (rc = kn_add(v->ctx, &run.zbuf, &run.zbuf, &shift)) < 0)
        return rc;
    return decoder_forward(&run, &run.zbuf, image);
}
