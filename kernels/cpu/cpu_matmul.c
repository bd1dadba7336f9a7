/* CPU backend: every matrix product, through oneDNN's matmul, in tiles of one fixed shape.
 *
 * A GEMM library picks its kernels, blockings and reduction orders from the whole product's
 * shape and from how many threads share it, so a row's result would change with the number of
 * rows beside it (other jobs of a batch) and with the thread split: OpenBLAS's Haswell kernels
 * give other bits for a row at M = 1..4 than at M = 64, and for a column block split off. Here
 * the library only ever sees products of a fixed number of rows (cpu_mm_tile_rows) by at most
 * MM_TILE_N columns by the full K, each run on one thread: the rows of a product are copied
 * into a zero-padded tile of their own (converted to bf16 where the product is bf16), the
 * columns cut into chunks at fixed offsets, and the tiles spread over the worker threads. A row's
 * output therefore depends on the row, the weight and K alone (oneDNN's kernels treat every row of
 * a tile alike; the invariance tests check it for each instruction set), whatever M, the row's
 * position or the thread count. Each tile's float32 output goes to a dense buffer, and from it into
 * the product's rows with the bias added (after the sums, one rounding, as a separate add makes)
 * and the activation applied while the rows are still in cache.
 *
 * Operands: a[M, K] is float32; b is a plain float32 matrix (b[N, K] transposed, or b[K, N]),
 * or a weight packed once into oneDNN's blocked layout for the product's dtype (cpu_pack.c). */
#include "kernels/cpu/cpu_matmul.h"

#include "common/err.h"

#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static struct {
    pthread_once_t once;
    pthread_mutex_t mu;
    dnnl_engine_t engine;
    struct mm_prim *prims; /* every primitive made, kept for the process's life */
} lib = {PTHREAD_ONCE_INIT, PTHREAD_MUTEX_INITIALIZER, NULL, NULL};

/* One primitive per distinct key (tile columns, K, operand form, dtype, output row stride,
 * bias): a few dozen in a model. */
struct mm_prim {
    struct mm_prim *next;
    cpu_mm_key key;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t src, wei, dst, scratch;
};

static void lib_start(void)
{
    if (dnnl_engine_create(&lib.engine, dnnl_cpu, 0) != dnnl_success) lib.engine = NULL;
}

/* Per-thread state: oneDNN's stream and the tile buffers. oneDNN parallelises with OpenMP;
 * every product here runs on one thread, the split being this backend's own. */
struct mm_thread {
    dnnl_stream_t stream;
    void *src, *dst, *wide, *scratch, *chunk;
    size_t src_size, dst_size, wide_size, scratch_size, chunk_size;
};
static __thread struct mm_thread tls;

static int thread_ready(void)
{
    if (tls.stream) return 0;
    omp_set_num_threads(1);
    pthread_once(&lib.once, lib_start);
    if (!lib.engine) return err_set(ERR_DEVICE, "oneDNN: no CPU engine");
    if (dnnl_stream_create(&tls.stream, lib.engine, dnnl_stream_default_flags) != dnnl_success)
        return err_set(ERR_DEVICE, "oneDNN: cannot create a stream");
    return 0;
}

void *cpu_grow(void **buf, size_t *size, size_t n)
{
    if (*size >= n) return *buf;
    free(*buf);
    *buf = NULL;
    *size = 0;
    if (posix_memalign(buf, 64, (n + 63) & ~(size_t)63) != 0) return *buf = NULL;
    *size = n;
    return *buf;
}

int cpu_dnnl_thread(dnnl_engine_t *engine, dnnl_stream_t *stream)
{
    int rc = thread_ready();
    if (rc < 0) return rc;
    *engine = lib.engine;
    *stream = tls.stream;
    return 0;
}

void *cpu_mm_thread_buffer(size_t n)
{
    return cpu_grow(&tls.wide, &tls.wide_size, n);
}

static dnnl_data_type_t dnnl_dt(kn_dtype dt)
{
    return dt == KN_BF16 ? dnnl_bf16 : dnnl_f32;
}

/* Makes the primitive for key; returns NULL (with the error set) when oneDNN has none. */
static struct mm_prim *prim_make(const cpu_mm_key *k)
{
    struct mm_prim *p = calloc(1, sizeof *p);
    if (!p) {
        err_set(ERR_NOMEM, "oneDNN: out of memory");
        return NULL;
    }
    p->key = *k;
    const int64_t tm = cpu_mm_tile_rows(k);
    dnnl_dims_t sd = {tm, k->K}, wd = {k->K, k->N}, dd = {tm, k->N};
    dnnl_dims_t ss = {k->lda ? k->lda : k->K, 1}, ds = {k->ldc ? k->ldc : k->N, 1};
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_matmul_desc_t desc;
    int ok = dnnl_memory_desc_init_by_strides(&p->src, 2, sd, dnnl_dt(k->dt), ss) == dnnl_success &&
             dnnl_memory_desc_init_by_strides(&p->dst, 2, dd, dnnl_f32, ds) == dnnl_success;
    if (ok && k->form == MM_PACKED) {
        ok = dnnl_memory_desc_init_by_tag(&p->wei, 2, wd, dnnl_dt(k->dt), dnnl_format_tag_any) ==
             dnnl_success;
    } else if (ok) {
        /* b[N, K] read as its transpose, or b[K, N] as it is, with row stride ldb. */
        dnnl_dims_t st = {1, k->ldb};
        if (k->form == MM_PLAIN_KN) st[0] = k->ldb, st[1] = 1;
        ok = dnnl_memory_desc_init_by_strides(&p->wei, 2, wd, dnnl_dt(k->dt), st) == dnnl_success;
    }
    /* Each thread brings its own scratchpad: oneDNN's shared one would be raced for. */
    ok = ok && dnnl_primitive_attr_create(&attr) == dnnl_success &&
         dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) == dnnl_success &&
         dnnl_matmul_desc_init(&desc, &p->src, &p->wei, NULL, &p->dst) == dnnl_success &&
         dnnl_primitive_desc_create(&pd, &desc, attr, lib.engine, NULL) == dnnl_success;
    if (ok) {
        if (k->form == MM_PACKED)
            p->wei = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        p->scratch = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    }
    ok = ok && dnnl_primitive_create(&p->prim, pd) == dnnl_success;
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (!ok) {
        free(p);
        err_set(ERR_DEVICE, "oneDNN has no %s matmul for %d x %lld x %lld tiles",
                k->dt == KN_BF16 ? "bf16" : "f32", (int)tm, (long long)k->N, (long long)k->K);
        return NULL;
    }
    return p;
}

static int key_equal(const cpu_mm_key *a, const cpu_mm_key *b)
{
    return a->N == b->N && a->K == b->K && a->ldb == b->ldb && a->form == b->form &&
           a->dt == b->dt && a->round_bf16 == b->round_bf16 && a->single == b->single &&
           a->M == b->M && a->lda == b->lda && a->ldc == b->ldc;
}

/* The primitive for k, made when there is none yet; lib.mu held. */
static struct mm_prim *prim_lookup(const cpu_mm_key *k)
{
    struct mm_prim *p = lib.prims;
    while (p && !key_equal(&p->key, k))
        p = p->next;
    if (!p && (p = prim_make(k)) != NULL) {
        p->next = lib.prims;
        lib.prims = p;
    }
    return p;
}

static struct mm_prim *prim_get(const cpu_mm_key *k)
{
    if (thread_ready() < 0) return NULL;
    pthread_mutex_lock(&lib.mu);
    struct mm_prim *p = prim_lookup(k);
    pthread_mutex_unlock(&lib.mu);
    return p;
}

int cpu_mm_supported(const cpu_mm_key *k)
{
    return prim_get(k) != NULL;
}

size_t cpu_mm_packed_size(const cpu_mm_key *k)
{
    struct mm_prim *p = prim_get(k);
    return p ? dnnl_memory_desc_get_size(&p->wei) : 0;
}

/* Rounds x[0, n) to bf16 values in place (round to nearest even, as torch does). */
static void round_bf16(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = kn_bf16_to_f32(kn_f32_to_bf16(x[i]));
}

void cpu_mm_round_bf16(float *x, size_t n)
{
    round_bf16(x, n);
}

int cpu_mm_pack_chunk(const cpu_mm_key *k, const float *w, void *out)
{
    int rc = thread_ready();
    if (rc < 0) return rc;
    struct mm_prim *p = prim_get(k);
    if (!p) return ERR_DEVICE;
    /* w[N, K] row-major is the [K, N] weight with strides (1, K). */
    dnnl_dims_t wd = {k->K, k->N}, st = {1, k->K};
    dnnl_memory_desc_t from;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t r = NULL;
    dnnl_memory_t mf = NULL, mt = NULL;
    int ok = dnnl_memory_desc_init_by_strides(&from, 2, wd, dnnl_f32, st) == dnnl_success &&
             dnnl_memory_create(&mf, &from, lib.engine, (void *)w) == dnnl_success &&
             dnnl_memory_create(&mt, &p->wei, lib.engine, out) == dnnl_success &&
             dnnl_reorder_primitive_desc_create(&rpd, &from, lib.engine, &p->wei, lib.engine,
                                                NULL) == dnnl_success &&
             dnnl_primitive_create(&r, rpd) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, mf}, {DNNL_ARG_TO, mt}};
        ok = dnnl_primitive_execute(r, tls.stream, 2, args) == dnnl_success &&
             dnnl_stream_wait(tls.stream) == dnnl_success;
    }
    if (r) dnnl_primitive_destroy(r);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (mf) dnnl_memory_destroy(mf);
    if (mt) dnnl_memory_destroy(mt);
    return ok ? 0 : err_set(ERR_DEVICE, "oneDNN: cannot pack a %lld x %lld weight",
                            (long long)k->N, (long long)k->K);
}

/* The memory objects of primitive p's arguments (source, weights, destination, scratchpad)
 * on this thread, made on its first use here and kept (only their data pointers change from
 * tile to tile); NULL when out of memory. */
#define MM_ARGS 4
struct mm_memories {
    const struct mm_prim *prim;
    dnnl_memory_t m[MM_ARGS];
};
static __thread struct mm_memories *tls_mems;
static __thread size_t tls_nmems;

static dnnl_memory_t *thread_memories(const struct mm_prim *p)
{
    for (size_t i = 0; i < tls_nmems; i++)
        if (tls_mems[i].prim == p) return tls_mems[i].m;
    struct mm_memories *grown = realloc(tls_mems, (tls_nmems + 1) * sizeof *grown);
    if (!grown) return NULL;
    tls_mems = grown;
    struct mm_memories *e = &tls_mems[tls_nmems];
    const dnnl_memory_desc_t *mds[MM_ARGS] = {&p->src, &p->wei, &p->dst, &p->scratch};
    for (int i = 0; i < MM_ARGS; i++)
        if (dnnl_memory_create(&e->m[i], mds[i], lib.engine, DNNL_MEMORY_NONE) != dnnl_success) {
            while (i-- > 0)
                dnnl_memory_destroy(e->m[i]);
            return NULL;
        }
    e->prim = p;
    tls_nmems++;
    return e->m;
}

/* Runs primitive p on this thread with its operands at src, wei and dst. */
static int prim_execute(const struct mm_prim *p, const void *src, const void *wei, float *dst)
{
    size_t scratch_bytes = dnnl_memory_desc_get_size(&p->scratch);
    void *scratch = cpu_grow(&tls.scratch, &tls.scratch_size, scratch_bytes ? scratch_bytes : 64);
    if (!scratch) return err_set(ERR_NOMEM, "out of memory for a matrix product's scratchpad");
    dnnl_memory_t *m = thread_memories(p);
    void *data[MM_ARGS] = {(void *)src, (void *)wei, dst, scratch};
    int ok = m != NULL;
    for (int i = 0; ok && i < MM_ARGS; i++)
        ok = dnnl_memory_set_data_handle(m[i], data[i]) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[MM_ARGS] = {{DNNL_ARG_SRC, m[0]},
                                         {DNNL_ARG_WEIGHTS, m[1]},
                                         {DNNL_ARG_DST, m[2]},
                                         {DNNL_ARG_SCRATCHPAD, m[3]}};
        ok = dnnl_primitive_execute(p->prim, tls.stream, MM_ARGS, args) == dnnl_success &&
             dnnl_stream_wait(tls.stream) == dnnl_success;
    }
    return ok ? 0 : err_set(ERR_DEVICE, "oneDNN: a matrix product failed");
}

int cpu_mm_direct(const cpu_mm_key *k, const void *a, const void *b, float *c)
{
    struct mm_prim *p = prim_get(k);
    return p ? prim_execute(p, a, b, c) : ERR_DEVICE;
}

/* One tile: rows [r0, r0 + tile rows) of a (those past M are zeros) times the columns
 * [n0, n0 + k->N) of b, into a dense tile buffer and from it into the same block of c, the
 * bias added and the activation applied on the way, while the rows are in cache. prep: a in the
 * primitive's source form (bf16, or float32 rounded to bf16) with rows K apart, or NULL for a
 * itself. */
static int tile_run(const cpu_mm *g, const struct mm_prim *p, int64_t r0, int64_t n0,
                    const void *wei, const char *prep)
{
    const int64_t K = g->K, nt = p->key.N, tm = cpu_mm_tile_rows(&p->key), ldc = g->ldc;
    const int64_t rows = g->M - r0 < tm ? g->M - r0 : tm;
    size_t es = p->key.dt == KN_BF16 ? 2 : 4;
    /* A whole tile of rows stored K apart is read in place (the layout of the padded tile, so
     * the same primitive); a last, partial tile is copied and padded with zeros. The output
     * is a dense buffer: oneDNN 2's AMX kernels take no other output stride (a strided output
     * got another kernel, whose packed weight layout differs), nor a packed weight described
     * by its layout rather than chosen (the reference kernel ran). */
    const char *from = prep ? prep : (const char *)g->a;
    const int64_t ld = prep ? K : g->lda;
    int in_place = rows == tm && ld == K;
    char *src = in_place ? (char *)(from + (size_t)(r0 * K) * es)
                         : cpu_grow(&tls.src, &tls.src_size, (size_t)(tm * K) * es);
    float *out = g->c + r0 * ldc + n0;
    float *dst = cpu_grow(&tls.dst, &tls.dst_size, (size_t)(tm * nt) * sizeof(float));
    if (!src || !dst) return err_set(ERR_NOMEM, "out of memory for a matrix product tile");
    for (int64_t i = 0; i < rows && !in_place; i++)
        memcpy(src + (size_t)(i * K) * es, from + (size_t)((r0 + i) * ld) * es, (size_t)K * es);
    if (!in_place) memset(src + (size_t)(rows * K) * es, 0, (size_t)((tm - rows) * K) * es);
    int rc = prim_execute(p, src, wei, dst);
    if (rc < 0) return rc;
    const float *bias = g->bias ? g->bias + n0 : NULL;
    for (int64_t i = 0; i < rows; i++) {
        float *row = out + i * ldc;
        const float *tile_row = dst + i * nt;
        if (bias)
            for (int64_t j = 0; j < nt; j++)
                row[j] = tile_row[j] + bias[j];
        else
            memcpy(row, tile_row, (size_t)nt * sizeof(float));
        if (g->has_act) cpu_act_row(row, nt, g->act);
    }
    return 0;
}

/* The operand of column chunk `chunk` (nt columns, primitive key k): the packed chunk; b
 * offset to its columns; or (pack_chunks) b's rows widened to float32 and packed into a
 * per-thread buffer, for the tiles of one task. */
static const void *chunk_operand(const cpu_mm *g, int64_t chunk, const cpu_mm_key *k)
{
    int64_t n0 = chunk * MM_TILE_N, nt = k->N;
    const int trans = g->b_form == MM_PLAIN_KN;
    if (g->packed) return cpu_packed_chunk(g->packed, chunk);
    if (trans && !g->pack_chunks) return (const float *)g->b + n0;
    if (g->b_dtype == KN_F32 && !g->pack_chunks) return (const float *)g->b + n0 * g->ldb;
    const float *w = (const float *)g->b + n0 * g->ldb;
    if (g->b_dtype != KN_F32 || trans) {
        float *wide = cpu_mm_thread_buffer((size_t)(nt * g->K) * sizeof(float));
        if (!wide) return NULL;
        cpu_weight_panel(wide, g->b, g->b_dtype, g->ldb, trans, n0, nt, g->K);
        w = wide;
    }
    if (!g->pack_chunks) return w;
    void *out = cpu_grow(&tls.chunk, &tls.chunk_size, cpu_mm_packed_size(k));
    return out && cpu_mm_pack_chunk(k, w, out) == 0 ? out : NULL;
}

struct mm_run {
    const cpu_mm *g;
    struct mm_prim *full, *tail; /* the primitives of whole and of last column chunks */
    int64_t chunks, groups;
    const char *prep; /* a in the primitive's source form, made once for every column chunk */
    int rc;
};

/* Rows are taken MM_GROUP tiles at a time so that a widened chunk serves several tiles. */
#define MM_GROUP 16

static void run_tasks(void *arg, int64_t lo, int64_t hi)
{
    struct mm_run *r = arg;
    const cpu_mm *g = r->g;
    if (thread_ready() < 0) {
        __atomic_store_n(&r->rc, ERR_DEVICE, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t t = lo; t < hi; t++) {
        int64_t chunk = t / r->groups, group = t % r->groups;
        struct mm_prim *p = chunk == r->chunks - 1 ? r->tail : r->full;
        const void *wei = chunk_operand(g, chunk, &p->key);
        if (!wei) {
            __atomic_store_n(&r->rc, ERR_NOMEM, __ATOMIC_RELAXED);
            return;
        }
        for (int64_t i = 0; i < MM_GROUP; i++) {
            int64_t r0 = (group * MM_GROUP + i) * cpu_mm_tile_rows(&p->key);
            if (r0 >= g->M) break;
            int rc = tile_run(g, p, r0, chunk * MM_TILE_N, wei, r->prep);
            if (rc < 0) {
                __atomic_store_n(&r->rc, rc, __ATOMIC_RELAXED);
                return;
            }
        }
    }
}

static int mm_prepare(const cpu_mm *g, struct mm_run *r)
{
    *r = (struct mm_run){.g = g};
    r->chunks = (g->N + MM_TILE_N - 1) / MM_TILE_N;
    cpu_mm_key k = {.N = g->N < MM_TILE_N ? g->N : MM_TILE_N,
                    .K = g->K,
                    .form = g->packed || g->pack_chunks ? MM_PACKED : g->b_form,
                    .dt = g->packed ? g->packed->store : KN_F32,
                    .round_bf16 = g->packed && g->packed->store != g->packed->dt,
                    .single = g->single_rows,
                    .ldb = g->packed || g->pack_chunks                        ? 0
                           : g->b_form == MM_PLAIN_KN || g->b_dtype == KN_F32 ? g->ldb
                                                                              : g->K};
    if (!(r->full = prim_get(&k))) return ERR_DEVICE;
    int64_t rows = cpu_mm_tile_rows(&k) * MM_GROUP;
    r->groups = (g->M + rows - 1) / rows;
    k.N = g->N - (r->chunks - 1) * MM_TILE_N;
    if (!(r->tail = prim_get(&k))) return ERR_DEVICE;
    return 0;
}

/* Rows [lo, hi) of a into r->prep: narrowed to bf16, or rounded to bf16 values in float32. */
static void prepare_rows(void *arg, int64_t lo, int64_t hi)
{
    struct mm_run *r = arg;
    const cpu_mm *g = r->g;
    for (int64_t i = lo; i < hi; i++) {
        const float *ar = g->a + i * g->lda;
        if (r->full->key.dt == KN_BF16) {
            kn_convert_from_f32((uint16_t *)r->prep + i * g->K, ar, KN_BF16, (size_t)g->K);
        } else {
            float *out = (float *)r->prep + i * g->K;
            memcpy(out, ar, (size_t)g->K * sizeof(float));
            round_bf16(out, (size_t)g->K);
        }
    }
}

/* The caller's buffer of a in the primitive's source form: made once per product, not once
 * per column chunk (at 256 columns a chunk, converting each tile again cost as much as a sixth
 * of a bf16 product). */
static __thread struct {
    void *data;
    size_t size;
} prepared;

int cpu_mm_run(const cpu_mm *g, int parallel)
{
    if (g->M <= 0 || g->N <= 0) return 0;
    struct mm_run r;
    int rc = mm_prepare(g, &r);
    if (rc < 0) return rc;
    if (r.full->key.dt == KN_BF16 || r.full->key.round_bf16) {
        size_t es = r.full->key.dt == KN_BF16 ? 2 : sizeof(float);
        if (!(r.prep = cpu_grow(&prepared.data, &prepared.size, (size_t)(g->M * g->K) * es)))
            return err_set(ERR_NOMEM, "out of memory for a matrix product's bf16 operand");
        if (parallel)
            cpu_parallel(g->M, g->M * g->K, prepare_rows, &r);
        else
            prepare_rows(&r, 0, g->M);
    }
    int64_t tasks = r.chunks * r.groups;
    if (parallel)
        cpu_parallel(tasks, g->M * g->N * g->K / 32, run_tasks, &r);
    else
        run_tasks(&r, 0, tasks);
    return r.rc < 0 ? err_set(r.rc, "oneDNN: a %s tile failed",
                              r.rc == ERR_NOMEM ? "matrix product ran out of memory for" : "product of")
                    : 0;
}
