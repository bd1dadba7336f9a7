/* The kernels interface, part two: the ops that text encoders and transformers are made of.
 *
 * Conventions for every op here:
 *  - Activations are row-major; an op sees a tensor as rows x cols, where cols is the last
 *    dimension and rows the product of the others (kn_rows/kn_cols).
 *  - Activation dtypes: F32 (the reference mode), F16 or BF16, one dtype per op. CUDA computes
 *    16-bit in its kernels; the CPU widens to float32 and rounds each output (cpu_half.c).
 *    Weights may be F32, F16, BF16 or F8_E4M3 and are widened inside the op, never copied
 *    whole: the CPU backend converts panel by panel into scratch.
 *  - Outputs are preallocated by the caller with the right shape; an op checks shapes and
 *    dtypes and returns ERR_SHAPE / ERR_INVALID with a message otherwise.
 *  - y may alias x for the elementwise ops and the norms (in place).
 *  - Accumulation is in float32 at least. */
#ifndef FOCUS_KERNELS_KN_OPS_H
#define FOCUS_KERNELS_KN_OPS_H

#include "kernels/kn.h"

typedef enum kn_act {
    KN_ACT_SILU,       /* x * sigmoid(x) */
    KN_ACT_GELU_ERF,   /* 0.5 x (1 + erf(x / sqrt 2)) */
    KN_ACT_GELU_TANH,  /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    KN_ACT_QUICK_GELU, /* x * sigmoid(1.702 x) */
} kn_act;

/* y[M,N] = x[M,K] . w[N,K]^T + b[N]   (b may be NULL). M is rows(x), K = cols(x). */
int kn_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
              const kn_tensor *b);

/* y = act(x . w^T + b): kn_linear with the activation as the product's epilogue, applied to
 * each block of the output while it is in cache (CPU) or inside the GEMM (cuBLASLt's GELU
 * epilogue for tanh-GELU in 16-bit on CUDA). The same values as kn_linear then kn_activate
 * up to the vector or scalar path an element takes. */
int kn_linear_act(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                  const kn_tensor *b, kn_act act);

/* kn_linear for the per-sample conditioning rows (adaLN modulation, timestep and pooled
 * embeddings: as many rows as the batch): the CPU multiplies each row on its own, which for a
 * few rows is several times faster than kn_linear's fixed tiles. A call site keeps to one of
 * the two, since their roundings differ; neither's rows depend on the other rows. */
int kn_linear_rows(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b);

/* y[n, D] = table[ids[i], :] for i < n; ids are host int32, checked against rows(table). */
int kn_embedding(kn_ctx *ctx, kn_tensor *y, const kn_tensor *table, const int32_t *ids, int n);

/* LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * w + b, biased variance.
 * w and b may be NULL (no affine). */
int kn_layer_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                  const kn_tensor *b, float eps);

/* RMSNorm over the last dimension: x * rsqrt(mean(x^2) + eps) * w (w may be NULL). Reshape x
 * to [..., head_dim] to normalise per head. */
int kn_rms_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps);

/* The q, k and v of an attention from one joined product: qkv [B, n, 3D] (columns q | k | v)
 * into rows [row0, row0 + n) of every sample of q, k and v [B, L, D], each of the `heads`
 * heads of q and of k normalised as kn_rms_norm would with weights q_norm and k_norm [D /
 * heads] (both NULL: copied as they are). */
int kn_qkv_split(kn_ctx *ctx, kn_tensor *q, kn_tensor *k, kn_tensor *v, int64_t row0,
                 const kn_tensor *qkv, int heads, const kn_tensor *q_norm, const kn_tensor *k_norm,
                 float eps);

int kn_activate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act);

/* Elementwise, all of one shape: y = a + b, y = a - b, y = a * b. */
int kn_add(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int kn_sub(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
int kn_mul(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b);
/* y = a + s * b, rounding s * b to the tensor dtype before the add (as torch does for
 * `a + s * b` written as two ops): the Euler step and the guidance combine. */
int kn_add_scaled(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, float s, const kn_tensor *b);
/* y = x * s. */
int kn_scale(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s);

typedef struct kn_attn_args {
    int heads;              /* H; head_dim = cols(q) / H */
    float scale;            /* multiplies q.k^T; 1/sqrt(head_dim) for SDPA, 1 for T5 */
    int causal;             /* query i sees keys j <= i only */
    const kn_tensor *bias;  /* NULL or [H, Sq, Sk] F32, added to the scaled scores */
    kn_tensor *lse;         /* NULL or [B, H, Sq] F32: receives each row's log-sum-exp */
    /* NULL, or both: [Dh] weights of an RMSNorm (eps norm_eps) applied to every head of q and
     * of k before the product, as kn_rms_norm would (the transformer's qk_norm); the CUDA
     * backend folds it into its 16-bit head-64 kernel. */
    const kn_tensor *q_norm, *k_norm;
    float norm_eps;
} kn_attn_args;

/* Scaled dot-product attention, softmax in float32.
 * q [B, Sq, H*Dh], k and v [B, Sk, H*Dh], o [B, Sq, H*Dh] (heads interleaved in the feature
 * dimension, as a linear layer produces them). */
int kn_attention(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                 const kn_tensor *v, const kn_attn_args *args);

#endif
