/* CPU backend: scaled dot-product attention with a float32 softmax. Heads stay interleaved in
 * the feature dimension; the products read each head's slice in place through its row stride,
 * so nothing is gathered. Queries are processed in blocks sized so that the score blocks stay
 * within a fixed budget: a 16384-token VAE attention never holds a full Sq x Sk matrix. Each
 * (sample, head, query block) runs whole on one worker thread (scores, softmax, p.v), so the
 * threads meet once per attention rather than three times per head. */
#include "kernels/cpu/cpu_matmul.h"

#include "common/err.h"

#include <math.h>

/* Score-block budget in floats (32 MiB, shared by the threads): large enough that each
 * block's products run at full speed, small enough to stay cheap beside the activations. */
#define ATTN_BLOCK_FLOATS ((int64_t)8 << 20)

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static float hsum8(__m256 v)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}

/* The vector part of softmax_row: row[0, m) with m = lim rounded down to 8. The sum runs in
 * eight lanes, so it differs from a serial sum by rounding only (as PyTorch's does). */
__attribute__((target("avx2,fma"))) static int64_t softmax_row_avx2(float *row, int64_t lim,
                                                                    float *mx, float *sum)
{
    int64_t m = lim / 8 * 8;
    if (m == 0) return 0;
    __m256 vm = _mm256_set1_ps(row[0]);
    for (int64_t j = 0; j < m; j += 8)
        vm = _mm256_max_ps(_mm256_loadu_ps(row + j), vm);
    float t[8];
    _mm256_storeu_ps(t, vm);
    float mv = t[0];
    for (int i = 1; i < 8; i++)
        if (t[i] > mv) mv = t[i];
    for (int64_t j = m; j < lim; j++)
        if (row[j] > mv) mv = row[j];
    __m256 vmx = _mm256_set1_ps(mv), acc = _mm256_setzero_ps();
    for (int64_t j = 0; j < m; j += 8) {
        __m256 e = cpu_exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(row + j), vmx));
        _mm256_storeu_ps(row + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    *mx = mv;
    *sum = hsum8(acc);
    return m;
}

/* row[0, m) *= inv for m = lim rounded down to 8; returns m. */
__attribute__((target("avx2"))) static int64_t scale_avx2(float *row, int64_t lim, float inv)
{
    int64_t m = lim / 8 * 8;
    __m256 v = _mm256_set1_ps(inv);
    for (int64_t j = 0; j < m; j += 8)
        _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), v));
    return m;
}

#endif

/* Softmax of row[0, lim) in place, zeroes row[lim, n); returns the log-sum-exp. */
static float softmax_row(float *row, int64_t lim, int64_t n)
{
    float mx = row[0], sum = 0.0f;
    int64_t j0 = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpu_avx2_fma()) j0 = softmax_row_avx2(row, lim, &mx, &sum);
#endif
    if (j0 == 0)
        for (int64_t j = 1; j < lim; j++)
            if (row[j] > mx) mx = row[j];
    for (int64_t j = j0; j < lim; j++) {
        row[j] = expf(row[j] - mx);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    int64_t j1 = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    if (j0) j1 = scale_avx2(row, lim, inv);
#endif
    for (int64_t j = j1; j < lim; j++)
        row[j] *= inv;
    for (int64_t j = lim; j < n; j++)
        row[j] = 0.0f;
    return mx + logf(sum);
}

/* One attention: its inputs, the query block size and the score buffers, one per part. */
struct attn_job {
    const float *q, *k, *v, *bias;
    float *o, *lse, *scores;
    int64_t H, Sq, Sk, HD, Dh, block, nblocks, tasks, parts;
    float scale;
    int causal;
    int *rc; /* the first failure of a task */
};

/* Task t: query block t % nblocks of head (t / nblocks) % H of sample t / (nblocks H), with
 * score buffer S: scores, softmax (plus bias, causal mask, log-sum-exp), then p.v. */
static void attend_block(const struct attn_job *j, int64_t t, float *S)
{
    int64_t q0 = t % j->nblocks * j->block, h = t / j->nblocks % j->H, b = t / (j->nblocks * j->H);
    int64_t nq = j->Sq - q0 < j->block ? j->Sq - q0 : j->block;
    /* Every block sums p.v over all Sk keys, masked ones as zeros, even under a causal mask:
     * the block size follows the thread count, and a row's sum must not. */
    const int64_t nk = j->Sk;
    const float *kp = j->k + b * j->Sk * j->HD + h * j->Dh;
    const float *vp = j->v + b * j->Sk * j->HD + h * j->Dh;
    int rc = cpu_mm_run(&(cpu_mm){.M = nq,
                                  .N = nk,
                                  .K = j->Dh,
                                  .alpha = j->scale,
                                  .a = j->q + (b * j->Sq + q0) * j->HD + h * j->Dh,
                                  .lda = j->HD,
                                  .b = kp,
                                  .ldb = j->HD,
                                  .b_form = MM_PLAIN_NT,
                                  .c = S,
                                  .ldc = nk},
                        0);
    if (rc < 0) {
        __atomic_store_n(j->rc, rc, __ATOMIC_RELAXED);
        return;
    }
    const float *bias = j->bias ? j->bias + h * j->Sq * j->Sk : NULL;
    float *lse = j->lse ? j->lse + (b * j->H + h) * j->Sq : NULL;
    for (int64_t i = 0; i < nq; i++) {
        int64_t qi = q0 + i;
        float *row = S + i * nk;
        if (bias)
            for (int64_t c = 0; c < nk; c++)
                row[c] += bias[qi * j->Sk + c];
        int64_t lim = j->causal && qi + 1 < nk ? qi + 1 : nk;
        float l = softmax_row(row, lim, nk);
        if (lse) lse[qi] = l;
    }
    if (rc == 0)
        rc = cpu_mm_run(&(cpu_mm){.M = nq,
                                  .N = j->Dh,
                                  .K = nk,
                                  .alpha = 1.0f,
                                  .a = S,
                                  .lda = nk,
                                  .b = vp,
                                  .ldb = j->HD,
                                  .b_form = MM_PLAIN_KN,
                                  .c = j->o + (b * j->Sq + q0) * j->HD + h * j->Dh,
                                  .ldc = j->HD},
                        0);
    if (rc < 0) __atomic_store_n(j->rc, rc, __ATOMIC_RELAXED);
}

/* Parts [lo, hi): part p takes a contiguous share of the tasks and score buffer p. */
static void attend_parts(void *arg, int64_t lo, int64_t hi)
{
    const struct attn_job *j = arg;
    for (int64_t p = lo; p < hi; p++)
        for (int64_t t = j->tasks * p / j->parts; t < j->tasks * (p + 1) / j->parts; t++)
            attend_block(j, t, j->scores + p * j->block * j->Sk);
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
                         .scale = args->scale,
                         .causal = args->causal};
    const int64_t B = q->shape[0];
    if (B == 0 || j.Sq == 0) return 0;
    j.Dh = j.HD / j.H;
    /* Every (sample, head, query block) is a task for one thread. Blocks are as large as each
     * part's share of the score budget allows, and small enough that every thread gets one. */
    j.parts = cpu_pool_threads();
    j.block = ATTN_BLOCK_FLOATS / j.parts / j.Sk;
    int64_t per_head = (j.parts + B * j.H - 1) / (B * j.H);
    if (j.block > (j.Sq + per_head - 1) / per_head) j.block = (j.Sq + per_head - 1) / per_head;
    if (j.block < 1) j.block = 1;
    j.nblocks = (j.Sq + j.block - 1) / j.block;
    j.tasks = B * j.H * j.nblocks;
    if (j.parts > j.tasks) j.parts = j.tasks;
    j.scores = cpu_scratch(ctx, CPU_SLOT_WORK, (size_t)(j.parts * j.block * j.Sk) * sizeof(float));
    if (!j.scores) return -1;
    int rc = 0;
    j.rc = &rc;
    cpu_parallel(j.parts, j.tasks * j.Sk * j.HD, attend_parts, &j);
    return rc < 0 ? err_set(rc, "attention: a matrix product failed") : 0;
}
