/* SentencePiece's precompiled normalization charsmap, applied the way the tokenizers
 * library's `Precompiled` normalizer (crate spm_precompiled) applies it: per extended
 * grapheme cluster, the first (shortest) trie match over the whole cluster replaces the
 * whole cluster when the cluster is under 6 bytes; otherwise each char on its own. Only the
 * normalized text is produced (no offset alignments). */
#ifndef FOCUS_ENGINE_SPM_PRECOMPILED_H
#define FOCUS_ENGINE_SPM_PRECOMPILED_H

#include <stddef.h>
#include <stdint.h>

typedef struct spm_precompiled spm_precompiled;

/* b64 is the base64 text of "precompiled_charsmap": u32 trie byte size, the darts-clone
 * double array, then the NUL-terminated replacement pool. */
int spm_precompiled_load(const char *b64, size_t b64_len, spm_precompiled **out);
void spm_precompiled_free(spm_precompiled *p);
/* in must be valid UTF-8. On success *out is a malloc'd buffer (NUL-terminated) of
 * *out_len bytes. */
int spm_precompiled_normalize(const spm_precompiled *p, const char *in, size_t len, char **out,
                              size_t *out_len);

#endif
