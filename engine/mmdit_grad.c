/* The FOCUS controller's side of the transformer (mmdit.h, "capture and input gradient"): the
 * capture hooks the forward pass calls, and the reverse pass that turns d cost / d maps into
 * d cost / d latent.
 *
 * The capture keeps, for one sample of the batch, each block's two inputs (image and text
 * tokens) and its joint attention's maps. The reverse pass walks the blocks from the last to
 * the first; for each it recomputes the forward from the saved inputs with every intermediate
 * it needs kept (activation checkpointing per block: one block's working set at a time), then
 * applies the input gradients of its ops in reverse order. The last block's outputs feed only
 * norm_out and proj_out, which no map depends on: its reverse pass starts from the map term
 * alone. The modulation vectors depend on t and the pooled text only and are constants here,
 * as are the text inputs (the context embedder's output needs no gradient). */
#include "engine/mmdit_impl.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "kernels/kn_grad.h"
#include "kernels/kn_image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The reverse pass's buffers for one sample (B = 1), in the compute dtype unless noted. */
enum {
    BUF_NTOK,
    BUF_NCTX,
    BUF_QKV_I,
    BUF_QKV_T,
    BUF_Q,
    BUF_K,
    BUF_V,
    BUF_O, /* joint attention */
    BUF_NTOK2,
    BUF_QKV2,
    BUF_Q2,
    BUF_K2,
    BUF_V2,
    BUF_O2, /* attn2 */
    BUF_TOK2,
    BUF_CX1,
    BUF_HP,
    BUF_HPC, /* FF inputs and pre-activations */
    BUF_DT,
    BUF_DC,
    BUF_TN,
    BUF_TN2,
    BUF_TS,
    BUF_DH,
    BUF_DQKV,
    BUF_DQ,
    BUF_DK,
    BUF_DV,
    BUF_DO,
    BUF_MOD,
    BUF_MODC,
    BUF_DX,
    N_BUFS
};

struct mmdit_focus {
    mmdit *m;
    int n, sample;
    int32_t *tok, *sel; /* text rows; their key indices N + tok[j] in the joint sequence */
    int64_t N, S, gh, gw;
    kn_tensor lse, lse2; /* [B, H, L] of the captured forward; [1, H, N] for attn2 (F32) */
    kn_tensor maps;      /* [blocks, n, N] F32 */
    kn_tensor inputs;    /* [blocks, N + S, D]: each block's image then text input rows */
    kn_tensor tact;      /* [1, D] SiLU(temb) of the sample */
    kn_tensor dmaps;     /* [blocks, n, N] F32 */
    kn_tensor buf[N_BUFS];
    float *maps_host;
    int64_t cap_b, cap_n, cap_s; /* sizes the tensors are allocated for */
};

int mmdit_focus_create(mmdit *m, const int32_t *tok, int n, int sample, mmdit_focus **out)
{
    if (n < 1 || !tok) return err_set(ERR_INVALID, "focus capture: no text rows");
    if (sample < 0) return err_set(ERR_RANGE, "focus capture: sample %d", sample);
    mmdit_focus *f = xcalloc(1, sizeof *f);
    f->m = m, f->n = n, f->sample = sample;
    f->tok = xmalloc((size_t)n * sizeof *f->tok);
    f->sel = xmalloc((size_t)n * sizeof *f->sel);
    memcpy(f->tok, tok, (size_t)n * sizeof *tok);
    *out = f;
    return 0;
}

static void free_tensors(kn_ctx *ctx, mmdit_focus *f)
{
    kn_tensor *all[] = {&f->lse, &f->lse2, &f->maps, &f->inputs, &f->tact, &f->dmaps};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        kn_free(ctx, all[i]);
    for (int i = 0; i < N_BUFS; i++)
        kn_free(ctx, &f->buf[i]);
    f->cap_b = f->cap_n = f->cap_s = 0;
}

int mmdit_focus_set_sample(mmdit_focus *f, int sample)
{
    if (sample < 0) return err_set(ERR_RANGE, "focus capture: sample %d", sample);
    f->sample = sample;
    return 0;
}

void mmdit_focus_free(mmdit_focus *f)
{
    if (!f) return;
    free_tensors(f->m->ctx, f);
    free(f->tok);
    free(f->sel);
    free(f->maps_host);
    free(f);
}

/* ---- capture ---- */

/* One tensor of the capture or the reverse pass: where it goes, its dtype and 2-D shape. */
enum { MAX_FOCUS_TENSORS = 6 + N_BUFS }; /* lse, lse2, maps, dmaps, inputs, tact, buf */
typedef struct focus_tensor {
    kn_tensor *t;
    kn_dtype dt;
    int64_t rows, cols;
} focus_tensor;

/* The tensors of the capture and the reverse pass for batch B, N image and S text tokens, into
 * want (f may be a blank capture of n rows when only the sizes are asked). Returns the count. */
static int focus_tensors(const mmdit *m, mmdit_focus *f, int64_t B, int64_t N, int64_t S,
                         focus_tensor *want)
{
    const int64_t D = m->D, H = m->heads, L = N + S, blocks = m->cfg.num_layers;
    const int64_t R = N > S ? N : S, F = m->ffdim;
    const int64_t patches = N * m->cfg.in_channels * m->cfg.patch_size * m->cfg.patch_size;
    const kn_dtype dt = m->act;
    const focus_tensor all[] = {
        {&f->lse, KN_F32, B * H, L},          {&f->lse2, KN_F32, H, N},
        {&f->maps, KN_F32, blocks * f->n, N}, {&f->dmaps, KN_F32, blocks * f->n, N},
        {&f->inputs, dt, blocks * L, D},      {&f->tact, dt, 1, D},
        {&f->buf[BUF_NTOK], dt, N, D},        {&f->buf[BUF_NCTX], dt, S, D},
        {&f->buf[BUF_QKV_I], dt, N, 3 * D},   {&f->buf[BUF_QKV_T], dt, S, 3 * D},
        {&f->buf[BUF_Q], dt, L, D},           {&f->buf[BUF_K], dt, L, D},
        {&f->buf[BUF_V], dt, L, D},           {&f->buf[BUF_O], dt, L, D},
        {&f->buf[BUF_NTOK2], dt, N, D},       {&f->buf[BUF_QKV2], dt, N, 3 * D},
        {&f->buf[BUF_Q2], dt, N, D},          {&f->buf[BUF_K2], dt, N, D},
        {&f->buf[BUF_V2], dt, N, D},          {&f->buf[BUF_O2], dt, N, D},
        {&f->buf[BUF_TOK2], dt, N, D},        {&f->buf[BUF_CX1], dt, S, D},
        {&f->buf[BUF_HP], dt, N, F},          {&f->buf[BUF_HPC], dt, S, F},
        {&f->buf[BUF_DT], dt, N, D},          {&f->buf[BUF_DC], dt, S, D},
        {&f->buf[BUF_TN], dt, N, D},          {&f->buf[BUF_TN2], dt, N, D},
        {&f->buf[BUF_TS], dt, S, D},          {&f->buf[BUF_DH], dt, R, F},
        {&f->buf[BUF_DQKV], dt, R, 3 * D},    {&f->buf[BUF_DQ], dt, L, D},
        {&f->buf[BUF_DK], dt, L, D},          {&f->buf[BUF_DV], dt, L, D},
        {&f->buf[BUF_DO], dt, L, D},          {&f->buf[BUF_MOD], dt, 1, 9 * D},
        {&f->buf[BUF_MODC], dt, 1, 6 * D},    {&f->buf[BUF_DX], dt, 1, patches},
    };
    enum { N_TENSORS = sizeof all / sizeof all[0] };
    _Static_assert((int)N_TENSORS == (int)MAX_FOCUS_TENSORS, "every tensor of the capture, once");
    memcpy(want, all, sizeof all);
    return N_TENSORS;
}

uint64_t mmdit_focus_bytes(const mmdit *m, int n, int64_t B, int64_t h, int64_t w, int64_t S)
{
    const int64_t p = m->cfg.patch_size;
    mmdit_focus blank = {.n = n};
    focus_tensor want[MAX_FOCUS_TENSORS];
    const int count = focus_tensors(m, &blank, B, (h / p) * (w / p), S, want);
    uint64_t bytes = 0;
    for (int i = 0; i < count; i++)
        bytes += (uint64_t)(want[i].rows * want[i].cols) * kn_dtype_size(want[i].dt);
    return bytes;
}

/* Every tensor of the capture and the reverse pass for batch B, N image and S text tokens. */
static int ensure(mmdit *m, mmdit_focus *f, int64_t B, int64_t N, int64_t S)
{
    if (B == f->cap_b && N == f->cap_n && S == f->cap_s) return 0;
    free_tensors(m->ctx, f);
    focus_tensor want[MAX_FOCUS_TENSORS];
    const int count = focus_tensors(m, f, B, N, S, want);
    for (int i = 0; i < count; i++) {
        int rc =
            kn_alloc(m->ctx, want[i].t, want[i].dt, 2, (int64_t[]){want[i].rows, want[i].cols});
        if (rc < 0) {
            free_tensors(m->ctx, f);
            return err_prefix(rc,
                              "focus capture for %lld image and %lld text tokens: ", (long long)N,
                              (long long)S);
        }
    }
    const int64_t blocks = m->cfg.num_layers;
    f->maps_host = xrealloc(f->maps_host, (size_t)(blocks * f->n * N) * sizeof *f->maps_host);
    f->cap_b = B, f->cap_n = N, f->cap_s = S;
    return 0;
}

kn_tensor *mmdit_focus_lse(mmdit *m, const acts *a)
{
    mmdit_focus *f = m->focus;
    if (!f) return NULL;
    f->lse = kn_reshape(&f->lse, 3, (int64_t[]){a->B, m->heads, a->L});
    return &f->lse;
}

int mmdit_focus_save_inputs(mmdit *m, int i, const acts *a)
{
    mmdit_focus *f = m->focus;
    if (!f) return 0;
    const int64_t D = m->D, L = a->N + a->S;
    if (i == 0) {
        if (f->sample >= a->B)
            return err_set(ERR_RANGE, "focus capture of sample %d in a batch of %lld", f->sample,
                           (long long)a->B);
        for (int j = 0; j < f->n; j++)
            if (f->tok[j] < 0 || f->tok[j] >= a->S)
                return err_set(ERR_RANGE, "focus capture: text row %d of %lld", f->tok[j],
                               (long long)a->S);
        int rc = ensure(m, f, a->B, a->N, a->S);
        if (rc < 0) return rc;
        for (int j = 0; j < f->n; j++)
            f->sel[j] = (int32_t)a->N + f->tok[j];
        f->N = a->N, f->S = a->S;
        kn_tensor src = kn_view(&a->tact, f->sample * D, 2, (int64_t[]){1, D});
        if ((rc = kn_copy(m->ctx, &f->tact, &src)) < 0) return rc;
    }
    kn_tensor img = kn_view(&f->inputs, (int64_t)i * L * D, 2, (int64_t[]){a->N, D});
    kn_tensor txt = kn_view(&f->inputs, ((int64_t)i * L + a->N) * D, 2, (int64_t[]){a->S, D});
    kn_tensor tok = mmdit_rows(&a->tok, f->sample, 0, a->N);
    kn_tensor cx = mmdit_rows(&a->cx, f->sample, 0, a->S);
    int rc = kn_copy(m->ctx, &img, &tok);
    return rc < 0 ? rc : kn_copy(m->ctx, &txt, &cx);
}

/* The maps of sample b's rows of [B, L, D] q and k and [B, H, L] lse into block i's maps. */
static int block_maps(mmdit *m, mmdit_focus *f, int i, const kn_tensor *q, const kn_tensor *k,
                      const kn_tensor *lse, int64_t b)
{
    const int64_t L = q->shape[1], D = m->D, H = m->heads, N = f->N;
    kn_tensor qb = kn_view(q, b * L * D, 3, (int64_t[]){1, L, D});
    kn_tensor kb = kn_view(k, b * L * D, 3, (int64_t[]){1, L, D});
    kn_tensor lb = kn_view(lse, b * H * L, 3, (int64_t[]){1, H, L});
    kn_tensor mb = kn_view(&f->maps, (int64_t)i * f->n * N, 3, (int64_t[]){1, f->n, N});
    return kn_attention_maps(m->ctx, &mb, &qb, &kb, &lb, f->sel, f->n, N, (int)H,
                             (float)(1.0 / sqrt((double)m->head_dim)));
}

int mmdit_focus_save_maps(mmdit *m, int i, const acts *a)
{
    mmdit_focus *f = m->focus;
    return f ? block_maps(m, f, i, &a->q, &a->k, &f->lse, f->sample) : 0;
}

int mmdit_forward_focus(mmdit *m, const kn_tensor *x, const float *t, const kn_tensor *ctx_in,
                        const kn_tensor *pooled, kn_tensor *out, mmdit_focus *f)
{
    m->focus = f;
    int rc = mmdit_forward(m, x, t, ctx_in, pooled, NULL, 0, out);
    m->focus = NULL;
    if (rc < 0) return rc;
    const int64_t p = m->cfg.patch_size;
    f->gh = x->shape[2] / p, f->gw = x->shape[3] / p;
    return kn_read_f32(m->ctx, &f->maps, f->maps_host);
}

const float *mmdit_focus_maps(const mmdit_focus *f, int64_t *gh, int64_t *gw)
{
    *gh = f->gh, *gw = f->gw;
    return f->maps_host;
}

/* ---- the reverse pass ---- */

/* A [rows, cols] buffer as [1, rows, cols] with rows of the current shape. */
static kn_tensor rows3(const kn_tensor *t, int64_t rows, int64_t cols)
{
    return kn_view(t, 0, 3, (int64_t[]){1, rows, cols});
}

/* Block bl's forward on the saved inputs of block i, keeping what its reverse pass reads. */
typedef struct block_state {
    const block *bl;
    int64_t N, S, L;
    kn_tensor tok0, cx0, mod, modc;
    kn_tensor ntok, nctx, qkv_i, qkv_t, q, k, v, o;
    kn_tensor ntok2, qkv2, q2, k2, v2, o2;
    kn_tensor tok2, cx1, hp, hpc;
} block_state;

static kn_attn_args attn_args(const mmdit *m, kn_tensor *lse)
{
    return (kn_attn_args){
        .heads = (int)m->heads, .scale = (float)(1.0 / sqrt((double)m->head_dim)), .lse = lse};
}

static int qkv_forward(mmdit *m, const attn_stream *s, const kn_tensor *x, kn_tensor *qkv,
                       int64_t row0, kn_tensor *q, kn_tensor *k, kn_tensor *v)
{
    const kn_tensor *nq = s->norm_q.data ? &s->norm_q : NULL, *nk = nq ? &s->norm_k : NULL;
    int rc = kn_linear(m->ctx, qkv, x, &s->qkv.w, &s->qkv.b);
    return rc < 0 ? rc : kn_qkv_split(m->ctx, q, k, v, row0, qkv, (int)m->heads, nq, nk, MMDIT_EPS);
}

/* x = x0 + gate * (in . w^T + b), with y a scratch of x's shape. */
static int gated(mmdit *m, kn_tensor *x, const kn_tensor *x0, const kn_tensor *in, const lin *l,
                 kn_tensor *y, const kn_tensor *mod, int gate)
{
    int rc;
    if (x != x0 && (rc = kn_copy(m->ctx, x, x0)) < 0) return rc;
    if ((rc = kn_linear(m->ctx, y, in, &l->w, &l->b)) < 0) return rc;
    return kn_gate_add(m->ctx, x, y, mod, gate);
}

/* n = LN-modulate(x), hp = n . w1^T + b1: a feed-forward's input and pre-activation. */
static int ff_forward(mmdit *m, const kn_tensor *x, kn_tensor *n, kn_tensor *hp,
                      const kn_tensor *mod, const lin *f1)
{
    int rc = kn_ln_modulate(m->ctx, n, x, mod, 3, 4, MMDIT_EPS);
    return rc < 0 ? rc : kn_linear(m->ctx, hp, n, &f1->w, &f1->b);
}

static int recompute(mmdit *m, mmdit_focus *f, int i, block_state *st)
{
    const block *bl = &m->blocks[i];
    const int64_t N = f->N, S = f->S, L = N + S, D = m->D, F = m->ffdim;
    kn_tensor *b = f->buf;
    *st = (block_state){.bl = bl, .N = N, .S = S, .L = L};
    st->tok0 = kn_view(&f->inputs, (int64_t)i * L * D, 3, (int64_t[]){1, N, D});
    st->cx0 = kn_view(&f->inputs, ((int64_t)i * L + N) * D, 3, (int64_t[]){1, S, D});
    st->mod = kn_view(&b[BUF_MOD], 0, 3, (int64_t[]){1, bl->dual ? 9 : 6, D});
    st->modc = kn_view(&b[BUF_MODC], 0, 3, (int64_t[]){1, bl->last ? 2 : 6, D});
    kn_tensor modf = kn_reshape(&st->mod, 2, (int64_t[]){1, st->mod.shape[1] * D});
    kn_tensor modcf = kn_reshape(&st->modc, 2, (int64_t[]){1, st->modc.shape[1] * D});
    st->ntok = rows3(&b[BUF_NTOK], N, D), st->nctx = rows3(&b[BUF_NCTX], S, D);
    st->qkv_i = rows3(&b[BUF_QKV_I], N, 3 * D), st->qkv_t = rows3(&b[BUF_QKV_T], S, 3 * D);
    st->q = rows3(&b[BUF_Q], L, D), st->k = rows3(&b[BUF_K], L, D);
    st->v = rows3(&b[BUF_V], L, D), st->o = rows3(&b[BUF_O], L, D);
    kn_tensor lse = kn_view(&f->lse, 0, 3, (int64_t[]){1, m->heads, L});
    kn_attn_args args = attn_args(m, &lse);
    int rc;
    if ((rc = kn_linear_rows(m->ctx, &modf, &f->tact, &bl->norm1.w, &bl->norm1.b)) < 0 ||
        (rc = kn_linear_rows(m->ctx, &modcf, &f->tact, &bl->norm1_ctx.w, &bl->norm1_ctx.b)) < 0 ||
        (rc = kn_ln_modulate(m->ctx, &st->ntok, &st->tok0, &st->mod, 0, 1, MMDIT_EPS)) < 0 ||
        (rc = kn_ln_modulate(m->ctx, &st->nctx, &st->cx0, &st->modc, bl->last ? 1 : 0,
                             bl->last ? 0 : 1, MMDIT_EPS)) < 0 ||
        (rc = qkv_forward(m, &bl->img, &st->ntok, &st->qkv_i, 0, &st->q, &st->k, &st->v)) < 0 ||
        (rc = qkv_forward(m, &bl->txt, &st->nctx, &st->qkv_t, N, &st->q, &st->k, &st->v)) < 0 ||
        (rc = kn_attention(m->ctx, &st->o, &st->q, &st->k, &st->v, &args)) < 0)
        return rc;
    if (bl->last) return 0; /* nothing after the attention reaches a map */

    kn_tensor oi = kn_view(&st->o, 0, 3, (int64_t[]){1, N, D});
    kn_tensor oc = kn_view(&st->o, N * D, 3, (int64_t[]){1, S, D});
    kn_tensor scratch_n = rows3(&b[BUF_TN], N, D), scratch_s = rows3(&b[BUF_TS], S, D);
    st->tok2 = rows3(&b[BUF_TOK2], N, D), st->cx1 = rows3(&b[BUF_CX1], S, D);
    st->hp = rows3(&b[BUF_HP], N, F), st->hpc = rows3(&b[BUF_HPC], S, F);
    if ((rc = gated(m, &st->tok2, &st->tok0, &oi, &bl->img.out, &scratch_n, &st->mod, 2)) < 0)
        return rc;
    if (bl->dual) {
        st->ntok2 = rows3(&b[BUF_NTOK2], N, D), st->qkv2 = rows3(&b[BUF_QKV2], N, 3 * D);
        st->q2 = rows3(&b[BUF_Q2], N, D), st->k2 = rows3(&b[BUF_K2], N, D);
        st->v2 = rows3(&b[BUF_V2], N, D), st->o2 = rows3(&b[BUF_O2], N, D);
        f->lse2 = kn_reshape(&f->lse2, 3, (int64_t[]){1, m->heads, N});
        kn_attn_args args2 = attn_args(m, &f->lse2);
        if ((rc = kn_ln_modulate(m->ctx, &st->ntok2, &st->tok0, &st->mod, 6, 7, MMDIT_EPS)) < 0 ||
            (rc = qkv_forward(m, &bl->img2, &st->ntok2, &st->qkv2, 0, &st->q2, &st->k2, &st->v2)) <
                0 ||
            (rc = kn_attention(m->ctx, &st->o2, &st->q2, &st->k2, &st->v2, &args2)) < 0 ||
            (rc = gated(m, &st->tok2, &st->tok2, &st->o2, &bl->img2.out, &scratch_n, &st->mod, 8)) <
                0)
            return rc;
    }
    kn_tensor n3 = rows3(&b[BUF_NTOK], N, D), nc3 = rows3(&b[BUF_NCTX], S, D);
    if ((rc = ff_forward(m, &st->tok2, &n3, &st->hp, &st->mod, &bl->ff1)) < 0 ||
        (rc = gated(m, &st->cx1, &st->cx0, &oc, &bl->txt.out, &scratch_s, &st->modc, 2)) < 0)
        return rc;
    return ff_forward(m, &st->cx1, &nc3, &st->hpc, &st->modc, &bl->ffc1);
}

/* d += the gradient through a feed-forward x -> x + gate * FF(LN-modulate(x)) of its output
 * gradient d (x the FF's input, hp its pre-activation; t a [rows, D] and dh a [rows, F]
 * scratch). */
static int ff_backward(mmdit *m, kn_tensor *d, const kn_tensor *x, const kn_tensor *hp,
                       const kn_tensor *mod, const lin *f1, const lin *f2, kn_tensor *t,
                       kn_tensor *dh)
{
    int rc;
    if ((rc = kn_gate_grad(m->ctx, t, d, mod, 5)) < 0 ||
        (rc = kn_linear_grad(m->ctx, dh, t, &f2->w)) < 0 ||
        (rc = kn_activate_grad(m->ctx, dh, dh, hp, KN_ACT_GELU_TANH)) < 0 ||
        (rc = kn_linear_grad(m->ctx, t, dh, &f1->w)) < 0 ||
        (rc = kn_ln_modulate_grad(m->ctx, t, t, x, mod, 4, MMDIT_EPS)) < 0)
        return rc;
    return kn_add(m->ctx, d, d, t);
}

/* t = the gradient reaching x through LN-modulate(x) -> q/k/v (rows row0.. of dq, dk, dv):
 * the split's norms, the joined product, the LayerNorm under modulation. */
static int qkv_backward(mmdit *m, const attn_stream *s, const kn_tensor *dq, const kn_tensor *dk,
                        const kn_tensor *dv, int64_t row0, const kn_tensor *qkv, const kn_tensor *x,
                        const kn_tensor *mod, int scale_idx, kn_tensor *t, kn_tensor *dqkv)
{
    const kn_tensor *nq = s->norm_q.data ? &s->norm_q : NULL, *nk = nq ? &s->norm_k : NULL;
    int rc;
    if ((rc = kn_qkv_split_grad(m->ctx, dqkv, dq, dk, dv, row0, qkv, (int)m->heads, nq, nk,
                                MMDIT_EPS)) < 0 ||
        (rc = kn_linear_grad(m->ctx, t, dqkv, &s->qkv.w)) < 0)
        return rc;
    return kn_ln_modulate_grad(m->ctx, t, t, x, mod, scale_idx, MMDIT_EPS);
}

/* dT, dC: the gradients of block i's image and text outputs on entry (unused for the last
 * block, whose outputs reach no map), of its inputs on return. */
static int block_backward(mmdit *m, mmdit_focus *f, int i, const block_state *st)
{
    const block *bl = st->bl;
    const int64_t N = st->N, S = st->S, L = st->L, D = m->D, F = m->ffdim;
    kn_tensor *b = f->buf;
    kn_tensor dT = rows3(&b[BUF_DT], N, D), dC = rows3(&b[BUF_DC], S, D);
    kn_tensor tn = rows3(&b[BUF_TN], N, D), tn2 = rows3(&b[BUF_TN2], N, D);
    kn_tensor ts = rows3(&b[BUF_TS], S, D);
    kn_tensor dq = rows3(&b[BUF_DQ], L, D), dk = rows3(&b[BUF_DK], L, D);
    kn_tensor dv = rows3(&b[BUF_DV], L, D), dO = rows3(&b[BUF_DO], L, D);
    kn_tensor doi = kn_view(&dO, 0, 3, (int64_t[]){1, N, D});
    kn_tensor doc = kn_view(&dO, N * D, 3, (int64_t[]){1, S, D});
    int rc;
    if (!bl->last) {
        kn_tensor dhs = rows3(&b[BUF_DH], S, F), dhn = rows3(&b[BUF_DH], N, F);
        if ((rc = ff_backward(m, &dC, &st->cx1, &st->hpc, &st->modc, &bl->ffc1, &bl->ffc2, &ts,
                              &dhs)) < 0 ||
            (rc = ff_backward(m, &dT, &st->tok2, &st->hp, &st->mod, &bl->ff1, &bl->ff2, &tn,
                              &dhn)) < 0)
            return rc;
        if (bl->dual) {
            /* tok2 = tok1 + gate8 * attn2(LN-modulate(tok0)): its part of d tok0 waits in tn2. */
            kn_tensor dq2 = rows3(&b[BUF_DQ], N, D), dk2 = rows3(&b[BUF_DK], N, D);
            kn_tensor dv2 = rows3(&b[BUF_DV], N, D);
            kn_tensor dqkv = rows3(&b[BUF_DQKV], N, 3 * D);
            kn_attn_args args2 = attn_args(m, &f->lse2);
            if ((rc = kn_gate_grad(m->ctx, &tn, &dT, &st->mod, 8)) < 0 ||
                (rc = kn_linear_grad(m->ctx, &doi, &tn, &bl->img2.out.w)) < 0 ||
                (rc = kn_attention_grad(m->ctx, &dq2, &dk2, &dv2, &doi, &st->q2, &st->k2, &st->v2,
                                        &st->o2, &args2, NULL)) < 0 ||
                (rc = qkv_backward(m, &bl->img2, &dq2, &dk2, &dv2, 0, &st->qkv2, &st->tok0,
                                   &st->mod, 7, &tn2, &dqkv)) < 0)
                return rc;
        }
        /* The attention's outputs, through the gated residuals and output projections. */
        if ((rc = kn_gate_grad(m->ctx, &tn, &dT, &st->mod, 2)) < 0 ||
            (rc = kn_linear_grad(m->ctx, &doi, &tn, &bl->img.out.w)) < 0 ||
            (rc = kn_gate_grad(m->ctx, &ts, &dC, &st->modc, 2)) < 0 ||
            (rc = kn_linear_grad(m->ctx, &doc, &ts, &bl->txt.out.w)) < 0 ||
            (bl->dual && (rc = kn_add(m->ctx, &dT, &dT, &tn2)) < 0))
            return rc;
    }
    kn_tensor lse = kn_view(&f->lse, 0, 3, (int64_t[]){1, m->heads, L});
    kn_attn_args args = attn_args(m, &lse);
    kn_tensor dmaps = kn_view(&f->dmaps, (int64_t)i * f->n * N, 3, (int64_t[]){1, f->n, N});
    const kn_map_grad map = {.dmaps = &dmaps, .sel = f->sel, .n_sel = f->n, .rows = N};
    kn_tensor dqkv_i = rows3(&b[BUF_DQKV], N, 3 * D), dqkv_t = rows3(&b[BUF_DQKV], S, 3 * D);
    if ((rc = kn_attention_grad(m->ctx, &dq, &dk, &dv, bl->last ? NULL : &dO, &st->q, &st->k,
                                &st->v, &st->o, &args, &map)) < 0 ||
        (rc = qkv_backward(m, &bl->img, &dq, &dk, &dv, 0, &st->qkv_i, &st->tok0, &st->mod, 1,
                           bl->last ? &dT : &tn, &dqkv_i)) < 0 ||
        (rc = qkv_backward(m, &bl->txt, &dq, &dk, &dv, N, &st->qkv_t, &st->cx0, &st->modc,
                           bl->last ? 0 : 1, bl->last ? &dC : &ts, &dqkv_t)) < 0)
        return rc;
    if (bl->last) return 0;
    if ((rc = kn_add(m->ctx, &dT, &dT, &tn)) < 0) return rc;
    return kn_add(m->ctx, &dC, &dC, &ts);
}

int mmdit_focus_grad(mmdit *m, mmdit_focus *f, const float *dmaps, kn_tensor *dx)
{
    const mmdit_config *c = &m->cfg;
    const int64_t p = c->patch_size;
    char s1[64];
    if (!f->cap_n) return err_set(ERR_INVALID, "focus gradient: no captured forward");
    if (dx->ndim != 4 || dx->shape[0] != 1 || dx->shape[1] != c->in_channels ||
        dx->shape[2] != f->gh * p || dx->shape[3] != f->gw * p || dx->dtype != KN_F32)
        return err_set(ERR_SHAPE, "focus gradient: dx %s %s, expected [1, %d, %lld, %lld] F32",
                       kn_shape_str(dx, s1, sizeof s1), kn_dtype_name(dx->dtype), c->in_channels,
                       (long long)(f->gh * p), (long long)(f->gw * p));
    f->dmaps = kn_reshape(&f->dmaps, 2, (int64_t[]){(int64_t)c->num_layers * f->n, f->N});
    int rc = kn_write_f32(m->ctx, &f->dmaps, dmaps);
    for (int i = c->num_layers - 1; rc == 0 && i >= 0; i--) {
        block_state st;
        if ((rc = recompute(m, f, i, &st)) < 0 || (rc = block_backward(m, f, i, &st)) < 0)
            rc = err_prefix(rc, "focus gradient, transformer block %d: ", i);
    }
    if (rc < 0) return rc;
    /* The position embedding is a constant: the image tokens' gradient goes to the patches. */
    kn_tensor dT = rows3(&f->buf[BUF_DT], f->N, m->D);
    if (m->act == KN_F32) return kn_patch_embed_grad(m->ctx, dx, &dT, &m->patch.w, (int)p);
    kn_tensor d16 = kn_view(&f->buf[BUF_DX], 0, 4, dx->shape);
    if ((rc = kn_patch_embed_grad(m->ctx, &d16, &dT, &m->patch.w, (int)p)) < 0) return rc;
    return kn_copy(m->ctx, dx, &d16);
}
