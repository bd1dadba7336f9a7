/* CUDA backend: scaled dot-product attention with a float32 softmax. Head size 64 (every
 * attention of SD3's text encoders and transformer) runs a fused kernel in the manner of
 * FlashAttention: a block owns 64 queries of one head, streams 64-key tiles of K and V through
 * shared memory and keeps a running max and sum (online softmax), so the Sq x Sk score matrix
 * never exists. Products and the softmax are float32 on CUDA cores whatever the input dtype,
 * which keeps the fp32 reference mode exact to rounding. Other head sizes (the VAE's single
 * 512-wide head, small test shapes) take the CPU backend's route: scores for a block of queries
 * by a batched GEMM over heads, a row softmax kernel, and a second batched GEMM. */
#include "kernels/cuda/cuda_common.h"

#include <math.h>

#define FA_D 64       /* head size of the fused kernel */
#define FA_BQ 64      /* queries per block */
#define FA_BK 64      /* keys per tile */
#define FA_LANES 4    /* threads per query row */
#define FA_THREADS (FA_BQ * FA_LANES)
#define FA_PER (FA_BK / FA_LANES) /* keys (and output dims) per thread */

/* Score-block budget of the generic path in floats (128 MiB). */
#define ATTN_BLOCK_FLOATS ((int64_t)32 << 20)

struct attn_dims {
    int64_t Sq, Sk, HD;
    int H;
    float scale;
    int causal;
};

/* Thread (r, lane) owns query row r of the block, the keys lane + 4t of each tile and the output
 * dims lane + 4t; the four lanes of a row are adjacent in the warp and combine by shuffles.
 * The dtype is a run-time argument: the kernel is large once unrolled, and the loads convert to
 * float32 on their way into registers and shared memory, where a branch costs nothing. */
__global__ void __launch_bounds__(FA_THREADS)
    flash64_kernel(void *o, const void *q, const void *k, const void *v, kn_dtype dt, attn_dims a,
                   const float *bias, float *lse)
{
    __shared__ float ks[FA_BK][FA_D + 1]; /* the K tile, then the tile's probabilities */
    __shared__ float vs[FA_BK][FA_D + 1];
    const int b = blockIdx.y / a.H, h = blockIdx.y % a.H;
    const int r = threadIdx.x / FA_LANES, lane = threadIdx.x % FA_LANES;
    const int64_t q0 = (int64_t)blockIdx.x * FA_BQ, qi = q0 + r;
    const bool valid = qi < a.Sq;
    const int64_t kvb = (int64_t)b * a.Sk * a.HD + h * FA_D;

    float qr[FA_D], acc[FA_PER];
    #pragma unroll
    for (int d = 0; d < FA_D; d++)
        qr[d] = valid ? load_any(q, dt, ((int64_t)b * a.Sq + qi) * a.HD + h * FA_D + d) : 0.0f;
    #pragma unroll
    for (int t = 0; t < FA_PER; t++)
        acc[t] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    /* Under a causal mask no query of this block sees keys past its last row. */
    int64_t kend = a.causal && q0 + FA_BQ < a.Sk ? q0 + FA_BQ : a.Sk;

    for (int64_t k0 = 0; k0 < kend; k0 += FA_BK) {
        for (int e = threadIdx.x; e < FA_BK * FA_D; e += FA_THREADS) {
            int row = e / FA_D, d = e % FA_D;
            int64_t kj = k0 + row;
            ks[row][d] = kj < a.Sk ? load_any(k, dt, kvb + kj * a.HD + d) : 0.0f;
            vs[row][d] = kj < a.Sk ? load_any(v, dt, kvb + kj * a.HD + d) : 0.0f;
        }
        __syncthreads();
        float s[FA_PER], mx = -INFINITY;
        #pragma unroll
        for (int t = 0; t < FA_PER; t++) {
            int j = lane + FA_LANES * t;
            int64_t kj = k0 + j;
            float dot = 0.0f;
            #pragma unroll
            for (int d = 0; d < FA_D; d++)
                dot = fmaf(qr[d], ks[j][d], dot);
            dot *= a.scale;
            bool vis = valid && kj < a.Sk && (!a.causal || kj <= qi);
            if (vis && bias) dot += bias[((int64_t)h * a.Sq + qi) * a.Sk + kj];
            s[t] = vis ? dot : -INFINITY;
            mx = fmaxf(mx, s[t]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float mnew = fmaxf(m, mx);
        /* A row that has seen only masked keys keeps m = -inf and adds nothing. */
        float alpha = mnew == -INFINITY ? 1.0f : expf(m - mnew), psum = 0.0f;
        #pragma unroll
        for (int t = 0; t < FA_PER; t++) {
            s[t] = s[t] == -INFINITY ? 0.0f : expf(s[t] - mnew);
            psum += s[t];
        }
        psum += __shfl_xor_sync(0xffffffffu, psum, 1);
        psum += __shfl_xor_sync(0xffffffffu, psum, 2);
        l = l * alpha + psum;
        m = mnew;
        #pragma unroll
        for (int t = 0; t < FA_PER; t++)
            acc[t] *= alpha;
        __syncthreads(); /* every row is done with the K tile */
        #pragma unroll
        for (int t = 0; t < FA_PER; t++)
            ks[r][lane + FA_LANES * t] = s[t];
        __syncthreads();
#pragma unroll 4
        for (int j = 0; j < FA_BK; j++) {
            float p = ks[r][j];
            #pragma unroll
            for (int t = 0; t < FA_PER; t++)
                acc[t] = fmaf(p, vs[j][lane + FA_LANES * t], acc[t]);
        }
        __syncthreads(); /* before the next tile overwrites K and V */
    }
    if (!valid) return;
    float inv = 1.0f / l;
    int64_t orow = ((int64_t)b * a.Sq + qi) * a.HD + h * FA_D;
    #pragma unroll
    for (int t = 0; t < FA_PER; t++)
        store_act(o, dt, orow + lane + FA_LANES * t, acc[t] * inv);
    if (lse && lane == 0) lse[((int64_t)b * a.H + h) * a.Sq + qi] = m + logf(l);
}

/* Max (want_max) or sum of v over the block; every thread gets the result. */
static __device__ float block_reduce(float v, bool want_max, float *red)
{
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = want_max ? fmaxf(v, u) : v + u;
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : (want_max ? -INFINITY : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = want_max ? fmaxf(v, u) : v + u;
    }
    return v;
}

/* Row (h, i) of a score block [H, nq, nk]: adds the bias, softmaxes keys [0, lim) and zeroes the
 * rest, writes the probabilities as T into p (which may be the scores themselves) and the
 * row's log-sum-exp. */
template <typename T>
__global__ void softmax_rows_kernel(T *p, float *sc, int64_t nq, int64_t nk, int64_t q0,
                                    attn_dims a, int64_t b, const float *bias, float *lse)
{
    __shared__ float red[32];
    int64_t h = blockIdx.x / nq, i = blockIdx.x % nq, qi = q0 + i;
    float *row = sc + blockIdx.x * nk;
    T *prow = p + blockIdx.x * nk;
    int64_t lim = a.causal && qi + 1 < nk ? qi + 1 : nk;
    const float *br = bias ? bias + (h * a.Sq + qi) * a.Sk : NULL;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < lim; j += blockDim.x) {
        if (br) row[j] += br[j];
        mx = fmaxf(mx, row[j]);
    }
    mx = block_reduce(mx, true, red);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < lim; j += blockDim.x) {
        float e = expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    sum = block_reduce(sum, false, red);
    float inv = 1.0f / sum;
    for (int64_t j = threadIdx.x; j < nk; j += blockDim.x)
        prow[j] = from_f<T>(j < lim ? row[j] * inv : 0.0f);
    if (lse && threadIdx.x == 0) lse[(b * a.H + h) * a.Sq + qi] = mx + logf(sum);
}

static int attention_generic(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                             const kn_tensor *v, const kn_attn_args *args, const attn_dims &a)
{
    static const char op[] = "kn_attention";
    int64_t B = q->shape[0], H = a.H, Dh = a.HD / H;
    kn_dtype dt = q->dtype;
    size_t es = kn_dtype_size(dt);
    int64_t block = ATTN_BLOCK_FLOATS / (H * a.Sk);
    if (block < 1) block = 1;
    if (block > a.Sq) block = a.Sq;
    float *sc = (float *)cuda_scratch(ctx, CUDA_SLOT_WORK, (size_t)(H * block * a.Sk) * sizeof(float));
    if (!sc) return err_code();
    /* float32 probabilities overwrite the scores; 16-bit ones go beside them, as the second
     * product needs both operands in one dtype. */
    void *pb = sc;
    if (dt != KN_F32 && !(pb = cuda_scratch(ctx, CUDA_SLOT_PARAM2, (size_t)(H * block * a.Sk) * es)))
        return err_code();
    cudaStream_t s = cuda_st(ctx)->stream;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t q0 = 0; q0 < a.Sq; q0 += block) {
            int64_t nq = a.Sq - q0 < block ? a.Sq - q0 : block;
            int64_t nk = a.causal && q0 + nq < a.Sk ? q0 + nq : a.Sk;
            const char *qp = (const char *)q->data + (size_t)((b * a.Sq + q0) * a.HD) * es;
            const char *kp = (const char *)k->data + (size_t)(b * a.Sk * a.HD) * es;
            const char *vp = (const char *)v->data + (size_t)(b * a.Sk * a.HD) * es;
            char *opp = (char *)o->data + (size_t)((b * a.Sq + q0) * a.HD) * es;
            /* Column-major, per head h: S_h^T [nk, nq] = K_h [nk, Dh] . Q_h^T. */
            cuda_gemm g1 = {CUBLAS_OP_T, CUBLAS_OP_N, nk, nq, Dh, kp, a.HD, Dh, qp, a.HD, Dh,
                            sc, nk, nq * nk, H, dt, KN_F32, a.scale, 0.0f};
            KN_TRY(cuda_gemm_run(ctx, &g1, op));
            KN_TRY(with_act(dt, [&](auto tag) {
                using T = decltype(tag);
                softmax_rows_kernel<T><<<(unsigned)(H * nq), CUDA_THREADS, 0, s>>>(
                    (T *)pb, sc, nq, nk, q0, a, b, args->bias ? (const float *)args->bias->data : NULL,
                    args->lse ? (float *)args->lse->data : NULL);
                return cuda_launched(op);
            }));
            /* O_h^T [Dh, nq] = V_h^T [Dh, nk] . P_h^T [nk, nq]. */
            cuda_gemm g2 = {CUBLAS_OP_N, CUBLAS_OP_N, Dh, nq, nk, vp, a.HD, Dh, pb, nk, nq * nk,
                            opp, a.HD, Dh, H, dt, dt, 1.0f, 0.0f};
            KN_TRY(cuda_gemm_run(ctx, &g2, op));
        }
    }
    return 0;
}

int cuda_attention(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                   const kn_tensor *v, const kn_attn_args *args)
{
    attn_dims a = {q->shape[1], k->shape[1], q->shape[2], args->heads, args->scale, args->causal};
    int64_t B = q->shape[0], Dh = a.HD / a.H;
    if (B == 0 || a.Sq == 0 || a.HD == 0) return 0;
    if (Dh != FA_D || B * a.H > 65535) return attention_generic(ctx, o, q, k, v, args, a);
    dim3 grid((unsigned)((a.Sq + FA_BQ - 1) / FA_BQ), (unsigned)(B * a.H));
    cudaStream_t s = cuda_st(ctx)->stream;
    const float *bias = args->bias ? (const float *)args->bias->data : NULL;
    float *lse = args->lse ? (float *)args->lse->data : NULL;
    flash64_kernel<<<grid, FA_THREADS, 0, s>>>(o->data, q->data, k->data, v->data, q->dtype, a,
                                               bias, lse);
    return cuda_launched("kn_attention");
}
