/* CLIPTextModelWithProjection (transformers), the forward pass SD3 needs from CLIP-L and
 * OpenCLIP bigG: token + position embeddings, pre-LN layers with causal self-attention, then
 *   seq    = hidden_states[-2], the output of layer L-2 (the input embeddings when L = 1),
 *            without the final LayerNorm (the pipeline's clip_skip = None);
 *   pooled = text_projection(final_layer_norm(last layer output)[eos row]).
 * The EOS row follows transformers: with the legacy eos_token_id 2 in the config it is the first
 * position of the largest id, otherwise the first position holding eos_token_id (0 if none).
 * Weights are the files' own (mapped; widened inside the ops); activations are float32.
 * Not a tokenizer and not the prompt assembly (text_encode.h). */
#ifndef FOCUS_ENGINE_CLIP_TEXT_H
#define FOCUS_ENGINE_CLIP_TEXT_H

#include "engine/model_config.h"
#include "kernels/kn.h"

#include <stdint.h>

typedef struct clip_text clip_text;

/* Opens `dir/model.safetensors` (or its sharded index) and checks every weight against cfg.
 * cfg must stay valid while the model lives. */
int clip_text_load(kn_ctx *ctx, const char *dir, const clip_config *cfg, clip_text **out);
void clip_text_free(clip_text *m);

/* Runs n ids (1 <= n <= max_position_embeddings). seq must be a preallocated F32 tensor of n
 * rows and hidden_size columns, pooled one of 1 row and projection_dim columns (any leading
 * shape). */
int clip_text_forward(clip_text *m, const int32_t *ids, int n, kn_tensor *seq, kn_tensor *pooled);

/* The row pooled for these ids (see the top of this file). */
int clip_text_eos_index(const clip_config *cfg, const int32_t *ids, int n);

#endif
