/* The Unigram model of a tokenizers tokenizer.json, segmenting one pre-tokenized piece the
 * way tokenizers 0.20's Unigram::encode_optimized does: a byte-position Viterbi whose ties
 * keep the earliest candidate, one <unk> of min_score - 10 per char with no single-char
 * piece, and runs of <unk> fused into one token. Byte fallback is not supported. */
#ifndef FOCUS_ENGINE_T5_TOK_UNIGRAM_H
#define FOCUS_ENGINE_T5_TOK_UNIGRAM_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct t5_unigram t5_unigram;

typedef struct {
    int32_t *v;
    size_t n, cap;
} t5_ids;

void t5_ids_push(t5_ids *ids, int32_t id);

/* Viterbi work arrays, grown on demand; one per concurrent caller, zero-initialized. */
typedef struct {
    double *score;
    int32_t *start; /* -1: no path reaches this byte yet */
    int32_t *id;
    size_t cap;
} t5_viterbi_scratch;

void t5_viterbi_scratch_free(t5_viterbi_scratch *s);

/* model is tokenizer.json's "model" object (type Unigram). */
int t5_unigram_load(const json_t *model, t5_unigram **out);
void t5_unigram_free(t5_unigram *u);
/* The id of a piece, or -1 when it is not in the vocabulary. */
int32_t t5_unigram_piece_id(const t5_unigram *u, const char *s, size_t n);
/* Appends the ids of s[0..n) (valid UTF-8, n < 2^31) to ids. */
void t5_unigram_encode(const t5_unigram *u, const char *s, size_t n, t5_viterbi_scratch *w,
                       t5_ids *ids);

#endif
