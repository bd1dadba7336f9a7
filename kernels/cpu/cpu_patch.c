/* CPU backend of the patch layout ops (kn_patch.h): pure element moves, any dtype. */
#include "kernels/kn_patch.h"

#include <string.h>

int cpu_unpatchify(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int p)
{
    (void)ctx;
    const size_t es = kn_dtype_size(x->dtype);
    const int64_t nb = y->shape[0], nc = y->shape[1], H = y->shape[2], W = y->shape[3];
    const int64_t gw = W / p, feat = (int64_t)p * p * nc;
    const char *src = x->data;
    char *dst = y->data;
    /* Walk the output in order so that writes are sequential; reads stride by C. */
    for (int64_t n = 0; n < nb; n++)
        for (int64_t c = 0; c < nc; c++)
            for (int64_t i = 0; i < H; i++) {
                const int64_t r = i / p, a = i % p;
                char *drow = dst + (size_t)(((n * nc + c) * H + i) * W) * es;
                for (int64_t j = 0; j < W; j++) {
                    const int64_t s = j / p, bb = j % p;
                    const int64_t off =
                        (n * (H / p) * gw + r * gw + s) * feat + (a * p + bb) * nc + c;
                    memcpy(drow + (size_t)j * es, src + (size_t)off * es, es);
                }
            }
    return 0;
}
