/* SentencePiece precompiled charsmap (see spm_precompiled.h): base64 decoding, the
 * darts-clone double-array prefix search and the per-grapheme rewrite. Not a general
 * darts-clone implementation: only the first match along the key is ever used. */
#include "engine/spm_precompiled.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "common/err.h"
#include "common/xalloc.h"
#include "engine/t5_tok_buf.h"

struct spm_precompiled {
    uint32_t *units;
    size_t n_units;
    char *pool; /* replacement strings, each ended by NUL (the last one maybe by the end) */
    size_t pool_len;
};

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Standard alphabet with mandatory padding, as the Rust base64 STANDARD engine wants. */
static int b64_decode(const char *s, size_t n, unsigned char **out, size_t *out_len)
{
    if (n % 4 != 0)
        return err_set(ERR_FORMAT, "precompiled_charsmap: base64 length %zu is not a multiple of 4", n);
    unsigned char *d = malloc(n / 4 * 3 + 1);
    if (!d)
        return err_set(ERR_NOMEM, "precompiled_charsmap: out of memory");
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)s[i + k];
            if (c == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            v[k] = pad ? -1 : b64_value(c);
            if (v[k] < 0) {
                free(d);
                return err_set(ERR_FORMAT, "precompiled_charsmap: invalid base64 at byte %zu", i + (size_t)k);
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        d[o++] = (unsigned char)(w >> 16);
        if (pad < 2)
            d[o++] = (unsigned char)(w >> 8);
        if (pad < 1)
            d[o++] = (unsigned char)w;
    }
    *out = d;
    *out_len = o;
    return 0;
}

int spm_precompiled_load(const char *b64, size_t b64_len, spm_precompiled **out)
{
    unsigned char *blob = NULL;
    size_t blob_len = 0;
    int rc = b64_decode(b64, b64_len, &blob, &blob_len);
    if (rc < 0)
        return rc;
    if (blob_len < 4) {
        free(blob);
        return err_set(ERR_FORMAT, "precompiled_charsmap: %zu bytes, too short for its header", blob_len);
    }
    uint32_t trie_size = (uint32_t)blob[0] | (uint32_t)blob[1] << 8 | (uint32_t)blob[2] << 16 |
                         (uint32_t)blob[3] << 24;
    size_t n_units = trie_size / 4;
    if (n_units == 0 || n_units > (blob_len - 4) / 4) {
        free(blob);
        return err_set(ERR_FORMAT, "precompiled_charsmap: trie size %u does not fit in %zu bytes",
                       trie_size, blob_len);
    }
    spm_precompiled *p = xcalloc(1, sizeof *p);
    p->n_units = n_units;
    p->units = xmalloc(n_units * sizeof *p->units);
    for (size_t i = 0; i < n_units; i++) {
        const unsigned char *u = blob + 4 + 4 * i;
        p->units[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
    }
    /* The pool starts right after the declared units (trie_size rounded down to units). */
    size_t pool_off = 4 + n_units * 4;
    p->pool_len = blob_len - pool_off;
    p->pool = xmalloc(p->pool_len + 1);
    memcpy(p->pool, blob + pool_off, p->pool_len);
    p->pool[p->pool_len] = 0;
    free(blob);
    /* The crate refuses a pool that is not UTF-8 as a whole (NULs included are fine). */
    for (size_t i = 0; i < p->pool_len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)p->pool + i,
                                              (utf8proc_ssize_t)(p->pool_len - i), &c);
        if (k <= 0) {
            spm_precompiled_free(p);
            return err_set(ERR_FORMAT, "precompiled_charsmap: replacement pool is not UTF-8 at byte %zu", i);
        }
        i += (size_t)k;
    }
    *out = p;
    return 0;
}

void spm_precompiled_free(spm_precompiled *p)
{
    if (!p)
        return;
    free(p->units);
    free(p->pool);
    free(p);
}

static uint32_t unit_offset(uint32_t u)
{
    return (u >> 10) << ((u & (1u << 9)) >> 6);
}

/* The value of the first (shortest) key that prefixes s[0..n), stopping at a NUL byte as
 * the crate does; -1 when there is none. */
static long first_prefix_value(const spm_precompiled *p, const unsigned char *s, size_t n)
{
    size_t pos = 0;
    uint32_t unit = p->units[0];
    pos ^= unit_offset(unit);
    for (size_t i = 0; i < n && s[i]; i++) {
        pos ^= s[i];
        if (pos >= p->n_units)
            return -1;
        unit = p->units[pos];
        if ((unit & 0x800000FFu) != s[i])
            return -1;
        pos ^= unit_offset(unit);
        if ((unit >> 8) & 1) {
            if (pos >= p->n_units)
                return -1;
            return (long)(p->units[pos] & 0x7FFFFFFFu);
        }
    }
    return -1;
}

/* Appends the replacement for s[0..n) when the trie has one; returns 1 when it did, 0 when
 * there is none, or ERR_FORMAT for a pool offset past the pool. */
static int transform(const spm_precompiled *p, const char *s, size_t n, t5_buf *dst)
{
    long v = first_prefix_value(p, (const unsigned char *)s, n);
    if (v < 0)
        return 0;
    if ((size_t)v > p->pool_len)
        return err_set(ERR_FORMAT, "precompiled_charsmap: replacement offset %ld past the pool (%zu bytes)",
                       v, p->pool_len);
    const char *r = p->pool + v;
    t5_buf_put(dst, r, strlen(r));
    return 1;
}

/* The crate's rule for one grapheme cluster s[0..n). */
static int normalize_cluster(const spm_precompiled *p, const char *s, size_t n, t5_buf *dst)
{
    int rc = n < 6 ? transform(p, s, n, dst) : 0;
    if (rc != 0)
        return rc < 0 ? rc : 0;
    for (size_t j = 0; j < n;) {
        size_t k = (size_t)utf8proc_utf8class[(unsigned char)s[j]];
        rc = transform(p, s + j, k, dst);
        if (rc < 0)
            return rc;
        if (rc == 0)
            t5_buf_put(dst, s + j, k);
        j += k;
    }
    return 0;
}

int spm_precompiled_normalize(const spm_precompiled *p, const char *in, size_t len, char **out,
                              size_t *out_len)
{
    t5_buf dst = {0};
    t5_buf_reserve(&dst, len);
    const utf8proc_uint8_t *s = (const utf8proc_uint8_t *)in;
    utf8proc_int32_t state = 0, prev = -1;
    size_t g_start = 0;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0) {
            free(dst.data);
            return err_set(ERR_FORMAT, "invalid UTF-8 at byte %zu", i);
        }
        if (i > 0 && utf8proc_grapheme_break_stateful(prev, c, &state)) {
            int rc = normalize_cluster(p, in + g_start, i - g_start, &dst);
            if (rc < 0) {
                free(dst.data);
                return rc;
            }
            g_start = i;
        }
        prev = c;
        i += (size_t)k;
    }
    if (g_start < len) {
        int rc = normalize_cluster(p, in + g_start, len - g_start, &dst);
        if (rc < 0) {
            free(dst.data);
            return rc;
        }
    }
    *out = dst.data;
    *out_len = dst.len;
    return 0;
}
