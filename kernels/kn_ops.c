/* Front-ends of the text and transformer ops (kn_ops.h): argument checks, then dispatch to the
 * backend. Shape errors name the op and the tensors and show their shapes. */
#include "kernels/cpu/cpu_ops.h"
#include "kernels/kn_check.h"

#include "common/err.h"

/* The checks kn_linear, kn_linear_act and kn_linear_rows share. */
static int check_linear(kn_ctx *ctx, const char *op, kn_tensor *y, const kn_tensor *x,
                        const kn_tensor *w, const kn_tensor *b)
{
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    KN_TRY(kn_check_weight(ctx, op, "w", w, 2));
    if (x->ndim < 1 || kn_cols(x) != w->shape[1]) {
        char sx[96], sw[96];
        return err_set(ERR_SHAPE, "%s: x %s does not match w %s (in features)", op,
                       kn_shape_str(x, sx, sizeof sx), kn_shape_str(w, sw, sizeof sw));
    }
    kn_tensor want = *x;
    want.shape[want.ndim - 1] = w->shape[0];
    KN_TRY(kn_check_shape(op, "y", y, want.ndim, want.shape));
    KN_TRY(kn_check_vec(ctx, op, "b", b, w->shape[0]));
    return kn_check_no_alias(op, "y", y, "x", x);
}

int kn_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *b)
{
    KN_TRY(check_linear(ctx, "kn_linear", y, x, w, b));
    return KN_DISPATCH(ctx, linear, y, x, w, b);
}

int kn_linear_act(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                  const kn_tensor *b, kn_act act)
{
    KN_TRY(check_linear(ctx, "kn_linear_act", y, x, w, b));
    if (act < KN_ACT_SILU || act > KN_ACT_QUICK_GELU)
        return err_set(ERR_INVALID, "kn_linear_act: activation %d is not a kn_act", (int)act);
    return KN_DISPATCH(ctx, linear_act, y, x, w, b, act);
}

int kn_linear_rows(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b)
{
    KN_TRY(check_linear(ctx, "kn_linear_rows", y, x, w, b));
    return KN_DISPATCH(ctx, linear_rows, y, x, w, b);
}

int kn_embedding(kn_ctx *ctx, kn_tensor *y, const kn_tensor *table, const int32_t *ids, int n)
{
    static const char op[] = "kn_embedding";
    KN_TRY(kn_check_weight(ctx, op, "table", table, 2));
    KN_TRY(kn_check_act(ctx, op, "y", y, NULL));
    if (n < 0 || (n > 0 && !ids))
        return err_set(ERR_INVALID, "kn_embedding: %d ids%s", n, ids ? "" : " at NULL");
    int64_t want[2] = {n, table->shape[1]};
    if (kn_rows(y) != n || kn_cols(y) != table->shape[1])
        KN_TRY(kn_check_shape(op, "y", y, 2, want));
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= table->shape[0])
            return err_set(ERR_RANGE, "kn_embedding: id %d at position %d outside the %lld rows",
                           ids[i], i, (long long)table->shape[0]);
    return KN_DISPATCH(ctx, embedding, y, table, ids, n);
}

/* The checks every norm over the last dimension shares. */
static int check_row_norm(kn_ctx *ctx, const char *op, kn_tensor *y, const kn_tensor *x,
                          const kn_tensor *w, const kn_tensor *b)
{
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    KN_TRY(kn_check_same(op, "y", y, "x", x));
    KN_TRY(kn_check_vec(ctx, op, "w", w, kn_cols(x)));
    return kn_check_vec(ctx, op, "b", b, kn_cols(x));
}

int kn_layer_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                  const kn_tensor *b, float eps)
{
    KN_TRY(check_row_norm(ctx, "kn_layer_norm", y, x, w, b));
    return KN_DISPATCH(ctx, layer_norm, y, x, w, b, eps);
}

int kn_rms_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps)
{
    KN_TRY(check_row_norm(ctx, "kn_rms_norm", y, x, w, NULL));
    return KN_DISPATCH(ctx, rms_norm, y, x, w, eps);
}

int kn_qkv_split(kn_ctx *ctx, kn_tensor *q, kn_tensor *k, kn_tensor *v, int64_t row0,
                 const kn_tensor *qkv, int heads, const kn_tensor *q_norm, const kn_tensor *k_norm,
                 float eps)
{
    static const char *const names[3] = {"q", "k", "v"};
    const kn_tensor *const parts[3] = {q, k, v};
    KN_TRY(kn_check_qkv(ctx, "kn_qkv_split", names, parts, row0, qkv, heads, q_norm, k_norm));
    return KN_DISPATCH(ctx, qkv_split, q, k, v, row0, qkv, heads, q_norm, k_norm, eps);
}

int kn_activate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act)
{
    static const char op[] = "kn_activate";
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    KN_TRY(kn_check_same(op, "y", y, "x", x));
    if (act != KN_ACT_SILU && act != KN_ACT_GELU_ERF && act != KN_ACT_GELU_TANH &&
        act != KN_ACT_QUICK_GELU)
        return err_set(ERR_INVALID, "kn_activate: unknown activation %d", (int)act);
    return KN_DISPATCH(ctx, activate, y, x, act);
}

/* The checks of the binary elementwise ops: three activations of one shape and dtype. */
static int check_binary(kn_ctx *ctx, const char *op, const kn_tensor *y, const kn_tensor *a,
                        const kn_tensor *b)
{
    KN_TRY(kn_check_act(ctx, op, "a", a, NULL));
    KN_TRY(kn_check_act(ctx, op, "b", b, a));
    KN_TRY(kn_check_act(ctx, op, "y", y, a));
    KN_TRY(kn_check_same(op, "a", a, "b", b));
    return kn_check_same(op, "y", y, "a", a);
}

int kn_add(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    KN_TRY(check_binary(ctx, "kn_add", y, a, b));
    return KN_DISPATCH(ctx, add, y, a, b);
}

int kn_sub(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    KN_TRY(check_binary(ctx, "kn_sub", y, a, b));
    return KN_DISPATCH(ctx, sub, y, a, b);
}

int kn_mul(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    KN_TRY(check_binary(ctx, "kn_mul", y, a, b));
    return KN_DISPATCH(ctx, mul, y, a, b);
}

int kn_add_scaled(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, float s, const kn_tensor *b)
{
    KN_TRY(check_binary(ctx, "kn_add_scaled", y, a, b));
    return KN_DISPATCH(ctx, add_scaled, y, a, s, b);
}

int kn_scale(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s)
{
    static const char op[] = "kn_scale";
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    KN_TRY(kn_check_same(op, "y", y, "x", x));
    return KN_DISPATCH(ctx, scale, y, x, s);
}

/* Whether the backend applies args' q/k RMSNorm inside its attention for these operands. */
static int attention_folds_norm(const kn_ctx *ctx, const kn_tensor *o, const kn_tensor *q,
                                const kn_tensor *k, const kn_tensor *v, const kn_attn_args *args)
{
#ifdef FOCUS_HAVE_CUDA
    if (ctx->device == KN_CUDA) return cuda_attention_folds_norm(o, q, k, v, args);
#else
    (void)ctx, (void)o, (void)q, (void)k, (void)v, (void)args;
#endif
    return 0;
}

/* The q/k RMSNorm where the backend does not fold it: normalised copies, then the product. */
static int attention_norm_first(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                                const kn_tensor *v, const kn_attn_args *args)
{
    int64_t Dh = q->shape[2] / args->heads;
    int64_t qs[2] = {kn_numel(q) / Dh, Dh}, ks[2] = {kn_numel(k) / Dh, Dh};
    kn_tensor qn, kn;
    int rc = kn_alloc(ctx, &qn, q->dtype, q->ndim, q->shape);
    if (rc < 0) return rc;
    if ((rc = kn_alloc(ctx, &kn, k->dtype, k->ndim, k->shape)) < 0) {
        kn_free(ctx, &qn);
        return rc;
    }
    kn_tensor qv = kn_reshape(q, 2, qs), kv = kn_reshape(k, 2, ks);
    kn_tensor qnv = kn_reshape(&qn, 2, qs), knv = kn_reshape(&kn, 2, ks);
    kn_attn_args plain = *args;
    plain.q_norm = plain.k_norm = NULL;
    if ((rc = kn_rms_norm(ctx, &qnv, &qv, args->q_norm, args->norm_eps)) == 0 &&
        (rc = kn_rms_norm(ctx, &knv, &kv, args->k_norm, args->norm_eps)) == 0)
        rc = KN_DISPATCH(ctx, attention, o, &qn, &kn, v, &plain);
    kn_free(ctx, &kn);
    kn_free(ctx, &qn);
    return rc;
}

int kn_attention(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                 const kn_tensor *v, const kn_attn_args *args)
{
    static const char op[] = "kn_attention";
    char sq[96];
    if (!args) return err_set(ERR_INVALID, "kn_attention: no arguments");
    KN_TRY(kn_check_act(ctx, op, "q", q, NULL));
    KN_TRY(kn_check_act(ctx, op, "k", k, q));
    KN_TRY(kn_check_act(ctx, op, "v", v, q));
    KN_TRY(kn_check_act(ctx, op, "o", o, q));
    if (q->ndim != 3)
        return err_set(ERR_SHAPE, "kn_attention: q has shape %s, expected [B, S, H*Dh]",
                       kn_shape_str(q, sq, sizeof sq));
    int64_t B = q->shape[0], Sq = q->shape[1], HD = q->shape[2];
    if (args->heads <= 0 || HD % args->heads != 0)
        return err_set(ERR_SHAPE, "kn_attention: %d heads do not divide q %s", args->heads,
                       kn_shape_str(q, sq, sizeof sq));
    if (k->ndim != 3 || k->shape[0] != B || k->shape[2] != HD) {
        char sk[96];
        return err_set(ERR_SHAPE, "kn_attention: k %s does not match q %s",
                       kn_shape_str(k, sk, sizeof sk), kn_shape_str(q, sq, sizeof sq));
    }
    int64_t Sk = k->shape[1];
    KN_TRY(kn_check_same(op, "v", v, "k", k));
    KN_TRY(kn_check_same(op, "o", o, "q", q));
    if (Sk == 0 && Sq > 0)
        return err_set(ERR_SHAPE, "kn_attention: no keys for %lld queries", (long long)Sq);
    if (args->bias) {
        int64_t want[3] = {args->heads, Sq, Sk};
        KN_TRY(kn_check_f32(ctx, op, "bias", args->bias));
        KN_TRY(kn_check_shape(op, "bias", args->bias, 3, want));
    }
    if (args->lse) {
        int64_t want[3] = {B, args->heads, Sq};
        KN_TRY(kn_check_f32(ctx, op, "lse", args->lse));
        KN_TRY(kn_check_shape(op, "lse", args->lse, 3, want));
    }
    KN_TRY(kn_check_no_alias(op, "o", o, "k", k));
    KN_TRY(kn_check_no_alias(op, "o", o, "v", v));
    if (!args->q_norm != !args->k_norm)
        return err_set(ERR_INVALID, "kn_attention: q_norm and k_norm are given together or not at all");
    if (args->q_norm) {
        KN_TRY(kn_check_vec(ctx, op, "q_norm", args->q_norm, HD / args->heads));
        KN_TRY(kn_check_vec(ctx, op, "k_norm", args->k_norm, HD / args->heads));
        if (!attention_folds_norm(ctx, o, q, k, v, args))
            return attention_norm_first(ctx, o, q, k, v, args);
    }
    return KN_DISPATCH(ctx, attention, o, q, k, v, args);
}
