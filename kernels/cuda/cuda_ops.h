/* Internal to kernels/: the CUDA backend's entry points, the twins of the cpu_* functions that
 * kn_backend.h dispatches to. Plain C declarations with no CUDA header, so the C front-ends can
 * include this; the definitions live in the .cu files beside it. Front-ends have checked shapes and
 * dtypes before any of these runs: activations are F32, F16 or BF16, weights any float dtype.
 * Every op is queued on the context's stream and returns without waiting; launch and library
 * errors come back as ERR_DEVICE at once, asynchronous faults at the next kn_sync or kn_read.
 * The gradient ops' twins (cuda_grad.cu, cuda_attention_grad.cu) are declared by kn_grad.h's
 * KN_GRAD_BACKEND(cuda). Not for use outside kernels/. */
#ifndef FOCUS_KERNELS_CUDA_CUDA_OPS_H
#define FOCUS_KERNELS_CUDA_CUDA_OPS_H

/* The kernels headers are plain C: C linkage for them too (kn_patch.h declares
 * cuda_unpatchify itself). */
#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/kn.h"
#include "kernels/kn_image.h"
#include "kernels/kn_ops.h"
#include "kernels/kn_patch.h"

/* Context: device `ctx->index`, one non-blocking stream, cuBLAS and cuBLASLt handles. Fails with
 * ERR_DEVICE and a message naming the cause when no usable GPU exists. */
int cuda_ctx_init(kn_ctx *ctx);
/* The device checks of cuda_ctx_init alone, with no context, stream or handle made. */
int cuda_probe(int index);
void cuda_ctx_fini(kn_ctx *ctx);
int cuda_sync(kn_ctx *ctx);
/* float32 products on tensor cores (TF32) instead of full float32; off by default, which is
 * the reference mode. 16-bit activations always multiply in 16 bits and accumulate in float32. */
void cuda_set_tf32(kn_ctx *ctx, int on);

/* Memory: stream-ordered device allocations, weights uploaded through pinned staging. */
int cuda_alloc(kn_ctx *ctx, kn_tensor *t);
void cuda_free(kn_ctx *ctx, kn_tensor *t);
int cuda_weight(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *host);
int cuda_write(kn_ctx *ctx, kn_tensor *dst, const void *host, size_t nbytes);
int cuda_read(kn_ctx *ctx, const kn_tensor *src, void *host, size_t nbytes);
int cuda_fill(kn_ctx *ctx, kn_tensor *t, float v);
int cuda_copy(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *src);
int cuda_copy_cols(kn_ctx *ctx, kn_tensor *dst, int64_t col, const kn_tensor *src);

int cuda_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                const kn_tensor *b);
int cuda_linear_act(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                    const kn_tensor *b, kn_act act);
/* kn_linear_rows: on CUDA the product of kn_linear. */
int cuda_linear_rows(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                     const kn_tensor *b);
int cuda_embedding(kn_ctx *ctx, kn_tensor *y, const kn_tensor *table, const int32_t *ids, int n);
int cuda_layer_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                    const kn_tensor *b, float eps);
int cuda_rms_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps);
int cuda_qkv_split(kn_ctx *ctx, kn_tensor *q, kn_tensor *k, kn_tensor *v, int64_t row0,
                   const kn_tensor *qkv, int heads, const kn_tensor *q_norm,
                   const kn_tensor *k_norm, float eps);
int cuda_activate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act);
int cuda_add(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int cuda_sub(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int cuda_mul(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int cuda_add_scaled(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, float s, const kn_tensor *b);
int cuda_scale(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s);
int cuda_attention(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                   const kn_tensor *v, const kn_attn_args *args);
/* Whether cuda_attention applies args' q/k RMSNorm itself (its tensor-core path) for these
 * operands; otherwise kn_attention normalises first. */
int cuda_attention_folds_norm(const kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                              const kn_tensor *v, const kn_attn_args *args);

int cuda_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                const kn_tensor *b, int stride, int pad);
int cuda_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                    const kn_tensor *b, int groups, float eps);
int cuda_upsample_nearest2x(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int cuda_transpose(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int cuda_ln_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *mod,
                     int shift_idx, int scale_idx, float eps);
int cuda_gate_add(kn_ctx *ctx, kn_tensor *x, const kn_tensor *y, const kn_tensor *mod,
                  int gate_idx);

#ifdef __cplusplus
}
#endif

#endif
