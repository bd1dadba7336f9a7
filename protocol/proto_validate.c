/* The bounded validator: one pass over an untrusted frame's raw bytes, before msgpack-c sees it.
 * msgpack-c trusts the counts in array and map headers and reserves memory for them, so a few
 * bytes could make it allocate gigabytes; this pass allocates nothing, keeps its own stack of
 * open containers, and refuses a frame unless every declared element can still fit in the
 * bytes that remain. It checks structure and limits only; types of fields are the decoder's. */
#include "protocol/proto_internal.h"

#include "common/err.h"

#include <string.h>
#include <utf8proc.h>

const struct proto_limits proto_request_limits = {
    .max_bytes = PROTO_MAX_REQUEST,
    .max_depth = 4,
    .max_entries = 64,
    /* Above every field's own limit, so that a long prompt is a bad_field naming it. */
    .max_str = 2 * PROTO_MAX_PROMPT,
    .max_bin = 2 * PROTO_MAX_PROMPT,
};

const struct proto_limits proto_server_limits = {
    .max_bytes = PROTO_MAX_SERVER,
    .max_depth = 8,
    .max_entries = 4096,
    .max_str = 64 * 1024,
    .max_bin = PROTO_MAX_SERVER,
};

static uint64_t be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

enum vkind { V_SCALAR, V_STR, V_BIN, V_ARRAY, V_MAP, V_EXT, V_NEVER };

/* Decodes the header at p: its size in bytes (*hsize bytes of header, of which the first is
 * the type byte), and either the payload length (str, bin, scalar) or the element count. */
static enum vkind head(uint8_t b, size_t *hsize, size_t *lenbytes, uint64_t *fixed)
{
    *lenbytes = 0;
    *fixed = 0;
    *hsize = 1;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return V_SCALAR;
    if (b >= 0x80 && b <= 0x8f) {
        *fixed = b & 0x0f;
        return V_MAP;
    }
    if (b >= 0x90 && b <= 0x9f) {
        *fixed = b & 0x0f;
        return V_ARRAY;
    }
    if (b >= 0xa0 && b <= 0xbf) {
        *fixed = b & 0x1f;
        return V_STR;
    }
    switch (b) {
    case 0xc4: case 0xc5: case 0xc6:
        *lenbytes = (size_t)1 << (b - 0xc4);
        return V_BIN;
    case 0xca: *fixed = 4; return V_SCALAR;
    case 0xcb: *fixed = 8; return V_SCALAR;
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        *fixed = (uint64_t)1 << (b - 0xcc);
        return V_SCALAR;
    case 0xd0: case 0xd1: case 0xd2: case 0xd3:
        *fixed = (uint64_t)1 << (b - 0xd0);
        return V_SCALAR;
    case 0xd9: case 0xda: case 0xdb:
        *lenbytes = (size_t)1 << (b - 0xd9);
        return V_STR;
    case 0xdc: case 0xdd:
        *lenbytes = (size_t)2 << (b - 0xdc);
        return V_ARRAY;
    case 0xde: case 0xdf:
        *lenbytes = (size_t)2 << (b - 0xde);
        return V_MAP;
    case 0xc1:
        return V_NEVER;
    }
    return V_EXT; /* 0xc7..0xc9, 0xd4..0xd8 */
}

static bool utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0)
            return false;
        i += (size_t)k;
    }
    return true;
}

int proto_validate(const void *buf, size_t len, const struct proto_limits *lim,
                   struct proto_error *perr)
{
    const uint8_t *p = buf;
    if (len > lim->max_bytes)
        return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL,
                          "frame of %zu bytes exceeds the limit of %zu", len, lim->max_bytes);
    if (len == 0)
        return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL, "empty frame");
    unsigned max_depth = lim->max_depth < PROTO_MAX_DEPTH_HARD ? lim->max_depth
                                                                : PROTO_MAX_DEPTH_HARD;
    /* left[d]: elements still owed to the container open at depth d (keys and values count
     * separately in maps); owed: their sum, each needing at least one more byte. */
    uint64_t left[PROTO_MAX_DEPTH_HARD];
    bool is_map[PROTO_MAX_DEPTH_HARD];
    unsigned depth = 0;
    uint64_t owed = 0;
    size_t pos = 0;
    do {
        if (pos >= len)
            return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL, "truncated at byte %zu", pos);
        size_t hsize, lenbytes;
        uint64_t n;
        enum vkind k = head(p[pos], &hsize, &lenbytes, &n);
        if (k == V_NEVER)
            return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL, "byte 0xc1 at %zu", pos);
        if (k == V_EXT)
            return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL,
                              "ext type 0x%02x at byte %zu is not allowed", p[pos], pos);
        if (len - pos < hsize + lenbytes)
            return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL, "truncated at byte %zu", pos);
        if (lenbytes)
            n = be(p + pos + 1, lenbytes);
        if (depth == 0 && k != V_MAP)
            return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL, "top level is not a map");
        if (depth > 0 && is_map[depth - 1] && left[depth - 1] % 2 == 0 && k != V_STR)
            return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL,
                              "map key at byte %zu is not a string", pos);
        size_t at = pos;
        pos += hsize + lenbytes;
        size_t rest = len - pos;
        if (depth > 0) {
            left[depth - 1]--;
            owed--;
        }
        switch (k) {
        case V_SCALAR:
            if (n > rest)
                return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL, "truncated at byte %zu", at);
            pos += n;
            break;
        case V_STR:
        case V_BIN: {
            uint64_t max = k == V_STR ? lim->max_str : lim->max_bin;
            if (n > max)
                return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL,
                                  "%s at byte %zu of %llu bytes exceeds the limit of %llu",
                                  k == V_STR ? "string" : "bin", at, (unsigned long long)n,
                                  (unsigned long long)max);
            if (n > rest)
                return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL, "truncated at byte %zu", at);
            if (k == V_STR && !utf8_ok(p + pos, n))
                return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL,
                                  "string at byte %zu is not valid UTF-8", at);
            pos += n;
            break;
        }
        case V_ARRAY:
        case V_MAP: {
            if (n > lim->max_entries)
                return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL,
                                  "%s at byte %zu declares %llu entries, more than %u",
                                  k == V_MAP ? "map" : "array", at, (unsigned long long)n,
                                  lim->max_entries);
            if (depth >= max_depth)
                return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL,
                                  "nesting deeper than %u at byte %zu", max_depth, at);
            uint64_t elems = k == V_MAP ? 2 * n : n;
            if (owed + elems > rest)
                return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL,
                                  "%s at byte %zu declares more elements than bytes remain",
                                  k == V_MAP ? "map" : "array", at);
            left[depth] = elems;
            is_map[depth] = k == V_MAP;
            owed += elems;
            depth++;
            break;
        }
        default:
            break;
        }
        while (depth > 0 && left[depth - 1] == 0)
            depth--;
    } while (depth > 0);
    if (pos != len)
        return proto_fail(perr, PROTO_E_BAD_MESSAGE, NULL,
                          "%zu trailing bytes after the message", len - pos);
    return 0;
}
