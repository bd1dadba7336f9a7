/* CPU backend: the gradient of scaled dot-product attention (kn_attention_grad) and the
 * head-averaged attention maps (kn_attention_maps), both from the row log-sum-exp the forward
 * wrote, so that the probabilities are recomputed rather than stored.
 *
 * The gradient runs in two passes over blocks of GRAD_BLOCK rows of one (sample, head), as
 * FlashAttention's backward recomputes: the first takes blocks of queries, with P = exp(scale
 * q k^T - lse) and dP = do v^T over all keys, and writes dq = scale dS k and each query's
 * delta = sum_d do o + sum_k G P (the row term of the softmax's gradient); the second takes
 * blocks of keys with the transposed scores, and writes dk = scale dS^T q and dv = P^T do. Each
 * output row is one product over all queries or all keys, never a sum of partial products
 * across tasks, so its reduction order follows from the shapes alone, whatever the thread
 * count or the other samples; the scratch is a few blocks of rows per thread. The products
 * multiply in the context's dtype through oneDNN, in place on the heads' slices, as the
 * forward's do (cpu_attention.c). */
#include "kernels/cpu/cpu_matmul.h"
#include "kernels/kn_grad.h"

#include "common/err.h"

#include <math.h>
#include <string.h>

/* Query rows of a first-pass task, key rows of a second-pass one. */
#define GRAD_BLOCK 64

struct grad_job {
    const char *q, *k, *v, *dout; /* the products' operands, in dt */
    const float *o32, *do32, *lse, *dmaps;
    const int32_t *sel;
    int n_sel;
    int64_t map_rows;
    float *dq, *dk, *dv, *delta; /* delta [B, H, Sq] */
    int64_t H, Sq, Sk, HD, Dh, qblocks, kblocks;
    kn_dtype dt;
    int round;
    float scale, inv_h;
    int *rc;
};

/* A task's buffers, the thread's own: scores then probabilities, dP then dS (float32, rows of
 * up to L = max(Sq, Sk)), and both in the products' dtype. */
struct grad_buffers {
    float *p, *ds;
    void *p16, *ds16;
};
static __thread struct {
    void *data;
    size_t size;
} tls_buf;

static int buffers(struct grad_buffers *b, int64_t L)
{
    const size_t fz = (size_t)(GRAD_BLOCK * L) * sizeof(float), hz = fz / 2;
    char *c = cpu_grow(&tls_buf.data, &tls_buf.size, 2 * fz + 2 * hz);
    if (!c) return ERR_NOMEM;
    b->p = (float *)c;
    b->ds = (float *)(c + fz);
    b->p16 = c + 2 * fz;
    b->ds16 = c + 2 * fz + hz;
    return 0;
}

/* c[M, N] (row stride ldc) = a[M, K] (row stride lda) . op(b), b a head's slice (rows HD
 * apart), in the job's dtype on this thread. */
static int product(const struct grad_job *j, int64_t M, int64_t N, int64_t K, const void *a,
                   int64_t lda, const void *b, cpu_mm_form form, float *c, int64_t ldc)
{
    cpu_mm_key key = {
        .M = M, .N = N, .K = K, .lda = lda, .ldb = j->HD, .ldc = ldc, .form = form, .dt = j->dt};
    return cpu_mm_direct(&key, a, b, c);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static int64_t probs_avx2(float *s, int64_t n, float scale,
                                                              const float *lse, int per_col)
{
    const int64_t m = n / 8 * 8;
    const __m256 vs = _mm256_set1_ps(scale), vl = _mm256_set1_ps(lse[0]);
    for (int64_t i = 0; i < m; i += 8) {
        __m256 l = per_col ? _mm256_loadu_ps(lse + i) : vl;
        __m256 x = _mm256_sub_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(s + i)), l);
        _mm256_storeu_ps(s + i, cpu_exp8_nonpos(x));
    }
    return m;
}
#endif

/* s[i] = exp(scale s[i] - lse), lse[0] for every column or (per_col) lse[i]. The exponent is
 * at most a rounding above 0 (lse is the row's log-sum-exp). */
static void probs(float *s, int64_t n, float scale, const float *lse, int per_col)
{
    int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpu_avx2_fma()) i = probs_avx2(s, n, scale, lse, per_col);
#endif
    for (; i < n; i++)
        s[i] = expf(scale * s[i] - lse[per_col ? i : 0]);
}

/* ds[i] = p[i] (ds[i] - delta), delta[0] for every column or (per_col) delta[i]. */
static void softmax_grad(float *ds, const float *p, int64_t n, const float *delta, int per_col)
{
    if (per_col) {
        for (int64_t i = 0; i < n; i++)
            ds[i] = p[i] * (ds[i] - delta[i]);
    } else {
        const float d = delta[0];
        for (int64_t i = 0; i < n; i++)
            ds[i] = p[i] * (ds[i] - d);
    }
}

/* rows x n float32 values (row stride n) as a product's operand: in place (rounded to bf16
 * values in round mode), or narrowed into to. */
static const void *operand(const struct grad_job *j, float *x, int64_t rows, int64_t n, void *to)
{
    if (j->round) cpu_mm_round_bf16(x, (size_t)(rows * n));
    if (j->dt != KN_BF16) return x;
    kn_convert_from_f32(to, x, KN_BF16, (size_t)(rows * n));
    return to;
}

/* The map term of query row i of sample b: G[sel[j']] += dmaps[b, j', i] / H into dp, and the
 * returned sum_j' G P[sel[j']] for the row's delta. */
static float map_row(const struct grad_job *j, int64_t b, int64_t i, const float *p, float *dp)
{
    float gp = 0.0f;
    for (int s = 0; s < j->n_sel; s++) {
        float g = j->dmaps[(b * j->n_sel + s) * j->map_rows + i] * j->inv_h;
        gp += g * p[j->sel[s]];
        dp[j->sel[s]] += g;
    }
    return gp;
}

/* Task t of a pass over blocks of S rows (the other operand having So): block t % nblocks of
 * head h = (t / nblocks) % H of sample b = t / (nblocks H); its first row r0 and its rows; the
 * element offsets of the block's first row and of the other operand's head; the head's lse and
 * delta rows. */
struct block {
    int64_t b, h, r0, rows, own, other, at;
};

static struct block block_of(const struct grad_job *j, int64_t task, int64_t nblocks, int64_t S,
                             int64_t So)
{
    const int64_t r0 = task % nblocks * GRAD_BLOCK, b = task / (nblocks * j->H);
    const int64_t h = task / nblocks % j->H;
    return (struct block){.b = b,
                          .h = h,
                          .r0 = r0,
                          .rows = S - r0 < GRAD_BLOCK ? S - r0 : GRAD_BLOCK,
                          .own = (b * S + r0) * j->HD + h * j->Dh,
                          .other = b * So * j->HD + h * j->Dh,
                          .at = (b * j->H + h) * j->Sq};
}

/* For `rows` rows against N of one head: t->p = exp(scale a_s . b_s^T - lse), lse[0] for each
 * row's own (lse advancing a row at a time) or (per_col) lse[column]; t->ds = a_dp . b_dp^T,
 * zero when a_dp is NULL (no do). The operands are heads' slices in the products' dtype. */
static int probs_and_dp(const struct grad_job *j, const struct grad_buffers *t, int64_t rows,
                        int64_t N, const char *a_s, const char *b_s, const char *a_dp,
                        const char *b_dp, const float *lse, int per_col)
{
    int rc = product(j, rows, N, j->Dh, a_s, j->HD, b_s, MM_PLAIN_NT, t->p, N);
    if (rc < 0) return rc;
    for (int64_t i = 0; i < rows; i++)
        probs(t->p + i * N, N, j->scale, per_col ? lse : lse + i, per_col);
    if (a_dp) return product(j, rows, N, j->Dh, a_dp, j->HD, b_dp, MM_PLAIN_NT, t->ds, N);
    memset(t->ds, 0, (size_t)(rows * N) * sizeof(float));
    return 0;
}

/* out [rows, Dh] (rows HD apart) = scale a . b: a [rows, K] in the products' form, b a head's
 * slice [K, Dh]. */
static int scaled_product(const struct grad_job *j, int64_t rows, int64_t K, const void *a,
                          const char *b, float *out)
{
    int rc = product(j, rows, j->Dh, K, a, K, b, MM_PLAIN_KN, out, j->HD);
    for (int64_t i = 0; i < rows && rc == 0; i++)
        for (int64_t d = 0; d < j->Dh; d++)
            out[i * j->HD + d] *= j->scale;
    return rc;
}

/* First pass: a block of queries, its rows' delta and dq. */
static int query_block(const struct grad_job *j, const struct grad_buffers *t, int64_t task)
{
    const struct block k = block_of(j, task, j->qblocks, j->Sq, j->Sk);
    const int64_t Sk = j->Sk, HD = j->HD, qoff = k.own, koff = k.other, at = k.at + k.r0;
    const size_t es = kn_dtype_size(j->dt);
    int rc = probs_and_dp(j, t, k.rows, Sk, j->q + qoff * es, j->k + koff * es,
                          j->dout ? j->dout + qoff * es : NULL, j->v + koff * es, j->lse + at, 0);
    if (rc < 0) return rc;
    float *delta = j->delta + at;
    for (int64_t i = 0; i < k.rows; i++) {
        const float *p = t->p + i * Sk;
        float *ds = t->ds + i * Sk;
        float d =
            j->do32 ? cpu_dot_lanes(j->do32 + qoff + i * HD, j->o32 + qoff + i * HD, j->Dh) : 0.0f;
        if (j->dmaps && k.r0 + i < j->map_rows) d += map_row(j, k.b, k.r0 + i, p, ds);
        delta[i] = d;
        softmax_grad(ds, p, Sk, &delta[i], 0);
    }
    return scaled_product(j, k.rows, Sk, operand(j, t->ds, k.rows, Sk, t->ds16), j->k + koff * es,
                          j->dq + qoff);
}

/* The map term of the second pass: for each selected key in [k0, k0 + rows), G over the map's
 * query rows added to its row of dp^T (row stride Sq). */
static void map_columns(const struct grad_job *j, int64_t b, int64_t k0, int64_t rows, float *dpt)
{
    for (int s = 0; s < j->n_sel; s++) {
        int64_t r = j->sel[s] - k0;
        if (r < 0 || r >= rows) continue;
        const float *dm = j->dmaps + (b * j->n_sel + s) * j->map_rows;
        for (int64_t i = 0; i < j->map_rows; i++)
            dpt[r * j->Sq + i] += dm[i] * j->inv_h;
    }
}

/* Second pass: a block of keys, with the scores transposed; its dk and dv. */
static int key_block(const struct grad_job *j, const struct grad_buffers *t, int64_t task)
{
    const struct block k = block_of(j, task, j->kblocks, j->Sk, j->Sq);
    const int64_t Sq = j->Sq, HD = j->HD, koff = k.own, qoff = k.other, at = k.at;
    const size_t es = kn_dtype_size(j->dt);
    const char *dout = j->dout ? j->dout + qoff * es : NULL;
    int rc = probs_and_dp(j, t, k.rows, Sq, j->k + koff * es, j->q + qoff * es,
                          dout ? j->v + koff * es : NULL, dout, j->lse + at, 1);
    if (rc < 0) return rc;
    if (j->dmaps) map_columns(j, k.b, k.r0, k.rows, t->ds);
    for (int64_t r = 0; r < k.rows; r++)
        softmax_grad(t->ds + r * Sq, t->p + r * Sq, Sq, j->delta + at, 1);
    const void *ds = operand(j, t->ds, k.rows, Sq, t->ds16);
    if ((rc = scaled_product(j, k.rows, Sq, ds, j->q + qoff * es, j->dk + koff)) < 0) return rc;
    float *dv = j->dv + koff;
    if (dout) {
        const void *p = operand(j, t->p, k.rows, Sq, t->p16);
        return product(j, k.rows, j->Dh, Sq, p, Sq, dout, MM_PLAIN_KN, dv, HD);
    }
    for (int64_t r = 0; r < k.rows; r++)
        memset(dv + r * HD, 0, (size_t)j->Dh * sizeof(float));
    return 0;
}

static void run_blocks(const struct grad_job *j, int64_t lo, int64_t hi, int second)
{
    struct grad_buffers t;
    int rc = buffers(&t, j->Sq > j->Sk ? j->Sq : j->Sk);
    for (int64_t task = lo; task < hi && rc == 0; task++)
        rc = second ? key_block(j, &t, task) : query_block(j, &t, task);
    if (rc < 0) __atomic_store_n(j->rc, rc, __ATOMIC_RELAXED);
}

static void query_blocks(void *arg, int64_t lo, int64_t hi)
{
    run_blocks(arg, lo, hi, 0);
}

static void key_blocks(void *arg, int64_t lo, int64_t hi)
{
    run_blocks(arg, lo, hi, 1);
}

/* The products' operands: q, k, v (and do) in bf16 in a bf16 context. */
static int grad_operands(kn_ctx *ctx, struct grad_job *j, int64_t B)
{
    j->dt = ctx->matmul == KN_BF16 ? KN_BF16 : KN_F32;
    if (j->dt != KN_BF16) return 0;
    j->round = !cpu_attn_bf16_products();
    const float *src[4] = {(const float *)j->q, (const float *)j->k, (const float *)j->v,
                           (const float *)j->dout};
    const int64_t rows[4] = {B * j->Sq, B * j->Sk, B * j->Sk, B * j->Sq};
    char *dst[4];
    if (cpu_attn_operands(ctx, j->dout ? 4 : 3, src, rows, j->HD, j->round, dst) < 0) return -1;
    j->q = dst[0], j->k = dst[1], j->v = dst[2], j->dout = j->dout ? dst[3] : NULL;
    if (j->round) j->dt = KN_F32;
    return 0;
}

int cpu_attention_grad(kn_ctx *ctx, kn_tensor *dq, kn_tensor *dk, kn_tensor *dv,
                       const kn_tensor *do_, const kn_tensor *q, const kn_tensor *k,
                       const kn_tensor *v, const kn_tensor *o, const kn_attn_args *args,
                       const kn_map_grad *map)
{
    if (dq->dtype != KN_F32)
        CPU_HALF(cpu_attention_grad(ctx, cpu_half_out(H, dq, 0), cpu_half_out(H, dk, 0),
                                    cpu_half_out(H, dv, 0), cpu_half_in(H, do_), cpu_half_in(H, q),
                                    cpu_half_in(H, k), cpu_half_in(H, v), cpu_half_in(H, o), args,
                                    map));
    const int64_t B = q->shape[0];
    struct grad_job j = {.q = q->data,
                         .k = k->data,
                         .v = v->data,
                         .dout = do_ ? do_->data : NULL,
                         .o32 = o->data,
                         .do32 = do_ ? do_->data : NULL,
                         .lse = args->lse->data,
                         .dmaps = map && map->n_sel > 0 && map->rows > 0 ? map->dmaps->data : NULL,
                         .sel = map ? map->sel : NULL,
                         .n_sel = map ? map->n_sel : 0,
                         .map_rows = map ? map->rows : 0,
                         .dq = dq->data,
                         .dk = dk->data,
                         .dv = dv->data,
                         .H = args->heads,
                         .Sq = q->shape[1],
                         .Sk = k->shape[1],
                         .HD = q->shape[2],
                         .scale = args->scale,
                         .inv_h = 1.0f / (float)args->heads};
    if (j.Sq == 0) { /* no query: nothing reaches the keys and values */
        memset(dk->data, 0, kn_nbytes(dk));
        memset(dv->data, 0, kn_nbytes(dv));
        return 0;
    }
    j.Dh = j.HD / j.H;
    j.qblocks = (j.Sq + GRAD_BLOCK - 1) / GRAD_BLOCK;
    j.kblocks = (j.Sk + GRAD_BLOCK - 1) / GRAD_BLOCK;
    if (!(j.delta = cpu_scratch(ctx, CPU_SLOT_PARAM, (size_t)(B * j.H * j.Sq) * sizeof(float))) ||
        grad_operands(ctx, &j, B) < 0)
        return -1;
    int rc = 0;
    j.rc = &rc;
    const int64_t work = B * j.H * j.Sq * j.Sk * j.Dh;
    cpu_parallel(B * j.H * j.qblocks, work, query_blocks, &j);
    if (rc == 0) cpu_parallel(B * j.H * j.kblocks, work, key_blocks, &j);
    return rc < 0 ? err_set(rc, rc == ERR_NOMEM ? "kn_attention_grad: out of memory for its blocks"
                                                : "kn_attention_grad: a matrix product failed")
                  : 0;
}

/* The maps of rows [lo, hi) of (sample, query) pairs r = b rows + p. */
struct maps_job {
    float *maps;
    const float *q, *k, *lse;
    const int32_t *sel;
    int n_sel;
    int64_t rows, H, Sq, Sk, HD, Dh;
    float scale;
    int bf16; /* the scores of a bf16 context: q and k rounded to bf16 */
    int *rc;
};

/* x[0, n) into to, rounded to bf16 values when bf16; returns the values to use. */
static const float *maps_operand(const float *x, int64_t n, int bf16, float *to)
{
    if (!bf16) return x;
    memcpy(to, x, (size_t)n * sizeof(float));
    cpu_mm_round_bf16(to, (size_t)n);
    return to;
}

static void maps_range(void *arg, int64_t lo, int64_t hi)
{
    const struct maps_job *j = arg;
    float *buf = cpu_mm_thread_buffer((size_t)(2 * j->Dh) * sizeof(float));
    if (!buf) {
        __atomic_store_n(j->rc, ERR_NOMEM, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t r = lo; r < hi; r++) {
        const int64_t b = r / j->rows, p = r % j->rows;
        for (int s = 0; s < j->n_sel; s++) {
            float acc = 0.0f;
            for (int64_t h = 0; h < j->H; h++) {
                const float *q =
                    maps_operand(j->q + (b * j->Sq + p) * j->HD + h * j->Dh, j->Dh, j->bf16, buf);
                const float *k = maps_operand(j->k + (b * j->Sk + j->sel[s]) * j->HD + h * j->Dh,
                                              j->Dh, j->bf16, buf + j->Dh);
                float lse = j->lse[(b * j->H + h) * j->Sq + p];
                acc += expf(j->scale * cpu_dot_lanes(q, k, j->Dh) - lse);
            }
            j->maps[(b * j->n_sel + s) * j->rows + p] = acc / (float)j->H;
        }
    }
}

int cpu_attention_maps(kn_ctx *ctx, kn_tensor *maps, const kn_tensor *q, const kn_tensor *k,
                       const kn_tensor *lse, const int32_t *sel, int n_sel, int64_t rows, int heads,
                       float scale)
{
    if (q->dtype != KN_F32)
        CPU_HALF(cpu_attention_maps(ctx, maps, cpu_half_in(H, q), cpu_half_in(H, k), lse, sel,
                                    n_sel, rows, heads, scale));
    int rc = 0;
    struct maps_job j = {.maps = maps->data,
                         .q = q->data,
                         .k = k->data,
                         .lse = lse->data,
                         .sel = sel,
                         .n_sel = n_sel,
                         .rows = rows,
                         .H = heads,
                         .Sq = q->shape[1],
                         .Sk = k->shape[1],
                         .HD = q->shape[2],
                         .Dh = q->shape[2] / heads,
                         .scale = scale,
                         .bf16 = ctx->matmul == KN_BF16,
                         .rc = &rc};
    const int64_t n = q->shape[0] * rows;
    cpu_parallel(n, n * n_sel * j.HD, maps_range, &j);
    return rc < 0 ? err_set(rc, "kn_attention_maps: out of memory for a row") : 0;
}
