/* CPU backend: scaled dot-product attention, blocked as flash attention is: each task takes a
 * block of ATTN_ROWS queries of one (sample, head) and walks the keys in tiles of ATTN_KEYS,
 * keeping a running maximum and sum per row (online softmax, float32), so that the scores of a
 * tile, its probabilities and the partial output stay in the core's L2 cache and nothing of size
 * Sq x Sk is ever written. The products multiply in the context's dtype (bf16 operands with
 * float32 accumulation in bf16 mode; float32 in the reference mode) through oneDNN, in place on
 * the heads' slices (heads stay interleaved in the feature dimension).
 *
 * A row's result depends on its own query, the keys and values and the fixed tile sizes: the
 * blocks of a (sample, head) are cut at fixed offsets, so neither other samples of the batch
 * nor the thread count change a bit. */
#include "kernels/cpu/cpu_matmul.h"

#include "common/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Queries per task and keys per tile: a tile's float32 scores are 256 KiB, in L2 beside the
 * keys and values they multiply (torch's CPU flash attention also walks keys 512 or more at a
 * time). Fixed: a row's sums must not follow the thread count. */
#define ATTN_ROWS 64
#define ATTN_KEYS 1024

/* One attention: operands in the products' form (lda = HD), output, options, tile products. */
struct attn_job {
    const char *q, *k, *v; /* in dtype dt (float32 holding bf16 values in round mode) */
    const float *bias;
    float *o, *lse;
    int64_t H, Sq, Sk, HD, Dh, nblocks, tasks, parts;
    kn_dtype dt;
    int round; /* bf16 mode on a CPU without bf16 products: float32 operands rounded to bf16 */
    float scale;
    int causal;
    int *rc; /* the first failure of a task */
};

/* A task's buffers, the thread's own: scores (then probabilities in float32), probabilities
 * in the products' dtype, a tile's partial output, the running output, max and sum. */
struct attn_buffers {
    float *s, *o_tile, *acc, *m, *l;
    void *p;
};
static __thread struct {
    void *data;
    size_t size;
} tls_buf;

static int buffers(struct attn_buffers *b, int64_t Dh, size_t es)
{
    const size_t sz = ATTN_ROWS * ATTN_KEYS * sizeof(float), pz = ATTN_ROWS * ATTN_KEYS * es,
                 oz = (size_t)(ATTN_ROWS * Dh) * sizeof(float), rz = ATTN_ROWS * sizeof(float);
    size_t need = sz + pz + 2 * oz + 2 * rz;
    if (tls_buf.size < need) {
        free(tls_buf.data);
        tls_buf.size = 0;
        if (posix_memalign(&tls_buf.data, 64, need) != 0) return tls_buf.data = NULL, ERR_NOMEM;
        tls_buf.size = need;
    }
    char *c = tls_buf.data;
    b->s = (float *)c;
    b->p = c + sz;
    b->o_tile = (float *)(c + sz + pz);
    b->acc = (float *)(c + sz + pz + oz);
    b->m = (float *)(c + sz + pz + 2 * oz);
    b->l = (float *)(c + sz + pz + 2 * oz + rz);
    return 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static float hsum8(__m256 v)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}

__attribute__((target("avx2,fma"))) static float hmax8(__m256 v)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    float m = t[0];
    for (int i = 1; i < 8; i++)
        m = t[i] > m ? t[i] : m;
    return m;
}

/* The vector parts of scores_max and exp_sum below: the first lim / 8 * 8 elements, in eight
 * lanes (the sum differs from a serial one by rounding only, as PyTorch's does). */
__attribute__((target("avx2,fma"))) static int64_t scores_max_avx2(float *s, const float *bias,
                                                                   int64_t lim, float scale,
                                                                   float *mx)
{
    int64_t m = lim / 8 * 8;
    __m256 vs = _mm256_set1_ps(scale), vm = _mm256_set1_ps(-INFINITY);
    for (int64_t j = 0; j < m; j += 8) {
        __m256 x = _mm256_mul_ps(vs, _mm256_loadu_ps(s + j));
        if (bias) x = _mm256_add_ps(x, _mm256_loadu_ps(bias + j));
        _mm256_storeu_ps(s + j, x);
        vm = _mm256_max_ps(x, vm);
    }
    *mx = hmax8(vm);
    return m;
}

__attribute__((target("avx2,fma"))) static int64_t exp_sum_avx2(float *s, int64_t lim, float mx,
                                                                float *sum)
{
    int64_t m = lim / 8 * 8;
    __m256 vmx = _mm256_set1_ps(mx), acc = _mm256_setzero_ps();
    for (int64_t j = 0; j < m; j += 8) {
        __m256 e = cpu_exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmx));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    *sum = hsum8(acc);
    return m;
}
#endif

/* s[j] = scale s[j] + bias[j] for j < lim; returns their maximum (-inf when lim is 0). */
static float scores_max(float *s, const float *bias, int64_t lim, float scale)
{
    float mx = -INFINITY;
    int64_t j = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpu_avx2_fma()) j = scores_max_avx2(s, bias, lim, scale, &mx);
#endif
    for (; j < lim; j++) {
        s[j] = bias ? scale * s[j] + bias[j] : scale * s[j];
        mx = s[j] > mx ? s[j] : mx;
    }
    return mx;
}

/* s[j] = exp(s[j] - mx) for j < lim, zero for lim <= j < n; returns the sum. */
static float exp_sum(float *s, int64_t lim, int64_t n, float mx)
{
    float sum = 0.0f;
    int64_t j = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpu_avx2_fma()) j = exp_sum_avx2(s, lim, mx, &sum);
#endif
    for (; j < lim; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    for (j = lim; j < n; j++)
        s[j] = 0.0f;
    return sum;
}

/* The in-place product key of rows x n x kk with the given strides and form. */
static cpu_mm_key tile_key(const struct attn_job *j, int64_t rows, int64_t n, int64_t kk,
                           int64_t lda, int64_t ldc, cpu_mm_form form)
{
    return (cpu_mm_key){.M = rows,
                        .N = n,
                        .K = kk,
                        .lda = lda,
                        .ldb = j->HD,
                        .ldc = ldc,
                        .form = form,
                        .dt = j->dt};
}

/* Key tile [k0, k0 + nk) for query rows [q0, q0 + rows) of head h of sample b: scores,
 * the online softmax update of m, l and acc, then acc += p . v (first: acc = p . v). */
static int key_tile(const struct attn_job *j, const struct attn_buffers *t, int64_t b, int64_t h,
                    int64_t q0, int64_t rows, int64_t k0, int64_t nk)
{
    const size_t es = kn_dtype_size(j->dt);
    const int64_t qoff = (b * j->Sq + q0) * j->HD + h * j->Dh, koff = (b * j->Sk + k0) * j->HD + h * j->Dh;
    cpu_mm_key qk = tile_key(j, rows, nk, j->Dh, j->HD, ATTN_KEYS, MM_PLAIN_NT);
    int rc = cpu_mm_direct(&qk, j->q + (size_t)qoff * es, j->k + (size_t)koff * es, t->s);
    if (rc < 0) return rc;
    const int first = k0 == 0;
    for (int64_t i = 0; i < rows; i++) {
        int64_t qi = q0 + i, lim = nk;
        if (j->causal) lim = qi + 1 - k0 < 0 ? 0 : qi + 1 - k0 < nk ? qi + 1 - k0 : nk;
        float *s = t->s + i * ATTN_KEYS;
        const float *bias = j->bias ? j->bias + (h * j->Sq + qi) * j->Sk + k0 : NULL;
        float mt = scores_max(s, bias, lim, j->scale);
        float m_old = first ? -INFINITY : t->m[i];
        float m_new = mt > m_old ? mt : m_old;
        float sum = exp_sum(s, lim, nk, m_new);
        if (first) {
            t->l[i] = sum;
        } else {
            float corr = expf(m_old - m_new);
            t->l[i] = t->l[i] * corr + sum;
            if (corr != 1.0f)
                for (int64_t d = 0; d < j->Dh; d++)
                    t->acc[i * j->Dh + d] *= corr;
        }
        t->m[i] = m_new;
        if (j->round)
            cpu_mm_round_bf16(s, (size_t)nk);
        else if (j->dt == KN_BF16)
            kn_convert_from_f32((uint16_t *)t->p + i * ATTN_KEYS, s, KN_BF16, (size_t)nk);
    }
    const void *p = j->dt == KN_BF16 ? t->p : t->s;
    float *dst = first ? t->acc : t->o_tile;
    cpu_mm_key pv = tile_key(j, rows, j->Dh, nk, ATTN_KEYS, j->Dh, MM_PLAIN_KN);
    if ((rc = cpu_mm_direct(&pv, p, j->v + (size_t)koff * es, dst)) < 0) return rc;
    if (!first)
        for (int64_t x = 0; x < rows * j->Dh; x++)
            t->acc[x] += t->o_tile[x];
    return 0;
}

/* Task t: query block t % nblocks of head (t / nblocks) % H of sample t / (nblocks H). */
static int attend_block(const struct attn_job *j, const struct attn_buffers *t, int64_t task)
{
    int64_t q0 = task % j->nblocks * ATTN_ROWS, h = task / j->nblocks % j->H;
    int64_t b = task / (j->nblocks * j->H);
    int64_t rows = j->Sq - q0 < ATTN_ROWS ? j->Sq - q0 : ATTN_ROWS;
    /* Every key tile is visited, masked keys as zeros, even under a causal mask. */
    for (int64_t k0 = 0; k0 < j->Sk; k0 += ATTN_KEYS) {
        int rc = key_tile(j, t, b, h, q0, rows, k0, j->Sk - k0 < ATTN_KEYS ? j->Sk - k0 : ATTN_KEYS);
        if (rc < 0) return rc;
    }
    for (int64_t i = 0; i < rows; i++) {
        float inv = 1.0f / t->l[i];
        float *out = j->o + (b * j->Sq + q0 + i) * j->HD + h * j->Dh;
        for (int64_t d = 0; d < j->Dh; d++)
            out[d] = t->acc[i * j->Dh + d] * inv;
        if (j->lse) j->lse[(b * j->H + h) * j->Sq + q0 + i] = t->m[i] + logf(t->l[i]);
    }
    return 0;
}

/* Parts [lo, hi): part p takes a contiguous share of the tasks. */
static void attend_parts(void *arg, int64_t lo, int64_t hi)
{
    const struct attn_job *j = arg;
    struct attn_buffers t;
    int rc = buffers(&t, j->Dh, kn_dtype_size(j->dt));
    for (int64_t p = lo; p < hi && rc == 0; p++)
        for (int64_t task = j->tasks * p / j->parts; task < j->tasks * (p + 1) / j->parts && rc == 0;
             task++)
            rc = attend_block(j, &t, task);
    if (rc < 0) __atomic_store_n(j->rc, rc, __ATOMIC_RELAXED);
}

/* The products' operands: n float32 tensors narrowed to bf16 (or rounded to bf16 values in
 * round mode) into one scratch buffer, the rows [lo, hi) of all of them stacked. */
struct operands {
    const float *const *src;
    char **dst;
    const int64_t *rows;
    int n;
    int64_t HD;
    int round;
};

static void convert_rows(void *arg, int64_t lo, int64_t hi)
{
    const struct operands *o = arg;
    int x = 0;
    int64_t first = 0; /* the first stacked row of operand x */
    for (int64_t r = lo; r < hi; r++) {
        while (r - first >= o->rows[x])
            first += o->rows[x++];
        const float *from = o->src[x] + (r - first) * o->HD;
        if (o->round) {
            float *to = (float *)o->dst[x] + (r - first) * o->HD;
            memcpy(to, from, (size_t)o->HD * sizeof(float));
            cpu_mm_round_bf16(to, (size_t)o->HD);
        } else {
            kn_convert_from_f32((uint16_t *)o->dst[x] + (r - first) * o->HD, from, KN_BF16,
                                (size_t)o->HD);
        }
    }
}

int cpu_attn_operands(kn_ctx *ctx, int n, const float *const *src, const int64_t *rows, int64_t HD,
                      int round, char **dst)
{
    const size_t es = round ? sizeof(float) : 2;
    int64_t total = 0;
    for (int i = 0; i < n; i++)
        total += rows[i];
    char *buf = cpu_scratch(ctx, CPU_SLOT_WORK, (size_t)(total * HD) * es);
    if (!buf) return -1;
    for (int i = 0; i < n; i++) {
        dst[i] = buf;
        buf += (size_t)(rows[i] * HD) * es;
    }
    struct operands op = {src, dst, rows, n, HD, round};
    cpu_parallel(total, total * HD, convert_rows, &op);
    return 0;
}

int cpu_attn_bf16_products(void)
{
    static int known = -1;
    int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (v < 0) {
        cpu_mm_key k = {.M = ATTN_ROWS, .N = ATTN_KEYS, .K = 64, .ldb = 64, .form = MM_PLAIN_NT,
                        .dt = KN_BF16};
        v = cpu_mm_supported(&k);
        __atomic_store_n(&known, v, __ATOMIC_RELAXED);
    }
    return v;
}

int cpu_attention(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                  const kn_tensor *v, const kn_attn_args *args)
{
    if (o->dtype != KN_F32)
        CPU_HALF(cpu_attention(ctx, cpu_half_out(H, o, 0), cpu_half_in(H, q), cpu_half_in(H, k),
                               cpu_half_in(H, v), args));
    struct attn_job j = {.q = q->data,
                         .k = k->data,
                         .v = v->data,
                         .o = o->data,
                         .bias = args->bias ? args->bias->data : NULL,
                         .lse = args->lse ? args->lse->data : NULL,
                         .H = args->heads,
                         .Sq = q->shape[1],
                         .Sk = k->shape[1],
                         .HD = q->shape[2],
                         .dt = ctx->matmul == KN_BF16 ? KN_BF16 : KN_F32,
                         .scale = args->scale,
                         .causal = args->causal};
    const int64_t B = q->shape[0];
    if (B == 0 || j.Sq == 0) return 0;
    j.Dh = j.HD / j.H;
    if (j.dt == KN_BF16) {
        j.round = !cpu_attn_bf16_products();
        const float *src[3] = {q->data, k->data, v->data};
        const int64_t rows[3] = {B * j.Sq, B * j.Sk, B * j.Sk};
        char *dst[3];
        if (cpu_attn_operands(ctx, 3, src, rows, j.HD, j.round, dst) < 0) return -1;
        j.q = dst[0], j.k = dst[1], j.v = dst[2];
        if (j.round) j.dt = KN_F32;
    }
    j.nblocks = (j.Sq + ATTN_ROWS - 1) / ATTN_ROWS;
    j.tasks = B * j.H * j.nblocks;
    j.parts = cpu_pool_threads() < j.tasks ? cpu_pool_threads() : j.tasks;
    int rc = 0;
    j.rc = &rc;
    cpu_parallel(j.parts, j.tasks * j.Sk * j.HD, attend_parts, &j);
    return rc < 0 ? err_set(rc, rc == ERR_NOMEM ? "attention: out of memory for its tiles"
                                                : "attention: a matrix product failed")
                  : 0;
}
