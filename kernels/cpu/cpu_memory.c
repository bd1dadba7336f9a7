/* CPU backend: memory, scratch buffers and plain data movement. */
#include "kernels/cpu/cpu_matmul.h"

#include "common/err.h"
#include "common/xalloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

struct cpu_state {
    void *scratch[CPU_SCRATCH_SLOTS];
    size_t scratch_size[CPU_SCRATCH_SLOTS];
    struct cpu_pack_table packs;
};

struct cpu_pack_table *cpu_pack_table(kn_ctx *ctx)
{
    return &((struct cpu_state *)ctx->backend)->packs;
}

int cpu_ctx_init(kn_ctx *ctx)
{
    ctx->backend = xcalloc(1, sizeof(struct cpu_state));
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    ctx->total_bytes = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
    return 0;
}

void cpu_release_mapped(const void *p, size_t n)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + n) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_PAGEOUT);
}

void cpu_ctx_fini(kn_ctx *ctx)
{
    struct cpu_state *st = ctx->backend;
    if (!st) return;
    cpu_packed_free_all(ctx);
    for (int i = 0; i < CPU_SCRATCH_SLOTS; i++)
        free(st->scratch[i]);
    free(st);
    ctx->backend = NULL;
}

void *cpu_scratch(kn_ctx *ctx, int slot, size_t n)
{
    struct cpu_state *st = ctx->backend;
    if (st->scratch_size[slot] < n) {
        void *p = malloc(n);
        if (!p) {
            err_set(ERR_NOMEM, "no memory for a %zu-byte work buffer", n);
            return NULL;
        }
        free(st->scratch[slot]);
        st->scratch[slot] = p;
        kn_account(ctx, (int64_t)n - (int64_t)st->scratch_size[slot]);
        st->scratch_size[slot] = n;
    }
    return st->scratch[slot];
}

int cpu_alloc(kn_ctx *ctx, kn_tensor *t)
{
    (void)ctx;
    size_t n = kn_nbytes(t);
    /* 64-byte alignment suits AVX-512 loads and BLAS packing. */
    t->data = NULL;
    if (posix_memalign(&t->data, 64, n ? (n + 63) & ~(size_t)63 : 64) != 0)
        return err_set(ERR_NOMEM, "cannot allocate %zu bytes for a tensor", n);
    return 0;
}

void cpu_free(kn_ctx *ctx, kn_tensor *t)
{
    (void)ctx;
    free(t->data);
    t->data = NULL;
}

int cpu_fill(kn_ctx *ctx, kn_tensor *t, float v)
{
    (void)ctx;
    size_t n = (size_t)kn_numel(t);
    if (t->dtype == KN_F32) {
        float *p = t->data;
        for (size_t i = 0; i < n; i++)
            p[i] = v;
    } else if (t->dtype == KN_F16 || t->dtype == KN_BF16) {
        uint16_t h = t->dtype == KN_F16 ? kn_f32_to_f16(v) : kn_f32_to_bf16(v);
        uint16_t *p = t->data;
        for (size_t i = 0; i < n; i++)
            p[i] = h;
    } else {
        return err_set(ERR_INVALID, "kn_fill of a %s tensor", kn_dtype_name(t->dtype));
    }
    return 0;
}

int cpu_copy(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *src)
{
    size_t n = (size_t)kn_numel(src);
    if (dst->dtype == src->dtype) {
        memmove(dst->data, src->data, kn_nbytes(src));
    } else if (dst->dtype == KN_F32) {
        kn_convert_to_f32(dst->data, src->data, src->dtype, n);
    } else if (src->dtype == KN_F32) {
        kn_convert_from_f32(dst->data, src->data, dst->dtype, n);
    } else {
        float *tmp = cpu_scratch(ctx, 0, n * sizeof(float));
        if (!tmp) return -1;
        kn_convert_to_f32(tmp, src->data, src->dtype, n);
        kn_convert_from_f32(dst->data, tmp, dst->dtype, n);
    }
    return 0;
}

int cpu_copy_cols(kn_ctx *ctx, kn_tensor *dst, int64_t col, const kn_tensor *src)
{
    (void)ctx;
    size_t es = kn_dtype_size(src->dtype);
    int64_t rows = kn_rows(src), n = kn_cols(src), N = kn_cols(dst);
    for (int64_t r = 0; r < rows; r++)
        memcpy((char *)dst->data + ((size_t)(r * N + col)) * es,
               (const char *)src->data + (size_t)(r * n) * es, (size_t)n * es);
    return 0;
}
