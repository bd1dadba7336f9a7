/* The kernels interface, part three: ops on images and latents (NCHW) and the adaLN
 * modulation ops of the diffusion transformer. Same conventions as kn_ops.h: preallocated
 * outputs, shapes checked, float32 accumulation, weights of any float dtype. */
#ifndef FOCUS_KERNELS_KN_IMAGE_H
#define FOCUS_KERNELS_KN_IMAGE_H

#include "kernels/kn.h"

/* 2-D convolution. x [B, C, H, W], w [O, C, kh, kw], b [O] or NULL,
 * y [B, O, (H + 2 pad - kh) / stride + 1, (W + 2 pad - kw) / stride + 1], zero padding. */
int kn_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
              const kn_tensor *b, int stride, int pad);

/* GroupNorm over x [B, C, H, W] with `groups` groups, biased variance, affine w, b [C]. */
int kn_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                  const kn_tensor *b, int groups, float eps);

/* Nearest-neighbour 2x upsampling: y [B, C, 2H, 2W], y[.., i, j] = x[.., i/2, j/2]. */
int kn_upsample_nearest2x(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);

/* Swaps the last two dimensions: x [B, M, N] -> y [B, N, M] (NCHW <-> tokens). */
int kn_transpose(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);

/* adaLN modulation. `mod` is [B, C, D]: C chunks of D per sample, the output of a modulation
 * linear layer viewed as chunks. x and y are [B, S, D].
 *   kn_ln_modulate: y = LayerNorm(x, no affine, eps) * (1 + mod[b, scale_idx]) + mod[b, shift_idx]
 *   kn_gate_add:    x = x + mod[b, gate_idx] * y   (the gated residual, in place on x) */
int kn_ln_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *mod,
                   int shift_idx, int scale_idx, float eps);
int kn_gate_add(kn_ctx *ctx, kn_tensor *x, const kn_tensor *y, const kn_tensor *mod,
                int gate_idx);

#endif
