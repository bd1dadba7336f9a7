/* The T5 tokenizer as transformers' T5TokenizerFast runs it from tokenizer.json: added tokens
 * matched with their single_word/lstrip/rstrip/normalized/special flags, the normalizer chain
 * (precompiled SentencePiece charsmap, whitespace rules), the Metaspace pre-tokenizer, Unigram
 * Viterbi segmentation with unknown-piece fusion, the "$A </s>" template, truncation and right
 * padding with <pad>. tokenizer_config.json's add_prefix_space/legacy rebuild the chain as
 * transformers' converter does, and split_special_tokens is honoured. */
#ifndef FOCUS_ENGINE_T5_TOKENIZER_H
#define FOCUS_ENGINE_T5_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct t5_tokenizer t5_tokenizer;

/* ERR_IO when tokenizer.json cannot be read, ERR_FORMAT for a malformed tokenizer.json or
 * tokenizer_config.json, an unsupported component or a bad added token; the message names the
 * file and the field. */
int t5_tokenizer_load(const char *dir, t5_tokenizer **out);
void t5_tokenizer_free(t5_tokenizer *t);
/* Writes exactly max_length ids: content[:max_length-1] + [</s>] + [<pad>]...
 * Returns max_length, or ERR_FORMAT for invalid UTF-8, ERR_RANGE for max_length < 1. */
int t5_tokenize(const t5_tokenizer *t, const char *text, size_t len, int max_length,
                int32_t *ids);
/* The ids of the text alone (no prefix, </s> or padding), at most cap of them; the ids
 * t5_tokenize places after its prefix when cap is max_length less the special tokens. Returns
 * their count. */
int t5_tokenize_content(const t5_tokenizer *t, const char *text, size_t len, int32_t *ids,
                        int cap);
/* Ids the tokenizer puts before and after the text (0 and 1 for T5's template "$A </s>"). */
void t5_tokenizer_specials(const t5_tokenizer *t, int *before, int *after);

#endif
