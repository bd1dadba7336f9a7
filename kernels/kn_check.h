/* Internal to kernels/: the argument checks that every op front-end (kn_ops.c,
 * kn_image_ops.c) runs before dispatching to a backend. Each returns 0, or ERR_SHAPE /
 * ERR_INVALID with a message that starts with the op's name and shows the shapes at fault.
 * Not for use outside kernels/. */
#ifndef FOCUS_KERNELS_KN_CHECK_H
#define FOCUS_KERNELS_KN_CHECK_H

#include "kernels/kn.h"

/* Returns from the calling function when a check fails. */
#define KN_TRY(expr)                                                                               \
    do {                                                                                           \
        int kn_try_rc_ = (expr);                                                                   \
        if (kn_try_rc_ < 0) return kn_try_rc_;                                                     \
    } while (0)

/* An activation: present, on ctx's device, of a dtype the backend computes in (F32 on the
 * CPU; F32, F16 or BF16 on CUDA), and of the same dtype as `like` when that is not NULL. */
int kn_check_act(const kn_ctx *ctx, const char *op, const char *name, const kn_tensor *t,
                 const kn_tensor *like);
/* A weight: present, on ctx's device, of a float dtype, with `ndim` dimensions (any when
 * ndim < 0). */
int kn_check_weight(const kn_ctx *ctx, const char *op, const char *name, const kn_tensor *t,
                    int ndim);
/* A float32 side tensor (an attention bias, a log-sum-exp output): present, on ctx's device. */
int kn_check_f32(const kn_ctx *ctx, const char *op, const char *name, const kn_tensor *t);
/* An optional parameter vector (a bias, a norm weight): NULL, or a float weight of shape [n]. */
int kn_check_vec(const kn_ctx *ctx, const char *op, const char *name, const kn_tensor *t,
                 int64_t n);
/* a and b have identical shapes. */
int kn_check_same(const char *op, const char *na, const kn_tensor *a, const char *nb,
                  const kn_tensor *b);
/* t has exactly the shape dims[0..ndim). */
int kn_check_shape(const char *op, const char *name, const kn_tensor *t, int ndim,
                   const int64_t *dims);
/* out does not share memory with in (for ops that read in after writing out). */
int kn_check_no_alias(const char *op, const char *nout, const kn_tensor *out, const char *nin,
                      const kn_tensor *in);

/* out is in itself (an op that may run in place) or shares no memory with it. */
int kn_check_in_place(const char *op, const char *nout, const kn_tensor *out, const char *nin,
                      const kn_tensor *in);
/* x [B, S, D] against an adaLN table mod [B, C, D] of x's dtype, and each chunk index within C
 * (ERR_RANGE). */
int kn_check_modulation(const kn_ctx *ctx, const char *op, const kn_tensor *x, const kn_tensor *mod,
                        int idx_a, int idx_b);

/* The q, k and v [B, L, D] (qkv_parts, named names) whose rows [row0, row0 + n) a joined
 * product qkv [B, n, 3D] fills: all of one dtype, `heads` dividing D, the norm weights q_norm
 * and k_norm [D / heads] both NULL or both given. */
int kn_check_qkv(const kn_ctx *ctx, const char *op, const char *const names[3],
                 const kn_tensor *const qkv_parts[3], int64_t row0, const kn_tensor *qkv, int heads,
                 const kn_tensor *q_norm, const kn_tensor *k_norm);

#endif
