/* CUDA backend: the gradient of the attention (kn_attention_grad) and the head-averaged
 * attention maps that FOCUS's cost is computed from (kn_attention_maps).
 *
 * The gradient is FlashAttention-2's backward: the probabilities are recomputed tile by tile
 * from q, k and the forward's log-sum-exp, so that no Sq x Sk matrix ever exists. One kernel
 * owns 64 keys of one head and sums their dK and dV over every query tile; another owns 64
 * queries and sums their dQ over every key tile. Neither needs atomics, and every sum runs in
 * an order fixed by the shapes. A prologue kernel gives each query row its C = Drow + sum_k G P
 * (Drow = do . o), the map term's G entering only on the selected key columns of the first
 * `rows` queries. In BF16/F16 with head size 64 (the transformer's joint attention) the products
 * run on tensor cores (mma.sync, float32 accumulation); otherwise they and the exponentials are
 * float32 on CUDA cores whatever the activation dtype, which keeps the fp32 mode exact to
 * rounding, for head sizes up to 64 (every attention of SD3's transformer and text encoders). */
#include "kernels/cuda/cuda_mma.h"

extern "C" {
#include "kernels/kn_grad.h"
}

#include <math.h>

#include <initializer_list>

#define GB_T CUDA_TILE /* queries or keys per tile */
#define GB_D CUDA_TILE /* the largest head size; smaller heads are padded with zeros */
#define GB_THREADS (GB_T * CUDA_TILE_LANES)
#define GB_PER CUDA_TILE_PER
#define GB_LANES CUDA_TILE_LANES
#define GB_TILES 5 /* shared tiles per block */
#define GB_SMEM (GB_TILES * sizeof(tile_t))

typedef cuda_tile tile_t;

/* Operands of a score q . k of one head: q [B, Sq, H Dh], k [B, Sk, H Dh], lse [B, H, Sq]. */
struct qk_args {
    const void *q, *k;
    const float *lse;
    kn_dtype dt;
    int64_t Sq, Sk, HD;
    int H, Dh;
    float scale;
};

/* sum over d < Dh of x[xo + d] y[yo + d] by one warp; every lane gets it. */
static __device__ float warp_dot(const void *x, int64_t xo, const void *y, int64_t yo, kn_dtype dt,
                                 int Dh)
{
    float s = 0.0f;
    for (int d = threadIdx.x % 32; d < Dh; d += 32)
        s = fmaf(load_any(x, dt, xo + d), load_any(y, dt, yo + d), s);
    return warp_sum(s);
}

/* P[b, h, i, key] by one warp, from the score and the row's log-sum-exp. */
static __device__ float warp_prob(const qk_args &a, int64_t b, int h, int64_t i, int64_t key)
{
    float s = warp_dot(a.q, (b * a.Sq + i) * a.HD + h * a.Dh, a.k,
                       (b * a.Sk + key) * a.HD + h * a.Dh, a.dt, a.Dh);
    return expf(s * a.scale - a.lse[((int64_t)b * a.H + h) * a.Sq + i]);
}

/* A grid-stride loop over `items` with one warp per item: w is the same on all its lanes. */
#define WARP_STRIDE(w, items)                                                                      \
    for (int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32; w < (items);           \
         w += (int64_t)gridDim.x * blockDim.x / 32)

/* maps[b, j, p] = (1/H) sum_h P[b, h, p, sel[j]], one warp per element w = (b, j, p). */
__global__ void attention_maps_kernel(float *maps, qk_args a, const int32_t *sel, int n_sel,
                                      int64_t rows, int64_t items)
{
    WARP_STRIDE(w, items)
    {
        int64_t p = w % rows, j = w / rows % n_sel, b = w / (rows * n_sel);
        float acc = 0.0f;
        for (int h = 0; h < a.H; h++)
            acc += warp_prob(a, b, h, p, sel[j]);
        if (threadIdx.x % 32 == 0) maps[w] = acc / (float)a.H;
    }
}

static qk_args qk_of(const kn_tensor *q, const kn_tensor *k, const kn_tensor *lse, int heads,
                     float scale)
{
    const int64_t HD = q->shape[2];
    qk_args a = {q->data, k->data, (const float *)lse->data, q->dtype, q->shape[1], k->shape[1],
                 HD,      heads,   (int)(HD / heads),        scale};
    return a;
}

/* The host indices sel[n_sel] on the device, followed by `extra` int32 of room. */
static int32_t *upload_sel(kn_ctx *ctx, const int32_t *sel, int n_sel, int64_t extra,
                           const char *what)
{
    int32_t *d = (int32_t *)cuda_scratch(ctx, CUDA_SLOT_PARAM, (n_sel + extra) * sizeof *sel);
    if (!d) return NULL;
    cudaError_t e =
        cudaMemcpyAsync(d, sel, n_sel * sizeof *sel, cudaMemcpyHostToDevice, cuda_st(ctx)->stream);
    if (e != cudaSuccess) {
        cuda_fail(what, e);
        return NULL;
    }
    return d;
}

int cuda_attention_maps(kn_ctx *ctx, kn_tensor *maps, const kn_tensor *q, const kn_tensor *k,
                        const kn_tensor *lse, const int32_t *sel, int n_sel, int64_t rows,
                        int heads, float scale)
{
    static const char op[] = "kn_attention_maps";
    int64_t items = q->shape[0] * n_sel * rows;
    if (items == 0) return 0;
    int32_t *dsel = upload_sel(ctx, sel, n_sel, 0, op);
    if (!dsel) return err_code();
    attention_maps_kernel<<<cuda_grid(ctx, items * 32), CUDA_THREADS, 0, cuda_st(ctx)->stream>>>(
        (float *)maps->data, qk_of(q, k, lse, heads, scale), dsel, n_sel, rows, items);
    return cuda_launched(op);
}

/* ---- the gradient ---- */

struct grad_args {
    qk_args qk;
    const void *v, *o, *dout; /* dout NULL: no gradient reaches the output */
    void *dq, *dk, *dv;
    float *C;             /* [B, H, Sq]: Drow + sum_k G P of each query row */
    const float *G;       /* [B, rows, n_sel]: G of key sel[j] at its first selection j */
    const int32_t *sel;   /* [n_sel] on the device */
    const int32_t *first; /* [Sk]: the first j with sel[j] = key, or -1; NULL without maps */
    int n_sel;
    int64_t rows; /* queries the map term reaches */
    int64_t qend; /* queries with a gradient: Sq, or rows without dout */
};

/* first[key] = the first j with sel[j] = key, or -1. */
__global__ void first_sel_kernel(int32_t *first, const int32_t *sel, int n_sel, int64_t Sk)
{
    GRID_STRIDE(key, Sk)
    {
        int f = -1;
        for (int j = n_sel - 1; j >= 0; j--)
            if (sel[j] == key) f = j;
        first[key] = f;
    }
}

/* G[b, p, j] = sum over j2 with sel[j2] = sel[j] of dmaps[b, j2, p] / H at a key's first
 * selection j, 0 at the others: a key selected twice takes both terms. */
__global__ void map_grad_kernel(float *G, const float *dmaps, const int32_t *sel,
                                const int32_t *first, int n_sel, int64_t rows, int H, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        int64_t j = i % n_sel, p = i / n_sel % rows, b = i / (n_sel * rows);
        float g = 0.0f;
        if (first[sel[j]] == j)
            for (int64_t j2 = j; j2 < n_sel; j2++)
                if (sel[j2] == sel[j]) g += dmaps[(b * n_sel + j2) * rows + p] / (float)H;
        G[i] = g;
    }
}

/* C[b, h, i] = do_i . o_i + sum_j G[b, i, j] P[b, h, i, sel[j]], one warp per query row. */
__global__ void grad_rows_kernel(grad_args a, int64_t items)
{
    const qk_args &q = a.qk;
    WARP_STRIDE(w, items)
    {
        int64_t i = w % q.Sq, b = w / (q.Sq * q.H);
        int h = (int)(w / q.Sq % q.H);
        int64_t off = (b * q.Sq + i) * q.HD + h * q.Dh;
        float c = a.dout ? warp_dot(a.dout, off, a.o, off, q.dt, q.Dh) : 0.0f;
        if (i < a.rows)
            for (int j = 0; j < a.n_sel; j++)
                if (a.first[a.sel[j]] == j)
                    c += a.G[(b * a.rows + i) * a.n_sel + j] * warp_prob(q, b, h, i, a.sel[j]);
        if (threadIdx.x % 32 == 0) a.C[w] = c;
    }
}

/* Rows [r0, r0 + 64) of head h of sample b of x [B, S, H Dh] into t as float32; zeros past S
 * and past Dh. */
static __device__ void load_tile(tile_t &t, const void *x, const qk_args &a, int64_t b, int h,
                                 int64_t r0, int64_t S)
{
    for (int e = threadIdx.x; e < GB_T * GB_D; e += GB_THREADS) {
        int row = e / GB_D, d = e % GB_D;
        int64_t i = r0 + row;
        t[row][d] = i < S && d < a.Dh ? load_any(x, a.dt, (b * S + i) * a.HD + h * a.Dh + d) : 0.0f;
    }
}

/* dS = P (dP + G - C) of query qi and a key whose first selection is u (-1: none), with
 * P = exp(scale s - lse) for a visible pair and 0 otherwise; *p receives P. */
static __device__ __forceinline__ float grad_score(const grad_args &a, float s, float dp, bool vis,
                                                   float lse, float c, int64_t b, int64_t qi, int u,
                                                   float *p)
{
    *p = vis ? expf(s * a.qk.scale - lse) : 0.0f;
    float g = u >= 0 && qi < a.rows ? a.G[(b * a.rows + qi) * a.n_sel + u] : 0.0f;
    return *p * (dp + g - c);
}

/* The forward's log-sum-exp and the C of query qi of head h of sample b; zeros past Sq. */
static __device__ __forceinline__ void query_row(const grad_args &a, int64_t b, int h, int64_t qi,
                                                 float *lse, float *c)
{
    int64_t li = (b * a.qk.H + h) * a.qk.Sq + qi;
    bool in = qi < a.qk.Sq;
    *lse = in ? a.qk.lse[li] : 0.0f;
    *c = in ? a.C[li] : 0.0f;
}

/* Head blockIdx.y of sample blockIdx.z, 64 keys per block: dV = P^T dO and dK = scale dS^T Q
 * over every query tile below qend. Thread (c, lane) owns key c and columns lane + 4 t. */
__global__ void __launch_bounds__(GB_THREADS) attention_grad_kv_kernel(grad_args a)
{
    extern __shared__ float smem[];
    tile_t *tiles = (tile_t *)smem;
    tile_t &ks = tiles[0], &vs = tiles[1], &qs = tiles[2], &os = tiles[3], &ps = tiles[4];
    __shared__ float ls[GB_T], cs[GB_T];
    const qk_args &q = a.qk;
    const int h = blockIdx.y, c = threadIdx.x / GB_LANES, lane = threadIdx.x % GB_LANES;
    const int64_t b = blockIdx.z, k0 = (int64_t)blockIdx.x * GB_T, kj = k0 + c;
    const bool key = kj < q.Sk;
    const int u = a.first && key ? a.first[kj] : -1;
    load_tile(ks, q.k, q, b, h, k0, q.Sk);
    if (a.dout) load_tile(vs, a.v, q, b, h, k0, q.Sk);
    float dk[GB_PER] = {}, dv[GB_PER] = {};
    for (int64_t q0 = 0; q0 < a.qend; q0 += GB_T) {
        load_tile(qs, q.q, q, b, h, q0, q.Sq);
        if (a.dout) load_tile(os, a.dout, q, b, h, q0, q.Sq);
        for (int i = threadIdx.x; i < GB_T; i += GB_THREADS)
            query_row(a, b, h, q0 + i, &ls[i], &cs[i]);
        __syncthreads();
        float s[GB_PER] = {}, dp[GB_PER] = {}, p[GB_PER];
        tile_mul<true>(s, ks, qs, c, lane);
        if (a.dout) tile_mul<true>(dp, vs, os, c, lane);
#pragma unroll
        for (int t = 0; t < GB_PER; t++) {
            int i = lane + GB_LANES * t;
            s[t] =
                grad_score(a, s[t], dp[t], key && q0 + i < q.Sq, ls[i], cs[i], b, q0 + i, u, &p[t]);
        }
        if (a.dout) {
#pragma unroll
            for (int t = 0; t < GB_PER; t++)
                ps[c][lane + GB_LANES * t] = p[t];
            __syncthreads();
            tile_mul<false>(dv, ps, os, c, lane);
            __syncthreads();
        }
#pragma unroll
        for (int t = 0; t < GB_PER; t++)
            ps[c][lane + GB_LANES * t] = s[t];
        __syncthreads();
        tile_mul<false>(dk, ps, qs, c, lane);
        __syncthreads(); /* before the next tile overwrites Q, dO and the probabilities */
    }
    if (!key) return;
    int64_t row = (b * q.Sk + kj) * q.HD + h * q.Dh;
#pragma unroll
    for (int t = 0; t < GB_PER; t++) {
        int d = lane + GB_LANES * t;
        if (d >= q.Dh) continue;
        store_act(a.dk, q.dt, row + d, dk[t] * q.scale);
        store_act(a.dv, q.dt, row + d, dv[t]);
    }
}

/* Head blockIdx.y of sample blockIdx.z, 64 queries per block: dQ = scale dS K over every key
 * tile (zeros from qend on). Thread (r, lane) owns query r and columns lane + 4 t. */
__global__ void __launch_bounds__(GB_THREADS) attention_grad_q_kernel(grad_args a)
{
    extern __shared__ float smem[];
    tile_t *tiles = (tile_t *)smem;
    tile_t &qs = tiles[0], &os = tiles[1], &ks = tiles[2], &vs = tiles[3], &ds = tiles[4];
    const qk_args &q = a.qk;
    const int h = blockIdx.y, r = threadIdx.x / GB_LANES, lane = threadIdx.x % GB_LANES;
    const int64_t b = blockIdx.z, q0 = (int64_t)blockIdx.x * GB_T, qi = q0 + r;
    const bool valid = qi < q.Sq;
    float acc[GB_PER] = {};
    if (q0 < a.qend) {
        load_tile(qs, q.q, q, b, h, q0, q.Sq);
        if (a.dout) load_tile(os, a.dout, q, b, h, q0, q.Sq);
        float lse, c;
        query_row(a, b, h, qi, &lse, &c);
        for (int64_t k0 = 0; k0 < q.Sk; k0 += GB_T) {
            load_tile(ks, q.k, q, b, h, k0, q.Sk);
            if (a.dout) load_tile(vs, a.v, q, b, h, k0, q.Sk);
            __syncthreads();
            float s[GB_PER] = {}, dp[GB_PER] = {};
            tile_mul<true>(s, qs, ks, r, lane);
            if (a.dout) tile_mul<true>(dp, os, vs, r, lane);
#pragma unroll
            for (int t = 0; t < GB_PER; t++) {
                int j = lane + GB_LANES * t;
                int64_t kj = k0 + j;
                int u = a.first && kj < q.Sk ? a.first[kj] : -1;
                float p;
                ds[r][j] = grad_score(a, s[t], dp[t], valid && kj < q.Sk, lse, c, b, qi, u, &p);
            }
            __syncthreads();
            tile_mul<false>(acc, ds, ks, r, lane);
            __syncthreads(); /* before the next tile overwrites K, V and dS */
        }
    }
    if (!valid) return;
    int64_t row = (b * q.Sq + qi) * q.HD + h * q.Dh;
#pragma unroll
    for (int t = 0; t < GB_PER; t++) {
        int d = lane + GB_LANES * t;
        if (d < q.Dh) store_act(a.dq, q.dt, row + d, acc[t] * q.scale);
    }
}

/* ---- Tensor-core path: head size 64 in BF16/F16 ----
 * The same two kernels with mma.sync products (cuda_mma.h): a block of 4 warps owns 64 keys
 * (or queries) of one head, 16 per warp, whose A fragments stay in registers, and streams 16-bit
 * tiles of the other side through shared memory. S and dP come out as C fragments; P and dS,
 * computed in place, are the A fragments of the accumulating products, rounded to T on the way
 * as FlashAttention-2 does. */
#define TCG_THREADS 128

/* dK and dV of 64 keys: warp w owns keys 16 w + [0, 16). */
template <typename T>
__global__ void __launch_bounds__(TCG_THREADS) attention_grad_kv_tc_kernel(grad_args a)
{
    __shared__ __align__(16) T qs[GB_T * MMA_LD];
    __shared__ __align__(16) T os[GB_T * MMA_LD];
    __shared__ float ls[GB_T], cs[GB_T];
    const qk_args &q = a.qk;
    const int h = blockIdx.y, warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
    const int t4 = threadIdx.x % 4;
    const int64_t b = blockIdx.z, row0 = (int64_t)blockIdx.x * GB_T + warp * 16;
    const int64_t qb = b * q.Sq * q.HD + h * MMA_D, kb = b * q.Sk * q.HD + h * MMA_D;
    uint32_t ka[4][4], va[4][4] = {};
    mma_load_a(ka, (const T *)q.k + kb, row0, q.Sk, q.HD);
    if (a.dout) mma_load_a(va, (const T *)a.v + kb, row0, q.Sk, q.HD);
    int u[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int64_t kj = row0 + g + 8 * i;
        u[i] = a.first && kj < q.Sk ? a.first[kj] : -1;
    }
    float dk[8][4] = {}, dv[8][4] = {};
    for (int64_t q0 = 0; q0 < a.qend; q0 += GB_T) {
        mma_load_tile(qs, (const T *)q.q + qb, q0, q.Sq, q.HD);
        if (a.dout) mma_load_tile(os, (const T *)a.dout + qb, q0, q.Sq, q.HD);
        for (int i = threadIdx.x; i < GB_T; i += TCG_THREADS)
            query_row(a, b, h, q0 + i, &ls[i], &cs[i]);
        __syncthreads();
        /* S^T = K Q^T and dP^T = V dO^T: element e of n-tile n is key row0 + g + 8 (e >> 1),
         * query q0 + 8 n + 2 t4 + (e & 1). dS^T replaces S^T, P^T replaces dP^T. */
        float s[8][4], dp[8][4] = {};
        mma_abt<T>(s, ka, qs);
        if (a.dout) mma_abt<T>(dp, va, os);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int i = e >> 1, col = 8 * n + 2 * t4 + (e & 1);
                int64_t kj = row0 + g + 8 * i, qi = q0 + col;
                float p;
                s[n][e] = grad_score(a, s[n][e], dp[n][e], kj < q.Sk && qi < q.Sq, ls[col], cs[col],
                                     b, qi, u[i], &p);
                dp[n][e] = p;
            }
        if (a.dout) mma_ab<T>(dv, dp, os);
        mma_ab<T>(dk, s, qs);
        __syncthreads(); /* before the next tile overwrites Q and dO */
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int64_t kj = row0 + g + 8 * i;
        if (kj >= q.Sk) continue;
        T *dkr = (T *)a.dk + kb + kj * q.HD + 2 * t4, *dvr = (T *)a.dv + kb + kj * q.HD + 2 * t4;
#pragma unroll
        for (int n = 0; n < 8; n++) {
            *(uint32_t *)(dkr + 8 * n) =
                pack2<T>(dk[n][2 * i] * q.scale, dk[n][2 * i + 1] * q.scale);
            *(uint32_t *)(dvr + 8 * n) = pack2<T>(dv[n][2 * i], dv[n][2 * i + 1]);
        }
    }
}

/* dQ of 64 queries: warp w owns queries 16 w + [0, 16); zeros from qend on. */
template <typename T>
__global__ void __launch_bounds__(TCG_THREADS) attention_grad_q_tc_kernel(grad_args a)
{
    __shared__ __align__(16) T ks[GB_T * MMA_LD];
    __shared__ __align__(16) T vs[GB_T * MMA_LD];
    const qk_args &q = a.qk;
    const int h = blockIdx.y, warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
    const int t4 = threadIdx.x % 4;
    const int64_t b = blockIdx.z, row0 = (int64_t)blockIdx.x * GB_T + warp * 16;
    const int64_t qb = b * q.Sq * q.HD + h * MMA_D, kb = b * q.Sk * q.HD + h * MMA_D;
    float acc[8][4] = {};
    if ((int64_t)blockIdx.x * GB_T < a.qend) {
        uint32_t qa[4][4], oa[4][4] = {};
        mma_load_a(qa, (const T *)q.q + qb, row0, q.Sq, q.HD);
        if (a.dout) mma_load_a(oa, (const T *)a.dout + qb, row0, q.Sq, q.HD);
        float lse[2], c[2];
#pragma unroll
        for (int i = 0; i < 2; i++)
            query_row(a, b, h, row0 + g + 8 * i, &lse[i], &c[i]);
        for (int64_t k0 = 0; k0 < q.Sk; k0 += GB_T) {
            mma_load_tile(ks, (const T *)q.k + kb, k0, q.Sk, q.HD);
            if (a.dout) mma_load_tile(vs, (const T *)a.v + kb, k0, q.Sk, q.HD);
            __syncthreads();
            /* S = Q K^T, dP = dO V^T: element e of n-tile n is query row0 + g + 8 (e >> 1),
             * key k0 + 8 n + 2 t4 + (e & 1); dS replaces S. */
            float s[8][4], dp[8][4] = {};
            mma_abt<T>(s, qa, ks);
            if (a.dout) mma_abt<T>(dp, oa, vs);
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = e >> 1;
                    int64_t qi = row0 + g + 8 * i, kj = k0 + 8 * n + 2 * t4 + (e & 1);
                    int u = a.first && kj < q.Sk ? a.first[kj] : -1;
                    float p;
                    s[n][e] = grad_score(a, s[n][e], dp[n][e], qi < q.Sq && kj < q.Sk, lse[i], c[i],
                                         b, qi, u, &p);
                }
            mma_ab<T>(acc, s, ks);
            __syncthreads(); /* before the next tile overwrites K and V */
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int64_t qi = row0 + g + 8 * i;
        if (qi >= q.Sq) continue;
        T *dqr = (T *)a.dq + qb + qi * q.HD + 2 * t4;
#pragma unroll
        for (int n = 0; n < 8; n++)
            *(uint32_t *)(dqr + 8 * n) =
                pack2<T>(acc[n][2 * i] * q.scale, acc[n][2 * i + 1] * q.scale);
    }
}

/* The tensor-core kernels take 16-bit head-64 attention on 16-byte aligned rows. */
static bool tc_grad_eligible(const kn_tensor *q, int Dh,
                             std::initializer_list<const kn_tensor *> ts)
{
    bool ok = (q->dtype == KN_BF16 || q->dtype == KN_F16) && Dh == MMA_D;
    for (const kn_tensor *t : ts)
        ok = ok && (!t || (uintptr_t)t->data % 16 == 0);
    return ok;
}

/* Launches kern over tiles of n rows for each head and sample, with `smem` bytes of dynamic
 * shared memory. */
static int launch_tiles(kn_ctx *ctx, void (*kern)(grad_args), const grad_args &a, int64_t n,
                        int64_t B, unsigned threads, size_t smem, const char *what)
{
    if (n == 0) return 0;
    cudaError_t e =
        smem ? cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)
             : cudaSuccess;
    if (e != cudaSuccess) return cuda_fail(what, e);
    dim3 grid((unsigned)((n + GB_T - 1) / GB_T), (unsigned)a.qk.H, (unsigned)B);
    kern<<<grid, threads, smem, cuda_st(ctx)->stream>>>(a);
    return cuda_launched(what);
}

int cuda_attention_grad(kn_ctx *ctx, kn_tensor *dq, kn_tensor *dk, kn_tensor *dv,
                        const kn_tensor *do_, const kn_tensor *q, const kn_tensor *k,
                        const kn_tensor *v, const kn_tensor *o, const kn_attn_args *args,
                        const kn_map_grad *map)
{
    static const char op[] = "kn_attention_grad";
    grad_args a = {};
    a.qk = qk_of(q, k, args->lse, args->heads, args->scale);
    const int64_t B = q->shape[0], Sq = a.qk.Sq, Sk = a.qk.Sk, H = a.qk.H;
    if (a.qk.Dh > GB_D)
        return err_set(ERR_DEVICE, "%s: head size %d on CUDA (at most %d)", op, a.qk.Dh, GB_D);
    if (B == 0 || a.qk.HD == 0) return 0;
    a.v = v->data;
    a.o = o ? o->data : NULL;
    a.dout = do_ ? do_->data : NULL;
    a.dq = dq->data;
    a.dk = dk->data;
    a.dv = dv->data;
    if (map && map->n_sel > 0 && map->rows > 0) {
        a.n_sel = map->n_sel;
        a.rows = map->rows;
    }
    a.qend = do_ ? Sq : a.rows;
    int64_t nc = B * H * Sq, ng = B * a.rows * a.n_sel;
    float *work = (float *)cuda_scratch(ctx, CUDA_SLOT_WORK, (size_t)(nc + ng + 1) * sizeof(float));
    if (!work) return err_code();
    a.C = work;
    cudaStream_t s = cuda_st(ctx)->stream;
    if (a.n_sel) {
        int32_t *dsel = upload_sel(ctx, map->sel, a.n_sel, Sk, op);
        if (!dsel) return err_code();
        a.sel = dsel;
        a.first = dsel + a.n_sel;
        a.G = work + nc;
        first_sel_kernel<<<cuda_grid(ctx, Sk), CUDA_THREADS, 0, s>>>(dsel + a.n_sel, dsel, a.n_sel,
                                                                     Sk);
        KN_TRY(cuda_launched(op));
        map_grad_kernel<<<cuda_grid(ctx, ng), CUDA_THREADS, 0, s>>>(
            work + nc, (const float *)map->dmaps->data, a.sel, a.first, a.n_sel, a.rows, (int)H,
            ng);
        KN_TRY(cuda_launched(op));
    }
    if (nc) {
        grad_rows_kernel<<<cuda_grid(ctx, nc * 32), CUDA_THREADS, 0, s>>>(a, nc);
        KN_TRY(cuda_launched(op));
    }
    if (tc_grad_eligible(q, a.qk.Dh, {q, k, v, do_, dq, dk, dv}))
        return with_act(q->dtype, [&](auto tag) {
            using T = decltype(tag);
            if constexpr (std::is_same<T, float>::value) {
                return 0; /* never eligible */
            } else {
                KN_TRY(launch_tiles(ctx, attention_grad_kv_tc_kernel<T>, a, Sk, B, TCG_THREADS, 0,
                                    op));
                return launch_tiles(ctx, attention_grad_q_tc_kernel<T>, a, Sq, B, TCG_THREADS, 0,
                                    op);
            }
        });
    KN_TRY(launch_tiles(ctx, attention_grad_kv_kernel, a, Sk, B, GB_THREADS, GB_SMEM, op));
    return launch_tiles(ctx, attention_grad_q_kernel, a, Sq, B, GB_THREADS, GB_SMEM, op);
}
