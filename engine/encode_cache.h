/* A small LRU cache of prompt encodings, keyed by (text, max_seq), in front of text_encode(): the
 * empty negative prompt and prompts a user repeats are encoded once. Entries live on the text
 * encoder's device, so a hit costs nothing but a lookup.
 *
 * Not for: stacking encodings into a batch (text_embeds_stack) or knowing anything of jobs. Like
 * the text encoder it sits on, a cache is used by one thread at a time. */
#ifndef FOCUS_ENGINE_ENCODE_CACHE_H
#define FOCUS_ENGINE_ENCODE_CACHE_H

#include "engine/text_encode.h"
#include "kernels/kn.h"

#include <stdint.h>

typedef struct encode_cache encode_cache;

/* capacity: entries kept, at least 2 (smaller values are raised to 2). The cache does not own
 * te, which must outlive it. */
int encode_cache_create(text_encoder *te, kn_ctx *ctx, int capacity, encode_cache **out);
void encode_cache_free(encode_cache *c);

/* The encoding of text at max_seq: seq [1, S, D] and pooled [1, P], encoded on a miss. The
 * tensors belong to the cache and stay valid until lookups of `capacity` other keys have
 * followed, so the results of two consecutive calls (a negative and a positive prompt) can
 * always be used together. */
int encode_cache_get(encode_cache *c, const char *text, int max_seq, const kn_tensor **seq,
                     const kn_tensor **pooled);

/* Texts actually encoded (misses) and lookups answered from the cache (hits) so far. */
uint64_t encode_cache_misses(const encode_cache *c);
uint64_t encode_cache_hits(const encode_cache *c);

#endif
