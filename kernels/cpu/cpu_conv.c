/* CPU backend: 2-D convolutions through oneDNN's convolution primitive, in bands of a fixed
 * number of output rows.
 *
 * As with the matrix products (cpu_matmul.c), oneDNN only ever sees one shape per convolution,
 * run on one thread: an image's output is cut into bands of CONV_BAND_ROWS rows; each band's
 * input rows (with the halo the kernel reaches, rows outside the image left zero) are
 * reordered from the NCHW image into the primitive's own (blocked) source layout, converted to
 * bf16 on the way in a bf16 context; the primitive (bias included) writes its blocked float32
 * output, reordered into the band's rows of the image. A last partial band runs the same
 * primitive on zero rows past the image and keeps its first rows. The bands of every image of
 * the batch are spread over the worker threads, each with its own scratchpad, so an output
 * value depends on its image, the weight and the shape alone: not on the batch, the image's
 * place in it or the thread count. The left and right padding is the primitive's, the same for
 * every band.
 *
 * The weight is reordered once into the layout the primitive chose (bf16 in a bf16 context,
 * float32 in a float32 one) and kept by the context (cpu_pack.c's table). Where oneDNN has no
 * bf16 convolution (no AVX-512), a bf16 context runs the float32 primitive on operands rounded
 * to bf16: the same products, summed in float32. */
#include "kernels/cpu/cpu_matmul.h"

#include "common/err.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Output rows of a band. 8 rows keep a 64-row image (the decoder's first stage at 512x512) in 8
 * tasks for the worker threads and the halo of a 3x3 kernel at a fifth of the rows read; on 2
 * cores, bands of 4, 8 and 16 rows ran the decoder's shapes within the noise of each other. */
#define CONV_BAND_ROWS 8

/* What a primitive is made for: one band of one image. */
typedef struct conv_key {
    int64_t C, O, kh, kw;
    int64_t rows_in, W; /* the band's input rows and the columns the kernel reads */
    int64_t rows, Wo;   /* its output rows and columns */
    int64_t stride, pad_l, pad_r;
    kn_dtype dt; /* the operands' dtype: F32 or BF16 */
    int bias;
} conv_key;

struct conv_prim {
    struct conv_prim *next;
    conv_key key;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t src, wei, bias, dst, scratch;
};

/* Every primitive and reorder made, kept for the process's life (a few dozen in a model). */
struct reorder {
    struct reorder *next;
    dnnl_memory_desc_t from, to;
    dnnl_primitive_t prim;
};

static struct {
    pthread_mutex_t mu;
    struct conv_prim *prims;
    struct reorder *reorders;
} lib = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL};

static dnnl_data_type_t dnnl_dt(kn_dtype dt)
{
    return dt == KN_BF16 ? dnnl_bf16 : dnnl_f32;
}

static struct conv_prim *prim_make(const conv_key *k, dnnl_engine_t engine)
{
    struct conv_prim *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->key = *k;
    dnnl_dims_t sd = {1, k->C, k->rows_in, k->W}, wd = {k->O, k->C, k->kh, k->kw};
    dnnl_dims_t dd = {1, k->O, k->rows, k->Wo}, bd = {k->O};
    dnnl_dims_t strides = {k->stride, k->stride}, pl = {0, k->pad_l}, pr = {0, k->pad_r};
    dnnl_data_type_t dt = dnnl_dt(k->dt);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_convolution_desc_t desc;
    int ok =
        dnnl_memory_desc_init_by_tag(&p->src, 4, sd, dt, dnnl_format_tag_any) == dnnl_success &&
        dnnl_memory_desc_init_by_tag(&p->wei, 4, wd, dt, dnnl_format_tag_any) == dnnl_success &&
        dnnl_memory_desc_init_by_tag(&p->dst, 4, dd, dnnl_f32, dnnl_format_tag_any) ==
            dnnl_success &&
        dnnl_memory_desc_init_by_tag(&p->bias, 1, bd, dnnl_f32, dnnl_a) == dnnl_success &&
        dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct,
                                           &p->src, &p->wei, k->bias ? &p->bias : NULL, &p->dst,
                                           strides, pl, pr) == dnnl_success &&
        dnnl_primitive_attr_create(&attr) == dnnl_success &&
        dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) == dnnl_success &&
        dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL) == dnnl_success;
    if (ok) {
        p->src = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        p->wei = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        p->dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        p->scratch = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        ok = dnnl_primitive_create(&p->prim, pd) == dnnl_success;
    }
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (!ok) {
        free(p);
        return NULL;
    }
    return p;
}

static int key_equal(const conv_key *a, const conv_key *b)
{
    return a->C == b->C && a->O == b->O && a->kh == b->kh && a->kw == b->kw &&
           a->rows_in == b->rows_in && a->W == b->W && a->rows == b->rows && a->Wo == b->Wo &&
           a->stride == b->stride && a->pad_l == b->pad_l && a->pad_r == b->pad_r &&
           a->dt == b->dt && a->bias == b->bias;
}

/* The primitive of key k, made on first use; NULL when oneDNN has none (error not set). */
static struct conv_prim *prim_get(const conv_key *k)
{
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    if (cpu_dnnl_thread(&engine, &stream) < 0) return NULL;
    pthread_mutex_lock(&lib.mu);
    struct conv_prim *p = lib.prims;
    while (p && !key_equal(&p->key, k))
        p = p->next;
    if (!p && (p = prim_make(k, engine)) != NULL) {
        p->next = lib.prims;
        lib.prims = p;
    }
    pthread_mutex_unlock(&lib.mu);
    return p;
}

/* The reorder from `from` to `to`, made on first use; NULL when oneDNN has none. */
static dnnl_primitive_t reorder_get(const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to)
{
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    if (cpu_dnnl_thread(&engine, &stream) < 0) return NULL;
    pthread_mutex_lock(&lib.mu);
    struct reorder *r = lib.reorders;
    while (r && !(dnnl_memory_desc_equal(&r->from, from) && dnnl_memory_desc_equal(&r->to, to)))
        r = r->next;
    if (!r && (r = calloc(1, sizeof *r)) != NULL) {
        dnnl_primitive_desc_t pd = NULL;
        r->from = *from, r->to = *to;
        if (dnnl_reorder_primitive_desc_create(&pd, from, engine, to, engine, NULL) !=
                dnnl_success ||
            dnnl_primitive_create(&r->prim, pd) != dnnl_success) {
            free(r);
            r = NULL;
        } else {
            r->next = lib.reorders;
            lib.reorders = r;
        }
        if (pd) dnnl_primitive_desc_destroy(pd);
    }
    pthread_mutex_unlock(&lib.mu);
    return r ? r->prim : NULL;
}

/* Runs primitive prim on this thread over n (argument, descriptor, data) triples. */
static int execute(dnnl_primitive_t prim, int n, const int *arg,
                   const dnnl_memory_desc_t *const *md, void *const *data)
{
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    if (!prim || cpu_dnnl_thread(&engine, &stream) < 0) return ERR_DEVICE;
    dnnl_memory_t m[6] = {0};
    dnnl_exec_arg_t args[6];
    int ok = 1, i;
    for (i = 0; i < n && ok; i++) {
        ok = dnnl_memory_create(&m[i], md[i], engine, data[i]) == dnnl_success;
        args[i] = (dnnl_exec_arg_t){arg[i], m[i]};
    }
    ok = ok && dnnl_primitive_execute(prim, stream, n, args) == dnnl_success &&
         dnnl_stream_wait(stream) == dnnl_success;
    for (i = 0; i < n; i++)
        if (m[i]) dnnl_memory_destroy(m[i]);
    return ok ? 0 : ERR_DEVICE;
}

/* One reorder: `from` at src to `to` at dst. */
static int reorder(const dnnl_memory_desc_t *from, const void *src, const dnnl_memory_desc_t *to,
                   void *dst)
{
    const dnnl_memory_desc_t *md[2] = {from, to};
    void *data[2] = {(void *)src, dst};
    return execute(reorder_get(from, to), 2, (const int[]){DNNL_ARG_FROM, DNNL_ARG_TO}, md, data);
}

/* rows x cols of channels [0, ch) of a float32 NCHW image whose channel planes are `plane`
 * floats apart and rows `cols_ld` apart. */
static int image_md(dnnl_memory_desc_t *md, int64_t ch, int64_t rows, int64_t cols, int64_t plane,
                    int64_t cols_ld)
{
    dnnl_dims_t d = {1, ch, rows, cols}, st = {ch * plane, plane, cols_ld, 1};
    return dnnl_memory_desc_init_by_strides(md, 4, d, dnnl_f32, st) == dnnl_success ? 0
                                                                                    : ERR_DEVICE;
}

/* Rows [r0, r0 + n) of a band held in layout md. */
static int rows_md(dnnl_memory_desc_t *sub, const dnnl_memory_desc_t *md, int64_t r0, int64_t n)
{
    dnnl_dims_t d = {md->dims[0], md->dims[1], n, md->dims[3]}, off = {0, 0, r0, 0};
    return dnnl_memory_desc_init_submemory(sub, md, d, off) == dnnl_success ? 0 : ERR_DEVICE;
}

/* The per-thread buffers of a band: its source, its output and the primitive's scratchpad. */
static __thread struct {
    void *src, *dst, *scratch;
    size_t src_size, dst_size, scratch_size;
    const struct conv_prim *zeroed; /* the primitive whose zeros (padding, halo) src holds */
} band;

struct conv_run {
    const struct conv_prim *p;
    int64_t C, H, W, O, Ho, Wo, pad, bands;
    const float *x, *bias;
    float *y;
    void *wei;
    int round_bf16; /* the float32 primitive on operands rounded to bf16 */
    int rc;
};

/* Band `bi` of image n: output rows [oy0, oy0 + k->rows) from input rows [iy0, + k->rows_in),
 * of which [lo, hi) lie in the image. */
static int band_run(const struct conv_run *r, int64_t n, int64_t bi)
{
    const struct conv_prim *p = r->p;
    const conv_key *k = &p->key;
    const int64_t oy0 = bi * k->rows, iy0 = oy0 * k->stride - r->pad;
    const int64_t lo = iy0 < 0 ? -iy0 : 0;
    const int64_t hi = iy0 + k->rows_in > r->H ? r->H - iy0 : k->rows_in;
    const int64_t out_rows = r->Ho - oy0 < k->rows ? r->Ho - oy0 : k->rows;
    size_t src_bytes = dnnl_memory_desc_get_size(&p->src);
    size_t scratch_bytes = dnnl_memory_desc_get_size(&p->scratch);
    void *src = cpu_grow(&band.src, &band.src_size, src_bytes);
    float *dst = cpu_grow(&band.dst, &band.dst_size, dnnl_memory_desc_get_size(&p->dst));
    void *scratch = cpu_grow(&band.scratch, &band.scratch_size, scratch_bytes ? scratch_bytes : 64);
    if (!src || !dst || !scratch) return ERR_NOMEM;
    /* Rows outside the image, and a blocked layout's padding channels, must be zeros. */
    if (lo > 0 || hi < k->rows_in || band.zeroed != p) {
        memset(src, 0, src_bytes);
        band.zeroed = p;
    }
    dnnl_memory_desc_t from, to;
    int rc;
    if (hi > lo) {
        const float *xs = r->x + (n * r->C * r->H + iy0 + lo) * r->W;
        if ((rc = image_md(&from, r->C, hi - lo, k->W, r->H * r->W, r->W)) < 0 ||
            (rc = rows_md(&to, &p->src, lo, hi - lo)) < 0 ||
            (rc = reorder(&from, xs, &to, src)) < 0)
            return rc;
        if (r->round_bf16) cpu_mm_round_bf16(src, src_bytes / sizeof(float));
    }
    const dnnl_memory_desc_t *md[5] = {&p->src, &p->wei, &p->dst, &p->scratch, &p->bias};
    void *data[5] = {src, r->wei, dst, scratch, (void *)r->bias};
    const int args[5] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_SCRATCHPAD,
                         DNNL_ARG_BIAS};
    if ((rc = execute(p->prim, k->bias ? 5 : 4, args, md, data)) < 0) return rc;
    float *ys = r->y + (n * r->O * r->Ho + oy0) * r->Wo;
    if ((rc = rows_md(&from, &p->dst, 0, out_rows)) < 0 ||
        (rc = image_md(&to, r->O, out_rows, r->Wo, r->Ho * r->Wo, r->Wo)) < 0)
        return rc;
    return reorder(&from, dst, &to, ys);
}

static void conv_range(void *arg, int64_t lo, int64_t hi)
{
    struct conv_run *r = arg;
    for (int64_t t = lo; t < hi; t++) {
        int rc = band_run(r, t / r->bands, t % r->bands);
        if (rc < 0) {
            __atomic_store_n(&r->rc, rc, __ATOMIC_RELAXED);
            return;
        }
    }
}

/* Weight w reordered for primitive p (rounded to bf16 values first when round), made on first
 * use and kept by ctx; NULL with the error set. */
static const cpu_packed *conv_weight(kn_ctx *ctx, const kn_tensor *w, const struct conv_prim *p,
                                     int round)
{
    const kn_dtype dt = round ? KN_BF16 : p->key.dt;
    const cpu_packed *found = cpu_packed_find(ctx, w, dt, 0, &p->wei);
    if (found) return found;
    const int64_t n = kn_numel(w);
    const float *wf = cpu_f32_span(ctx, CPU_SLOT_WEIGHT, w, 0, n);
    if (!wf) return NULL;
    float *rounded = round ? malloc((size_t)n * sizeof(float)) : NULL;
    cpu_packed *pk = calloc(1, sizeof *pk);
    size_t bytes = dnnl_memory_desc_get_size(&p->wei);
    if (pk) {
        *pk = (cpu_packed){.src = w->data,
                           .N = p->key.O,
                           .K = n / p->key.O,
                           .dt = dt,
                           .store = p->key.dt,
                           .layout = p->wei,
                           .chunks = 1,
                           .offset = calloc(1, sizeof(size_t)),
                           .bytes = bytes};
        if (posix_memalign(&pk->data, 64, bytes) != 0) pk->data = NULL;
    }
    if (!pk || !pk->offset || !pk->data || (round && !rounded)) {
        cpu_packed_free(pk);
        free(rounded);
        err_set(ERR_NOMEM, "out of memory reordering a %lld-element convolution weight",
                (long long)n);
        return NULL;
    }
    if (round) {
        memcpy(rounded, wf, (size_t)n * sizeof(float));
        cpu_mm_round_bf16(rounded, (size_t)n);
        wf = rounded;
    }
    dnnl_memory_desc_t from;
    dnnl_dims_t wd = {p->key.O, p->key.C, p->key.kh, p->key.kw};
    int rc = dnnl_memory_desc_init_by_tag(&from, 4, wd, dnnl_f32, dnnl_oihw) == dnnl_success
                 ? reorder(&from, wf, &p->wei, pk->data)
                 : ERR_DEVICE;
    free(rounded);
    if (rc < 0) {
        cpu_packed_free(pk);
        err_set(rc, "oneDNN: cannot reorder a convolution weight");
        return NULL;
    }
    return cpu_packed_keep(ctx, pk, w) == 0 ? pk : NULL;
}

int cpu_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
               const kn_tensor *b, int stride, int pad)
{
    if (y->dtype != KN_F32)
        CPU_HALF(cpu_conv2d(ctx, cpu_half_out(H, y, 0), cpu_half_in(H, x), w, b, stride, pad));
    struct conv_run r = {.C = x->shape[1],
                         .H = x->shape[2],
                         .W = x->shape[3],
                         .O = w->shape[0],
                         .Ho = y->shape[2],
                         .Wo = y->shape[3],
                         .pad = pad,
                         .x = x->data,
                         .y = y->data};
    const int64_t B = x->shape[0], kh = w->shape[2], kw = w->shape[3];
    if (B == 0 || r.O == 0 || r.Ho == 0 || r.Wo == 0) return 0;
    /* The columns the kernel reaches: the right padding makes up the rest of the last window. */
    const int64_t reach = (r.Wo - 1) * stride + kw - pad, W = reach < r.W ? reach : r.W;
    const int64_t rows = r.Ho < CONV_BAND_ROWS ? r.Ho : CONV_BAND_ROWS;
    conv_key k = {.C = r.C,
                  .O = r.O,
                  .kh = kh,
                  .kw = kw,
                  .rows_in = (rows - 1) * stride + kh,
                  .W = W,
                  .rows = rows,
                  .Wo = r.Wo,
                  .stride = stride,
                  .pad_l = pad,
                  .pad_r = reach - W,
                  .dt = ctx->matmul == KN_BF16 ? KN_BF16 : KN_F32,
                  .bias = b != NULL};
    if (!(r.p = prim_get(&k)) && k.dt == KN_BF16) {
        k.dt = KN_F32;
        r.round_bf16 = 1;
        r.p = prim_get(&k);
    }
    if (!r.p)
        return err_set(ERR_DEVICE,
                       "oneDNN has no %s convolution of %lld to %lld channels, %lldx%lld",
                       k.dt == KN_BF16 ? "bf16" : "f32", (long long)r.C, (long long)r.O,
                       (long long)kh, (long long)kw);
    const cpu_packed *wp = conv_weight(ctx, w, r.p, r.round_bf16);
    if (!wp) return err_code();
    r.wei = wp->data;
    if (b && !(r.bias = cpu_f32_span(ctx, CPU_SLOT_PARAM, b, 0, r.O))) return -1;
    r.bands = (r.Ho + rows - 1) / rows;
    cpu_parallel(B * r.bands, B * r.O * r.Ho * r.Wo * r.C * kh * kw / 32, conv_range, &r);
    return r.rc < 0 ? err_set(r.rc, "oneDNN: a %lld x %lld convolution band %s", (long long)kh,
                              (long long)kw, r.rc == ERR_NOMEM ? "ran out of memory" : "failed")
                    : 0;
}
