/* CUDA backend: scaled dot-product attention with a float32 softmax. Head size 64 (every
 * attention of SD3's text encoders and transformer) runs fused kernels in the manner of
 * FlashAttention: a block owns 64 queries of one head, streams 64-key tiles of K and V through
 * shared memory and keeps a running max and sum (online softmax), so the Sq x Sk score matrix
 * never exists. In BF16/F16 without bias or mask (the transformer's joint attention) the
 * products run on tensor cores (mma.sync) with float32 accumulation, and can apply the q/k
 * RMSNorm on the way in; otherwise (the fp32 reference mode, T5's bias, CLIP's causal mask)
 * products and softmax are float32 on CUDA cores whatever the input dtype, which keeps the fp32
 * mode exact to rounding. Other head sizes (the VAE's single 512-wide head, small test shapes)
 * take the CPU backend's route: scores for a block of queries by a batched GEMM over heads, a
 * row softmax kernel, and a second batched GEMM. */
#include "kernels/cuda/cuda_mma.h"

#include <math.h>
#include <string.h>

#include <type_traits>

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
        tile_mul<false>(acc, ks, vs, r, lane); /* acc += P V */
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

/* ---- Tensor-core path: head size 64 in BF16/F16 ----
 * A block of 4 warps owns 64 queries of one head, 16 per warp; 64-key tiles of K and V go
 * through shared memory. Q.K^T and P.V are mma.sync m16n8k16 products (16-bit operands, f32
 * accumulators); the softmax is online and float32 in the base-2 domain (scores pre-multiplied
 * by scale * log2 e), with each thread's partial row sums reduced across its quad at the end.
 * The C fragment of a score tile is laid out as the A fragment of the next product, so the
 * probabilities never leave registers (rounded to T on the way, as a 16-bit SDPA does).
 * Optionally, q and k get an RMSNorm over the head (the transformer's qk_norm) in the prologue:
 * each query row when its fragment is loaded, each key row of a tile once it is in shared
 * memory, with the weight product and rounding of kn_rms_norm. */
#define TC_BQ 64
#define TC_BK 64
#define TC_THREADS 128
#define TC_LD MMA_LD

struct tc_norm {
    const void *qw, *kw; /* NULL: no norm */
    kn_dtype wdt;
    float eps;
};

/* kn_rms_norm's last step on one value already multiplied by the row's rsqrt. */
template <typename T> static __device__ __forceinline__ float norm_weight(float t, const tc_norm &n,
                                                                          const void *w, int d)
{
    return __fmul_rn(load_any(w, n.wdt, d), round_to<T>(t));
}

template <typename T, bool NORM>
__global__ void __launch_bounds__(TC_THREADS)
    flash64_tc_kernel(T *o, const T *q, const T *k, const T *v, attn_dims a, tc_norm nrm, float *lse)
{
    __shared__ __align__(16) T ks[TC_BK * TC_LD];
    __shared__ __align__(16) T vs[TC_BK * TC_LD];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int b = blockIdx.y / a.H, h = blockIdx.y % a.H;
    const int64_t row0 = (int64_t)blockIdx.x * TC_BQ + warp * 16;
    const int64_t kvb = (int64_t)b * a.Sk * a.HD + h * FA_D;
    const float sl2 = a.scale * 1.4426950408889634f;

    /* Q's A fragments, 4 k-steps of 16 dims: register r holds row g + 8 (r & 1) and dims
     * 16 kk + 8 (r >> 1) + 2 t4 and + 1. Rows past Sq are zeros and are never stored. */
    uint32_t qa[4][4];
    mma_load_a(qa, q + (int64_t)b * a.Sq * a.HD + h * FA_D, row0, a.Sq, a.HD);
    if (NORM) {
        float ss[2] = {0.0f, 0.0f};
        #pragma unroll
        for (int kk = 0; kk < 4; kk++)
            #pragma unroll
            for (int r = 0; r < 4; r++)
                #pragma unroll
                for (int e = 0; e < 2; e++) {
                    float x = half_of<T>(qa[kk][r], e);
                    ss[r & 1] += x * x;
                }
        float rs[2];
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            ss[i] += __shfl_xor_sync(0xffffffffu, ss[i], 1);
            ss[i] += __shfl_xor_sync(0xffffffffu, ss[i], 2);
            rs[i] = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(ss[i] / FA_D, nrm.eps)));
        }
        #pragma unroll
        for (int kk = 0; kk < 4; kk++)
            #pragma unroll
            for (int r = 0; r < 4; r++) {
                int d = 16 * kk + 8 * (r >> 1) + 2 * t4;
                float lo = norm_weight<T>(half_of<T>(qa[kk][r], 0) * rs[r & 1], nrm, nrm.qw, d);
                float hi = norm_weight<T>(half_of<T>(qa[kk][r], 1) * rs[r & 1], nrm, nrm.qw, d + 1);
                qa[kk][r] = pack2<T>(lo, hi);
            }
    }

    float acc[8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    #pragma unroll
    for (int n = 0; n < 8; n++)
        #pragma unroll
        for (int e = 0; e < 4; e++)
            acc[n][e] = 0.0f;

    for (int64_t k0 = 0; k0 < a.Sk; k0 += TC_BK) {
        /* keys past Sk are zeros (and masked below) */
        mma_load_tile(ks, k + kvb, k0, a.Sk, a.HD);
        mma_load_tile(vs, v + kvb, k0, a.Sk, a.HD);
        __syncthreads();
        if (NORM) { /* two threads per key row, 32 dims each */
            T *kr = ks + (threadIdx.x / 2) * TC_LD + (threadIdx.x % 2) * 32;
            float ss = 0.0f;
            for (int d = 0; d < 32; d++)
                ss += to_f(kr[d]) * to_f(kr[d]);
            ss += __shfl_xor_sync(0xffffffffu, ss, 1);
            float rs = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(ss / FA_D, nrm.eps)));
            for (int d = 0; d < 32; d++)
                kr[d] = from_f<T>(norm_weight<T>(to_f(kr[d]) * rs, nrm, nrm.kw, (threadIdx.x % 2) * 32 + d));
            __syncthreads();
        }
        /* S = Q K^T for this warp's 16 rows and the tile's 64 keys, 8 keys per n-tile. */
        float s[8][4];
        mma_abt<T>(s, qa, ks);
        /* Element e of n-tile n is row g + 8 (e >> 1), key k0 + 8 n + 2 t4 + (e & 1). */
        float mx[2] = {m[0], m[1]};
        #pragma unroll
        for (int n = 0; n < 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                bool vis = k0 + 8 * n + 2 * t4 + (e & 1) < a.Sk;
                s[n][e] = vis ? s[n][e] * sl2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
            }
        /* Key k0 < Sk is visible to every row, so the new maximum is finite. */
        float alpha[2];
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            alpha[i] = exp2f(m[i] - mx[i]);
            m[i] = mx[i];
            l[i] *= alpha[i];
        }
        #pragma unroll
        for (int n = 0; n < 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                s[n][e] = exp2f(s[n][e] - m[e >> 1]);
                l[e >> 1] += s[n][e];
                acc[n][e] *= alpha[e >> 1];
            }
        /* O += P V, 16 keys per k-step: P's A fragment is n-tiles 2 kc and 2 kc + 1. */
        mma_ab<T>(acc, s, vs);
        __syncthreads(); /* before the next tile overwrites K and V */
    }
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        int64_t qi = row0 + g + 8 * i;
        if (qi >= a.Sq) continue;
        float inv = 1.0f / l[i];
        T *orow = o + ((int64_t)b * a.Sq + qi) * a.HD + h * FA_D + 2 * t4;
        #pragma unroll
        for (int n = 0; n < 8; n++)
            *(uint32_t *)(orow + 8 * n) = pack2<T>(acc[n][2 * i] * inv, acc[n][2 * i + 1] * inv);
        if (lse && t4 == 0)
            lse[((int64_t)b * a.H + h) * a.Sq + qi] = (m[i] + log2f(l[i])) * 0.6931471805599453f;
    }
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

/* The tensor-core kernel takes 16-bit head-64 attention without bias or causal mask (the
 * transformer's joint attention), on 16-byte aligned rows. */
static bool tc_eligible(const kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                        const kn_tensor *v, const kn_attn_args *args)
{
    int64_t B = q->shape[0], HD = q->shape[2];
    bool aligned = (((uintptr_t)o->data | (uintptr_t)q->data | (uintptr_t)k->data |
                     (uintptr_t)v->data) & 15) == 0;
    return (q->dtype == KN_BF16 || q->dtype == KN_F16) && HD / args->heads == FA_D && !args->bias &&
           !args->causal && B * args->heads <= 65535 && aligned;
}

int cuda_attention_folds_norm(const kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                              const kn_tensor *v, const kn_attn_args *args)
{
    return tc_eligible(o, q, k, v, args);
}

int cuda_attention(kn_ctx *ctx, kn_tensor *o, const kn_tensor *q, const kn_tensor *k,
                   const kn_tensor *v, const kn_attn_args *args)
{
    attn_dims a = {q->shape[1], k->shape[1], q->shape[2], args->heads, args->scale, args->causal};
    int64_t B = q->shape[0], Dh = a.HD / a.H;
    if (B == 0 || a.Sq == 0 || a.HD == 0) return 0;
    cudaStream_t s = cuda_st(ctx)->stream;
    float *lse = args->lse ? (float *)args->lse->data : NULL;
    if (tc_eligible(o, q, k, v, args)) {
        dim3 grid((unsigned)((a.Sq + TC_BQ - 1) / TC_BQ), (unsigned)(B * a.H));
        tc_norm n = {args->q_norm ? args->q_norm->data : NULL,
                     args->k_norm ? args->k_norm->data : NULL,
                     args->q_norm ? args->q_norm->dtype : KN_F32, args->norm_eps};
        return with_act(q->dtype, [&](auto tag) {
            using T = decltype(tag);
            if constexpr (!std::is_same<T, float>::value) {
                auto kern = n.qw ? flash64_tc_kernel<T, true> : flash64_tc_kernel<T, false>;
                kern<<<grid, TC_THREADS, 0, s>>>((T *)o->data, (const T *)q->data,
                                                 (const T *)k->data, (const T *)v->data, a, n, lse);
            }
            return cuda_launched("kn_attention");
        });
    }
    if (Dh != FA_D || B * a.H > 65535) return attention_generic(ctx, o, q, k, v, args, a);
    dim3 grid((unsigned)((a.Sq + FA_BQ - 1) / FA_BQ), (unsigned)(B * a.H));
    const float *bias = args->bias ? (const float *)args->bias->data : NULL;
    flash64_kernel<<<grid, FA_THREADS, 0, s>>>(o->data, q->data, k->data, v->data, q->dtype, a,
                                               bias, lse);
    return cuda_launched("kn_attention");
}
