/* A growable byte buffer for the T5 tokenizer's text passes (charsmap normalization,
 * replacements, metaspace). The small bookkeeping growth uses xrealloc; the data is always
 * NUL-terminated so that it can be handed on as a C string. */
#ifndef FOCUS_ENGINE_T5_TOK_BUF_H
#define FOCUS_ENGINE_T5_TOK_BUF_H

#include <stddef.h>
#include <string.h>

#include "common/xalloc.h"

typedef struct {
    char *data;
    size_t len, cap;
} t5_buf;

static inline void t5_buf_reserve(t5_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static inline void t5_buf_put(t5_buf *b, const char *s, size_t n)
{
    t5_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

#endif
