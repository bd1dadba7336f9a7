/* The kernels interface, part five: input gradients (reverse mode, no weight gradients) of the
 * transformer's ops, and the image-to-text attention maps that the FOCUS controller's cost is
 * computed from. Same conventions as kn_ops.h: preallocated outputs, shapes and dtypes checked,
 * float32 accumulation, activations F32, F16 or BF16 (one dtype per op; the maps, their
 * gradient and the log-sum-exp rows are F32), weights of any float dtype. Every op overwrites
 * its outputs (the caller sums gradients with kn_add), and as in the forward ops each output
 * row's reduction order is fixed by the shapes alone, never by the thread split or the number
 * of rows. */
#ifndef FOCUS_KERNELS_KN_GRAD_H
#define FOCUS_KERNELS_KN_GRAD_H

#include "kernels/kn.h"
#include "kernels/kn_ops.h"

/* Gradient of kn_linear with respect to its input: dx[M, K] = dy[M, N] . w[N, K]. */
int kn_linear_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *w);

/* Gradient of kn_activate(x, act): dx = dy * act'(x), x the activation's input. Only
 * KN_ACT_GELU_TANH (the transformer's feed-forward) is implemented; other activations are
 * ERR_INVALID. dx may alias dy. */
int kn_activate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *x,
                     kn_act act);

/* Gradient of kn_ln_modulate(y, x, mod, shift_idx, scale_idx, eps) with respect to x, the
 * modulation held constant: with g = dy * (1 + mod[b, scale_idx]), xhat = (x - mean) * rstd,
 *   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   (means over the row).
 * x, dy, dx [B, S, D], mod [B, C, D]. dx may alias dy. */
int kn_ln_modulate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *x,
                        const kn_tensor *mod, int scale_idx, float eps);

/* Gradient of kn_gate_add(x, y, mod, gate_idx) with respect to y: dy = mod[b, gate_idx] * dx,
 * dx and dy [B, S, D]. (Its gradient with respect to x is dx itself.) dy may alias dx. */
int kn_gate_grad(kn_ctx *ctx, kn_tensor *dy, const kn_tensor *dx, const kn_tensor *mod,
                 int gate_idx);

/* Gradient of kn_qkv_split(q, k, v, row0, qkv, heads, q_norm, k_norm, eps) with respect to qkv:
 * rows [row0, row0 + n) of every sample of dq, dk, dv [B, L, D] go back through the per-head
 * RMSNorm (weights q_norm, k_norm, both NULL for none) into dqkv [B, n, 3D]; qkv is the
 * forward's input (the product before the norm). */
int kn_qkv_split_grad(kn_ctx *ctx, kn_tensor *dqkv, const kn_tensor *dq, const kn_tensor *dk,
                      const kn_tensor *dv, int64_t row0, const kn_tensor *qkv, int heads,
                      const kn_tensor *q_norm, const kn_tensor *k_norm, float eps);

/* The head-averaged attention probabilities of the first `rows` queries to n_sel chosen keys,
 * each row normalised over all Sk keys, from the row log-sum-exp the forward wrote:
 *   maps[b, j, p] = (1/H) sum_h exp(scale * q[b, p, h] . k[b, sel[j], h] - lse[b, h, p])
 * q [B, Sq, H*Dh], k [B, Sk, H*Dh], lse [B, H, Sq] F32 (kn_attn_args.lse of the forward on the
 * same q and k; the q/k norms already applied), sel n_sel host indices < Sk, rows <= Sq,
 * maps [B, n_sel, rows] F32 (the layout of the reference's stored maps: one row per token).
 * FOCUS's image-to-text maps: the image queries are the first rows of the joint sequence. */
int kn_attention_maps(kn_ctx *ctx, kn_tensor *maps, const kn_tensor *q, const kn_tensor *k,
                      const kn_tensor *lse, const int32_t *sel, int n_sel, int64_t rows,
                      int heads, float scale);

/* A loss term on the maps of kn_attention_maps, for kn_attention_grad: dmaps [B, n_sel, rows]
 * F32 is the loss's gradient with respect to those head-averaged maps (sel, rows as there). */
typedef struct kn_map_grad {
    const kn_tensor *dmaps;
    const int32_t *sel;
    int n_sel;
    int64_t rows;
} kn_map_grad;

/* Gradient of kn_attention(o, q, k, v, args) with respect to q, k and v, plus the gradient of
 * a loss on its maps when `map` is not NULL. With P the softmax, per sample and head:
 *   dP = do . v^T,  Drow_i = sum_d do_id o_id,
 *   G_ij = dmaps[j', i] / H  where sel[j'] = j and i < rows, else 0,
 *   dS_ij = P_ij (dP_ij + G_ij - Drow_i - sum_k G_ik P_ik),
 *   dq = scale * dS . k,  dk = scale * dS^T . q,  dv = P^T . do.
 * q, k, v, o, lse as the forward had them (args->lse must be that forward's; no bias, not
 * causal, no q/k norm: the norms are undone by kn_qkv_split_grad). `do_` may be NULL: no
 * gradient reaches the output (the transformer's last block), only the map term. */
int kn_attention_grad(kn_ctx *ctx, kn_tensor *dq, kn_tensor *dk, kn_tensor *dv,
                      const kn_tensor *do_, const kn_tensor *q, const kn_tensor *k,
                      const kn_tensor *v, const kn_tensor *o, const kn_attn_args *args,
                      const kn_map_grad *map);

/* Gradient of the patch embedding (kn_conv2d with kernel and stride p, then kn_transpose to
 * tokens) with respect to the image: dtok [B, gh*gw, D], w [D, C, p, p], dx [B, C, gh*p, gw*p]:
 *   dx[b, c, p*r + a, p*s + e] = sum_d dtok[b, r*gw + s, d] * w[d, c, a, e]. */
int kn_patch_embed_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dtok, const kn_tensor *w,
                        int p);

/* Backend entry points, for kernels/ only: the front-ends (kernels/kn_grad.c) have checked
 * shapes and dtypes. The CPU ones are in kernels/cpu/, the CUDA ones in kernels/cuda/. */
#define KN_GRAD_BACKEND(dev)                                                                    \
    int dev##_linear_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *w); \
    int dev##_activate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy, const kn_tensor *x, \
                            kn_act act);                                                        \
    int dev##_ln_modulate_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dy,                 \
                               const kn_tensor *x, const kn_tensor *mod, int scale_idx,         \
                               float eps);                                                      \
    int dev##_gate_grad(kn_ctx *ctx, kn_tensor *dy, const kn_tensor *dx, const kn_tensor *mod,  \
                        int gate_idx);                                                          \
    int dev##_qkv_split_grad(kn_ctx *ctx, kn_tensor *dqkv, const kn_tensor *dq,                 \
                             const kn_tensor *dk, const kn_tensor *dv, int64_t row0,            \
                             const kn_tensor *qkv, int heads, const kn_tensor *q_norm,          \
                             const kn_tensor *k_norm, float eps);                               \
    int dev##_attention_maps(kn_ctx *ctx, kn_tensor *maps, const kn_tensor *q,                  \
                             const kn_tensor *k, const kn_tensor *lse, const int32_t *sel,      \
                             int n_sel, int64_t rows, int heads, float scale);                  \
    int dev##_attention_grad(kn_ctx *ctx, kn_tensor *dq, kn_tensor *dk, kn_tensor *dv,          \
                             const kn_tensor *do_, const kn_tensor *q, const kn_tensor *k,      \
                             const kn_tensor *v, const kn_tensor *o, const kn_attn_args *args,  \
                             const kn_map_grad *map);                                           \
    int dev##_patch_embed_grad(kn_ctx *ctx, kn_tensor *dx, const kn_tensor *dtok,               \
                               const kn_tensor *w, int p);
KN_GRAD_BACKEND(cpu)
#ifdef FOCUS_HAVE_CUDA
KN_GRAD_BACKEND(cuda)
#endif

#endif
