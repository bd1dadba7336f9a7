/* Front-ends of the input-gradient ops and the attention maps (kn_grad.h): argument, shape,
 * dtype and alias checks, then dispatch to the backend. Errors name the op and the tensors and
 * show their shapes; a rejected call writes nothing. */
#include "kernels/kn_grad.h"
#include "kernels/kn_backend.h"
#include "kernels/kn_check.h"

#include "common/err.h"

#define SHAPE_BUF 96

int kn_linear_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *w)
{
    static const char op[] = "kn_linear_grad";
    KN_TRY(kn_check_act(ctx, op, "dy", dy, NULL));
    KN_TRY(kn_check_act(ctx, op, "dx", dx, dy));
    KN_TRY(kn_check_weight(ctx, op, "w", w, 2));
    if (dy->ndim < 1 || kn_cols(dy) != w->shape[0]) {
        char sy[SHAPE_BUF], sw[SHAPE_BUF];
        return err_set(ERR_SHAPE, "%s: dy %s does not match w %s (out features)", op,
                       kn_shape_str(dy, sy, sizeof sy), kn_shape_str(w, sw, sizeof sw));
    }
    kn_tensor want = *dy;
    want.shape[want.ndim - 1] = w->shape[1];
    KN_TRY(kn_check_shape(op, "dx", dx, want.ndim, want.shape));
    KN_TRY(kn_check_no_alias(op, "dx", dx, "dy", dy));
    return KN_DISPATCH(ctx, linear_grad, dx, dy, w);
}

int kn_activate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *x,
                     kn_act act)
{
    static const char op[] = "kn_activate_grad";
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "dy", dy, x));
    KN_TRY(kn_check_act(ctx, op, "dx", dx, x));
    KN_TRY(kn_check_same(op, "dy", dy, "x", x));
    KN_TRY(kn_check_same(op, "dx", dx, "x", x));
    if (act != KN_ACT_GELU_TANH)
        return err_set(ERR_INVALID, "%s: only the tanh GELU has a gradient, not activation %d", op,
                       (int)act);
    KN_TRY(kn_check_in_place(op, "dx", dx, "dy", dy));
    KN_TRY(kn_check_in_place(op, "dx", dx, "x", x));
    return KN_DISPATCH(ctx, activate_grad, dx, dy, x, act);
}

/* The checks of the gradients of the adaLN ops: out and g [B, S, D] (g the incoming gradient,
 * out may be it), x [B, S, D] when not NULL, mod [B, C, D] and its chunk idx. */
static int check_modulation_grad(kn_ctx *ctx, const char *op, const char *nout,
                                 const kn_tensor *out, const char *ng, const kn_tensor *g,
                                 const kn_tensor *x, const kn_tensor *mod, int idx)
{
    KN_TRY(kn_check_act(ctx, op, ng, g, NULL));
    KN_TRY(kn_check_act(ctx, op, nout, out, g));
    KN_TRY(kn_check_same(op, nout, out, ng, g));
    if (x) {
        KN_TRY(kn_check_act(ctx, op, "x", x, g));
        KN_TRY(kn_check_same(op, "x", x, ng, g));
        KN_TRY(kn_check_no_alias(op, nout, out, "x", x));
    }
    KN_TRY(kn_check_modulation(ctx, op, g, mod, idx, idx));
    KN_TRY(kn_check_in_place(op, nout, out, ng, g));
    return kn_check_no_alias(op, nout, out, "mod", mod);
}

int kn_ln_modulate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *x,
                        const kn_tensor *mod, int scale_idx, float eps)
{
    static const char op[] = "kn_ln_modulate_grad";
    if (!x) return err_set(ERR_INVALID, "%s: x is missing", op);
    KN_TRY(check_modulation_grad(ctx, op, "dx", dx, "dy", dy, x, mod, scale_idx));
    if (kn_numel(x) == 0) return 0;
    return KN_DISPATCH(ctx, ln_modulate_grad, dx, dy, x, mod, scale_idx, eps);
}

int kn_gate_grad(kn_ctx *ctx, kn_tensor *dy, const kn_tensor *dx, const kn_tensor *mod,
                 int gate_idx)
{
    static const char op[] = "kn_gate_grad";
    KN_TRY(check_modulation_grad(ctx, op, "dy", dy, "dx", dx, NULL, mod, gate_idx));
    if (kn_numel(dx) == 0) return 0;
    return KN_DISPATCH(ctx, gate_grad, dy, dx, mod, gate_idx);
}

int kn_qkv_split_grad(kn_ctx *ctx, kn_tensor *dqkv, const kn_tensor *dq, const kn_tensor *dk,
                      const kn_tensor *dv, int64_t row0, const kn_tensor *qkv, int heads,
                      const kn_tensor *q_norm, const kn_tensor *k_norm, float eps)
{
    static const char op[] = "kn_qkv_split_grad";
    static const char *const names[3] = {"dq", "dk", "dv"};
    const kn_tensor *const parts[3] = {dq, dk, dv};
    KN_TRY(kn_check_qkv(ctx, op, names, parts, row0, qkv, heads, q_norm, k_norm));
    KN_TRY(kn_check_act(ctx, op, "dqkv", dqkv, qkv));
    KN_TRY(kn_check_same(op, "dqkv", dqkv, "qkv", qkv));
    KN_TRY(kn_check_no_alias(op, "dqkv", dqkv, "qkv", qkv));
    KN_TRY(kn_check_no_alias(op, "dqkv", dqkv, "dq", dq));
    KN_TRY(kn_check_no_alias(op, "dqkv", dqkv, "dk", dk));
    KN_TRY(kn_check_no_alias(op, "dqkv", dqkv, "dv", dv));
    if (kn_numel(qkv) == 0) return 0;
    return KN_DISPATCH(ctx, qkv_split_grad, dqkv, dq, dk, dv, row0, qkv, heads, q_norm, k_norm,
                       eps);
}

/* q [B, Sq, HD] and k [B, Sk, HD] of one dtype with `heads` dividing HD. */
static int check_qk(kn_ctx *ctx, const char *op, const kn_tensor *q, const kn_tensor *k, int heads)
{
    char sq[SHAPE_BUF], sk[SHAPE_BUF];
    KN_TRY(kn_check_act(ctx, op, "q", q, NULL));
    KN_TRY(kn_check_act(ctx, op, "k", k, q));
    if (q->ndim != 3)
        return err_set(ERR_SHAPE, "%s: q has shape %s, expected [B, S, H*Dh]", op,
                       kn_shape_str(q, sq, sizeof sq));
    if (heads <= 0 || q->shape[2] % heads != 0)
        return err_set(ERR_SHAPE, "%s: %d heads do not divide q %s", op, heads,
                       kn_shape_str(q, sq, sizeof sq));
    if (k->ndim != 3 || k->shape[0] != q->shape[0] || k->shape[2] != q->shape[2])
        return err_set(ERR_SHAPE, "%s: k %s does not match q %s", op,
                       kn_shape_str(k, sk, sizeof sk), kn_shape_str(q, sq, sizeof sq));
    if (k->shape[1] == 0 && q->shape[1] > 0)
        return err_set(ERR_SHAPE, "%s: no keys for %lld queries", op, (long long)q->shape[1]);
    return 0;
}

/* The selected keys and query rows of a map, and the F32 tensor t [B, n_sel, rows] (the maps
 * or their gradient, named nt). */
static int check_map(kn_ctx *ctx, const char *op, const char *nt, const kn_tensor *t,
                     const kn_tensor *q, const kn_tensor *k, const int32_t *sel, int n_sel,
                     int64_t rows)
{
    if (n_sel < 0 || (n_sel > 0 && !sel))
        return err_set(ERR_INVALID, "%s: %d selected keys%s", op, n_sel, sel ? "" : " at NULL");
    if (rows < 0 || rows > q->shape[1])
        return err_set(ERR_RANGE, "%s: %lld map rows outside the %lld queries", op, (long long)rows,
                       (long long)q->shape[1]);
    for (int j = 0; j < n_sel; j++)
        if (sel[j] < 0 || sel[j] >= k->shape[1])
            return err_set(ERR_RANGE, "%s: selected key %d at position %d outside the %lld keys",
                           op, sel[j], j, (long long)k->shape[1]);
    int64_t want[3] = {q->shape[0], n_sel, rows};
    KN_TRY(kn_check_f32(ctx, op, nt, t));
    return kn_check_shape(op, nt, t, 3, want);
}

/* The forward's log-sum-exp rows lse [B, H, Sq] F32. */
static int check_lse(kn_ctx *ctx, const char *op, const kn_tensor *lse, const kn_tensor *q,
                     int heads)
{
    int64_t want[3] = {q->shape[0], heads, q->shape[1]};
    KN_TRY(kn_check_f32(ctx, op, "lse", lse));
    return kn_check_shape(op, "lse", lse, 3, want);
}

int kn_attention_maps(kn_ctx *ctx, kn_tensor *maps, const kn_tensor *q, const kn_tensor *k,
                      const kn_tensor *lse, const int32_t *sel, int n_sel, int64_t rows, int heads,
                      float scale)
{
    static const char op[] = "kn_attention_maps";
    KN_TRY(check_qk(ctx, op, q, k, heads));
    KN_TRY(check_lse(ctx, op, lse, q, heads));
    KN_TRY(check_map(ctx, op, "maps", maps, q, k, sel, n_sel, rows));
    KN_TRY(kn_check_no_alias(op, "maps", maps, "lse", lse));
    if (kn_numel(maps) == 0) return 0;
    return KN_DISPATCH(ctx, attention_maps, maps, q, k, lse, sel, n_sel, rows, heads, scale);
}

/* What kn_attention_grad accepts of the forward's arguments. */
static int check_attn_args(kn_ctx *ctx, const char *op, const kn_attn_args *args,
                           const kn_tensor *q)
{
    if (!args) return err_set(ERR_INVALID, "%s: no arguments", op);
    if (args->bias || args->causal || args->q_norm || args->k_norm)
        return err_set(ERR_INVALID, "%s: %s has no gradient here", op,
                       args->bias     ? "an attention bias"
                       : args->causal ? "a causal mask"
                                      : "a q/k norm inside the attention (use kn_qkv_split_grad)");
    if (!args->lse)
        return err_set(ERR_INVALID, "%s: the forward's log-sum-exp (args->lse) is missing", op);
    return check_lse(ctx, op, args->lse, q, args->heads);
}

int kn_attention_grad(kn_ctx *ctx, kn_tensor *dq, kn_tensor *dk, kn_tensor *dv,
                      const kn_tensor *do_, const kn_tensor *q, const kn_tensor *k,
                      const kn_tensor *v, const kn_tensor *o, const kn_attn_args *args,
                      const kn_map_grad *map)
{
    static const char op[] = "kn_attention_grad";
    if (!args) return err_set(ERR_INVALID, "%s: no arguments", op);
    KN_TRY(check_qk(ctx, op, q, k, args->heads));
    KN_TRY(check_attn_args(ctx, op, args, q));
    /* Each of these has q's dtype and the shape of q (shaped 0) or of k. */
    const kn_tensor *like[6] = {v, o, dq, dk, dv, do_};
    static const char *const names[6] = {"v", "o", "dq", "dk", "dv", "do"};
    static const int shaped_q[6] = {0, 1, 1, 0, 0, 1};
    for (int i = 0; i < 6; i++) {
        if (!like[i] && i == 5) continue; /* do_ NULL: no output gradient */
        KN_TRY(kn_check_act(ctx, op, names[i], like[i], q));
        KN_TRY(kn_check_same(op, names[i], like[i], shaped_q[i] ? "q" : "k", shaped_q[i] ? q : k));
    }
    if (map) KN_TRY(check_map(ctx, op, "dmaps", map->dmaps, q, k, map->sel, map->n_sel, map->rows));
    const kn_tensor *outs[3] = {dq, dk, dv};
    const kn_tensor *ins[7] = {q, k, v, o, args->lse, do_, map ? map->dmaps : NULL};
    static const char *const out_names[3] = {"dq", "dk", "dv"};
    static const char *const in_names[7] = {"q", "k", "v", "o", "lse", "do", "dmaps"};
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 7; j++)
            if (ins[j]) KN_TRY(kn_check_no_alias(op, out_names[i], outs[i], in_names[j], ins[j]));
        for (int j = 0; j < i; j++)
            KN_TRY(kn_check_no_alias(op, out_names[i], outs[i], out_names[j], outs[j]));
    }
    if (kn_numel(q) == 0 && kn_numel(k) == 0) return 0;
    return KN_DISPATCH(ctx, attention_grad, dq, dk, dv, do_, q, k, v, o, args, map);
}

int kn_patch_embed_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dtok, const kn_tensor *w,
                        int p)
{
    static const char op[] = "kn_patch_embed_grad";
    char sx[SHAPE_BUF], st[SHAPE_BUF], sw[SHAPE_BUF];
    KN_TRY(kn_check_act(ctx, op, "dtok", dtok, NULL));
    KN_TRY(kn_check_act(ctx, op, "dx", dx, dtok));
    KN_TRY(kn_check_weight(ctx, op, "w", w, 4));
    if (p < 1) return err_set(ERR_INVALID, "%s: patch size %d", op, p);
    if (dx->ndim != 4 || dtok->ndim != 3 || w->shape[2] != p || w->shape[3] != p ||
        dx->shape[0] != dtok->shape[0] || dx->shape[1] != w->shape[1] ||
        dtok->shape[2] != w->shape[0] || dx->shape[2] % p || dx->shape[3] % p ||
        (dx->shape[2] / p) * (dx->shape[3] / p) != dtok->shape[1])
        return err_set(ERR_SHAPE,
                       "%s: dtok %s, w %s and dx %s do not fit a patch size of %d (expected "
                       "[B, gh*gw, D], [D, C, p, p] and [B, C, gh*p, gw*p])",
                       op, kn_shape_str(dtok, st, sizeof st), kn_shape_str(w, sw, sizeof sw),
                       kn_shape_str(dx, sx, sizeof sx), p);
    KN_TRY(kn_check_no_alias(op, "dx", dx, "dtok", dtok));
    if (kn_numel(dx) == 0) return 0;
    return KN_DISPATCH(ctx, patch_embed_grad, dx, dtok, w, p);
}
