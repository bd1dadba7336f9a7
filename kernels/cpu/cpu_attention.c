/* CPU backend: scaled dot-product attention with a float32 softmax. Heads stay interleaved in
 * the feature dimension; BLAS reads each head's slice in place through its leading dimension,
 * so nothing is gathered. Queries are processed in blocks sized so that the score block stays
 * within a fixed budget: a 16384-token VAE attention never holds a full Sq x Sk matrix. The
 * GEMMs run on the calling thread (BLAS has its own threads); the softmax between them is
 * split over the worker threads by row. */
#include "kernels/cpu/cpu_ops.h"

#include <cblas.h>
#include <math.h>

/* Score-block budget in floats (32 MiB): large enough that each block's GEMMs run at full
 * speed, small enough to stay cheap beside the activations. */
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

/* Rows [lo, hi) of a score block: queries q0 + i against nk keys; bias and lse point at this
 * head's [Sq, Sk] bias and [Sq] log-sum-exps. */
struct softmax_job {
    float *S;
    const float *bias;
    float *lse;
    int64_t q0, nk, Sk;
    int causal;
};

static void softmax_range(void *p, int64_t lo, int64_t hi)
{
    const struct softmax_job *j = p;
    int64_t nk = j->nk;
    for (int64_t i = lo; i < hi; i++) {
        int64_t qi = j->q0 + i;
        float *row = j->S + i * nk;
        if (j->bias) {
            const float *br = j->bias + qi * j->Sk;
            for (int64_t k = 0; k < nk; k++)
                row[k] += br[k];
        }
        int64_t lim = j->causal && qi + 1 < nk ? qi + 1 : nk;
        float l = softmax_row(row, lim, nk);
        if (j->lse) j->lse[qi] = l;
    }
}

int cpu_attention(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                  const kn_tensor *v, const kn_attn_args *args)
{
    int64_t B = q->shape[0], Sq = q->shape[1], Sk = k->shape[1], HD = q->shape[2];
    int64_t H = args->heads, Dh = HD / H;
    int64_t block = ATTN_BLOCK_FLOATS / Sk;
    if (block < 1) block = 1;
    if (block > Sq) block = Sq;
    if (Sq == 0) return 0;
    float *S = cpu_scratch(ctx, CPU_SLOT_WORK, (size_t)(block * Sk) * sizeof(float));
    const float *bias = args->bias ? args->bias->data : NULL;
    float *lse = args->lse ? args->lse->data : NULL;

    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *kp = (const float *)k->data + b * Sk * HD + h * Dh;
            const float *vp = (const float *)v->data + b * Sk * HD + h * Dh;
            for (int64_t q0 = 0; q0 < Sq; q0 += block) {
                int64_t nq = Sq - q0 < block ? Sq - q0 : block;
                /* Under a causal mask no query of this block sees keys past its last row. */
                int64_t nk = args->causal && q0 + nq < Sk ? q0 + nq : Sk;
                const float *qp = (const float *)q->data + (b * Sq + q0) * HD + h * Dh;
                float *op = (float *)o->data + (b * Sq + q0) * HD + h * Dh;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)Dh,
                            args->scale, qp, (int)HD, kp, (int)HD, 0.0f, S, (int)nk);
                struct softmax_job j = {S, bias ? bias + h * Sq * Sk : NULL,
                                        lse ? lse + (b * H + h) * Sq : NULL,
                                        q0, nk, Sk, args->causal};
                cpu_parallel(nq, nq * nk, softmax_range, &j);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)Dh, (int)nk,
                            1.0f, S, (int)nk, vp, (int)HD, 0.0f, op, (int)HD);
            }
        }
    }
    return 0;
}
