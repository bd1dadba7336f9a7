/* Checked allocation: the x* wrappers abort with a message on exhaustion, for the small
 * bookkeeping allocations whose failure no caller could handle. Large buffers (tensors,
 * images) use plain malloc and report ERR_NOMEM instead. */
#ifndef FOCUS_COMMON_XALLOC_H
#define FOCUS_COMMON_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

#endif
