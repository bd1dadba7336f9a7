/* The AutoencoderKL decoder of SD3 (diffusers' AutoencoderKL.decode: optional post_quant_conv,
 * then Decoder: conv_in, mid block with one group-normed self-attention, up blocks of
 * ResnetBlock2D and nearest 2x upsampling, GroupNorm + SiLU + conv_out), loaded from
 * `<model>/vae/` for any vae_config and run through the kernels interface.
 *
 * Not here: the encoder (text-to-image never encodes), tiling and slicing, and the pipeline's
 * post-processing of the image (x * 0.5 + 0.5, clamp, uint8). */
#ifndef FOCUS_ENGINE_VAE_H
#define FOCUS_ENGINE_VAE_H

#include "engine/model_config.h"
#include "kernels/kn.h"

#include <stdint.h>

typedef struct vae vae;

/* Maps (CPU) or uploads (CUDA) the decoder weights of `mc->path/vae`, each shape checked against
 * mc->vae; a config that contradicts the weights fails with a message naming file and tensor. */
int vae_load(kn_ctx *ctx, const model_config *mc, vae **out);
void vae_free(vae *v);
const vae_config *vae_get_config(const vae *v);
/* Pixels per latent cell along each side: 2^(number of blocks - 1), 8 for SD3. */
int vae_scale_factor(const vae *v);

/* The dtype the decoder computes in: KN_F32 (the default and the reference mode), KN_BF16 or
 * KN_F16 (16-bit activations, float32 accumulation; the latents and the image stay F32 and
 * are converted at the edges). Any other dtype is ERR_INVALID. */
int vae_set_compute(vae *v, kn_dtype act);

/* Bytes of the scratch a decode of B latents of h x w keeps on the device (grows to the
 * largest seen and is reused). */
uint64_t vae_scratch_bytes(const vae *v, int64_t B, int64_t h, int64_t w);

/* Decodes z [B, latent_channels, h, w] F32, already in the decoder's input scale (the
 * pipeline's `latents / scaling_factor + shift_factor`), into image
 * [B, out_channels, h * f, w * f] F32 with nominal range [-1, 1] (f = vae_scale_factor; no
 * clamp). Scratch memory is kept in the model and grows to the largest (B, h, w) seen. */
int vae_decode(vae *v, const kn_tensor *z, kn_tensor *image);

/* The same from the sampler's latents: z = latents / scaling_factor + shift_factor first. The
 * division is done as a multiplication by 1 / scaling_factor (no divide op), which can differ
 * from torch's division by one float32 ulp. */
int vae_decode_latents(vae *v, const kn_tensor *latents, kn_tensor *image);

#endif
