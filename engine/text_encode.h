/* Prompt encoding as StableDiffusion3Pipeline.encode_prompt does it, for one text at a time:
 * the three tokenizers, CLIP-L and CLIP-G (penultimate-layer sequence + projected pooled EOS
 * row) and the T5 encoder, assembled into
 *
 *   seq    [1, clip_len + t5_len, D]  rows 0..clip_len-1: [L_seq | G_seq | zeros up to D],
 *                                     then the T5 sequence (zeros without text_encoder_3)
 *   pooled [1, P_L + P_G]             [L_pooled | G_pooled]
 *
 * where D is the T5 width (the transformer's joint_attention_dim without T5), clip_len is the
 * CLIP tokenizer's model_max_length (77) and t5_len is max_seq (clip_len without T5).
 *
 * The pipeline's batch is built from such single-text encodings: the caller encodes each
 * distinct text once (and may cache it by (text, max_seq)), then text_embeds_stack() lays them
 * out with each copy per image adjacent, the negative (unconditional) half first, as diffusers
 * does. A negative prompt is just another text ("" when the user gave none: the empty string is
 * really encoded). This module is not the cache and knows nothing of jobs.
 *
 * A text_encoder is used by one thread at a time (it owns its activation scratch). */
#ifndef FOCUS_ENGINE_TEXT_ENCODE_H
#define FOCUS_ENGINE_TEXT_ENCODE_H

#include "engine/clip_tokenizer.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "engine/t5_tokenizer.h"
#include "kernels/kn.h"
#include "kernels/kn_ops.h"

#include <stdint.h>

/* The pipeline refuses max_sequence_length above this. */
#define TEXT_MAX_SEQ_LIMIT 512
#define TEXT_MAX_SEQ_DEFAULT 256

typedef struct text_tokenizers {
    clip_tokenizer *clip_l; /* tokenizer/ */
    clip_tokenizer *clip_g; /* tokenizer_2/ */
    t5_tokenizer *t5;       /* tokenizer_3/; NULL when the model has no text_encoder_3 */
} text_tokenizers;

/* Loads the tokenizers of the model at cfg->path; checks that both CLIP tokenizers have the
 * same model_max_length. */
int text_tokenizers_load(const model_config *cfg, text_tokenizers *out);
void text_tokenizers_free(text_tokenizers *t);

/* The ids one text becomes: clip_len ids for each CLIP tokenizer, t5_len ids for T5
 * (t5_len 0 without a T5 tokenizer). */
typedef struct text_ids {
    int clip_len, t5_len;
    int32_t *clip_l, *clip_g, *t5;
} text_ids;

int text_tokenize(const text_tokenizers *tok, const char *text, int max_seq, text_ids *out);
void text_ids_free(text_ids *ids);

typedef struct text_encoder text_encoder;

/* Loads the tokenizers and the three encoders (text_encoder/, text_encoder_2/, and
 * text_encoder_3/ when present) onto ctx. Weight shapes are checked against the configs; a
 * mismatch names the file and the tensor. */
int text_encoder_load(kn_ctx *ctx, const model_config *cfg, text_encoder **out);
void text_encoder_free(text_encoder *te);

const text_tokenizers *text_encoder_tokenizers(const text_encoder *te);
/* Rows of seq for this max_seq, its width D, and the pooled width. */
int64_t text_encoder_seq_len(const text_encoder *te, int max_seq);
int64_t text_encoder_width(const text_encoder *te);
int64_t text_encoder_pooled_width(const text_encoder *te);

/* Encodes one text. Allocates seq [1, seq_len, D] and pooled [1, P] (F32) on the encoder's
 * context; the caller frees them with kn_free. max_seq must be in 1..TEXT_MAX_SEQ_LIMIT. */
int text_encode(text_encoder *te, const char *text, int max_seq, kn_tensor *seq, kn_tensor *pooled);

/* out = cat over i of parts[i] repeated `repeat` times along dim 0 (each part's copies
 * adjacent). parts share a shape [1, ...]; out is allocated on ctx with shape
 * [n_parts * repeat, ...]. */
int text_embeds_stack(kn_ctx *ctx, kn_tensor *out, const kn_tensor *const *parts, int n_parts,
                      int repeat);

/* ---- shared by the encoder loaders (clip_text.c, t5_encoder.c) ---- */

/* One weight of a table-driven loader: name (a printf format that may take the layer index),
 * rank and shape, the config values the shape comes from (for the message when the file
 * disagrees: "hidden_size=768"); an `optional` weight may be absent from the archive. */
typedef struct text_weight_spec {
    const char *name;
    int ndim;
    int64_t shape[2];
    const char *why;
    int optional;
} text_weight_spec;

/* Looks up each spec (name formatted with `layer`) in the archive, checks its shape, and
 * makes it usable on ctx. dst[i] has data NULL for an absent optional weight. On error the
 * already-loaded weights are released. */
int text_weights_load(kn_ctx *ctx, const st_archive *a, const text_weight_spec *spec, int n,
                      int layer, kn_tensor *dst);
void text_weights_free(kn_ctx *ctx, kn_tensor *w, int n);
/* The kernel activation for a config's activation name. */
int text_act_of(act_kind_cfg a, kn_act *out);

#endif
