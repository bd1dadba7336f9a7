/* Internal to kernels/cpu/: the matrix product every CPU op is built on (cpu_matmul.c) and the
 * weights packed for it (cpu_pack.c). A product runs in tiles of a fixed number of rows (one per
 * operand dtype) by at most MM_TILE_N columns by the whole K, so that each row's result is fixed by the row, the operand
 * and K: never by how many rows share the product nor by the thread split. */
#ifndef FOCUS_KERNELS_CPU_CPU_MATMUL_H
#define FOCUS_KERNELS_CPU_CPU_MATMUL_H

#include "kernels/cpu/cpu_ops.h"
#include "kernels/kn_convert.h"

#include <dnnl.h>

/* Rows of a tile: whole register blocks for every kernel oneDNN has (6-row AVX2, 16-row
 * AVX-512 and AMX blocks), so that no row of a tile takes a tail path of its own. float32
 * products run best at 96 (measured 125 against 95 GFLOP/s at 48 for 2356 x 1536 x 6144);
 * bf16 ones gain nothing past 48, and a small product (the adaLN rows) pads less. */
#define MM_TILE_M_F32 96
#define MM_TILE_M_BF16 48
#define MM_TILE_N 256

/* How the product's second operand is held. */
typedef enum cpu_mm_form {
    MM_PLAIN_NT, /* b[N, K] row-major (a weight, or keys), read transposed */
    MM_PLAIN_KN, /* b[K, N] row-major (attention values) */
    MM_PACKED,   /* a weight packed into oneDNN's layout for the product's dtype */
} cpu_mm_form;

/* What a oneDNN primitive is made for: one tile's columns N, K, the operand form and row
 * stride (plain forms), and the dtype its operands are stored in. round_bf16: a bf16 product
 * on a CPU where oneDNN has none, run in float32 on operands rounded to bf16. */
typedef struct cpu_mm_key {
    int64_t N, K, ldb;
    cpu_mm_form form;
    kn_dtype dt;
    int round_bf16;
    int single; /* tiles of one row: each row multiplied alone (kn_linear_rows) */
    /* Products run in place (cpu_mm_direct): c's row stride, M rows and a's row stride
     * (all 0 for tiles: dense [rows, N] output, rows K apart). */
    int64_t ldc, M, lda;
} cpu_mm_key;

/* The rows of every tile of a product made for key k. */
static inline int64_t cpu_mm_tile_rows(const cpu_mm_key *k)
{
    if (k->M) return k->M;
    return k->single ? 1 : k->dt == KN_F32 && !k->round_bf16 ? MM_TILE_M_F32 : MM_TILE_M_BF16;
}

/* A weight w[N, K] packed chunk by chunk (MM_TILE_N rows of w each) for products in dtype dt
 * (F32 or BF16), stored as `store` (BF16; F32 holding bf16 values where oneDNN has no bf16
 * product on this CPU). */
typedef struct cpu_packed {
    const void *src; /* the weight's data, which identifies it */
    int64_t N, K;
    kn_dtype dt, store;
    int single; /* packed for one-row tiles */
    int trans;  /* packed as w^T: for dx = dy . w (N and K are the product's: w is [K, N]) */
    /* A convolution's weight (cpu_conv.c): the primitive's weight layout, in one chunk;
     * ndims 0 for a product's. */
    dnnl_memory_desc_t layout;
    int64_t chunks;
    size_t *offset; /* byte offset of each chunk in data */
    void *data;
    size_t bytes;
} cpu_packed;

/* c[M, N] = act(a[M, K] . op(b) + bias): a float32 with row stride lda; b either plain
 * float32 / 16-bit / FP8 (b_form, b_dtype, ldb; 16-bit and FP8 as MM_PLAIN_NT, or as
 * MM_PLAIN_KN with pack_chunks) or `packed`; bias[N] float32 (NULL: none); act applied when
 * has_act. */
typedef struct cpu_mm {
    int64_t M, N, K;
    const float *a;
    int64_t lda;
    const void *b;
    int64_t ldb;
    cpu_mm_form b_form;
    kn_dtype b_dtype;
    const cpu_packed *packed;
    int pack_chunks; /* b widened and packed chunk by chunk for the tiles of each task */
    int single_rows; /* one-row tiles */
    const float *bias;
    int has_act;
    kn_act act;
    float *c;
    int64_t ldc;
} cpu_mm;

/* Runs the product, over the worker threads when parallel (else on the calling thread, as
 * inside a cpu_parallel task). 0 or a negative error. */
int cpu_mm_run(const cpu_mm *g, int parallel);

/* c[M, N] (float32, row stride ldc) = a[M, K] (row stride lda) . op(b) (form MM_PLAIN_NT or
 * MM_PLAIN_KN, row stride ldb), a and b both of dtype dt (F32 or BF16), as one oneDNN call on
 * the operands in place, on the calling thread: no copy, no epilogue. For small products whose
 * shape the caller fixes (attention tiles); equal keys give equal bits. 0 or a negative error
 * (ERR_DEVICE where oneDNN has no such product, as bf16 on a CPU without AVX-512). */
int cpu_mm_direct(const cpu_mm_key *k, const void *a, const void *b, float *c);
/* Whether oneDNN has the product of key k on this CPU. */
int cpu_mm_supported(const cpu_mm_key *k);

/* Shared by the attention and its gradient (cpu_attention.c): whether oneDNN multiplies bf16
 * on this CPU (probed once with an attention-sized product); and the products' operands: n
 * float32 tensors src[i] of rows[i] rows of HD narrowed to bf16 (round: rounded to bf16 values
 * kept in float32) into one scratch buffer of ctx, dst[i] their copies. 0, or -1 with the
 * error set. */
int cpu_attn_bf16_products(void);
int cpu_attn_operands(kn_ctx *ctx, int n, const float *const *src, const int64_t *rows, int64_t HD,
                      int round, char **dst);

/* Bytes of one packed chunk of key (F32 or BF16, form MM_PACKED); 0 when oneDNN has none. */
size_t cpu_mm_packed_size(const cpu_mm_key *k);
/* Packs w[k->N, k->K] (float32, row-major) into out, of cpu_mm_packed_size(k) bytes. */
int cpu_mm_pack_chunk(const cpu_mm_key *k, const float *w, void *out);
/* oneDNN's CPU engine and the calling thread's stream, made on the thread's first use (which
 * also holds oneDNN's OpenMP to one thread there: every primitive runs single-threaded, the
 * split being the worker threads'). 0 or ERR_DEVICE. */
int cpu_dnnl_thread(dnnl_engine_t *engine, dnnl_stream_t *stream);
/* *buf (64-byte aligned, *size bytes) grown to at least n bytes, its contents lost when it
 * grows; NULL (and *size 0) when out of memory. */
void *cpu_grow(void **buf, size_t *size, size_t n);
/* Rounds x[0, n) to bf16 values (kept as float32). */
void cpu_mm_round_bf16(float *x, size_t n);
/* A per-thread buffer of at least n bytes, valid until the thread's next call; NULL when out
 * of memory. */
void *cpu_mm_thread_buffer(size_t n);

/* The packed weights a context keeps (cpu_pack.c). */
struct cpu_pack_table {
    cpu_packed **slot;
    size_t cap, used;
};
struct cpu_pack_table *cpu_pack_table(kn_ctx *ctx);

/* The packed form of weight w for products in dtype dt (x . w^T, or with trans dy . w), made
 * on first use and kept by ctx; NULL with the error set when it cannot be made. */
const cpu_packed *cpu_packed_get(kn_ctx *ctx, const kn_tensor *w, kn_dtype dt, int single,
                                 int trans);
/* The form of w that ctx keeps for (dt, single, layout), or NULL when it has none yet. */
const cpu_packed *cpu_packed_find(kn_ctx *ctx, const kn_tensor *w, kn_dtype dt, int single,
                                  const dnnl_memory_desc_t *layout);
/* Hands p, a form of w made by the caller (malloc'ed, data 64-byte aligned), to ctx's table:
 * accounted, w's mapped pages released. 0, or ERR_NOMEM with p freed. */
int cpu_packed_keep(kn_ctx *ctx, cpu_packed *p, const kn_tensor *w);
void cpu_packed_free(cpu_packed *p);
void cpu_packed_free_all(kn_ctx *ctx);
static inline const void *cpu_packed_chunk(const cpu_packed *p, int64_t chunk)
{
    return (const char *)p->data + p->offset[chunk];
}

/* Widens n values of dtype dt to float32 on the calling thread. */
void cpu_widen(float *dst, const void *src, kn_dtype dt, size_t n);
/* The float32 panel dst[nt, K] of a product's chunk of columns [n0, n0 + nt) (nt at most
 * MM_TILE_N) from weight w of dtype dt and row stride ldw: rows n0.. of w[N, K], or with
 * trans columns n0.. of w[K, N] transposed (dst[c, r] = w[r, n0 + c]). */
void cpu_weight_panel(float *dst, const void *w, kn_dtype dt, int64_t ldw, int trans, int64_t n0,
                      int64_t nt, int64_t K);
/* act applied to x[0, n) in place. */
void cpu_act_row(float *x, int64_t n, kn_act act);

#endif
