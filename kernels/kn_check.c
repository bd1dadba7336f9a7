/* Argument checks shared by the op front-ends (see kn_check.h). */
#include "kernels/kn_check.h"
#include "kernels/kn_backend.h"

#include "common/err.h"

#include <string.h>

#define SHAPE_BUF 96

static int check_present(const kn_ctx *ctx, const char *op, const char *name, const kn_tensor *t)
{
    if (!t) return err_set(ERR_INVALID, "%s: %s is missing", op, name);
    if (t->device != ctx->device)
        return err_set(ERR_INVALID, "%s: %s lives on %s, the context on %s", op, name,
                       t->device == KN_CUDA ? "CUDA" : "the CPU",
                       ctx->device == KN_CUDA ? "CUDA" : "the CPU");
    if (!t->data && kn_numel(t) > 0) return err_set(ERR_INVALID, "%s: %s has no data", op, name);
    return 0;
}

int kn_check_act(const kn_ctx *ctx, const char *op, const char *name, const kn_tensor *t,
                 const kn_tensor *like)
{
    int rc = check_present(ctx, op, name, t);
    if (rc < 0) return rc;
    if (t->dtype != KN_F32 && t->dtype != KN_F16 && t->dtype != KN_BF16)
        return err_set(ERR_INVALID, "%s: %s is a %s tensor; activations are F32, F16 or BF16", op,
                       name, kn_dtype_name(t->dtype));
    if (like && like->dtype != t->dtype)
        return err_set(ERR_INVALID, "%s: %s is %s but the other activations are %s", op, name,
                       kn_dtype_name(t->dtype), kn_dtype_name(like->dtype));
    return 0;
}

int kn_check_weight(const kn_ctx *ctx, const char *op, const char *name, const kn_tensor *t,
                    int ndim)
{
    char buf[SHAPE_BUF];
    int rc = check_present(ctx, op, name, t);
    if (rc < 0) return rc;
    if (!kn_dtype_is_float(t->dtype))
        return err_set(ERR_INVALID, "%s: %s is a %s tensor, not a float one", op, name,
                       kn_dtype_name(t->dtype));
    if (ndim >= 0 && t->ndim != ndim)
        return err_set(ERR_SHAPE, "%s: %s has shape %s, expected %d dimensions", op, name,
                       kn_shape_str(t, buf, sizeof buf), ndim);
    return 0;
}

int kn_check_f32(const kn_ctx *ctx, const char *op, const char *name, const kn_tensor *t)
{
    int rc = check_present(ctx, op, name, t);
    if (rc == 0 && t->dtype != KN_F32)
        rc = err_set(ERR_INVALID, "%s: %s is a %s tensor, expected F32", op, name,
                     kn_dtype_name(t->dtype));
    return rc;
}

int kn_check_vec(const kn_ctx *ctx, const char *op, const char *name, const kn_tensor *t, int64_t n)
{
    if (!t) return 0;
    int rc = kn_check_weight(ctx, op, name, t, -1);
    return rc < 0 ? rc : kn_check_shape(op, name, t, 1, &n);
}

int kn_check_same(const char *op, const char *na, const kn_tensor *a, const char *nb,
                  const kn_tensor *b)
{
    char sa[SHAPE_BUF], sb[SHAPE_BUF];
    if (!kn_same_shape(a, b))
        return err_set(ERR_SHAPE, "%s: %s %s and %s %s differ in shape", op, na,
                       kn_shape_str(a, sa, sizeof sa), nb, kn_shape_str(b, sb, sizeof sb));
    return 0;
}

int kn_check_shape(const char *op, const char *name, const kn_tensor *t, int ndim,
                   const int64_t *dims)
{
    char have[SHAPE_BUF], want[SHAPE_BUF];
    kn_tensor expect = {.ndim = ndim};
    memcpy(expect.shape, dims, (size_t)ndim * sizeof *dims);
    if (!kn_same_shape(t, &expect))
        return err_set(ERR_SHAPE, "%s: %s has shape %s, expected %s", op, name,
                       kn_shape_str(t, have, sizeof have),
                       kn_shape_str(&expect, want, sizeof want));
    return 0;
}

int kn_check_no_alias(const char *op, const char *nout, const kn_tensor *out, const char *nin,
                      const kn_tensor *in)
{
    const char *o0 = out->data, *i0 = in->data;
    if (o0 && i0 && o0 < i0 + kn_nbytes(in) && i0 < o0 + kn_nbytes(out))
        return err_set(ERR_INVALID, "%s: %s overlaps %s; this op cannot run in place", op, nout,
                       nin);
    return 0;
}

int kn_check_in_place(const char *op, const char *nout, const kn_tensor *out, const char *nin,
                      const kn_tensor *in)
{
    if (out->data == in->data && kn_nbytes(out) == kn_nbytes(in)) return 0;
    return kn_check_no_alias(op, nout, out, nin, in);
}

int kn_check_modulation(const kn_ctx *ctx, const char *op, const kn_tensor *x, const kn_tensor *mod,
                        int idx_a, int idx_b)
{
    char sx[SHAPE_BUF], sm[SHAPE_BUF];
    KN_TRY(kn_check_act(ctx, op, "mod", mod, x));
    if (x->ndim != 3 || mod->ndim != 3 || mod->shape[0] != x->shape[0] ||
        mod->shape[2] != x->shape[2])
        return err_set(ERR_SHAPE, "%s: mod %s does not fit x %s (expected [B, C, D], [B, S, D])",
                       op, kn_shape_str(mod, sm, sizeof sm), kn_shape_str(x, sx, sizeof sx));
    int64_t C = mod->shape[1];
    if (idx_a < 0 || idx_a >= C || idx_b < 0 || idx_b >= C)
        return err_set(ERR_RANGE, "%s: chunk %d outside the %lld chunks of mod %s", op,
                       idx_a < 0 || idx_a >= C ? idx_a : idx_b, (long long)C,
                       kn_shape_str(mod, sm, sizeof sm));
    return 0;
}

int kn_check_qkv(const kn_ctx *ctx, const char *op, const char *const names[3],
                 const kn_tensor *const qkv_parts[3], int64_t row0, const kn_tensor *qkv, int heads,
                 const kn_tensor *q_norm, const kn_tensor *k_norm)
{
    char sq[SHAPE_BUF], sj[SHAPE_BUF];
    const kn_tensor *q = qkv_parts[0];
    KN_TRY(kn_check_act(ctx, op, "qkv", qkv, NULL));
    for (int i = 0; i < 3; i++) {
        KN_TRY(kn_check_act(ctx, op, names[i], qkv_parts[i], qkv));
        KN_TRY(kn_check_same(op, names[i], qkv_parts[i], names[0], q));
    }
    if (q->ndim != 3 || qkv->ndim != 3 || qkv->shape[0] != q->shape[0] ||
        qkv->shape[2] != 3 * q->shape[2] || row0 < 0 || row0 + qkv->shape[1] > q->shape[1])
        return err_set(ERR_SHAPE,
                       "%s: qkv %s does not fill rows from %lld of %s, %s and %s %s (expected "
                       "[B, n, 3D] and [B, L, D] with n + row0 <= L)",
                       op, kn_shape_str(qkv, sj, sizeof sj), (long long)row0, names[0], names[1],
                       names[2], kn_shape_str(q, sq, sizeof sq));
    if (heads <= 0 || q->shape[2] % heads)
        return err_set(ERR_SHAPE, "%s: %d heads do not divide %s %s", op, heads, names[0],
                       kn_shape_str(q, sq, sizeof sq));
    if (!q_norm != !k_norm) return err_set(ERR_INVALID, "%s: q_norm and k_norm go together", op);
    KN_TRY(kn_check_vec(ctx, op, "q_norm", q_norm, q->shape[2] / heads));
    return kn_check_vec(ctx, op, "k_norm", k_norm, q->shape[2] / heads);
}
