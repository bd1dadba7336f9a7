/* The convolution cases and the plain double-precision reference shared by the kernel tests,
 * CPU (tests/unit/test_kernels.c) and GPU (tests/gpu/test_cuda_ops.c): one output per
 * (sample, channel, row, column), with the sum of the products' magnitudes that tolerances
 * scale with. Header-only (static inline), like check.h. */
#ifndef FOCUS_TESTS_REF_CONV_H
#define FOCUS_TESTS_REF_CONV_H

#include "kernels/kn.h"

#include <math.h>
#include <stdint.h>

struct conv_case {
    int64_t B, C, H, W, O, k;
    int stride, pad, bias;
    kn_dtype wdt;
};

static inline int64_t conv_out_side(const struct conv_case *c, int64_t in)
{
    return (in + 2 * c->pad - c->k) / c->stride + 1;
}

/* ref (may be NULL) and mag receive B x O x Ho x Wo values: the convolution of x [B, C, H, W]
 * with w [O, C, k, k] plus b (when c->bias), and the sum of |each term|. */
static inline void ref_conv2d(const struct conv_case *c, const float *x, const float *w,
                              const float *b, double *ref, double *mag)
{
    const int64_t Ho = conv_out_side(c, c->H), Wo = conv_out_side(c, c->W);
    for (int64_t bi = 0; bi < c->B; bi++)
        for (int64_t o = 0; o < c->O; o++)
            for (int64_t oy = 0; oy < Ho; oy++)
                for (int64_t ox = 0; ox < Wo; ox++) {
                    double s = c->bias ? b[o] : 0.0, a = c->bias ? fabs((double)b[o]) : 0.0;
                    for (int64_t ci = 0; ci < c->C; ci++)
                        for (int64_t ky = 0; ky < c->k; ky++)
                            for (int64_t kx = 0; kx < c->k; kx++) {
                                int64_t iy = oy * c->stride - c->pad + ky;
                                int64_t ix = ox * c->stride - c->pad + kx;
                                if (iy < 0 || iy >= c->H || ix < 0 || ix >= c->W) continue;
                                double p = (double)x[((bi * c->C + ci) * c->H + iy) * c->W + ix] *
                                           w[((o * c->C + ci) * c->k + ky) * c->k + kx];
                                s += p;
                                a += fabs(p);
                            }
                    int64_t i = ((bi * c->O + o) * Ho + oy) * Wo + ox;
                    if (ref) ref[i] = s;
                    mag[i] = a;
                }
}

#endif
