/* The kernels interface, part four: the token <-> image layout shuffles of a patch embedding.
 * The forward direction (image -> tokens) is a stride-p convolution followed by kn_transpose;
 * this header holds the inverse, which no convolution expresses: the diffusion transformer's
 * unpatchify. Same conventions as kn_ops.h (preallocated outputs, shapes checked). */
#ifndef FOCUS_KERNELS_KN_PATCH_H
#define FOCUS_KERNELS_KN_PATCH_H

#include "kernels/kn.h"

/* x [B, gh*gw, p*p*C] (token r*gw + s, features ordered (a, b, c)) -> y [B, C, gh*p, gw*p]:
 *   y[n, c, p*r + a, p*s + b] = x[n, r*gw + s, (a*p + b)*C + c]
 * which is diffusers' reshape(B, gh, gw, p, p, C) + einsum("nhwpqc->nchpwq"). gh and gw are
 * read from y; x and y have the same dtype (any: the op only moves elements). */
int kn_unpatchify(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int p);

/* Backend entry points, for kernels/ only: the front-end has checked the shapes. */
int cpu_unpatchify(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int p);
#ifdef FOCUS_HAVE_CUDA
int cuda_unpatchify(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int p);
#endif

#endif
