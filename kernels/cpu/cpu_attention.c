/* CPU backend: scaled dot-product attention with a float32 softmax. Heads stay interleaved in
 * the feature dimension; BLAS reads each head's slice in place through its leading dimension,
 * so nothing is gathered. Queries are processed in blocks sized so that the score block stays
 * within a fixed budget: a 16384-token VAE attention never holds a full Sq x Sk matrix. */
#include "kernels/cpu/cpu_ops.h"

#include <cblas.h>
#include <math.h>

/* Score-block budget in floats (32 MiB): large enough that each block's GEMMs run at full
 * speed, small enough to stay cheap beside the activations. */
#define ATTN_BLOCK_FLOATS ((int64_t)8 << 20)

/* Softmax of row[0, lim) in place, zeroes row[lim, n); returns the log-sum-exp. */
static float softmax_row(float *row, int64_t lim, int64_t n)
{
    float mx = row[0];
    for (int64_t j = 1; j < lim; j++)
        if (row[j] > mx) mx = row[j];
    float sum = 0.0f;
    for (int64_t j = 0; j < lim; j++) {
        row[j] = expf(row[j] - mx);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < lim; j++)
        row[j] *= inv;
    for (int64_t j = lim; j < n; j++)
        row[j] = 0.0f;
    return mx + logf(sum);
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
                for (int64_t i = 0; i < nq; i++) {
                    int64_t qi = q0 + i;
                    float *row = S + i * nk;
                    if (bias) {
                        const float *br = bias + (h * Sq + qi) * Sk;
                        for (int64_t j = 0; j < nk; j++)
                            row[j] += br[j];
                    }
                    int64_t lim = args->causal && qi + 1 < nk ? qi + 1 : nk;
                    float l = softmax_row(row, lim, nk);
                    if (lse) lse[(b * H + h) * Sq + qi] = l;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)Dh, (int)nk,
                            1.0f, S, (int)nk, vp, (int)HD, 0.0f, op, (int)HD);
            }
        }
    }
    return 0;
}
