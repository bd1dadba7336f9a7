/* Internal to kernels/: the CPU backend's op entry points (the twins of kn_ops.h and
 * kn_image.h) and the helpers the cpu_*.c files share. The front-ends in kernels/kn_ops.c and
 * kernels/kn_image_ops.c have checked shapes and dtypes before any of these runs, so they
 * assume F32 activations and weights of a float dtype. Not for use outside kernels/. */
#ifndef FOCUS_KERNELS_CPU_CPU_OPS_H
#define FOCUS_KERNELS_CPU_CPU_OPS_H

#include "kernels/kn_backend.h"
#include "kernels/kn_image.h"
#include "kernels/kn_ops.h"

/* Scratch slot use, so that an op's buffers never collide (slot 0 is also kn_copy's). */
enum {
    CPU_SLOT_WEIGHT = 0, /* a panel of widened weight rows */
    CPU_SLOT_WORK = 1,   /* im2col columns, attention scores */
    CPU_SLOT_PARAM = 2,  /* a widened bias or norm weight */
    CPU_SLOT_PARAM2 = 3, /* a second widened parameter (a norm's bias) */
};

/* Elements [off, off + n) of float tensor t as float32: t's own memory when it is F32,
 * otherwise widened into scratch `slot` (valid until the slot's next use). */
const float *cpu_f32_span(kn_ctx *ctx, int slot, const kn_tensor *t, int64_t off, int64_t n);

int cpu_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
               const kn_tensor *b);
int cpu_embedding(kn_ctx *ctx, kn_tensor *y, const kn_tensor *table, const int32_t *ids, int n);
int cpu_layer_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, float eps);
int cpu_rms_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps);
int cpu_activate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act);
int cpu_add(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int cpu_sub(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int cpu_mul(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int cpu_add_scaled(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, float s, const kn_tensor *b);
int cpu_scale(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s);
int cpu_attention(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                  const kn_tensor *v, const kn_attn_args *args);

int cpu_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
               const kn_tensor *b, int stride, int pad);
int cpu_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, int groups, float eps);
int cpu_upsample_nearest2x(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int cpu_transpose(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int cpu_ln_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *mod,
                    int shift_idx, int scale_idx, float eps);
int cpu_gate_add(kn_ctx *ctx, kn_tensor *x, const kn_tensor *y, const kn_tensor *mod, int gate_idx);

#endif
