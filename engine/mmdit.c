/* The SD3 diffusion transformer: weight loading with every shape checked against the config,
 * and the forward pass as a sequence of kernel ops (diffusers' SD3Transformer2DModel,
 * JointTransformerBlock and JointAttnProcessor2_0; spec section 3).
 *
 * Activations live in one scratch arena per model, carved into fixed regions sized for the
 * largest batch, token and text lengths seen, so that a denoising step of a known shape never
 * allocates. The joint attention keeps each sample's image tokens first and its text tokens
 * after them in one [B, N+S, D] buffer; the projections write straight into those rows, so the
 * concatenation and the split of the reference cost nothing here. Not here: guidance, the
 * scheduler, the VAE. */
#include "engine/mmdit_impl.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "engine/safetensors.h"
#include "kernels/kn_image.h"
#include "kernels/kn_ops.h"
#include "kernels/kn_patch.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kn_ctx *mmdit_ctx(const mmdit *m)
{
    return m->ctx;
}

const mmdit_config *mmdit_get_config(const mmdit *m)
{
    return &m->cfg;
}

/* ---- loading ---- */

static void track(mmdit *m, kn_tensor *t, const void *host_data)
{
    if (m->n_loaded == m->cap_loaded) {
        m->cap_loaded = m->cap_loaded ? 2 * m->cap_loaded : 256;
        m->loaded = xrealloc(m->loaded, (size_t)m->cap_loaded * sizeof *m->loaded);
        m->used = xrealloc(m->used, (size_t)m->cap_loaded * sizeof *m->used);
    }
    m->loaded[m->n_loaded] = t;
    m->used[m->n_loaded++] = host_data;
}

static int load_tensor(mmdit *m, kn_tensor *dst, const char *name, int ndim, const int64_t *shape,
                       const char *why)
{
    kn_tensor host;
    int rc = st_weight_cfg(m->ar, name, ndim, shape, why, &host);
    if (rc < 0) return rc;
    rc = kn_weight(m->ctx, dst, &host);
    if (rc < 0) return err_prefix(rc, "%s: tensor %s: ", st_archive_path(m->ar), name);
    track(m, dst, host.data);
    return 0;
}

/* `prefix.weight` [out, in] and `prefix.bias` [out]. */
static int load_lin(mmdit *m, lin *l, const char *prefix, int64_t out, int64_t in, const char *why)
{
    char name[MMDIT_MAX_NAME];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = load_tensor(m, &l->w, name, 2, (int64_t[]){out, in}, why);
    if (rc < 0) return rc;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return load_tensor(m, &l->b, name, 1, (int64_t[]){out}, why);
}

/* `pre.names[i].weight` [D, D] and `.bias` [D] of q, k and v stacked into one [3D, D] weight
 * and [3D] bias. */
static int load_qkv(mmdit *m, lin *qkv, const char *pre, const char *const names[3],
                    const char *why)
{
    static const char *const kinds[2] = {"weight", "bias"};
    kn_tensor *dst[2] = {&qkv->w, &qkv->b};
    char name[MMDIT_MAX_NAME];
    for (int p = 0; p < 2; p++) {
        kn_tensor host[3];
        const kn_tensor *hosts[3] = {&host[0], &host[1], &host[2]};
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "%s.%s.%s", pre, names[i], kinds[p]);
            int rc = st_weight_cfg(m->ar, name, 2 - p, (int64_t[]){m->D, m->D}, why, &host[i]);
            if (rc < 0) return rc;
        }
        int rc = kn_weight_rows(m->ctx, dst[p], hosts, 3);
        if (rc < 0)
            return err_prefix(rc, "%s: %s.{%s,%s,%s}.%s joined: ", st_archive_path(m->ar), pre,
                              names[0], names[1], names[2], kinds[p]);
        for (int i = 0; i < 3; i++)
            track(m, i ? NULL : dst[p], host[i].data);
    }
    return 0;
}

static int load_stream(mmdit *m, attn_stream *s, const char *pre, const char *const names[6],
                       const char *why)
{
    char name[MMDIT_MAX_NAME];
    int rc = load_qkv(m, &s->qkv, pre, names, why);
    if (rc < 0) return rc;
    if (names[3]) {
        snprintf(name, sizeof name, "%s.%s", pre, names[3]);
        if ((rc = load_lin(m, &s->out, name, m->D, m->D, why)) < 0) return rc;
    }
    if (!m->cfg.qk_norm_rms) return 0;
    char nwhy[96];
    snprintf(nwhy, sizeof nwhy, "attention_head_dim=%d", m->cfg.attention_head_dim);
    kn_tensor *norms[2] = {&s->norm_q, &s->norm_k};
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "%s.%s.weight", pre, names[4 + i]);
        int rc = load_tensor(m, norms[i], name, 1, (int64_t[]){m->head_dim}, nwhy);
        if (rc < 0) return rc;
    }
    return 0;
}

static bool is_dual(const mmdit_config *c, int i)
{
    for (int j = 0; j < c->num_dual_attention_layers; j++)
        if (c->dual_attention_layers[j] == i) return true;
    return false;
}

static int load_block(mmdit *m, int i, const char *why_d)
{
    static const char *const img_names[6] = {"to_q",     "to_k",   "to_v",
                                             "to_out.0", "norm_q", "norm_k"};
    static const char *const txt_names[6] = {"add_q_proj", "add_k_proj",   "add_v_proj",
                                             "to_add_out", "norm_added_q", "norm_added_k"};
    static const char *const txt_last_names[6] = {"add_q_proj", "add_k_proj",   "add_v_proj",
                                                  NULL,         "norm_added_q", "norm_added_k"};
    block *bl = &m->blocks[i];
    const int64_t D = m->D;
    bl->dual = is_dual(&m->cfg, i);
    bl->last = i == m->cfg.num_layers - 1;

    char pre[48], name[MMDIT_MAX_NAME], why[192];
    snprintf(pre, sizeof pre, "transformer_blocks.%d", i);

    snprintf(name, sizeof name, "%s.norm1.linear", pre);
    snprintf(why, sizeof why, "%s, block %d %s dual_attention_layers", why_d, i,
             bl->dual ? "in" : "not in");
    int rc = load_lin(m, &bl->norm1, name, (bl->dual ? 9 : 6) * D, D, why);
    if (rc < 0) return rc;
    snprintf(name, sizeof name, "%s.norm1_context.linear", pre);
    snprintf(why, sizeof why, "%s, block %d %s the last of num_layers=%d", why_d, i,
             bl->last ? "is" : "is not", m->cfg.num_layers);
    if ((rc = load_lin(m, &bl->norm1_ctx, name, (bl->last ? 2 : 6) * D, D, why)) < 0) return rc;

    snprintf(name, sizeof name, "%s.attn", pre);
    if ((rc = load_stream(m, &bl->img, name, img_names, why_d)) < 0 ||
        (rc = load_stream(m, &bl->txt, name, bl->last ? txt_last_names : txt_names, why_d)) < 0)
        return rc;
    if (bl->dual) {
        snprintf(name, sizeof name, "%s.attn2", pre);
        if ((rc = load_stream(m, &bl->img2, name, img_names, why_d)) < 0) return rc;
    }

    snprintf(name, sizeof name, "%s.ff.net.0.proj", pre);
    if ((rc = load_lin(m, &bl->ff1, name, m->ffdim, D, why_d)) < 0) return rc;
    snprintf(name, sizeof name, "%s.ff.net.2", pre);
    if ((rc = load_lin(m, &bl->ff2, name, D, m->ffdim, why_d)) < 0) return rc;
    if (bl->last) return 0;
    snprintf(name, sizeof name, "%s.ff_context.net.0.proj", pre);
    if ((rc = load_lin(m, &bl->ffc1, name, m->ffdim, D, why_d)) < 0) return rc;
    snprintf(name, sizeof name, "%s.ff_context.net.2", pre);
    return load_lin(m, &bl->ffc2, name, D, m->ffdim, why_d);
}

static int check_config(const mmdit_config *c, const char *file)
{
    const int pos[] = {c->patch_size,          c->in_channels,           c->out_channels,
                       c->num_layers,          c->attention_head_dim,    c->num_attention_heads,
                       c->joint_attention_dim, c->pooled_projection_dim, c->pos_embed_max_size};
    const char *names[] = {"patch_size",          "in_channels",           "out_channels",
                           "num_layers",          "attention_head_dim",    "num_attention_heads",
                           "joint_attention_dim", "pooled_projection_dim", "pos_embed_max_size"};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i] <= 0)
            return err_set(ERR_FORMAT, "%s: %s=%d must be positive", file, names[i], pos[i]);
    int64_t D = (int64_t)c->num_attention_heads * c->attention_head_dim;
    /* The text stream joins the image stream in one attention, so both must be D wide. */
    if (c->caption_projection_dim != D)
        return err_set(ERR_FORMAT,
                       "%s: caption_projection_dim=%d differs from num_attention_heads x "
                       "attention_head_dim = %lld",
                       file, c->caption_projection_dim, (long long)D);
    for (int j = 0; j < c->num_dual_attention_layers; j++)
        if (c->dual_attention_layers[j] < 0 || c->dual_attention_layers[j] >= c->num_layers)
            return err_set(ERR_FORMAT, "%s: dual_attention_layers holds %d, outside 0..%d", file,
                           c->dual_attention_layers[j], c->num_layers - 1);
    return 0;
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (const void *const *)a, y = (uintptr_t) * (const void *const *)b;
    return x < y ? -1 : x > y;
}

/* A tensor in the file that the config has no place for (an extra block, attn2 on a block
 * outside dual_attention_layers, qk norms without qk_norm) means the config describes another
 * model: refuse it rather than run a different network than the file holds. */
static int check_unused(mmdit *m)
{
    qsort(m->used, (size_t)m->n_loaded, sizeof *m->used, cmp_ptr);
    for (size_t i = 0; i < st_count(m->ar); i++) {
        const st_entry *e = st_at(m->ar, i);
        if (!bsearch(&e->tensor.data, m->used, (size_t)m->n_loaded, sizeof *m->used, cmp_ptr))
            return err_set(ERR_SHAPE,
                           "%s: tensor %s has no place in the model the config describes "
                           "(num_layers=%d, %d dual attention layers, qk_norm %s)",
                           e->file, e->name, m->cfg.num_layers, m->cfg.num_dual_attention_layers,
                           m->cfg.qk_norm_rms ? "rms_norm" : "none");
    }
    return 0;
}

static int load_all(mmdit *m)
{
    const mmdit_config *c = &m->cfg;
    const int64_t D = m->D, p = c->patch_size;
    char why_d[96], why[160];
    snprintf(why_d, sizeof why_d, "num_attention_heads=%d, attention_head_dim=%d",
             c->num_attention_heads, c->attention_head_dim);

    snprintf(why, sizeof why, "%s, in_channels=%d, patch_size=%d", why_d, c->in_channels,
             c->patch_size);
    int rc = load_tensor(m, &m->patch.w, "pos_embed.proj.weight", 4,
                         (int64_t[]){D, c->in_channels, p, p}, why);
    if (rc < 0 ||
        (rc = load_tensor(m, &m->patch.b, "pos_embed.proj.bias", 1, (int64_t[]){D}, why_d)) < 0)
        return rc;
    snprintf(why, sizeof why, "%s, pos_embed_max_size=%d", why_d, c->pos_embed_max_size);
    const int64_t G = c->pos_embed_max_size;
    if ((rc = load_tensor(m, &m->pos_embed, "pos_embed.pos_embed", 3, (int64_t[]){1, G * G, D},
                          why)) < 0)
        return rc;

    if ((rc = load_lin(m, &m->t1, "time_text_embed.timestep_embedder.linear_1", D, MMDIT_TPROJ,
                       why_d)) < 0 ||
        (rc = load_lin(m, &m->t2, "time_text_embed.timestep_embedder.linear_2", D, D, why_d)) < 0)
        return rc;
    snprintf(why, sizeof why, "%s, pooled_projection_dim=%d", why_d, c->pooled_projection_dim);
    if ((rc = load_lin(m, &m->p1, "time_text_embed.text_embedder.linear_1", D,
                       c->pooled_projection_dim, why)) < 0 ||
        (rc = load_lin(m, &m->p2, "time_text_embed.text_embedder.linear_2", D, D, why_d)) < 0)
        return rc;
    snprintf(why, sizeof why, "caption_projection_dim=%d, joint_attention_dim=%d",
             c->caption_projection_dim, c->joint_attention_dim);
    if ((rc = load_lin(m, &m->ctx_emb, "context_embedder", D, c->joint_attention_dim, why)) < 0)
        return rc;

    m->blocks = xcalloc((size_t)c->num_layers, sizeof *m->blocks);
    for (int i = 0; i < c->num_layers; i++)
        if ((rc = load_block(m, i, why_d)) < 0) return rc;

    if ((rc = load_lin(m, &m->norm_out, "norm_out.linear", 2 * D, D, why_d)) < 0) return rc;
    snprintf(why, sizeof why, "%s, patch_size=%d, out_channels=%d", why_d, c->patch_size,
             c->out_channels);
    if ((rc = load_lin(m, &m->proj_out, "proj_out", p * p * c->out_channels, D, why)) < 0)
        return rc;
    rc = check_unused(m);
    free(m->used);
    m->used = NULL;
    return rc;
}

int mmdit_load(kn_ctx *ctx, const model_config *mc, mmdit **out)
{
    *out = NULL;
    size_t n = strlen(mc->path) + sizeof "/transformer";
    char *dir = xmalloc(n);
    snprintf(dir, n, "%s/transformer", mc->path);
    char *cfg_file = xmalloc(n + sizeof "/config.json");
    snprintf(cfg_file, n + sizeof "/config.json", "%s/config.json", dir);

    int rc = check_config(&mc->mmdit, cfg_file);
    mmdit *m = NULL;
    if (rc == 0) {
        m = xcalloc(1, sizeof *m);
        m->ctx = ctx;
        m->act = KN_F32;
        m->cfg = mc->mmdit;
        m->heads = m->cfg.num_attention_heads;
        m->head_dim = m->cfg.attention_head_dim;
        m->D = m->heads * m->head_dim;
        m->ffdim = 4 * m->D; /* FeedForward(dim, mult=4) */
        rc = st_archive_open(dir, "diffusion_pytorch_model", &m->ar);
        if (rc == 0) rc = load_all(m);
    }
    if (rc < 0) {
        mmdit_free(m);
        err_prefix(rc, "loading %s: ", dir);
    } else {
        *out = m;
    }
    free(cfg_file);
    free(dir);
    return rc;
}

void mmdit_free(mmdit *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_loaded; i++)
        if (m->loaded[i]) kn_free(m->ctx, m->loaded[i]);
    kn_free(m->ctx, &m->arena);
    free(m->loaded);
    free(m->used);
    free(m->tproj_host);
    free(m->blocks);
    st_archive_close(m->ar);
    free(m);
}

/* ---- sizes and scratch ---- */

int mmdit_check_size(const mmdit_config *cfg, int64_t h, int64_t w)
{
    const int p = cfg->patch_size, G = cfg->pos_embed_max_size;
    if (h <= 0 || w <= 0)
        return err_set(ERR_RANGE, "latent size %lldx%lld is empty", (long long)h, (long long)w);
    if (h % p || w % p)
        return err_set(ERR_RANGE,
                       "latent size %lldx%lld is not a multiple of the transformer's patch size %d",
                       (long long)h, (long long)w, p);
    if (h / p > G || w / p > G)
        return err_set(ERR_RANGE,
                       "latent size %lldx%lld gives a %lldx%lld patch grid, larger than the "
                       "transformer's %dx%d position table (at most %dx%d latent)",
                       (long long)h, (long long)w, (long long)(h / p), (long long)(w / p), G, G,
                       G * p, G * p);
    return 0;
}

/* The arena's regions, laid out for capacity (cb samples, cn image and cs text tokens); when `a`
 * is given, its views are set for its own (smaller or equal) sizes. Returns the total element
 * count. The pos region comes first, so a cached crop stays valid until the arena is
 * reallocated. */
static int64_t layout(const mmdit *m, int64_t cb, int64_t cn, int64_t cs, acts *a,
                      const kn_tensor *arena)
{
    const int64_t D = m->D,
                  P = (int64_t)m->cfg.patch_size * m->cfg.patch_size * m->cfg.out_channels;
    const int64_t cl = cn + cs, cm = cn > cs ? cn : cs;
    const int64_t chid = cm * m->ffdim > cn * P ? cm * m->ffdim : cn * P;
    const int64_t conv = m->act == KN_F32 ? 0 : 1; /* input copies only in 16-bit modes */
    const int64_t cin = (int64_t)m->cfg.in_channels * m->cfg.patch_size * m->cfg.patch_size;
    const int64_t sizes[] = {
        cn * D, /* pos */
        cb * cn * D,
        cb * cs * D,
        cb * cn * D,
        cb * cs * D, /* tok cx ntok nctx */
        cb * cl * D,
        cb * cl * D,
        cb * cl * D,
        cb * cl * D, /* q k v o */
        cb * cn * D,
        cb * cs * D,
        cb * chid, /* aimg actx hid */
        cb * D,
        cb * D,
        cb * D,
        cb * MMDIT_TPROJ, /* temb tact tmp tproj */
        cb * 9 * D,
        cb * 6 * D, /* mod modc */
        conv * cb * cn * cin,
        conv * cb * cs * m->cfg.joint_attention_dim,
        conv * cb * m->cfg.pooled_projection_dim, /* xin ctxin pin */
    };
    enum { NREG = sizeof sizes / sizeof sizes[0] };
    int64_t off[NREG], total = 0;
    for (int i = 0; i < NREG; i++) {
        off[i] = total;
        total += (sizes[i] + 15) & ~(int64_t)15; /* keep regions 64-byte aligned */
    }
    if (!a) return total;
    const int64_t B = a->B, N = a->N, S = a->S, L = N + S, M = N > S ? N : S;
    const int64_t hid = M * m->ffdim > N * P ? M * m->ffdim : N * P;
    a->L = L;
    a->pos = kn_view(arena, off[0], 2, (int64_t[]){N, D});
    a->tok = kn_view(arena, off[1], 3, (int64_t[]){B, N, D});
    a->cx = kn_view(arena, off[2], 3, (int64_t[]){B, S, D});
    a->ntok = kn_view(arena, off[3], 3, (int64_t[]){B, N, D});
    a->nctx = kn_view(arena, off[4], 3, (int64_t[]){B, S, D});
    kn_tensor *joint[4] = {&a->q, &a->k, &a->v, &a->o};
    for (int i = 0; i < 4; i++)
        *joint[i] = kn_view(arena, off[5 + i], 3, (int64_t[]){B, L, D});
    a->aimg = kn_view(arena, off[9], 3, (int64_t[]){B, N, D});
    a->actx = kn_view(arena, off[10], 3, (int64_t[]){B, S, D});
    a->hid = kn_view(arena, off[11], 1, (int64_t[]){B * hid});
    a->temb = kn_view(arena, off[12], 2, (int64_t[]){B, D});
    a->tact = kn_view(arena, off[13], 2, (int64_t[]){B, D});
    a->tmp = kn_view(arena, off[14], 2, (int64_t[]){B, D});
    a->tproj = kn_view(arena, off[15], 2, (int64_t[]){B, MMDIT_TPROJ});
    a->mod = kn_view(arena, off[16], 2, (int64_t[]){B, 9 * D});
    a->modc = kn_view(arena, off[17], 2, (int64_t[]){B, 6 * D});
    a->xin = kn_view(arena, off[18], 1, (int64_t[]){sizes[18] ? B * N * cin : 0});
    a->ctxin =
        kn_view(arena, off[19], 3, (int64_t[]){B, sizes[19] ? S : 0, m->cfg.joint_attention_dim});
    a->pin =
        kn_view(arena, off[20], 2, (int64_t[]){B, sizes[20] ? m->cfg.pooled_projection_dim : 0});
    return total;
}

uint64_t mmdit_scratch_bytes(const mmdit *m, int64_t B, int64_t h, int64_t w, int64_t S)
{
    const int64_t p = m->cfg.patch_size, N = (h / p) * (w / p);
    return (uint64_t)layout(m, B, N, S, NULL, NULL) * kn_dtype_size(m->act);
}

static int ensure_arena(mmdit *m, acts *a)
{
    int64_t B = a->B > m->cap_b ? a->B : m->cap_b;
    int64_t N = a->N > m->cap_n ? a->N : m->cap_n;
    int64_t S = a->S > m->cap_s ? a->S : m->cap_s;
    if (B != m->cap_b || N != m->cap_n || S != m->cap_s || !m->arena.data) {
        kn_free(m->ctx, &m->arena);
        m->pos_gh = m->pos_gw = 0;
        int64_t total = layout(m, B, N, S, NULL, NULL);
        int rc = kn_alloc(m->ctx, &m->arena, m->act, 1, &total);
        if (rc < 0)
            return err_prefix(rc,
                              "transformer scratch for batch %lld, %lld image and %lld text "
                              "tokens: ",
                              (long long)B, (long long)N, (long long)S);
        m->cap_b = B, m->cap_n = N, m->cap_s = S;
        m->tproj_host = xrealloc(m->tproj_host, (size_t)B * MMDIT_TPROJ * sizeof(float));
    }
    layout(m, m->cap_b, m->cap_n, m->cap_s, a, &m->arena);
    return 0;
}

int mmdit_set_compute(mmdit *m, kn_dtype act)
{
    if (act != KN_F32 && act != KN_BF16 && act != KN_F16)
        return err_set(ERR_INVALID, "transformer compute dtype %s: expected F32, BF16 or F16",
                       kn_dtype_name(act));
    if (act != m->act) {
        kn_free(m->ctx, &m->arena);
        m->cap_b = m->cap_n = m->cap_s = 0;
        m->pos_gh = m->pos_gw = 0;
        m->act = act;
    }
    return 0;
}

/* ---- forward ---- */

/* A float32 input as the compute dtype: src itself in float32 mode, otherwise src converted
 * into `region`, which takes src's shape. */
static int in_compute(mmdit *m, const kn_tensor *src, kn_tensor *region, const kn_tensor **out)
{
    *out = src;
    if (m->act == KN_F32) return 0;
    *region = kn_reshape(region, src->ndim, src->shape);
    *out = region;
    return kn_copy(m->ctx, region, src);
}

void mmdit_timestep_proj(float t, float out[MMDIT_TPROJ])
{
    const int half = MMDIT_TPROJ / 2;
    /* torch: exponent = -log(10000) * arange(half, float32) / half; emb = t * exp(exponent),
     * with the python scalar rounded to float32 and each op rounded to float32. */
    const float neg_log = (float)-log(10000.0);
    for (int k = 0; k < half; k++) {
        float e = expf(neg_log * (float)k / (float)half);
        float arg = t * e;
        out[k] = cosf(arg);
        out[half + k] = sinf(arg);
    }
}

static kn_tensor as_chunks(const kn_tensor *t, int64_t B, int64_t C, int64_t D)
{
    return kn_view(t, 0, 3, (int64_t[]){B, C, D});
}

/* q, k and v of stream s for every sample in one product: x [B, n, D] into rows [row0,
 * row0 + n) of each sample of q, k and v, their heads normalised (qk norm). The product goes
 * through a->hid, free until the feed-forward. */
static int project_qkv(mmdit *m, const attn_stream *s, const kn_tensor *x, int64_t row0,
                       kn_tensor *q, kn_tensor *k, kn_tensor *v, const acts *a)
{
    const int64_t B = x->shape[0], n = x->shape[1], D = m->D;
    kn_tensor xr = kn_reshape(x, 2, (int64_t[]){B * n, D});
    kn_tensor y = kn_view(&a->hid, 0, 2, (int64_t[]){B * n, 3 * D});
    kn_tensor y3 = kn_reshape(&y, 3, (int64_t[]){B, n, 3 * D});
    const kn_tensor *nq = s->norm_q.data ? &s->norm_q : NULL, *nk = nq ? &s->norm_k : NULL;
    int rc = kn_linear(m->ctx, &y, &xr, &s->qkv.w, &s->qkv.b);
    return rc < 0 ? rc : kn_qkv_split(m->ctx, q, k, v, row0, &y3, (int)m->heads, nq, nk, MMDIT_EPS);
}

/* Joint attention of block bl: image stream x (normalised tokens) and text stream c. The image
 * output goes to a->aimg, the text output (not in the last block) to a->actx. */
static int joint_attention(mmdit *m, const block *bl, acts *a)
{
    int rc;
    if ((rc = project_qkv(m, &bl->img, &a->ntok, 0, &a->q, &a->k, &a->v, a)) < 0 ||
        (rc = project_qkv(m, &bl->txt, &a->nctx, a->N, &a->q, &a->k, &a->v, a)) < 0)
        return rc;
    kn_attn_args args = {.heads = (int)m->heads,
                         .scale = (float)(1.0 / sqrt((double)m->head_dim)),
                         .lse = mmdit_focus_lse(m, a)};
    if ((rc = kn_attention(m->ctx, &a->o, &a->q, &a->k, &a->v, &args)) < 0) return rc;
    for (int64_t b = 0; b < a->B; b++) {
        kn_tensor oi = mmdit_rows(&a->o, b, 0, a->N), yi = mmdit_rows(&a->aimg, b, 0, a->N);
        if ((rc = kn_linear(m->ctx, &yi, &oi, &bl->img.out.w, &bl->img.out.b)) < 0) return rc;
        if (bl->last) continue;
        kn_tensor oc = mmdit_rows(&a->o, b, a->N, a->S), yc = mmdit_rows(&a->actx, b, 0, a->S);
        if ((rc = kn_linear(m->ctx, &yc, &oc, &bl->txt.out.w, &bl->txt.out.b)) < 0) return rc;
    }
    return 0;
}

/* attn2 of a dual block: self-attention over the image tokens in a->ntok, into a->aimg. The
 * joint buffers are free again by now; their first B*N*D elements serve as [B, N, D]. */
static int self_attention(mmdit *m, const attn_stream *s, acts *a)
{
    const int64_t shape[3] = {a->B, a->N, m->D};
    kn_tensor q = kn_reshape(&a->q, 3, shape), k = kn_reshape(&a->k, 3, shape);
    kn_tensor v = kn_reshape(&a->v, 3, shape), o = kn_reshape(&a->o, 3, shape);
    int rc = project_qkv(m, s, &a->ntok, 0, &q, &k, &v, a);
    if (rc < 0) return rc;
    kn_attn_args args = {.heads = (int)m->heads, .scale = (float)(1.0 / sqrt((double)m->head_dim))};
    if ((rc = kn_attention(m->ctx, &o, &q, &k, &v, &args)) < 0) return rc;
    return kn_linear(m->ctx, &a->aimg, &o, &s->out.w, &s->out.b);
}

/* x += gate * FF(LN(x) * (1 + scale) + shift), with n a [B, R, D] normalisation buffer and y
 * the FF output buffer of the same shape. */
static int feed_forward(mmdit *m, kn_tensor *x, kn_tensor *n, kn_tensor *y, const kn_tensor *mod,
                        const lin *f1, const lin *f2, const acts *a)
{
    kn_tensor h = kn_view(&a->hid, 0, 3, (int64_t[]){x->shape[0], x->shape[1], m->ffdim});
    int rc;
    if ((rc = kn_ln_modulate(m->ctx, n, x, mod, 3, 4, MMDIT_EPS)) < 0 ||
        (rc = kn_linear_act(m->ctx, &h, n, &f1->w, &f1->b, KN_ACT_GELU_TANH)) < 0 ||
        (rc = kn_linear(m->ctx, y, &h, &f2->w, &f2->b)) < 0)
        return rc;
    return kn_gate_add(m->ctx, x, y, mod, 5);
}

static int run_block(mmdit *m, int i, acts *a)
{
    const block *bl = &m->blocks[i];
    const int64_t B = a->B, D = m->D;
    kn_tensor mod = as_chunks(&a->mod, B, bl->dual ? 9 : 6, D);
    kn_tensor modc = as_chunks(&a->modc, B, bl->last ? 2 : 6, D);
    kn_tensor mod_flat = kn_reshape(&mod, 2, (int64_t[]){B, mod.shape[1] * D});
    kn_tensor modc_flat = kn_reshape(&modc, 2, (int64_t[]){B, modc.shape[1] * D});
    int rc;
    if ((rc = kn_linear_rows(m->ctx, &mod_flat, &a->tact, &bl->norm1.w, &bl->norm1.b)) < 0 ||
        (rc = kn_linear_rows(m->ctx, &modc_flat, &a->tact, &bl->norm1_ctx.w, &bl->norm1_ctx.b)) < 0 ||
        (rc = mmdit_focus_save_inputs(m, i, a)) < 0)
        return rc;

    /* Chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp[, shift_msa2,
     * scale_msa2, gate_msa2]; the last block's text stream (AdaLayerNormContinuous) has
     * scale, shift in that order. */
    if ((rc = kn_ln_modulate(m->ctx, &a->ntok, &a->tok, &mod, 0, 1, MMDIT_EPS)) < 0 ||
        (rc = kn_ln_modulate(m->ctx, &a->nctx, &a->cx, &modc, bl->last ? 1 : 0, bl->last ? 0 : 1,
                             MMDIT_EPS)) < 0 ||
        (rc = joint_attention(m, bl, a)) < 0 || (rc = mmdit_focus_save_maps(m, i, a)) < 0)
        return rc;
    /* attn2's input modulates the LayerNorm of the block's input, so it is taken before the
     * first residual update. */
    if (bl->dual && (rc = kn_ln_modulate(m->ctx, &a->ntok, &a->tok, &mod, 6, 7, MMDIT_EPS)) < 0)
        return rc;
    if ((rc = kn_gate_add(m->ctx, &a->tok, &a->aimg, &mod, 2)) < 0) return rc;
    if (bl->dual && ((rc = self_attention(m, &bl->img2, a)) < 0 ||
                     (rc = kn_gate_add(m->ctx, &a->tok, &a->aimg, &mod, 8)) < 0))
        return rc;
    if ((rc = feed_forward(m, &a->tok, &a->ntok, &a->aimg, &mod, &bl->ff1, &bl->ff2, a)) < 0)
        return rc;
    if (bl->last) return 0;
    if ((rc = kn_gate_add(m->ctx, &a->cx, &a->actx, &modc, 2)) < 0) return rc;
    return feed_forward(m, &a->cx, &a->nctx, &a->actx, &modc, &bl->ffc1, &bl->ffc2, a);
}

/* The crop of the stored position table for a gh x gw grid, centred: rows top..top+gh, columns
 * left..left+gw of the G x G table, converted to F32 once per grid size. */
static int crop_pos(mmdit *m, acts *a, int64_t gh, int64_t gw)
{
    if (m->pos_gh == gh && m->pos_gw == gw) return 0;
    const int64_t G = m->cfg.pos_embed_max_size, D = m->D;
    const int64_t top = (G - gh) / 2, left = (G - gw) / 2;
    for (int64_t r = 0; r < gh; r++) {
        kn_tensor src = kn_view(&m->pos_embed, ((top + r) * G + left) * D, 2, (int64_t[]){gw, D});
        kn_tensor dst = kn_view(&a->pos, r * gw * D, 2, (int64_t[]){gw, D});
        int rc = kn_copy(m->ctx, &dst, &src);
        if (rc < 0) return rc;
    }
    m->pos_gh = gh, m->pos_gw = gw;
    return 0;
}

static int embed(mmdit *m, acts *a, const kn_tensor *x32, const float *t, const kn_tensor *ctx32,
                 const kn_tensor *pooled32)
{
    const int64_t B = a->B, D = m->D, p = m->cfg.patch_size;
    const int64_t gh = x32->shape[2] / p, gw = x32->shape[3] / p;
    const kn_tensor *x, *ctx_in, *pooled;
    int rc;
    if ((rc = in_compute(m, x32, &a->xin, &x)) < 0 ||
        (rc = in_compute(m, ctx32, &a->ctxin, &ctx_in)) < 0 ||
        (rc = in_compute(m, pooled32, &a->pin, &pooled)) < 0)
        return rc;

    /* Patch embedding: the conv output [B, D, gh, gw] goes through o, then to tokens. */
    kn_tensor conv = kn_view(&a->o, 0, 4, (int64_t[]){B, D, gh, gw});
    kn_tensor conv3 = kn_reshape(&conv, 3, (int64_t[]){B, D, gh * gw});
    if ((rc = kn_conv2d(m->ctx, &conv, x, &m->patch.w, &m->patch.b, (int)p, 0)) < 0 ||
        (rc = kn_transpose(m->ctx, &a->tok, &conv3)) < 0 || (rc = crop_pos(m, a, gh, gw)) < 0)
        return rc;
    for (int64_t b = 0; b < B; b++) {
        kn_tensor tb = mmdit_rows(&a->tok, b, 0, a->N);
        if ((rc = kn_add(m->ctx, &tb, &tb, &a->pos)) < 0) return rc;
    }

    /* temb = timestep_embedder(proj(t)) + text_embedder(pooled); every block uses SiLU(temb). */
    for (int64_t b = 0; b < B; b++)
        mmdit_timestep_proj(t[b], m->tproj_host + b * MMDIT_TPROJ);
    rc = kn_write_f32(m->ctx, &a->tproj, m->tproj_host);
    if (rc < 0 || (rc = kn_linear_rows(m->ctx, &a->tmp, &a->tproj, &m->t1.w, &m->t1.b)) < 0 ||
        (rc = kn_activate(m->ctx, &a->tmp, &a->tmp, KN_ACT_SILU)) < 0 ||
        (rc = kn_linear_rows(m->ctx, &a->temb, &a->tmp, &m->t2.w, &m->t2.b)) < 0 ||
        (rc = kn_linear_rows(m->ctx, &a->tmp, pooled, &m->p1.w, &m->p1.b)) < 0 ||
        (rc = kn_activate(m->ctx, &a->tmp, &a->tmp, KN_ACT_SILU)) < 0 ||
        (rc = kn_linear_rows(m->ctx, &a->tact, &a->tmp, &m->p2.w, &m->p2.b)) < 0 ||
        (rc = kn_add(m->ctx, &a->temb, &a->temb, &a->tact)) < 0 ||
        (rc = kn_activate(m->ctx, &a->tact, &a->temb, KN_ACT_SILU)) < 0)
        return rc;

    return kn_linear(m->ctx, &a->cx, ctx_in, &m->ctx_emb.w, &m->ctx_emb.b);
}

static int head(mmdit *m, acts *a, kn_tensor *out)
{
    const int64_t B = a->B, D = m->D, p = m->cfg.patch_size;
    const int64_t P = p * p * m->cfg.out_channels;
    kn_tensor mod = as_chunks(&a->mod, B, 2, D);
    kn_tensor mod_flat = kn_reshape(&mod, 2, (int64_t[]){B, 2 * D});
    kn_tensor y = kn_view(&a->hid, 0, 3, (int64_t[]){B, a->N, P});
    int rc;
    /* norm_out is AdaLayerNormContinuous: chunks scale, shift. */
    if ((rc = kn_linear_rows(m->ctx, &mod_flat, &a->tact, &m->norm_out.w, &m->norm_out.b)) < 0 ||
        (rc = kn_ln_modulate(m->ctx, &a->ntok, &a->tok, &mod, 1, 0, MMDIT_EPS)) < 0 ||
        (rc = kn_linear(m->ctx, &y, &a->ntok, &m->proj_out.w, &m->proj_out.b)) < 0)
        return rc;
    if (m->act == KN_F32) return kn_unpatchify(m->ctx, out, &y, (int)p);
    /* 16-bit modes unpatchify into the free joint output buffer, then widen. */
    kn_tensor img = kn_view(&a->o, 0, 4, out->shape);
    if ((rc = kn_unpatchify(m->ctx, &img, &y, (int)p)) < 0) return rc;
    return kn_copy(m->ctx, out, &img);
}

static int check_io(const mmdit *m, const kn_tensor *x, const float *t, const kn_tensor *ctx_in,
                    const kn_tensor *pooled, const int *skip, int n_skip, const kn_tensor *out)
{
    const mmdit_config *c = &m->cfg;
    char s1[64], s2[64];
    if (x->ndim != 4 || x->shape[0] < 1 || x->shape[1] != c->in_channels || x->dtype != KN_F32)
        return err_set(ERR_SHAPE, "transformer input x: %s %s, expected [B, %d, h, w] F32",
                       kn_shape_str(x, s1, sizeof s1), kn_dtype_name(x->dtype), c->in_channels);
    const int64_t B = x->shape[0];
    int rc = mmdit_check_size(c, x->shape[2], x->shape[3]);
    if (rc < 0) return rc;
    if (!t) return err_set(ERR_INVALID, "transformer: no timesteps given");
    if (ctx_in->ndim != 3 || ctx_in->shape[0] != B || ctx_in->shape[1] < 1 ||
        ctx_in->shape[2] != c->joint_attention_dim || ctx_in->dtype != KN_F32)
        return err_set(ERR_SHAPE,
                       "transformer input encoder_hidden_states: %s %s, expected [%lld, S, %d] "
                       "F32",
                       kn_shape_str(ctx_in, s1, sizeof s1), kn_dtype_name(ctx_in->dtype),
                       (long long)B, c->joint_attention_dim);
    if (pooled->ndim != 2 || pooled->shape[0] != B ||
        pooled->shape[1] != c->pooled_projection_dim || pooled->dtype != KN_F32)
        return err_set(ERR_SHAPE,
                       "transformer input pooled_projections: %s %s, expected [%lld, %d] F32",
                       kn_shape_str(pooled, s1, sizeof s1), kn_dtype_name(pooled->dtype),
                       (long long)B, c->pooled_projection_dim);
    if (out->ndim != 4 || out->shape[0] != B || out->shape[1] != c->out_channels ||
        out->shape[2] != x->shape[2] || out->shape[3] != x->shape[3] || out->dtype != KN_F32)
        return err_set(ERR_SHAPE, "transformer output: %s %s for input %s",
                       kn_shape_str(out, s1, sizeof s1), kn_dtype_name(out->dtype),
                       kn_shape_str(x, s2, sizeof s2));
    for (int i = 0; i < n_skip; i++)
        if (skip[i] < 0 || skip[i] >= c->num_layers)
            return err_set(ERR_RANGE, "skip layer %d outside the transformer's blocks 0..%d",
                           skip[i], c->num_layers - 1);
    return 0;
}

static bool skipped(const int *skip, int n_skip, int i)
{
    for (int j = 0; j < n_skip; j++)
        if (skip[j] == i) return true;
    return false;
}

int mmdit_forward(mmdit *m, const kn_tensor *x, const float *t, const kn_tensor *ctx_in,
                  const kn_tensor *pooled, const int *skip, int n_skip, kn_tensor *out)
{
    int rc = check_io(m, x, t, ctx_in, pooled, skip, n_skip, out);
    if (rc < 0) return rc;
    const int64_t p = m->cfg.patch_size;
    acts a = {.B = x->shape[0], .N = (x->shape[2] / p) * (x->shape[3] / p), .S = ctx_in->shape[1]};
    if ((rc = ensure_arena(m, &a)) < 0 || (rc = embed(m, &a, x, t, ctx_in, pooled)) < 0) return rc;
    for (int i = 0; i < m->cfg.num_layers; i++) {
        if (skipped(skip, n_skip, i)) continue;
        if ((rc = run_block(m, i, &a)) < 0)
            return err_prefix(rc, "transformer block %d: ", i);
    }
    return head(m, &a, out);
}
