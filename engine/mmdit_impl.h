/* Internal to engine/mmdit*.c: the transformer's weights, activation views and model struct,
 * shared by the forward pass (mmdit.c) and the FOCUS capture and input gradient
 * (mmdit_grad.c). Not for use elsewhere. */
#ifndef FOCUS_ENGINE_MMDIT_IMPL_H
#define FOCUS_ENGINE_MMDIT_IMPL_H

#include "engine/mmdit.h"
#include "engine/safetensors.h"

#include <stdbool.h>

#define MMDIT_EPS 1e-6f /* every LayerNorm and qk RMSNorm of the model */
#define MMDIT_TPROJ 256 /* width of the sinusoidal timestep projection */
#define MMDIT_MAX_NAME 160

typedef struct lin {
    kn_tensor w, b;
} lin;

/* One attention stream: the image stream of `attn` (to_q..to_out.0, norm_q/k), its text stream
 * (add_q_proj..to_add_out, norm_added_q/k) or `attn2`; q, k and v joined into one [3D, D]
 * product. out.w.data is NULL for the last block's text stream, norm_q.data NULL without qk
 * norm. */
typedef struct attn_stream {
    lin qkv, out;
    kn_tensor norm_q, norm_k;
} attn_stream;

typedef struct block {
    bool dual, last;
    lin norm1, norm1_ctx; /* modulation linears: 6D or 9D, and 6D or 2D outputs */
    attn_stream img, txt, img2;
    lin ff1, ff2, ffc1, ffc2;
} block;

/* Views of the arena for one forward (shapes are the current sizes). */
typedef struct acts {
    int64_t B, N, S, L;
    kn_tensor tok, cx, ntok, nctx; /* [B,N,D] [B,S,D] [B,N,D] [B,S,D] */
    kn_tensor q, k, v, o;          /* [B,L,D] joint; [B,N,D] views of them for attn2 */
    kn_tensor aimg, actx;          /* [B,N,D] [B,S,D]: attention and FF outputs */
    kn_tensor hid;                 /* FF hidden, joined q/k/v product, proj_out output */
    kn_tensor temb, tact, tmp;     /* [B,D] */
    kn_tensor tproj;               /* [B,256] */
    kn_tensor mod, modc;           /* [B, C, D] */
    kn_tensor pos;                 /* [N, D] cropped position embedding */
    /* The float32 inputs in the compute dtype (empty in float32 mode, which reads them in
     * place): x [B, C, h, w] as [B * C * N * p * p], context [B, S, J], pooled [B, P]. */
    kn_tensor xin, ctxin, pin;
} acts;

struct mmdit {
    kn_ctx *ctx;
    mmdit_config cfg;
    kn_dtype act; /* activation dtype: KN_F32 (default), KN_BF16 or KN_F16 */
    int64_t D, heads, head_dim, ffdim;
    st_archive *ar;

    kn_tensor **loaded; /* every weight tensor, for kn_free (NULL where a part of a joined one) */
    int n_loaded, cap_loaded;
    const void **used; /* host data pointers of the loaded tensors, while loading */

    lin patch, t1, t2, p1, p2, ctx_emb, norm_out, proj_out;
    kn_tensor pos_embed; /* [1, G*G, D] */
    block *blocks;

    kn_tensor arena;
    float *tproj_host;           /* [cap_b, 256]: the timestep projections before upload */
    int64_t cap_b, cap_n, cap_s; /* sizes the arena regions are laid out for */
    int64_t pos_gh, pos_gw;      /* crop held in the pos region; 0 when none */
    mmdit_focus *focus;          /* the capture of the forward under way, or NULL */
};

/* Rows [row0, row0+nrows) of sample b of a [B, R, C] tensor, as [nrows, C]. */
static inline kn_tensor mmdit_rows(const kn_tensor *t, int64_t b, int64_t row0, int64_t nrows)
{
    const int64_t R = t->shape[1], C = t->shape[2];
    return kn_view(t, (b * R + row0) * C, 2, (int64_t[]){nrows, C});
}

/* The capture hooks of the forward pass (mmdit_grad.c): block i's inputs, before it runs, and
 * its joint attention's maps, after it (q and k normalised, lse written). */
int mmdit_focus_save_inputs(mmdit *m, int i, const acts *a);
int mmdit_focus_save_maps(mmdit *m, int i, const acts *a);
/* Where the joint attention of a captured forward writes its log-sum-exp rows, or NULL. */
kn_tensor *mmdit_focus_lse(mmdit *m, const acts *a);

#endif
