/* T5EncoderModel (transformers) forward, as SD3's text_encoder_3 runs it: shared embedding (no
 * scaling), relative position bias computed from block 0's table and reused by every block,
 * T5LayerNorm (RMS, no mean, no bias), unscaled attention with no padding mask (the pipeline
 * passes none, so pad tokens are attended to), the gated (or plain) feed-forward, and the final
 * RMS norm. Activations are float32; weights are the files' own. Not the tokenizer. */
#ifndef FOCUS_ENGINE_T5_ENCODER_H
#define FOCUS_ENGINE_T5_ENCODER_H

#include "engine/model_config.h"
#include "kernels/kn.h"

#include <stdint.h>

typedef struct t5_encoder t5_encoder;

/* Opens `dir/model.safetensors` (or its sharded index) and checks every weight against cfg.
 * cfg must stay valid while the model lives. */
int t5_encoder_load(kn_ctx *ctx, const char *dir, const t5_config *cfg, t5_encoder **out);
void t5_encoder_free(t5_encoder *m);

/* Runs n ids; out must be a preallocated F32 tensor of n rows and d_model columns (any
 * leading shape, e.g. a view into the prompt embedding). Activation buffers grow to the
 * largest n seen. */
int t5_encoder_forward(t5_encoder *m, const int32_t *ids, int n, kn_tensor *out);

/* transformers' T5Attention._relative_position_bucket for a bidirectional encoder, in the same
 * float32 arithmetic as torch: rel = key position - query position. */
int t5_relative_bucket(int rel, int num_buckets, int max_distance);

#endif
