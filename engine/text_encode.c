/* Prompt encoding (see text_encode.h): tokenizers + CLIP-L + CLIP-G + T5 assembled as
 * StableDiffusion3Pipeline.encode_prompt does, plus the weight-table loader the encoders share. */
#include "engine/text_encode.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "engine/clip_text.h"
#include "engine/t5_encoder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct text_encoder {
    kn_ctx *ctx;
    const model_config *cfg;
    text_tokenizers tok;
    clip_text *clip_l, *clip_g;
    t5_encoder *t5; /* NULL without text_encoder_3 */
    int clip_len;
    int64_t width;
    /* Per-encoder outputs before assembly: [clip_len, hidden] and [1, projection]. */
    kn_tensor l_seq, g_seq, l_pooled, g_pooled;
};

/* ---- weight tables ---- */

int text_weights_load(kn_ctx *ctx, const st_archive *a, const text_weight_spec *spec, int n,
                      int layer, kn_tensor *dst)
{
    memset(dst, 0, (size_t)n * sizeof *dst);
    for (int i = 0; i < n; i++) {
        char name[256];
        snprintf(name, sizeof name, spec[i].name, layer);
        if (spec[i].optional && !st_find(a, name)) continue;
        kn_tensor host;
        int rc = st_weight_cfg(a, name, spec[i].ndim, spec[i].shape, spec[i].why, &host);
        if (rc == 0) rc = kn_weight(ctx, &dst[i], &host);
        if (rc < 0) {
            text_weights_free(ctx, dst, i);
            return rc;
        }
    }
    return 0;
}

void text_weights_free(kn_ctx *ctx, kn_tensor *w, int n)
{
    for (int i = 0; i < n; i++)
        kn_free(ctx, &w[i]);
}

int text_act_of(act_kind_cfg a, kn_act *out)
{
    switch (a) {
    case CFG_ACT_QUICK_GELU:
        *out = KN_ACT_QUICK_GELU;
        return 0;
    case CFG_ACT_GELU:
        *out = KN_ACT_GELU_ERF;
        return 0;
    case CFG_ACT_GELU_TANH:
        *out = KN_ACT_GELU_TANH;
        return 0;
    case CFG_ACT_SILU:
        *out = KN_ACT_SILU;
        return 0;
    }
    return err_set(ERR_INVALID, "unknown activation %d", (int)a);
}

/* ---- tokenizers ---- */

static char *join_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int text_tokenizers_load(const model_config *cfg, text_tokenizers *out)
{
    memset(out, 0, sizeof *out);
    static const char *const names[3] = {"tokenizer", "tokenizer_2", "tokenizer_3"};
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++) {
        if (i == 2 && !cfg->has_t5) break;
        char *dir = join_path(cfg->path, names[i]);
        rc = i == 0   ? clip_tokenizer_load(dir, &out->clip_l)
             : i == 1 ? clip_tokenizer_load(dir, &out->clip_g)
                      : t5_tokenizer_load(dir, &out->t5);
        free(dir);
    }
    if (rc == 0 && clip_tokenizer_max_length(out->clip_l) != clip_tokenizer_max_length(out->clip_g))
        rc = err_set(ERR_FORMAT,
                     "%s: tokenizer/ and tokenizer_2/ have different model_max_length "
                     "(%d and %d); the pipeline concatenates their sequences",
                     cfg->path, clip_tokenizer_max_length(out->clip_l),
                     clip_tokenizer_max_length(out->clip_g));
    if (rc == 0 && clip_tokenizer_max_length(out->clip_l) < 1)
        rc = err_set(ERR_FORMAT, "%s/tokenizer: model_max_length %d", cfg->path,
                     clip_tokenizer_max_length(out->clip_l));
    if (rc < 0) text_tokenizers_free(out);
    return rc;
}

void text_tokenizers_free(text_tokenizers *t)
{
    clip_tokenizer_free(t->clip_l);
    clip_tokenizer_free(t->clip_g);
    t5_tokenizer_free(t->t5);
    memset(t, 0, sizeof *t);
}

int text_tokenize(const text_tokenizers *tok, const char *text, int max_seq, text_ids *out)
{
    memset(out, 0, sizeof *out);
    if (max_seq < 1 || max_seq > TEXT_MAX_SEQ_LIMIT)
        return err_set(ERR_RANGE, "max_sequence_length %d outside 1..%d", max_seq,
                       TEXT_MAX_SEQ_LIMIT);
    size_t len = strlen(text);
    out->clip_len = clip_tokenizer_max_length(tok->clip_l);
    out->clip_l = xmalloc((size_t)out->clip_len * sizeof(int32_t));
    out->clip_g = xmalloc((size_t)out->clip_len * sizeof(int32_t));
    int rc = clip_tokenize(tok->clip_l, text, len, out->clip_l);
    if (rc >= 0) rc = clip_tokenize(tok->clip_g, text, len, out->clip_g);
    if (rc >= 0 && tok->t5) {
        out->t5_len = max_seq;
        out->t5 = xmalloc((size_t)max_seq * sizeof(int32_t));
        rc = t5_tokenize(tok->t5, text, len, max_seq, out->t5);
    }
    if (rc < 0) {
        text_ids_free(out);
        return rc;
    }
    return 0;
}

void text_ids_free(text_ids *ids)
{
    free(ids->clip_l);
    free(ids->clip_g);
    free(ids->t5);
    memset(ids, 0, sizeof *ids);
}

/* ---- the encoder ---- */

void text_encoder_free(text_encoder *te)
{
    if (!te) return;
    clip_text_free(te->clip_l);
    clip_text_free(te->clip_g);
    t5_encoder_free(te->t5);
    text_tokenizers_free(&te->tok);
    kn_free(te->ctx, &te->l_seq);
    kn_free(te->ctx, &te->g_seq);
    kn_free(te->ctx, &te->l_pooled);
    kn_free(te->ctx, &te->g_pooled);
    free(te);
}

static int text_encoder_check(const text_encoder *te)
{
    const model_config *c = te->cfg;
    const clip_config *cl[2] = {&c->clip_l, &c->clip_g};
    const char *dirs[2] = {"text_encoder", "text_encoder_2"};
    for (int i = 0; i < 2; i++)
        if (te->clip_len > cl[i]->max_position_embeddings)
            return err_set(ERR_SHAPE,
                           "%s/%s/config.json: max_position_embeddings %d is below the "
                           "tokenizer's model_max_length %d",
                           c->path, dirs[i], cl[i]->max_position_embeddings, te->clip_len);
    /* diffusers pads the CLIP features up to the T5 width; a wider CLIP pair would be
     * cropped by F.pad's negative padding, which no published model needs. */
    if ((int64_t)c->clip_l.hidden_size + c->clip_g.hidden_size > te->width)
        return err_set(ERR_SHAPE, "%s: CLIP widths %d + %d exceed the %s width %lld", c->path,
                       c->clip_l.hidden_size, c->clip_g.hidden_size,
                       c->has_t5 ? "text_encoder_3 d_model" : "transformer joint_attention_dim",
                       (long long)te->width);
    return 0;
}

int text_encoder_load(kn_ctx *ctx, const model_config *cfg, text_encoder **out)
{
    *out = NULL;
    text_encoder *te = xcalloc(1, sizeof *te);
    te->ctx = ctx;
    te->cfg = cfg;
    te->width = cfg->has_t5 ? cfg->t5.d_model : cfg->mmdit.joint_attention_dim;
    int rc = text_tokenizers_load(cfg, &te->tok);
    if (rc == 0) {
        te->clip_len = clip_tokenizer_max_length(te->tok.clip_l);
        rc = text_encoder_check(te);
    }
    char *dirs[3] = {join_path(cfg->path, "text_encoder"), join_path(cfg->path, "text_encoder_2"),
                     join_path(cfg->path, "text_encoder_3")};
    if (rc == 0) rc = clip_text_load(ctx, dirs[0], &cfg->clip_l, &te->clip_l);
    if (rc == 0) rc = clip_text_load(ctx, dirs[1], &cfg->clip_g, &te->clip_g);
    if (rc == 0 && cfg->has_t5) rc = t5_encoder_load(ctx, dirs[2], &cfg->t5, &te->t5);
    for (int i = 0; i < 3; i++)
        free(dirs[i]);
    int64_t l_shape[2] = {te->clip_len, cfg->clip_l.hidden_size};
    int64_t g_shape[2] = {te->clip_len, cfg->clip_g.hidden_size};
    int64_t lp_shape[2] = {1, cfg->clip_l.projection_dim};
    int64_t gp_shape[2] = {1, cfg->clip_g.projection_dim};
    if (rc == 0) rc = kn_alloc(ctx, &te->l_seq, KN_F32, 2, l_shape);
    if (rc == 0) rc = kn_alloc(ctx, &te->g_seq, KN_F32, 2, g_shape);
    if (rc == 0) rc = kn_alloc(ctx, &te->l_pooled, KN_F32, 2, lp_shape);
    if (rc == 0) rc = kn_alloc(ctx, &te->g_pooled, KN_F32, 2, gp_shape);
    if (rc < 0) {
        text_encoder_free(te);
        return rc;
    }
    *out = te;
    return 0;
}

const text_tokenizers *text_encoder_tokenizers(const text_encoder *te)
{
    return &te->tok;
}

int64_t text_encoder_seq_len(const text_encoder *te, int max_seq)
{
    /* Without T5 diffusers uses zeros of tokenizer_max_length rows, whatever max_seq is. */
    return te->clip_len + (te->t5 ? max_seq : te->clip_len);
}

int64_t text_encoder_width(const text_encoder *te)
{
    return te->width;
}

int64_t text_encoder_pooled_width(const text_encoder *te)
{
    return (int64_t)te->cfg->clip_l.projection_dim + te->cfg->clip_g.projection_dim;
}

static int text_encode_ids(text_encoder *te, const text_ids *ids, kn_tensor *seq, kn_tensor *pooled)
{
    kn_ctx *ctx = te->ctx;
    int64_t clip_shape[2] = {te->clip_len, te->width};
    kn_tensor clip_rows = kn_view(seq, 0, 2, clip_shape);
    int rc;
    if ((rc = kn_fill(ctx, te->t5 ? &clip_rows : seq, 0.0f)) < 0 ||
        (rc = clip_text_forward(te->clip_l, ids->clip_l, ids->clip_len, &te->l_seq,
                                &te->l_pooled)) < 0 ||
        (rc = clip_text_forward(te->clip_g, ids->clip_g, ids->clip_len, &te->g_seq,
                                &te->g_pooled)) < 0 ||
        (rc = kn_copy_cols(ctx, &clip_rows, 0, &te->l_seq)) < 0 ||
        (rc = kn_copy_cols(ctx, &clip_rows, kn_cols(&te->l_seq), &te->g_seq)) < 0 ||
        (rc = kn_copy_cols(ctx, pooled, 0, &te->l_pooled)) < 0 ||
        (rc = kn_copy_cols(ctx, pooled, kn_cols(&te->l_pooled), &te->g_pooled)) < 0)
        return rc;
    if (te->t5) {
        int64_t t5_shape[2] = {ids->t5_len, te->width};
        kn_tensor t5_rows = kn_view(seq, (int64_t)te->clip_len * te->width, 2, t5_shape);
        if ((rc = t5_encoder_forward(te->t5, ids->t5, ids->t5_len, &t5_rows)) < 0) return rc;
    }
    return 0;
}

int text_encode(text_encoder *te, const char *text, int max_seq, kn_tensor *seq, kn_tensor *pooled)
{
    memset(seq, 0, sizeof *seq);
    memset(pooled, 0, sizeof *pooled);
    text_ids ids;
    int rc = text_tokenize(&te->tok, text, max_seq, &ids);
    if (rc < 0) return rc;
    int64_t seq_shape[3] = {1, text_encoder_seq_len(te, max_seq), te->width};
    int64_t pooled_shape[2] = {1, text_encoder_pooled_width(te)};
    if ((rc = kn_alloc(te->ctx, seq, KN_F32, 3, seq_shape)) == 0 &&
        (rc = kn_alloc(te->ctx, pooled, KN_F32, 2, pooled_shape)) == 0)
        rc = text_encode_ids(te, &ids, seq, pooled);
    text_ids_free(&ids);
    if (rc < 0) {
        kn_free(te->ctx, seq);
        kn_free(te->ctx, pooled);
        return err_prefix(rc, "encoding the prompt: ");
    }
    return 0;
}

int text_embeds_stack(kn_ctx *ctx, kn_tensor *out, const kn_tensor *const *parts, int n_parts,
                      int repeat)
{
    memset(out, 0, sizeof *out);
    if (n_parts < 1 || repeat < 1)
        return err_set(ERR_INVALID, "text_embeds_stack: %d parts repeated %d times", n_parts,
                       repeat);
    const kn_tensor *p0 = parts[0];
    for (int i = 0; i < n_parts; i++)
        if (!kn_same_shape(parts[i], p0) || parts[i]->dtype != p0->dtype || p0->ndim < 1 ||
            p0->shape[0] != 1)
            return err_set(ERR_SHAPE,
                           "text_embeds_stack: part %d differs from part 0 or is not "
                           "a single row of the batch",
                           i);
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, p0->shape, sizeof shape);
    shape[0] = (int64_t)n_parts * repeat;
    int rc = kn_alloc(ctx, out, p0->dtype, p0->ndim, shape);
    int64_t each = kn_numel(p0);
    for (int i = 0; rc == 0 && i < n_parts; i++)
        for (int r = 0; rc == 0 && r < repeat; r++) {
            kn_tensor dst = kn_view(out, ((int64_t)i * repeat + r) * each, p0->ndim, p0->shape);
            rc = kn_copy(ctx, &dst, parts[i]);
        }
    if (rc < 0) kn_free(ctx, out);
    return rc;
}
