/* LRU cache of prompt encodings (see encode_cache.h). The capacity is small (a few dozen at
 * most), so entries sit in a flat array searched linearly and aged with a use counter. */
#include "engine/encode_cache.h"

#include "common/err.h"
#include "common/xalloc.h"

#include <stdlib.h>
#include <string.h>

typedef struct cache_entry {
    char *text; /* NULL: the slot is free */
    int max_seq;
    uint64_t last_use;
    kn_tensor seq, pooled;
} cache_entry;

struct encode_cache {
    text_encoder *te;
    kn_ctx *ctx;
    int capacity;
    cache_entry *entries;
    uint64_t clock, hits, misses;
};

int encode_cache_create(text_encoder *te, kn_ctx *ctx, int capacity, encode_cache **out)
{
    if (!te || !ctx) return err_set(ERR_INVALID, "encode cache: no text encoder or context");
    encode_cache *c = xcalloc(1, sizeof *c);
    c->te = te;
    c->ctx = ctx;
    c->capacity = capacity < 2 ? 2 : capacity;
    c->entries = xcalloc((size_t)c->capacity, sizeof *c->entries);
    *out = c;
    return 0;
}

static void entry_clear(encode_cache *c, cache_entry *e)
{
    kn_free(c->ctx, &e->seq);
    kn_free(c->ctx, &e->pooled);
    free(e->text);
    memset(e, 0, sizeof *e);
}

void encode_cache_free(encode_cache *c)
{
    if (!c) return;
    for (int i = 0; i < c->capacity; i++)
        if (c->entries[i].text) entry_clear(c, &c->entries[i]);
    free(c->entries);
    free(c);
}

int encode_cache_get(encode_cache *c, const char *text, int max_seq, const kn_tensor **seq,
                     const kn_tensor **pooled)
{
    if (!text) return err_set(ERR_INVALID, "encode cache: no text");
    cache_entry *victim = &c->entries[0];
    for (int i = 0; i < c->capacity; i++) {
        cache_entry *e = &c->entries[i];
        if (e->text && e->max_seq == max_seq && strcmp(e->text, text) == 0) {
            e->last_use = ++c->clock;
            c->hits++;
            *seq = &e->seq;
            *pooled = &e->pooled;
            return 0;
        }
        /* A free slot has last_use 0, so it is taken before any entry is evicted. */
        if (e->last_use < victim->last_use) victim = e;
    }
    kn_tensor s, p;
    int rc = text_encode(c->te, text, max_seq, &s, &p);
    if (rc < 0) return rc;
    if (victim->text) entry_clear(c, victim);
    victim->text = xstrdup(text);
    victim->max_seq = max_seq;
    victim->last_use = ++c->clock;
    victim->seq = s;
    victim->pooled = p;
    c->misses++;
    *seq = &victim->seq;
    *pooled = &victim->pooled;
    return 0;
}

uint64_t encode_cache_misses(const encode_cache *c)
{
    return c->misses;
}

uint64_t encode_cache_hits(const encode_cache *c)
{
    return c->hits;
}
