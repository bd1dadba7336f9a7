/* NumPy .npy reading and writing (see npy.h). The header is the Python dict literal that
 * numpy.lib.format writes; it is parsed only as far as its three keys, and every field is
 * checked before the data is trusted (magic, version, header length, dtype, shape overflow,
 * exact data size). */
#include "engine/npy.h"

#include "common/err.h"
#include "common/xalloc.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* ---- writing ---- */

static int npy_write(const char *path, const char *descr, const void *data, size_t elem_size,
                     int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > NPY_MAX_DIMS)
        return err_set(ERR_INVALID, "%s: rank %d outside 0..%d", path, ndim, NPY_MAX_DIMS);
    char dict[512];
    int n =
        snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return err_set(ERR_INVALID, "%s: negative dimension %lld", path, (long long)shape[i]);
        count *= (size_t)shape[i];
        n +=
            snprintf(dict + n, sizeof dict - (size_t)n, i ? ", %lld" : "%lld", (long long)shape[i]);
    }
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%s), }", ndim == 1 ? "," : "");
    /* numpy pads with spaces so that the data starts on a 64-byte boundary, then ends the
     * header with a newline. */
    size_t prefix = sizeof npy_magic + 2 + 2;
    size_t total = (prefix + (size_t)n + 1 + 63) / 64 * 64;
    size_t hlen = total - prefix;
    char header[640];
    memcpy(header, npy_magic, sizeof npy_magic);
    header[6] = 1;
    header[7] = 0;
    header[8] = (char)(hlen & 0xff);
    header[9] = (char)(hlen >> 8);
    memcpy(header + prefix, dict, (size_t)n);
    memset(header + prefix + n, ' ', hlen - (size_t)n - 1);
    header[total - 1] = '\n';

    size_t plen = strlen(path);
    char *tmp = xmalloc(plen + 5);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int rc = err_set(ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    bool ok = fwrite(header, 1, total, f) == total;
    if (ok && count) ok = fwrite(data, elem_size, count, f) == count;
    int saved = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        saved = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        saved = errno;
    }
    if (!ok) {
        remove(tmp);
        free(tmp);
        return err_set(ERR_IO, "%s: write failed: %s", path, strerror(saved));
    }
    free(tmp);
    return 0;
}

int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape)
{
    return npy_write(path, "<f4", data, sizeof(float), ndim, shape);
}

int npy_write_i32(const char *path, const int32_t *data, int ndim, const int64_t *shape)
{
    return npy_write(path, "<i4", data, sizeof(int32_t), ndim, shape);
}

int npy_write_i64(const char *path, const int64_t *data, int ndim, const int64_t *shape)
{
    return npy_write(path, "<i8", data, sizeof(int64_t), ndim, shape);
}

/* ---- reading ---- */

typedef struct npy_raw {
    char kind; /* 'f', 'i', 'u', 'b' */
    size_t elem_size;
    const unsigned char *data; /* into buf */
    unsigned char *buf;
} npy_raw;

static int read_file(const char *path, unsigned char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(errno == ENOENT ? ERR_MISSING : ERR_IO, "%s: cannot open: %s", path,
                       strerror(errno));
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            return err_set(ERR_NOMEM, "%s: out of memory", path);
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        cap *= 2;
        unsigned char *nb = realloc(buf, cap);
        if (!nb) free(buf);
        buf = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return err_set(ERR_IO, "%s: read error", path);
    }
    *out = buf;
    *len = n;
    return 0;
}

/* Finds the value that follows the dict key `key` (quoted with ' or "); NULL when absent. */
static const char *dict_value(const char *dict, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = dict; (p = strpbrk(p, "'\"")) != NULL; p++) {
        if (strncmp(p + 1, key, kl) == 0 && p[1 + kl] == p[0]) {
            const char *v = p + 2 + kl;
            while (*v == ' ')
                v++;
            if (*v != ':') return NULL;
            v++;
            while (*v == ' ')
                v++;
            return v;
        }
    }
    return NULL;
}

static int parse_header(const char *path, const char *dict, npy_array *arr, npy_raw *raw)
{
    const char *d = dict_value(dict, "descr");
    if (!d || (*d != '\'' && *d != '"'))
        return err_set(ERR_FORMAT, "%s: header has no 'descr' string", path);
    char q = *d++;
    const char *end = strchr(d, q);
    if (!end || end - d < 3 || end - d > 4)
        return err_set(ERR_FORMAT, "%s: unsupported dtype in header", path);
    char order = d[0];
    raw->kind = d[1];
    char *num_end;
    long size = strtol(d + 2, &num_end, 10);
    if (num_end != end || !strchr("fiub", raw->kind) ||
        !(size == 1 || size == 2 || size == 4 || size == 8))
        return err_set(ERR_FORMAT, "%s: unsupported dtype '%.*s'", path, (int)(end - d), d);
    if (order == '>' && size > 1)
        return err_set(ERR_FORMAT, "%s: big-endian data is not supported", path);
    if (order != '<' && order != '|' && order != '=' && order != '>')
        return err_set(ERR_FORMAT, "%s: bad byte order in dtype '%.*s'", path, (int)(end - d), d);
    if ((raw->kind == 'f' && size == 1) || (raw->kind == 'b' && size != 1))
        return err_set(ERR_FORMAT, "%s: unsupported dtype '%.*s'", path, (int)(end - d), d);
    raw->elem_size = (size_t)size;

    const char *fo = dict_value(dict, "fortran_order");
    if (!fo) return err_set(ERR_FORMAT, "%s: header has no 'fortran_order'", path);
    if (strncmp(fo, "False", 5) != 0)
        return err_set(ERR_FORMAT, "%s: Fortran-order arrays are not supported", path);

    const char *s = dict_value(dict, "shape");
    if (!s || *s != '(') return err_set(ERR_FORMAT, "%s: header has no 'shape' tuple", path);
    s++;
    arr->ndim = 0;
    arr->count = 1;
    for (;;) {
        while (*s == ' ' || *s == ',')
            s++;
        if (*s == ')') break;
        if (arr->ndim == NPY_MAX_DIMS)
            return err_set(ERR_FORMAT, "%s: more than %d dimensions", path, NPY_MAX_DIMS);
        errno = 0;
        long long v = strtoll(s, &num_end, 10);
        if (num_end == s || errno || v < 0)
            return err_set(ERR_FORMAT, "%s: bad shape in header", path);
        if (v && arr->count > SIZE_MAX / (size_t)v / raw->elem_size)
            return err_set(ERR_FORMAT, "%s: shape too large", path);
        arr->shape[arr->ndim++] = v;
        arr->count *= (size_t)v;
        s = num_end;
    }
    return 0;
}

static int npy_read_raw(const char *path, npy_array *arr, npy_raw *raw)
{
    memset(arr, 0, sizeof *arr);
    memset(raw, 0, sizeof *raw);
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len);
    if (rc < 0) return rc;
    size_t prefix = 0, hlen = 0;
    if (len < 10 || memcmp(buf, npy_magic, sizeof npy_magic) != 0) {
        rc = err_set(ERR_FORMAT, "%s: not a .npy file (bad magic)", path);
    } else if (buf[6] == 1) {
        prefix = 10;
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    } else if ((buf[6] == 2 || buf[6] == 3) && len >= 12) {
        prefix = 12;
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
    } else {
        rc = err_set(ERR_FORMAT, "%s: unsupported .npy version %d.%d", path, buf[6], buf[7]);
    }
    if (rc == 0 && hlen > len - prefix)
        rc = err_set(ERR_FORMAT, "%s: header length %zu beyond the end of the file", path, hlen);
    if (rc == 0) {
        char *dict = xmalloc(hlen + 1);
        memcpy(dict, buf + prefix, hlen);
        dict[hlen] = 0;
        rc = parse_header(path, dict, arr, raw);
        free(dict);
    }
    if (rc == 0 && len - prefix - hlen != arr->count * raw->elem_size)
        rc = err_set(ERR_FORMAT, "%s: %zu data bytes where the header implies %zu", path,
                     len - prefix - hlen, arr->count * raw->elem_size);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    raw->buf = buf;
    raw->data = buf + prefix + hlen;
    return 0;
}

static float half_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | man << 13;
    } else if (exp == 0) {
        float v = (float)man * (1.0f / 16777216.0f); /* man * 2^-24 */
        return sign ? -v : v;
    } else {
        bits = sign | (exp + 112) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

int npy_read_f32(const char *path, npy_array *out)
{
    npy_raw raw;
    int rc = npy_read_raw(path, out, &raw);
    if (rc < 0) return rc;
    if (raw.kind != 'f') {
        free(raw.buf);
        return err_set(ERR_FORMAT, "%s: expected a float array", path);
    }
    float *f = malloc((out->count ? out->count : 1) * sizeof *f);
    if (!f) {
        free(raw.buf);
        return err_set(ERR_NOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < out->count; i++) {
        const unsigned char *p = raw.data + i * raw.elem_size;
        if (raw.elem_size == 2) {
            f[i] = half_to_f32((uint16_t)(p[0] | p[1] << 8));
        } else if (raw.elem_size == 4) {
            memcpy(&f[i], p, 4);
        } else {
            double dv;
            memcpy(&dv, p, 8);
            f[i] = (float)dv;
        }
    }
    free(raw.buf);
    out->f32 = f;
    return 0;
}

int npy_read_int(const char *path, npy_array *out)
{
    npy_raw raw;
    int rc = npy_read_raw(path, out, &raw);
    if (rc < 0) return rc;
    if (raw.kind == 'f') {
        free(raw.buf);
        return err_set(ERR_FORMAT, "%s: expected an integer array", path);
    }
    int64_t *v = malloc((out->count ? out->count : 1) * sizeof *v);
    if (!v) {
        free(raw.buf);
        return err_set(ERR_NOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < out->count; i++) {
        const unsigned char *p = raw.data + i * raw.elem_size;
        uint64_t u = 0;
        for (size_t b = 0; b < raw.elem_size; b++)
            u |= (uint64_t)p[b] << (8 * b);
        if (raw.kind == 'i' && raw.elem_size < 8 && (u >> (8 * raw.elem_size - 1)) & 1)
            u |= ~(uint64_t)0 << (8 * raw.elem_size); /* sign-extend */
        if (raw.kind == 'u' && raw.elem_size == 8 && u > (uint64_t)INT64_MAX) {
            free(v);
            free(raw.buf);
            return err_set(ERR_RANGE, "%s: element %zu exceeds the int64 range", path, i);
        }
        memcpy(&v[i], &u, sizeof u);
    }
    free(raw.buf);
    out->i64 = v;
    return 0;
}

void npy_array_free(npy_array *a)
{
    free(a->f32);
    free(a->i64);
    memset(a, 0, sizeof *a);
}
