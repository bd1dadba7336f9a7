/* Front-ends of the image and modulation ops (kn_image.h): argument checks, then dispatch to
 * the backend. Shape errors name the op and the tensors and show their shapes. */
#include "kernels/cpu/cpu_ops.h"
#include "kernels/kn_check.h"

#include "common/err.h"

#define SHAPE_BUF 96

static int check_nchw(const char *op, const char *name, const kn_tensor *t)
{
    char s[SHAPE_BUF];
    if (t->ndim != 4)
        return err_set(ERR_SHAPE, "%s: %s has shape %s, expected [B, C, H, W]", op, name,
                       kn_shape_str(t, s, sizeof s));
    return 0;
}

int kn_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *b,
              int stride, int pad)
{
    static const char op[] = "kn_conv2d";
    char sx[SHAPE_BUF], sw[SHAPE_BUF];
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    KN_TRY(kn_check_weight(ctx, op, "w", w, 4));
    KN_TRY(check_nchw(op, "x", x));
    if (stride < 1 || pad < 0)
        return err_set(ERR_INVALID, "kn_conv2d: stride %d, padding %d", stride, pad);
    int64_t hp = x->shape[2] + 2 * (int64_t)pad, wp = x->shape[3] + 2 * (int64_t)pad;
    if (w->shape[1] != x->shape[1] || w->shape[2] > hp || w->shape[3] > wp)
        return err_set(ERR_SHAPE, "kn_conv2d: w %s does not fit x %s with padding %d",
                       kn_shape_str(w, sw, sizeof sw), kn_shape_str(x, sx, sizeof sx), pad);
    int64_t want[4] = {x->shape[0], w->shape[0], (hp - w->shape[2]) / stride + 1,
                       (wp - w->shape[3]) / stride + 1};
    KN_TRY(kn_check_shape(op, "y", y, 4, want));
    KN_TRY(kn_check_vec(ctx, op, "b", b, w->shape[0]));
    KN_TRY(kn_check_no_alias(op, "y", y, "x", x));
    return KN_DISPATCH(ctx, conv2d, y, x, w, b, stride, pad);
}

int kn_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                  const kn_tensor *b, int groups, float eps)
{
    static const char op[] = "kn_group_norm";
    char sx[SHAPE_BUF];
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    KN_TRY(kn_check_same(op, "y", y, "x", x));
    if (x->ndim < 2)
        return err_set(ERR_SHAPE, "kn_group_norm: x has shape %s, expected [B, C, ...]",
                       kn_shape_str(x, sx, sizeof sx));
    int64_t C = x->shape[1];
    if (groups < 1 || C % groups != 0)
        return err_set(ERR_SHAPE, "kn_group_norm: %d groups do not divide the channels of x %s",
                       groups, kn_shape_str(x, sx, sizeof sx));
    if (!w || !b)
        return err_set(ERR_INVALID, "kn_group_norm: the affine %s is missing", w ? "b" : "w");
    KN_TRY(kn_check_vec(ctx, op, "w", w, C));
    KN_TRY(kn_check_vec(ctx, op, "b", b, C));
    if (kn_numel(x) == 0) return 0;
    return KN_DISPATCH(ctx, group_norm, y, x, w, b, groups, eps);
}

int kn_upsample_nearest2x(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x)
{
    static const char op[] = "kn_upsample_nearest2x";
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    KN_TRY(check_nchw(op, "x", x));
    int64_t want[4] = {x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]};
    KN_TRY(kn_check_shape(op, "y", y, 4, want));
    KN_TRY(kn_check_no_alias(op, "y", y, "x", x));
    return KN_DISPATCH(ctx, upsample_nearest2x, y, x);
}

int kn_transpose(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x)
{
    static const char op[] = "kn_transpose";
    char sx[SHAPE_BUF];
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    if (x->ndim < 2)
        return err_set(ERR_SHAPE, "kn_transpose: x has shape %s, expected [..., M, N]",
                       kn_shape_str(x, sx, sizeof sx));
    kn_tensor want = *x;
    want.shape[x->ndim - 2] = x->shape[x->ndim - 1];
    want.shape[x->ndim - 1] = x->shape[x->ndim - 2];
    KN_TRY(kn_check_shape(op, "y", y, want.ndim, want.shape));
    KN_TRY(kn_check_no_alias(op, "y", y, "x", x));
    return KN_DISPATCH(ctx, transpose, y, x);
}

int kn_ln_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *mod,
                   int shift_idx, int scale_idx, float eps)
{
    static const char op[] = "kn_ln_modulate";
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    KN_TRY(kn_check_same(op, "y", y, "x", x));
    KN_TRY(kn_check_modulation(ctx, op, x, mod, shift_idx, scale_idx));
    KN_TRY(kn_check_no_alias(op, "y", y, "mod", mod));
    if (kn_numel(x) == 0) return 0;
    return KN_DISPATCH(ctx, ln_modulate, y, x, mod, shift_idx, scale_idx, eps);
}

int kn_gate_add(kn_ctx *ctx, kn_tensor *x, const kn_tensor *y, const kn_tensor *mod, int gate_idx)
{
    static const char op[] = "kn_gate_add";
    KN_TRY(kn_check_act(ctx, op, "x", x, NULL));
    KN_TRY(kn_check_act(ctx, op, "y", y, x));
    KN_TRY(kn_check_same(op, "y", y, "x", x));
    KN_TRY(kn_check_modulation(ctx, op, x, mod, gate_idx, gate_idx));
    KN_TRY(kn_check_no_alias(op, "x", x, "mod", mod));
    if (kn_numel(x) == 0) return 0;
    return KN_DISPATCH(ctx, gate_add, x, y, mod, gate_idx);
}
