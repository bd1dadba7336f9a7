/* The T5 tokenizer as transformers' T5TokenizerFast runs it from tokenizer.json: the
 * normalizer chain (precompiled SentencePiece charsmap, whitespace rules), the Metaspace
 * pre-tokenizer, Unigram Viterbi segmentation with unknown-piece fusion, the "$A </s>"
 * template, truncation and right padding with <pad>. */
#ifndef FOCUS_ENGINE_T5_TOKENIZER_H
#define FOCUS_ENGINE_T5_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct t5_tokenizer t5_tokenizer;

int t5_tokenizer_load(const char *dir, t5_tokenizer **out);
void t5_tokenizer_free(t5_tokenizer *t);
/* Writes exactly max_length ids: content[:max_length-1] + [</s>] + [<pad>]...
 * Returns max_length, or ERR_FORMAT for invalid UTF-8, ERR_RANGE for max_length < 1. */
int t5_tokenize(const t5_tokenizer *t, const char *text, size_t len, int max_length,
                int32_t *ids);

#endif
