/* Tensor bookkeeping that is the same on every device: dtypes, shapes and views. */
#include "kernels/kn.h"

#include "common/err.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[KN_DTYPE_COUNT] = {
    [KN_F32] = {"F32", 4},    [KN_F16] = {"F16", 2},         [KN_BF16] = {"BF16", 2},
    [KN_F8_E4M3] = {"F8_E4M3", 1}, [KN_F8_E5M2] = {"F8_E5M2", 1}, [KN_F64] = {"F64", 8},
    [KN_I64] = {"I64", 8},    [KN_I32] = {"I32", 4},         [KN_I16] = {"I16", 2},
    [KN_I8] = {"I8", 1},      [KN_U8] = {"U8", 1},           [KN_BOOL] = {"BOOL", 1},
};

size_t kn_dtype_size(kn_dtype dt)
{
    return (unsigned)dt < KN_DTYPE_COUNT ? dtype_info[dt].size : 0;
}

const char *kn_dtype_name(kn_dtype dt)
{
    return (unsigned)dt < KN_DTYPE_COUNT ? dtype_info[dt].name : "?";
}

int kn_dtype_parse(const char *name, kn_dtype *out)
{
    for (int i = 0; i < KN_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_info[i].name) == 0) {
            *out = (kn_dtype)i;
            return 0;
        }
    }
    return err_set(ERR_FORMAT, "unknown dtype \"%s\"", name);
}

int kn_dtype_is_float(kn_dtype dt)
{
    return dt == KN_F32 || dt == KN_F16 || dt == KN_BF16 || dt == KN_F8_E4M3 || dt == KN_F8_E5M2;
}

int64_t kn_numel(const kn_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t kn_nbytes(const kn_tensor *t)
{
    return (size_t)kn_numel(t) * kn_dtype_size(t->dtype);
}

int64_t kn_cols(const kn_tensor *t)
{
    return t->ndim ? t->shape[t->ndim - 1] : 1;
}

int64_t kn_rows(const kn_tensor *t)
{
    int64_t c = kn_cols(t);
    return c ? kn_numel(t) / c : 0;
}

char *kn_shape_str(const kn_tensor *t, char *buf, size_t n)
{
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "[");
    for (int i = 0; i < t->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, "%s%lld", i ? ", " : "",
                                (long long)t->shape[i]);
    if (off < n)
        snprintf(buf + off, n - off, "]");
    return buf;
}

int kn_same_shape(const kn_tensor *a, const kn_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

static void set_shape(kn_tensor *t, int ndim, const int64_t *shape)
{
    t->ndim = ndim;
    for (int i = 0; i < KN_MAX_DIMS; i++)
        t->shape[i] = i < ndim ? shape[i] : 0;
}

kn_tensor kn_view(const kn_tensor *t, int64_t elem_offset, int ndim, const int64_t *shape)
{
    kn_tensor v = *t;
    v.owned = 0;
    v.data = (char *)t->data + (size_t)elem_offset * kn_dtype_size(t->dtype);
    set_shape(&v, ndim, shape);
    return v;
}

kn_tensor kn_reshape(const kn_tensor *t, int ndim, const int64_t *shape)
{
    return kn_view(t, 0, ndim, shape);
}

kn_tensor kn_host_tensor(void *data, kn_dtype dt, int ndim, const int64_t *shape)
{
    kn_tensor t = {.dtype = dt, .device = KN_CPU, .data = data, .owned = 0};
    set_shape(&t, ndim, shape);
    return t;
}
