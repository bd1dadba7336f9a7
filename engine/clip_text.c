/* CLIPTextModelWithProjection forward (see clip_text.h). The activation buffers are sized once
 * for max_position_embeddings and viewed down to the token count of each call. */
#include "engine/clip_text.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "engine/safetensors.h"
#include "engine/text_encode.h"
#include "kernels/kn_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    CL_LN1_W,
    CL_LN1_B,
    CL_Q_W,
    CL_Q_B,
    CL_K_W,
    CL_K_B,
    CL_V_W,
    CL_V_B,
    CL_O_W,
    CL_O_B,
    CL_LN2_W,
    CL_LN2_B,
    CL_FC1_W,
    CL_FC1_B,
    CL_FC2_W,
    CL_FC2_B,
    CL_LAYER_COUNT
};
enum { CG_TOKEN, CG_POSITION, CG_FINAL_W, CG_FINAL_B, CG_PROJ, CG_COUNT };

/* Activations, each [1, max_pos, width]. */
enum { CA_H, CA_X, CA_Q, CA_K, CA_V, CA_A, CA_O, CA_F, CA_COUNT };

struct clip_text {
    kn_ctx *ctx;
    const clip_config *cfg;
    kn_act act;
    st_archive *archive;
    kn_tensor global[CG_COUNT];
    kn_tensor (*layers)[CL_LAYER_COUNT];
    kn_tensor act_buf[CA_COUNT];
    int32_t *positions; /* 0..max_pos-1, the position ids */
};

void clip_text_free(clip_text *m)
{
    if (!m) return;
    text_weights_free(m->ctx, m->global, CG_COUNT);
    if (m->layers)
        for (int l = 0; l < m->cfg->num_hidden_layers; l++)
            text_weights_free(m->ctx, m->layers[l], CL_LAYER_COUNT);
    for (int i = 0; i < CA_COUNT; i++)
        kn_free(m->ctx, &m->act_buf[i]);
    st_archive_close(m->archive);
    free(m->layers);
    free(m->positions);
    free(m);
}

static int clip_load_weights(clip_text *m)
{
    const clip_config *c = m->cfg;
    int64_t d = c->hidden_size, ff = c->intermediate_size;
    char vd[128], pd[128], jd[128], fd[128], dd[48], ffw[48];
    snprintf(dd, sizeof dd, "hidden_size=%d", c->hidden_size);
    snprintf(ffw, sizeof ffw, "intermediate_size=%d", c->intermediate_size);
    snprintf(vd, sizeof vd, "vocab_size=%d, %s", c->vocab_size, dd);
    snprintf(pd, sizeof pd, "max_position_embeddings=%d, %s", c->max_position_embeddings, dd);
    snprintf(jd, sizeof jd, "projection_dim=%d, %s", c->projection_dim, dd);
    snprintf(fd, sizeof fd, "%s, %s", ffw, dd);
    const text_weight_spec global[CG_COUNT] = {
        [CG_TOKEN] = {"text_model.embeddings.token_embedding.weight", 2, {c->vocab_size, d}, vd, 0},
        [CG_POSITION] = {"text_model.embeddings.position_embedding.weight",
                         2,
                         {c->max_position_embeddings, d},
                         pd,
                         0},
        [CG_FINAL_W] = {"text_model.final_layer_norm.weight", 1, {d}, dd, 0},
        [CG_FINAL_B] = {"text_model.final_layer_norm.bias", 1, {d}, dd, 0},
        [CG_PROJ] = {"text_projection.weight", 2, {c->projection_dim, d}, jd, 0},
    };
#define CLIP_LAYER(s) "text_model.encoder.layers.%d." s
    const text_weight_spec layer[CL_LAYER_COUNT] = {
        [CL_LN1_W] = {CLIP_LAYER("layer_norm1.weight"), 1, {d}, dd, 0},
        [CL_LN1_B] = {CLIP_LAYER("layer_norm1.bias"), 1, {d}, dd, 0},
        [CL_Q_W] = {CLIP_LAYER("self_attn.q_proj.weight"), 2, {d, d}, dd, 0},
        [CL_Q_B] = {CLIP_LAYER("self_attn.q_proj.bias"), 1, {d}, dd, 0},
        [CL_K_W] = {CLIP_LAYER("self_attn.k_proj.weight"), 2, {d, d}, dd, 0},
        [CL_K_B] = {CLIP_LAYER("self_attn.k_proj.bias"), 1, {d}, dd, 0},
        [CL_V_W] = {CLIP_LAYER("self_attn.v_proj.weight"), 2, {d, d}, dd, 0},
        [CL_V_B] = {CLIP_LAYER("self_attn.v_proj.bias"), 1, {d}, dd, 0},
        [CL_O_W] = {CLIP_LAYER("self_attn.out_proj.weight"), 2, {d, d}, dd, 0},
        [CL_O_B] = {CLIP_LAYER("self_attn.out_proj.bias"), 1, {d}, dd, 0},
        [CL_LN2_W] = {CLIP_LAYER("layer_norm2.weight"), 1, {d}, dd, 0},
        [CL_LN2_B] = {CLIP_LAYER("layer_norm2.bias"), 1, {d}, dd, 0},
        [CL_FC1_W] = {CLIP_LAYER("mlp.fc1.weight"), 2, {ff, d}, fd, 0},
        [CL_FC1_B] = {CLIP_LAYER("mlp.fc1.bias"), 1, {ff}, ffw, 0},
        [CL_FC2_W] = {CLIP_LAYER("mlp.fc2.weight"), 2, {d, ff}, fd, 0},
        [CL_FC2_B] = {CLIP_LAYER("mlp.fc2.bias"), 1, {d}, dd, 0},
    };
#undef CLIP_LAYER
    int rc = text_weights_load(m->ctx, m->archive, global, CG_COUNT, 0, m->global);
    if (rc < 0) return rc;
    m->layers = xcalloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        rc = text_weights_load(m->ctx, m->archive, layer, CL_LAYER_COUNT, l, m->layers[l]);
        if (rc < 0) return rc;
    }
    return 0;
}

int clip_text_load(kn_ctx *ctx, const char *dir, const clip_config *cfg, clip_text **out)
{
    *out = NULL;
    if (cfg->hidden_size <= 0 || cfg->num_attention_heads <= 0 ||
        cfg->hidden_size % cfg->num_attention_heads != 0)
        return err_set(ERR_RANGE,
                       "%s/config.json: hidden_size %d is not a multiple of "
                       "num_attention_heads %d",
                       dir, cfg->hidden_size, cfg->num_attention_heads);
    if (cfg->num_hidden_layers < 1 || cfg->max_position_embeddings < 1 ||
        cfg->intermediate_size < 1 || cfg->projection_dim < 1 || cfg->vocab_size < 1)
        return err_set(ERR_RANGE, "%s/config.json: a size is not positive", dir);
    kn_act act;
    int rc = text_act_of(cfg->hidden_act, &act);
    if (rc < 0) return err_prefix(rc, "%s/config.json: ", dir);

    clip_text *m = xcalloc(1, sizeof *m);
    m->ctx = ctx;
    m->cfg = cfg;
    m->act = act;
    rc = st_archive_open(dir, "model", &m->archive);
    if (rc == 0) rc = clip_load_weights(m);
    int64_t p = cfg->max_position_embeddings;
    for (int i = 0; rc == 0 && i < CA_COUNT; i++) {
        int64_t shape[3] = {1, p, i == CA_F ? cfg->intermediate_size : cfg->hidden_size};
        rc = kn_alloc(ctx, &m->act_buf[i], KN_F32, 3, shape);
    }
    if (rc < 0) {
        clip_text_free(m);
        return rc;
    }
    m->positions = xmalloc((size_t)p * sizeof *m->positions);
    for (int i = 0; i < p; i++)
        m->positions[i] = i;
    *out = m;
    return 0;
}

int clip_text_eos_index(const clip_config *cfg, const int32_t *ids, int n)
{
    int best = 0;
    if (cfg->eos_token_id == 2) {
        /* Configs written before transformers PR #24773 carry eos_token_id 2; transformers then
         * pools at torch.argmax(ids), the first largest id, which is the EOS of CLIP's vocab. */
        for (int i = 1; i < n; i++)
            if (ids[i] > ids[best]) best = i;
        return best;
    }
    for (int i = 0; i < n; i++)
        if (ids[i] == cfg->eos_token_id) return i;
    return 0;
}

/* One pre-LN encoder layer on h [1, n, d] in place. */
static int clip_layer(clip_text *m, const kn_tensor *w, kn_tensor *a)
{
    const clip_config *c = m->cfg;
    kn_ctx *ctx = m->ctx;
    kn_tensor *h = &a[CA_H], *x = &a[CA_X], *o = &a[CA_O], *f = &a[CA_F];
    float eps = c->layer_norm_eps;
    int rc;
    if ((rc = kn_layer_norm(ctx, x, h, &w[CL_LN1_W], &w[CL_LN1_B], eps)) < 0 ||
        (rc = kn_linear(ctx, &a[CA_Q], x, &w[CL_Q_W], &w[CL_Q_B])) < 0 ||
        (rc = kn_linear(ctx, &a[CA_K], x, &w[CL_K_W], &w[CL_K_B])) < 0 ||
        (rc = kn_linear(ctx, &a[CA_V], x, &w[CL_V_W], &w[CL_V_B])) < 0)
        return rc;
    int head_dim = c->hidden_size / c->num_attention_heads;
    kn_attn_args args = {
        .heads = c->num_attention_heads,
        .scale = (float)(1.0 / sqrt((double)head_dim)),
        .causal = 1,
    };
    if ((rc = kn_attention(ctx, &a[CA_A], &a[CA_Q], &a[CA_K], &a[CA_V], &args)) < 0 ||
        (rc = kn_linear(ctx, o, &a[CA_A], &w[CL_O_W], &w[CL_O_B])) < 0 ||
        (rc = kn_add(ctx, h, h, o)) < 0 ||
        (rc = kn_layer_norm(ctx, x, h, &w[CL_LN2_W], &w[CL_LN2_B], eps)) < 0 ||
        (rc = kn_linear_act(ctx, f, x, &w[CL_FC1_W], &w[CL_FC1_B], m->act)) < 0 ||
        (rc = kn_linear(ctx, o, f, &w[CL_FC2_W], &w[CL_FC2_B])) < 0 ||
        (rc = kn_add(ctx, h, h, o)) < 0)
        return rc;
    return 0;
}

int clip_text_forward(clip_text *m, const int32_t *ids, int n, kn_tensor *seq, kn_tensor *pooled)
{
    const clip_config *c = m->cfg;
    kn_ctx *ctx = m->ctx;
    if (n < 1 || n > c->max_position_embeddings)
        return err_set(ERR_RANGE, "CLIP input of %d tokens; the model takes 1..%d", n,
                       c->max_position_embeddings);
    if (seq->dtype != KN_F32 || kn_rows(seq) != n || kn_cols(seq) != c->hidden_size ||
        pooled->dtype != KN_F32 || kn_rows(pooled) != 1 || kn_cols(pooled) != c->projection_dim)
        return err_set(ERR_SHAPE, "clip_text_forward: outputs must be F32 %dx%d and 1x%d", n,
                       c->hidden_size, c->projection_dim);
    int rc;
    kn_tensor a[CA_COUNT];
    for (int i = 0; i < CA_COUNT; i++) {
        int64_t shape[3] = {1, n, m->act_buf[i].shape[2]};
        a[i] = kn_view(&m->act_buf[i], 0, 3, shape);
    }
    if ((rc = kn_embedding(ctx, &a[CA_H], &m->global[CG_TOKEN], ids, n)) < 0 ||
        (rc = kn_embedding(ctx, &a[CA_X], &m->global[CG_POSITION], m->positions, n)) < 0 ||
        (rc = kn_add(ctx, &a[CA_H], &a[CA_H], &a[CA_X])) < 0)
        return err_prefix(rc, "CLIP embeddings: ");
    for (int l = 0; l < c->num_hidden_layers; l++) {
        /* hidden_states[-2] is the input of the last layer. */
        if (l == c->num_hidden_layers - 1 && (rc = kn_copy(ctx, seq, &a[CA_H])) < 0) return rc;
        if ((rc = clip_layer(m, m->layers[l], a)) < 0) return err_prefix(rc, "CLIP layer %d: ", l);
    }
    /* LayerNorm is per row, so only the pooled row needs the final norm. */
    int64_t row_shape[2] = {1, c->hidden_size};
    int eos = clip_text_eos_index(c, ids, n);
    kn_tensor h_row = kn_view(&a[CA_H], (int64_t)eos * c->hidden_size, 2, row_shape);
    kn_tensor x_row = kn_view(&a[CA_X], 0, 2, row_shape);
    if ((rc = kn_layer_norm(ctx, &x_row, &h_row, &m->global[CG_FINAL_W], &m->global[CG_FINAL_B],
                            c->layer_norm_eps)) < 0 ||
        (rc = kn_linear(ctx, pooled, &x_row, &m->global[CG_PROJ], NULL)) < 0)
        return err_prefix(rc, "CLIP pooled output: ");
    return 0;
}
