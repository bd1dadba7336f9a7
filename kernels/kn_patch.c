/* Front-end of the patch layout ops (kn_patch.h): shape and dtype checks, then dispatch. */
#include "kernels/kn_patch.h"
#include "kernels/kn_backend.h"

#include "common/err.h"

int kn_unpatchify(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int p)
{
    char xs[64], ys[64];
    if (p < 1 || x->ndim != 3 || y->ndim != 4 || x->dtype != y->dtype || x->device != y->device ||
        y->shape[2] % p || y->shape[3] % p)
        goto bad;
    int64_t b = y->shape[0], c = y->shape[1], gh = y->shape[2] / p, gw = y->shape[3] / p;
    if (x->shape[0] != b || x->shape[1] != gh * gw || x->shape[2] != (int64_t)p * p * c) goto bad;
    if (kn_numel(y) == 0) return 0;
    return KN_DISPATCH(ctx, unpatchify, y, x, p);
bad:
    return err_set(ERR_SHAPE, "kn_unpatchify: %s %s -> %s %s with patch %d",
                   kn_shape_str(x, xs, sizeof xs), kn_dtype_name(x->dtype),
                   kn_shape_str(y, ys, sizeof ys), kn_dtype_name(y->dtype), p);
}
