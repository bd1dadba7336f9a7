/* The CLIP BPE tokenizer, as transformers' CLIPTokenizer computes it without ftfy: text
 * cleanup (BasicTokenizer: control characters dropped, whitespace normalised, CJK spaced, NFC,
 * lowercase), the pre-tokenization pattern with Unicode letter/number classes, byte-to-unicode,
 * BPE with the "</w>" end-of-word marker, then [BOS] + ids[:max-2] + [EOS] padded to the
 * tokenizer's model_max_length with its own pad token (CLIP-L pads with <|endoftext|>,
 * SD3's CLIP-G with "!"). Loaded from vocab.json, merges.txt and the tokenizer's config files. */
#ifndef FOCUS_ENGINE_CLIP_TOKENIZER_H
#define FOCUS_ENGINE_CLIP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct clip_tokenizer clip_tokenizer;

/* ERR_MISSING when vocab.json, merges.txt or tokenizer_config.json is absent, ERR_FORMAT when
 * one is malformed; the message names the file. */
int clip_tokenizer_load(const char *dir, clip_tokenizer **out);
void clip_tokenizer_free(clip_tokenizer *t);
/* model_max_length from tokenizer_config.json (77). */
int clip_tokenizer_max_length(const clip_tokenizer *t);
/* Writes exactly clip_tokenizer_max_length() ids. Returns that count, or ERR_FORMAT for
 * invalid UTF-8 (ERR_NOMEM if memory runs out). Safe to call from several threads at once on
 * one tokenizer. */
int clip_tokenize(const clip_tokenizer *t, const char *text, size_t len, int32_t *ids);
/* The ids of the text alone, without BOS, EOS or padding, at most cap of them: the ids
 * clip_tokenize places from position 1 on when cap is max_length - 2. Returns their count. */
int clip_tokenize_content(const clip_tokenizer *t, const char *text, size_t len, int32_t *ids,
                          int cap);

#endif
