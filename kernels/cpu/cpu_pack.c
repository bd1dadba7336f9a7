/* CPU backend: weights packed once into oneDNN's blocked layout for the products of a bf16
 * context (and of float32 weights in a float32 one), kept by the context for its life, and the
 * table that also keeps the convolutions' reordered weights (cpu_conv.c). A weight
 * is packed on its first product, chunk by chunk over the worker threads; its mapped file pages
 * are then handed back to the kernel (MADV_PAGEOUT), so that resident memory holds the packed
 * copy instead of the file's, not both. */
#include "kernels/cpu/cpu_matmul.h"

#include "common/err.h"

#include <stdint.h>
#include <stdlib.h>

/* The table is open-addressing, keyed by the weight's data, the product dtype, the tile form
 * and (convolutions) the weight layout. */
static size_t hash_ptr(const void *p, size_t cap)
{
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & (cap - 1);
}

static int same_layout(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b)
{
    return a->ndims == b->ndims && (a->ndims == 0 || dnnl_memory_desc_equal(a, b));
}

static cpu_packed **table_find(struct cpu_pack_table *t, const void *src, kn_dtype dt, int single,
                               int trans, const dnnl_memory_desc_t *layout)
{
    size_t i = hash_ptr(src, t->cap);
    for (cpu_packed *p; (p = t->slot[i]) != NULL; i = (i + 1) & (t->cap - 1))
        if (p->src == src && p->dt == dt && p->single == single && p->trans == trans &&
            same_layout(&p->layout, layout))
            break;
    return &t->slot[i];
}

static int table_grow(struct cpu_pack_table *t)
{
    size_t cap = t->cap ? t->cap * 2 : 256;
    struct cpu_pack_table n = {calloc(cap, sizeof *n.slot), cap, t->used};
    if (!n.slot) return err_set(ERR_NOMEM, "out of memory for the packed weight table");
    for (size_t i = 0; i < t->cap; i++) {
        cpu_packed *p = t->slot[i];
        if (p) *table_find(&n, p->src, p->dt, p->single, p->trans, &p->layout) = p;
    }
    free(t->slot);
    *t = n;
    return 0;
}

struct pack_job {
    const kn_tensor *w;
    cpu_packed *p;
    int rc;
};

static void pack_range(void *arg, int64_t lo, int64_t hi)
{
    struct pack_job *j = arg;
    const int64_t K = j->p->K;
    size_t es = kn_dtype_size(j->w->dtype);
    for (int64_t c = lo; c < hi; c++) {
        int64_t n0 = c * MM_TILE_N, nt = j->p->N - n0 < MM_TILE_N ? j->p->N - n0 : MM_TILE_N;
        int round = j->p->store != j->p->dt;
        cpu_mm_key k = {.N = nt,
                        .K = K,
                        .form = MM_PACKED,
                        .dt = j->p->store,
                        .round_bf16 = round,
                        .single = j->p->single};
        const float *wf = (const float *)((const char *)j->w->data + (size_t)(n0 * K) * es);
        if (j->w->dtype != KN_F32 || round || j->p->trans) {
            float *buf = cpu_mm_thread_buffer((size_t)(nt * K) * sizeof(float));
            if (!buf) {
                __atomic_store_n(&j->rc, ERR_NOMEM, __ATOMIC_RELAXED);
                return;
            }
            cpu_weight_panel(buf, j->w->data, j->w->dtype, kn_cols(j->w), j->p->trans, n0, nt, K);
            if (round) cpu_mm_round_bf16(buf, (size_t)(nt * K));
            wf = buf;
        }
        int rc = cpu_mm_pack_chunk(&k, wf, (char *)j->p->data + j->p->offset[c]);
        if (rc < 0) __atomic_store_n(&j->rc, rc, __ATOMIC_RELAXED);
    }
}

void cpu_packed_free(cpu_packed *p)
{
    if (!p) return;
    free(p->data);
    free(p->offset);
    free(p);
}

static cpu_packed *pack(const kn_tensor *w, kn_dtype dt, int single, int trans)
{
    cpu_packed *p = calloc(1, sizeof *p);
    if (!p) goto nomem;
    *p = (cpu_packed){.src = w->data,
                      .N = trans ? kn_cols(w) : kn_rows(w),
                      .K = trans ? kn_rows(w) : kn_cols(w),
                      .dt = dt,
                      .store = dt,
                      .single = single,
                      .trans = trans};
    p->chunks = (p->N + MM_TILE_N - 1) / MM_TILE_N;
    if (!(p->offset = calloc((size_t)p->chunks, sizeof *p->offset))) goto nomem;
    for (int64_t c = 0; c < p->chunks; c++) {
        int64_t nt = p->N - c * MM_TILE_N < MM_TILE_N ? p->N - c * MM_TILE_N : MM_TILE_N;
        cpu_mm_key k = {.N = nt, .K = p->K, .form = MM_PACKED, .dt = p->store, .single = p->single};
        size_t sz = cpu_mm_packed_size(&k);
        if (!sz && c == 0 && dt == KN_BF16) {
            /* No bf16 product on this CPU (oneDNN needs AVX-512 for one): float32 products
             * of bf16-rounded operands, the same arithmetic up to the order of the sums. */
            p->store = k.dt = KN_F32;
            k.round_bf16 = 1;
            sz = cpu_mm_packed_size(&k);
        }
        if (!sz) {
            cpu_packed_free(p);
            return NULL;
        }
        p->offset[c] = p->bytes;
        p->bytes += (sz + 63) & ~(size_t)63;
    }
    if (posix_memalign(&p->data, 64, p->bytes) != 0) {
        p->data = NULL;
        goto nomem;
    }
    struct pack_job j = {w, p, 0};
    cpu_parallel(p->chunks, p->N * p->K, pack_range, &j);
    if (j.rc < 0) {
        cpu_packed_free(p);
        err_set(j.rc, "cannot pack a [%lld, %lld] weight for oneDNN", (long long)kn_rows(w),
                (long long)kn_cols(w));
        return NULL;
    }
    return p;
nomem:
    cpu_packed_free(p);
    err_set(ERR_NOMEM, "out of memory packing a [%lld, %lld] weight", (long long)kn_rows(w),
            (long long)kn_cols(w));
    return NULL;
}

const cpu_packed *cpu_packed_find(kn_ctx *ctx, const kn_tensor *w, kn_dtype dt, int single,
                                  const dnnl_memory_desc_t *layout)
{
    struct cpu_pack_table *t = cpu_pack_table(ctx);
    return t->cap ? *table_find(t, w->data, dt, single, 0, layout) : NULL;
}

int cpu_packed_keep(kn_ctx *ctx, cpu_packed *p, const kn_tensor *w)
{
    struct cpu_pack_table *t = cpu_pack_table(ctx);
    if ((t->used + 1) * 2 > t->cap && table_grow(t) < 0) {
        cpu_packed_free(p);
        return ERR_NOMEM;
    }
    *table_find(t, p->src, p->dt, p->single, p->trans, &p->layout) = p;
    t->used++;
    kn_account(ctx, (int64_t)p->bytes);
    if (!w->owned) cpu_release_mapped(w->data, kn_nbytes(w));
    return 0;
}

const cpu_packed *cpu_packed_get(kn_ctx *ctx, const kn_tensor *w, kn_dtype dt, int single,
                                 int trans)
{
    const dnnl_memory_desc_t none = {0};
    struct cpu_pack_table *t = cpu_pack_table(ctx);
    const cpu_packed *found = t->cap ? *table_find(t, w->data, dt, single, trans, &none) : NULL;
    if (found) return found;
    cpu_packed *p = pack(w, dt, single, trans);
    return p && cpu_packed_keep(ctx, p, w) == 0 ? p : NULL;
}

void cpu_packed_forget(kn_ctx *ctx, const void *src)
{
    struct cpu_pack_table *t = cpu_pack_table(ctx), kept = {NULL, t->cap, 0};
    size_t dropped = 0;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i] && t->slot[i]->src == src) dropped++;
    if (!dropped) return;
    /* Open addressing: the entries that stay are placed again. */
    if (!(kept.slot = calloc(t->cap, sizeof *kept.slot))) return;
    for (size_t i = 0; i < t->cap; i++) {
        cpu_packed *p = t->slot[i];
        if (!p) continue;
        if (p->src == src) {
            kn_account(ctx, -(int64_t)p->bytes);
            cpu_packed_free(p);
            continue;
        }
        *table_find(&kept, p->src, p->dt, p->single, p->trans, &p->layout) = p;
        kept.used++;
    }
    free(t->slot);
    *t = kept;
}

void cpu_packed_free_all(kn_ctx *ctx)
{
    struct cpu_pack_table *t = cpu_pack_table(ctx);
    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i]) {
            kn_account(ctx, -(int64_t)t->slot[i]->bytes);
            cpu_packed_free(t->slot[i]);
        }
    free(t->slot);
    *t = (struct cpu_pack_table){0};
}
