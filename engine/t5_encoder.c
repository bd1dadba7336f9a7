/* T5EncoderModel forward (see t5_encoder.h). The position bias [heads, n, n] is built on the
 * host from block 0's bucket table and kept for the last sequence length used, since a model
 * usually sees one max_sequence_length over and over. */
#include "engine/t5_encoder.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "engine/safetensors.h"
#include "engine/text_encode.h"
#include "kernels/kn_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TB_LN0, TB_Q, TB_K, TB_V, TB_O, TB_LN1, TB_WI0, TB_WI1, TB_WI, TB_WO, TB_COUNT };
enum { TG_SHARED, TG_EMBED_TOKENS, TG_REL_BIAS, TG_FINAL, TG_COUNT };
/* Activations: H, X, O are [1, n, d_model]; Q, K, V, A [1, n, heads*d_kv]; G, U [1, n, d_ff]. */
enum { TA_H, TA_X, TA_O, TA_Q, TA_K, TA_V, TA_A, TA_G, TA_U, TA_COUNT };

struct t5_encoder {
    kn_ctx *ctx;
    const t5_config *cfg;
    kn_act act;
    st_archive *archive;
    kn_tensor global[TG_COUNT];
    const kn_tensor *embed; /* shared.weight, or the encoder's tied copy */
    kn_tensor (*blocks)[TB_COUNT];
    float *bucket_table; /* [num_buckets, heads], block 0's relative_attention_bias */
    kn_tensor act_buf[TA_COUNT];
    int act_cap; /* rows the activation buffers hold */
    kn_tensor bias;
    int bias_n; /* sequence length `bias` was built for; 0 for none */
};

int t5_relative_bucket(int rel, int num_buckets, int max_distance)
{
    int half = num_buckets / 2;
    int bucket = rel > 0 ? half : 0;
    int n = abs(rel);
    int max_exact = half / 2;
    if (n < max_exact) return bucket + n;
    /* torch: max_exact + (log(n.float() / max_exact) / math.log(max_distance / max_exact)
     *        * (num_buckets - max_exact)).to(long), every tensor op in float32. */
    float ratio = (float)n / (float)max_exact;
    float scaled = logf(ratio) / (float)log((double)max_distance / (double)max_exact);
    int large = max_exact + (int)(scaled * (float)(half - max_exact));
    return bucket + (large < half - 1 ? large : half - 1);
}

void t5_encoder_free(t5_encoder *m)
{
    if (!m) return;
    text_weights_free(m->ctx, m->global, TG_COUNT);
    if (m->blocks)
        for (int l = 0; l < m->cfg->num_layers; l++)
            text_weights_free(m->ctx, m->blocks[l], TB_COUNT);
    for (int i = 0; i < TA_COUNT; i++)
        kn_free(m->ctx, &m->act_buf[i]);
    kn_free(m->ctx, &m->bias);
    st_archive_close(m->archive);
    free(m->blocks);
    free(m->bucket_table);
    free(m);
}

static int t5_load_weights(t5_encoder *m, const char *dir)
{
    const t5_config *c = m->cfg;
    int64_t d = c->d_model, inner = (int64_t)c->num_heads * c->d_kv, ff = c->d_ff;
    char dm[48], vd[128], rb[128], at[160], fw[128];
    snprintf(dm, sizeof dm, "d_model=%d", c->d_model);
    snprintf(vd, sizeof vd, "vocab_size=%d, %s", c->vocab_size, dm);
    snprintf(rb, sizeof rb, "relative_attention_num_buckets=%d, num_heads=%d",
             c->relative_attention_num_buckets, c->num_heads);
    snprintf(at, sizeof at, "num_heads=%d, d_kv=%d, %s", c->num_heads, c->d_kv, dm);
    snprintf(fw, sizeof fw, "d_ff=%d, %s", c->d_ff, dm);
    const text_weight_spec global[TG_COUNT] = {
        [TG_SHARED] = {"shared.weight", 2, {c->vocab_size, d}, vd, 1},
        [TG_EMBED_TOKENS] = {"encoder.embed_tokens.weight", 2, {c->vocab_size, d}, vd, 1},
        [TG_REL_BIAS] = {"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                         2,
                         {c->relative_attention_num_buckets, c->num_heads},
                         rb,
                         0},
        [TG_FINAL] = {"encoder.final_layer_norm.weight", 1, {d}, dm, 0},
    };
    int gated = c->is_gated_act;
#define T5_BLOCK(s) "encoder.block.%d.layer." s
    const text_weight_spec block[TB_COUNT] = {
        [TB_LN0] = {T5_BLOCK("0.layer_norm.weight"), 1, {d}, dm, 0},
        [TB_Q] = {T5_BLOCK("0.SelfAttention.q.weight"), 2, {inner, d}, at, 0},
        [TB_K] = {T5_BLOCK("0.SelfAttention.k.weight"), 2, {inner, d}, at, 0},
        [TB_V] = {T5_BLOCK("0.SelfAttention.v.weight"), 2, {inner, d}, at, 0},
        [TB_O] = {T5_BLOCK("0.SelfAttention.o.weight"), 2, {d, inner}, at, 0},
        [TB_LN1] = {T5_BLOCK("1.layer_norm.weight"), 1, {d}, dm, 0},
        /* A gated FF has wi_0 and wi_1, a plain one wi; the other names must be absent. */
        [TB_WI0] = {T5_BLOCK("1.DenseReluDense.wi_0.weight"), 2, {ff, d}, fw, !gated},
        [TB_WI1] = {T5_BLOCK("1.DenseReluDense.wi_1.weight"), 2, {ff, d}, fw, !gated},
        [TB_WI] = {T5_BLOCK("1.DenseReluDense.wi.weight"), 2, {ff, d}, fw, gated},
        [TB_WO] = {T5_BLOCK("1.DenseReluDense.wo.weight"), 2, {d, ff}, fw, 0},
    };
#undef T5_BLOCK
    int rc = text_weights_load(m->ctx, m->archive, global, TG_COUNT, 0, m->global);
    if (rc < 0) return rc;
    m->embed = m->global[TG_SHARED].data ? &m->global[TG_SHARED] : &m->global[TG_EMBED_TOKENS];
    if (!m->embed->data)
        return err_set(ERR_MISSING, "%s: neither shared.weight nor encoder.embed_tokens.weight",
                       st_archive_path(m->archive));
    m->blocks = xcalloc((size_t)c->num_layers, sizeof *m->blocks);
    for (int l = 0; l < c->num_layers; l++) {
        rc = text_weights_load(m->ctx, m->archive, block, TB_COUNT, l, m->blocks[l]);
        if (rc < 0) return rc;
        if (gated ? m->blocks[l][TB_WI].data != NULL
                  : m->blocks[l][TB_WI0].data != NULL || m->blocks[l][TB_WI1].data != NULL)
            return err_set(ERR_SHAPE,
                           "%s: block %d has %s feed-forward weights but %s/config.json "
                           "says is_gated_act=%s",
                           st_archive_path(m->archive), l,
                           gated ? "plain (wi)" : "gated (wi_0, wi_1)", dir,
                           gated ? "true" : "false");
    }
    size_t nt = (size_t)c->relative_attention_num_buckets * (size_t)c->num_heads;
    m->bucket_table = xmalloc(nt * sizeof *m->bucket_table);
    return kn_read_f32(m->ctx, &m->global[TG_REL_BIAS], m->bucket_table);
}

int t5_encoder_load(kn_ctx *ctx, const char *dir, const t5_config *cfg, t5_encoder **out)
{
    *out = NULL;
    if (cfg->d_model < 1 || cfg->d_kv < 1 || cfg->d_ff < 1 || cfg->num_layers < 1 ||
        cfg->num_heads < 1 || cfg->vocab_size < 1 || cfg->relative_attention_num_buckets < 4 ||
        cfg->relative_attention_max_distance < 1)
        return err_set(ERR_RANGE,
                       "%s/config.json: a size is not positive (or fewer than 4 "
                       "relative attention buckets)",
                       dir);
    t5_encoder *m = xcalloc(1, sizeof *m);
    m->ctx = ctx;
    m->cfg = cfg;
    int rc = text_act_of(cfg->dense_act, &m->act);
    if (rc < 0) rc = err_prefix(rc, "%s/config.json: ", dir);
    if (rc == 0) rc = st_archive_open(dir, "model", &m->archive);
    if (rc == 0) rc = t5_load_weights(m, dir);
    if (rc < 0) {
        t5_encoder_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

static int t5_reserve(t5_encoder *m, int n)
{
    if (n <= m->act_cap) return 0;
    const t5_config *c = m->cfg;
    int64_t inner = (int64_t)c->num_heads * c->d_kv;
    for (int i = 0; i < TA_COUNT; i++) {
        kn_free(m->ctx, &m->act_buf[i]);
        int64_t cols = i <= TA_O ? c->d_model : i <= TA_A ? inner : c->d_ff;
        int64_t shape[3] = {1, n, cols};
        int rc = kn_alloc(m->ctx, &m->act_buf[i], KN_F32, 3, shape);
        if (rc < 0) {
            m->act_cap = 0;
            return rc;
        }
    }
    m->act_cap = n;
    return 0;
}

static int t5_build_bias(t5_encoder *m, int n)
{
    if (m->bias_n == n) return 0;
    const t5_config *c = m->cfg;
    int heads = c->num_heads;
    kn_free(m->ctx, &m->bias);
    m->bias_n = 0;
    size_t nn = (size_t)n * (size_t)n;
    float *host = malloc((size_t)heads * nn * sizeof *host);
    if (!host) return err_set(ERR_NOMEM, "T5 position bias for %d tokens: out of memory", n);
    /* The bucket depends only on key - query, so tabulate it once per offset. */
    int *bucket = xmalloc((size_t)(2 * n - 1) * sizeof *bucket);
    for (int rel = -(n - 1); rel <= n - 1; rel++)
        bucket[rel + n - 1] = t5_relative_bucket(rel, c->relative_attention_num_buckets,
                                                 c->relative_attention_max_distance);
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                host[(size_t)h * nn + (size_t)i * n + j] =
                    m->bucket_table[(size_t)bucket[j - i + n - 1] * heads + h];
    free(bucket);
    int64_t shape[3] = {heads, n, n};
    int rc = kn_alloc(m->ctx, &m->bias, KN_F32, 3, shape);
    if (rc == 0) rc = kn_write(m->ctx, &m->bias, host, (size_t)heads * nn * sizeof *host);
    free(host);
    if (rc < 0) {
        kn_free(m->ctx, &m->bias);
        return rc;
    }
    m->bias_n = n;
    return 0;
}

static int t5_block(t5_encoder *m, const kn_tensor *w, kn_tensor *a)
{
    const t5_config *c = m->cfg;
    kn_ctx *ctx = m->ctx;
    kn_tensor *h = &a[TA_H], *x = &a[TA_X], *o = &a[TA_O], *g = &a[TA_G], *u = &a[TA_U];
    float eps = c->layer_norm_epsilon;
    kn_attn_args args = {.heads = c->num_heads, .scale = 1.0f, .bias = &m->bias};
    int rc;
    if ((rc = kn_rms_norm(ctx, x, h, &w[TB_LN0], eps)) < 0 ||
        (rc = kn_linear(ctx, &a[TA_Q], x, &w[TB_Q], NULL)) < 0 ||
        (rc = kn_linear(ctx, &a[TA_K], x, &w[TB_K], NULL)) < 0 ||
        (rc = kn_linear(ctx, &a[TA_V], x, &w[TB_V], NULL)) < 0 ||
        (rc = kn_attention(ctx, &a[TA_A], &a[TA_Q], &a[TA_K], &a[TA_V], &args)) < 0 ||
        (rc = kn_linear(ctx, o, &a[TA_A], &w[TB_O], NULL)) < 0 || (rc = kn_add(ctx, h, h, o)) < 0 ||
        (rc = kn_rms_norm(ctx, x, h, &w[TB_LN1], eps)) < 0)
        return rc;
    if (c->is_gated_act) {
        if ((rc = kn_linear_act(ctx, g, x, &w[TB_WI0], NULL, m->act)) < 0 ||
            (rc = kn_linear(ctx, u, x, &w[TB_WI1], NULL)) < 0 || (rc = kn_mul(ctx, g, g, u)) < 0)
            return rc;
    } else if ((rc = kn_linear_act(ctx, g, x, &w[TB_WI], NULL, m->act)) < 0) {
        return rc;
    }
    if ((rc = kn_linear(ctx, o, g, &w[TB_WO], NULL)) < 0 || (rc = kn_add(ctx, h, h, o)) < 0)
        return rc;
    return 0;
}

int t5_encoder_forward(t5_encoder *m, const int32_t *ids, int n, kn_tensor *out)
{
    const t5_config *c = m->cfg;
    kn_ctx *ctx = m->ctx;
    if (n < 1) return err_set(ERR_RANGE, "T5 input of %d tokens", n);
    if (out->dtype != KN_F32 || kn_rows(out) != n || kn_cols(out) != c->d_model)
        return err_set(ERR_SHAPE, "t5_encoder_forward: output must be F32 %dx%d", n, c->d_model);
    int rc;
    if ((rc = t5_reserve(m, n)) < 0 || (rc = t5_build_bias(m, n)) < 0)
        return err_prefix(rc, "T5 encoder: ");
    kn_tensor a[TA_COUNT];
    for (int i = 0; i < TA_COUNT; i++) {
        int64_t shape[3] = {1, n, m->act_buf[i].shape[2]};
        a[i] = kn_view(&m->act_buf[i], 0, 3, shape);
    }
    if ((rc = kn_embedding(ctx, &a[TA_H], m->embed, ids, n)) < 0)
        return err_prefix(rc, "T5 embedding: ");
    for (int l = 0; l < c->num_layers; l++)
        if ((rc = t5_block(m, m->blocks[l], a)) < 0) return err_prefix(rc, "T5 block %d: ", l);
    kn_tensor y = kn_reshape(out, 3, a[TA_H].shape);
    if ((rc = kn_rms_norm(ctx, &y, &a[TA_H], &m->global[TG_FINAL], c->layer_norm_epsilon)) < 0)
        return err_prefix(rc, "T5 final norm: ");
    return 0;
}
