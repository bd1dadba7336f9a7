/* Contexts and data movement: the front-ends of kn.h's memory functions, dispatching to the CPU
 * backend or, in a build with FOCUS_HAVE_CUDA, to the CUDA one. */
#include "kernels/kn_backend.h"
#include "kernels/kn_convert.h"

#include "common/err.h"
#include "common/xalloc.h"

#include <stdlib.h>
#include <string.h>

int kn_ctx_create(kn_device dev, int index, kn_ctx **out)
{
    *out = NULL;
#ifndef FOCUS_HAVE_CUDA
    if (dev == KN_CUDA) return kn_device_probe(dev, index);
#endif
    kn_ctx *ctx = xcalloc(1, sizeof *ctx);
    ctx->device = dev;
    ctx->index = index;
#ifdef FOCUS_HAVE_CUDA
    int rc = dev == KN_CUDA ? cuda_ctx_init(ctx) : cpu_ctx_init(ctx);
#else
    int rc = cpu_ctx_init(ctx);
#endif
    if (rc < 0) {
        free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

int kn_device_probe(kn_device dev, int index)
{
    if (dev == KN_CPU) return 0;
#ifdef FOCUS_HAVE_CUDA
    return cuda_probe(index);
#else
    (void)index;
    return err_set(ERR_DEVICE, "this build of focusd has no CUDA backend");
#endif
}

void kn_ctx_destroy(kn_ctx *ctx)
{
    if (!ctx) return;
#ifdef FOCUS_HAVE_CUDA
    if (ctx->device == KN_CUDA)
        cuda_ctx_fini(ctx);
    else
#endif
        cpu_ctx_fini(ctx);
    free(ctx);
}

kn_device kn_ctx_device(const kn_ctx *ctx)
{
    return ctx->device;
}

int kn_ctx_set_matmul(kn_ctx *ctx, kn_dtype dt)
{
    if (dt != KN_F32 && dt != KN_BF16)
        return err_set(ERR_INVALID, "matrix products in %s: expected F32 or BF16",
                       kn_dtype_name(dt));
    ctx->matmul = dt;
    return 0;
}

int kn_cpu_native_bf16(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
    return 0;
#endif
}

void kn_ctx_memory(const kn_ctx *ctx, kn_memory *m)
{
    *m = (kn_memory){.in_use = __atomic_load_n(&ctx->bytes, __ATOMIC_RELAXED),
                     .peak = __atomic_load_n(&ctx->peak_bytes, __ATOMIC_RELAXED),
                     .total = ctx->total_bytes};
}

void kn_ctx_reset_peak(kn_ctx *ctx)
{
    __atomic_store_n(&ctx->peak_bytes, __atomic_load_n(&ctx->bytes, __ATOMIC_RELAXED),
                     __ATOMIC_RELAXED);
}

int kn_sync(kn_ctx *ctx)
{
#ifdef FOCUS_HAVE_CUDA
    if (ctx->device == KN_CUDA) return cuda_sync(ctx);
#endif
    (void)ctx;
    return 0;
}

int kn_alloc(kn_ctx *ctx, kn_tensor *t, kn_dtype dt, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > KN_MAX_DIMS)
        return err_set(ERR_INVALID, "tensor rank %d outside 0..%d", ndim, KN_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return err_set(ERR_INVALID, "negative dimension %lld", (long long)shape[i]);
    *t = (kn_tensor){.dtype = dt, .device = ctx->device, .ndim = ndim, .owned = 1};
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    int rc = KN_DISPATCH(ctx, alloc, t);
    if (rc == 0) kn_account(ctx, (int64_t)kn_nbytes(t));
    return rc;
}

void kn_free(kn_ctx *ctx, kn_tensor *t)
{
    /* A CPU weight's packed copy is keyed by its data, which may be mapped again later. */
    if (ctx->device == KN_CPU && t->data) cpu_packed_forget(ctx, t->data);
    if (t->owned && t->data) {
        KN_DISPATCH(ctx, free, t);
        kn_account(ctx, -(int64_t)kn_nbytes(t));
    }
    memset(t, 0, sizeof *t);
}

int kn_weight(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *host)
{
    if (host->device != KN_CPU) return err_set(ERR_INVALID, "kn_weight expects a host tensor");
#ifdef FOCUS_HAVE_CUDA
    if (ctx->device == KN_CUDA) {
        int rc = cuda_weight(ctx, dst, host);
        if (rc == 0) kn_account(ctx, (int64_t)kn_nbytes(dst));
        return rc;
    }
#endif
    (void)ctx;
    *dst = *host;
    dst->owned = 0;
    return 0;
}

int kn_weight_rows(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *const *hosts, int n)
{
    char s0[96], si[96];
    if (n < 1) return err_set(ERR_INVALID, "kn_weight_rows: no parts");
    const kn_tensor *h0 = hosts[0];
    int64_t shape[KN_MAX_DIMS];
    for (int d = 0; d < h0->ndim; d++)
        shape[d] = h0->shape[d];
    if (h0->ndim < 1) return err_set(ERR_SHAPE, "kn_weight_rows: parts of rank 0");
    shape[0] = 0;
    for (int i = 0; i < n; i++) {
        const kn_tensor *h = hosts[i];
        int same = h->device == KN_CPU && h->dtype == h0->dtype && h->ndim == h0->ndim;
        for (int d = 1; same && d < h->ndim; d++)
            same = h->shape[d] == h0->shape[d];
        if (!same)
            return err_set(ERR_SHAPE, "kn_weight_rows: part %d (%s %s) does not stack on %s %s", i,
                           kn_dtype_name(h->dtype), kn_shape_str(h, si, sizeof si),
                           kn_dtype_name(h0->dtype), kn_shape_str(h0, s0, sizeof s0));
        shape[0] += h->shape[0];
    }
    int rc = kn_alloc(ctx, dst, h0->dtype, h0->ndim, shape);
    int64_t off = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        kn_tensor part = kn_view(dst, off, hosts[i]->ndim, hosts[i]->shape);
        rc = kn_write(ctx, &part, hosts[i]->data, kn_nbytes(hosts[i]));
        off += kn_numel(hosts[i]);
    }
    if (rc < 0) {
        kn_free(ctx, dst);
        return rc;
    }
    for (int i = 0; i < n; i++)
        if (!hosts[i]->owned) cpu_release_mapped(hosts[i]->data, kn_nbytes(hosts[i]));
    return 0;
}

static int check_bytes(const kn_tensor *t, size_t nbytes)
{
    if (nbytes != kn_nbytes(t))
        return err_set(ERR_INVALID, "copy of %zu bytes into a tensor of %zu bytes", nbytes,
                       kn_nbytes(t));
    return 0;
}

int kn_write(kn_ctx *ctx, kn_tensor *dst, const void *host, size_t nbytes)
{
    int rc = check_bytes(dst, nbytes);
#ifdef FOCUS_HAVE_CUDA
    if (rc == 0 && nbytes && ctx->device == KN_CUDA) return cuda_write(ctx, dst, host, nbytes);
#endif
    (void)ctx;
    if (rc == 0 && nbytes) memcpy(dst->data, host, nbytes);
    return rc;
}

int kn_read(kn_ctx *ctx, const kn_tensor *src, void *host, size_t nbytes)
{
    int rc = check_bytes(src, nbytes);
#ifdef FOCUS_HAVE_CUDA
    if (rc == 0 && nbytes && ctx->device == KN_CUDA) return cuda_read(ctx, src, host, nbytes);
#endif
    (void)ctx;
    if (rc == 0 && nbytes) memcpy(host, src->data, nbytes);
    return rc;
}

int kn_write_f32(kn_ctx *ctx, kn_tensor *dst, const float *host)
{
    if (!kn_dtype_is_float(dst->dtype))
        return err_set(ERR_INVALID, "kn_write_f32 into a %s tensor", kn_dtype_name(dst->dtype));
    size_t n = (size_t)kn_numel(dst);
    if (dst->dtype == KN_F32) return kn_write(ctx, dst, host, n * sizeof(float));
    void *raw = malloc(kn_nbytes(dst) ? kn_nbytes(dst) : 1);
    if (!raw) return err_set(ERR_NOMEM, "kn_write_f32: cannot allocate %zu bytes", kn_nbytes(dst));
    kn_convert_from_f32(raw, host, dst->dtype, n);
    int rc = kn_write(ctx, dst, raw, kn_nbytes(dst));
    free(raw);
    return rc;
}

int kn_read_f32(kn_ctx *ctx, const kn_tensor *src, float *host)
{
    if (!kn_dtype_is_float(src->dtype))
        return err_set(ERR_INVALID, "kn_read_f32 of a %s tensor", kn_dtype_name(src->dtype));
    size_t n = (size_t)kn_numel(src);
#ifdef FOCUS_HAVE_CUDA
    /* Device bytes come to the host as they are and are widened there. */
    if (ctx->device == KN_CUDA) {
        if (src->dtype == KN_F32) return kn_read(ctx, src, host, n * sizeof(float));
        void *raw = malloc(kn_nbytes(src) ? kn_nbytes(src) : 1);
        if (!raw)
            return err_set(ERR_NOMEM, "kn_read_f32: cannot allocate %zu bytes", kn_nbytes(src));
        int rc = kn_read(ctx, src, raw, kn_nbytes(src));
        if (rc == 0) kn_convert_to_f32(host, raw, src->dtype, n);
        free(raw);
        return rc;
    }
#endif
    (void)ctx;
    kn_convert_to_f32(host, src->data, src->dtype, n);
    return 0;
}

int kn_fill(kn_ctx *ctx, kn_tensor *t, float v)
{
    if (!kn_dtype_is_float(t->dtype))
        return err_set(ERR_INVALID, "kn_fill of a %s tensor", kn_dtype_name(t->dtype));
    return KN_DISPATCH(ctx, fill, t, v);
}

int kn_copy(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *src)
{
    if (kn_numel(dst) != kn_numel(src))
        return err_set(ERR_SHAPE, "kn_copy of %lld elements into %lld", (long long)kn_numel(src),
                       (long long)kn_numel(dst));
    if (dst->dtype != src->dtype &&
        (!kn_dtype_is_float(dst->dtype) || !kn_dtype_is_float(src->dtype)))
        return err_set(ERR_INVALID, "kn_copy from %s to %s", kn_dtype_name(src->dtype),
                       kn_dtype_name(dst->dtype));
    return KN_DISPATCH(ctx, copy, dst, src);
}

int kn_copy_cols(kn_ctx *ctx, kn_tensor *dst, int64_t col, const kn_tensor *src)
{
    if (kn_rows(dst) != kn_rows(src) || col < 0 || col + kn_cols(src) > kn_cols(dst) ||
        dst->dtype != src->dtype)
        return err_set(ERR_SHAPE, "kn_copy_cols: %lldx%lld at column %lld into %lldx%lld",
                       (long long)kn_rows(src), (long long)kn_cols(src), (long long)col,
                       (long long)kn_rows(dst), (long long)kn_cols(dst));
    return KN_DISPATCH(ctx, copy_cols, dst, col, src);
}
