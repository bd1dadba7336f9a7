/* The SD3 diffusion transformer (diffusers' SD3Transformer2DModel: MMDiT, and MMDiT-X with
 * dual attention layers and qk RMSNorm), loaded from `<model>/transformer/` and run through the
 * kernels interface only, so the same code serves the CPU and CUDA backends.
 *
 * Not here: classifier-free guidance, the scheduler and the step loop (the sampler owns them);
 * one forward is one call to mmdit_forward on a batch the caller has already assembled. */
#ifndef FOCUS_ENGINE_MMDIT_H
#define FOCUS_ENGINE_MMDIT_H

#include "engine/model_config.h"
#include "kernels/kn.h"

#include <stdint.h>

typedef struct mmdit mmdit;

/* Maps (CPU) or uploads (CUDA) every weight of `mc->path/transformer`, checking each tensor's
 * shape against mc->mmdit. A config that contradicts the weights (a shape, a missing tensor, a
 * tensor the config has no place for) fails with a message naming the file and the tensor. */
int mmdit_load(kn_ctx *ctx, const model_config *mc, mmdit **out);
void mmdit_free(mmdit *m);
const mmdit_config *mmdit_get_config(const mmdit *m);
/* The context the transformer computes on. */
kn_ctx *mmdit_ctx(const mmdit *m);

/* The dtype the forward pass computes in: KN_F32 (the default and the reference mode), KN_BF16
 * or KN_F16 (16-bit activations, float32 accumulation; inputs and output stay F32 and are
 * converted at the edges). Any other dtype is ERR_INVALID. Frees the scratch when it changes. */
int mmdit_set_compute(mmdit *m, kn_dtype act);

/* Bytes of the scratch a forward pass of B samples, an h x w latent and S text rows keeps on
 * the device (the model's arena; it grows to the largest shape seen and is reused). */
uint64_t mmdit_scratch_bytes(const mmdit *m, int64_t B, int64_t h, int64_t w, int64_t S);

/* Whether the transformer can take a latent of h x w (the VAE latent grid, pixels / 8): both
 * positive, divisible by patch_size, and a patch grid within pos_embed_max_size. Returns 0, or
 * ERR_RANGE with a message saying which limit is broken, in latent units (the caller adds the
 * pixel size it was asked for). The daemon calls this at submission; mmdit_forward calls it too. */
int mmdit_check_size(const mmdit_config *cfg, int64_t h, int64_t w);

/* One forward pass, all tensors F32 on the model's device (whatever the compute dtype):
 *   x       [B, in_channels, h, w]                 latents
 *   t       B host floats                          the scheduler's timesteps (e.g. 1000.0)
 *   ctx_in  [B, S, joint_attention_dim]            prompt embeddings (S is free, e.g. 333)
 *   pooled  [B, pooled_projection_dim]
 *   out     [B, out_channels, h, w]                the velocity prediction
 * skip lists n_skip block indices that are not executed (skip-layer guidance: their inputs pass
 * through unchanged); NULL / 0 runs every block. Scratch memory is kept in the model and grows
 * to the largest (B, h, w, S) seen, so repeated steps of one shape allocate nothing. */
int mmdit_forward(mmdit *m, const kn_tensor *x, const float *t, const kn_tensor *ctx_in,
                  const kn_tensor *pooled, const int *skip, int n_skip, kn_tensor *out);

/* ---- the FOCUS controller's capture and input gradient (mmdit_grad.c) ---- */

/* What the controller takes from a forward pass for one sample of its batch: every joint
 * block's image-to-text attention maps of chosen text rows (head-averaged, each image query's
 * row normalised over the whole joint sequence, from the attention's log-sum-exp: no N x N
 * matrix), and the block inputs that mmdit_focus_grad recomputes each block from. */
typedef struct mmdit_focus mmdit_focus;

/* A capture of text rows tok[0..n) (indices into the context's rows, e.g. a CLIP position p
 * and a T5 position 77 + p) of batch sample `sample`. */
int mmdit_focus_create(mmdit *m, const int32_t *tok, int n, int sample, mmdit_focus **out);
void mmdit_focus_free(mmdit_focus *f);
/* Captures batch row `sample` from the next forward on (a guidance batch's conditional row
 * moves with the jobs batched before it). */
int mmdit_focus_set_sample(mmdit_focus *f, int sample);

/* Bytes a capture of n text rows holds on the device for a forward of B samples, an h x w
 * latent and S text rows, its reverse pass's buffers included (fixed: they do not grow). */
uint64_t mmdit_focus_bytes(const mmdit *m, int n, int64_t B, int64_t h, int64_t w, int64_t S);

/* mmdit_forward, capturing into f (the output is the same, bit for bit). */
int mmdit_forward_focus(mmdit *m, const kn_tensor *x, const float *t, const kn_tensor *ctx_in,
                        const kn_tensor *pooled, kn_tensor *out, mmdit_focus *f);

/* The maps of the last captured forward, host float32 [num_layers, n, h/p * w/p] (token j's
 * map over the image tokens in row-major patch order), and that grid's size. */
const float *mmdit_focus_maps(const mmdit_focus *f, int64_t *gh, int64_t *gw);

/* The gradient of a cost of the captured maps with respect to the captured sample's input
 * latent: dmaps (host float32, the maps' shape) is d cost / d maps, dx [1, in_channels, h, w]
 * F32 receives d cost / d x. One reverse pass through the joint blocks, each recomputed from
 * its saved input (no weight gradients; the modulation, a function of t and the pooled text
 * alone, is a constant). */
int mmdit_focus_grad(mmdit *m, mmdit_focus *f, const float *dmaps, kn_tensor *dx);

/* The 256-wide sinusoidal timestep projection that the time embedder consumes (diffusers
 * Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)), in float32 as torch computes
 * it: out[0..128) = cos(t * f_k), out[128..256) = sin(t * f_k). */
void mmdit_timestep_proj(float t, float out[256]);

#endif
