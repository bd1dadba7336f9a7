/* CUDA backend: activations, elementwise arithmetic, the gated residual of adaLN blocks and the
 * pure data moves (transpose, nearest 2x upsampling, unpatchify). Each formula is the CPU
 * twin's, operation by operation, with explicitly rounded intrinsics (__fmul_rn, __fadd_rn) so
 * that nvcc never contracts a multiply and an add into one FMA: float32 results match the CPU
 * backend to the libm differences of expf/erff/tanhf. 16-bit tensors compute in float32 and
 * round where torch rounds: once per op, and between the two ops of `a + s * b`. */
#include "kernels/cuda/cuda_common.h"

#include <math.h>

static __device__ __forceinline__ float act_apply(kn_act act, float x)
{
    switch (act) {
    case KN_ACT_SILU:
        return __fdiv_rn(x, __fadd_rn(1.0f, expf(-x)));
    case KN_ACT_GELU_ERF:
        return __fmul_rn(__fmul_rn(x, 0.5f),
                         __fadd_rn(1.0f, erff(__fmul_rn(x, (float)M_SQRT1_2))));
    case KN_ACT_GELU_TANH: {
        const float beta = (float)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = 0.044715f;
        float cube = __fmul_rn(__fmul_rn(x, x), x);
        float inner = __fmul_rn(beta, __fadd_rn(x, __fmul_rn(kappa, cube)));
        return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, tanhf(inner)));
    }
    default: { /* transformers' QuickGELU: x * sigmoid(1.702 x) */
        float t = __fmul_rn(1.702f, x);
        return __fmul_rn(x, __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-t))));
    }
    }
}

template <typename T> __global__ void activate_kernel(T *y, const T *x, kn_act act, int64_t n)
{
    GRID_STRIDE(i, n)
    y[i] = from_f<T>(act_apply(act, to_f(x[i])));
}

int cuda_activate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act)
{
    int64_t n = kn_numel(x);
    if (n == 0) return 0;
    unsigned grid = cuda_grid(ctx, n);
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act(x->dtype, [&](auto tag) {
        using T = decltype(tag);
        activate_kernel<T><<<grid, CUDA_THREADS, 0, s>>>((T *)y->data, (const T *)x->data, act, n);
        return cuda_launched("kn_activate");
    });
}

enum binop { OP_ADD, OP_SUB, OP_MUL, OP_ADD_SCALED, OP_SCALE };

/* y = a (op) b; for OP_ADD_SCALED y = a + round(s * b), for OP_SCALE y = a * s. */
template <typename T, int OP>
__global__ void binary_kernel(T *y, const T *a, const T *b, float s, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        float av = to_f(a[i]), r;
        if (OP == OP_ADD) r = __fadd_rn(av, to_f(b[i]));
        else if (OP == OP_SUB) r = __fsub_rn(av, to_f(b[i]));
        else if (OP == OP_MUL) r = __fmul_rn(av, to_f(b[i]));
        else if (OP == OP_ADD_SCALED) r = __fadd_rn(av, round_to<T>(__fmul_rn(s, to_f(b[i]))));
        else r = __fmul_rn(av, s);
        y[i] = from_f<T>(r);
    }
}

template <int OP>
static int binary(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b, float s,
                  const char *what)
{
    int64_t n = kn_numel(y);
    if (n == 0) return 0;
    unsigned grid = cuda_grid(ctx, n);
    cudaStream_t st = cuda_st(ctx)->stream;
    return with_act(y->dtype, [&](auto tag) {
        using T = decltype(tag);
        binary_kernel<T, OP><<<grid, CUDA_THREADS, 0, st>>>(
            (T *)y->data, (const T *)a->data, b ? (const T *)b->data : (const T *)NULL, s, n);
        return cuda_launched(what);
    });
}

int cuda_add(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    return binary<OP_ADD>(ctx, y, a, b, 0.0f, "kn_add");
}

int cuda_sub(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    return binary<OP_SUB>(ctx, y, a, b, 0.0f, "kn_sub");
}

int cuda_mul(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b)
{
    return binary<OP_MUL>(ctx, y, a, b, 0.0f, "kn_mul");
}

int cuda_add_scaled(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, float s, const kn_tensor *b)
{
    return binary<OP_ADD_SCALED>(ctx, y, a, b, s, "kn_add_scaled");
}

int cuda_scale(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s)
{
    return binary<OP_SCALE>(ctx, y, x, NULL, s, "kn_scale");
}

/* x[b, s, j] += round(mod[b, gate, j] * y[b, s, j]). */
template <typename T>
__global__ void gate_add_kernel(T *x, const T *y, const T *mod, int64_t S, int64_t D, int64_t C,
                                int gate, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        int64_t b = i / (S * D), j = i % D;
        float t = round_to<T>(__fmul_rn(to_f(mod[(b * C + gate) * D + j]), to_f(y[i])));
        x[i] = from_f<T>(__fadd_rn(to_f(x[i]), t));
    }
}

int cuda_gate_add(kn_ctx *ctx, kn_tensor *x, const kn_tensor *y, const kn_tensor *mod, int gate_idx)
{
    int64_t B = x->shape[0], D = kn_cols(x), n = kn_numel(x), S = n / (B * D), C = mod->shape[1];
    unsigned grid = cuda_grid(ctx, n);
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act(x->dtype, [&](auto tag) {
        using T = decltype(tag);
        gate_add_kernel<T><<<grid, CUDA_THREADS, 0, s>>>(
            (T *)x->data, (const T *)y->data, (const T *)mod->data, S, D, C, gate_idx, n);
        return cuda_launched("kn_gate_add");
    });
}

#define TILE 32

/* One 32 x 32 tile per block through shared memory, so that reads and writes both coalesce;
 * the padding column keeps the column reads off a single bank. T is an unsigned integer of the
 * element size (with_elem), as in the other pure moves. */
template <typename T> __global__ void transpose_kernel(T *y, const T *x, int64_t M, int64_t N, int64_t B)
{
    __shared__ T tile[TILE][TILE + 1];
    int64_t i0 = (int64_t)blockIdx.y * TILE, j0 = (int64_t)blockIdx.x * TILE;
    for (int64_t n = blockIdx.z; n < B; n += gridDim.z) {
        const T *xs = x + n * M * N;
        T *ys = y + n * M * N;
        for (int r = threadIdx.y; r < TILE; r += blockDim.y)
            if (i0 + r < M && j0 + threadIdx.x < N)
                tile[r][threadIdx.x] = xs[(i0 + r) * N + j0 + threadIdx.x];
        __syncthreads();
        for (int r = threadIdx.y; r < TILE; r += blockDim.y)
            if (j0 + r < N && i0 + threadIdx.x < M)
                ys[(j0 + r) * M + i0 + threadIdx.x] = tile[threadIdx.x][r];
        __syncthreads();
    }
}

int cuda_transpose(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x)
{
    int64_t M = x->shape[x->ndim - 2], N = x->shape[x->ndim - 1];
    int64_t B = M > 0 && N > 0 ? kn_numel(x) / (M * N) : 0;
    if (B == 0) return 0;
    dim3 grid((unsigned)((N + TILE - 1) / TILE), (unsigned)((M + TILE - 1) / TILE),
              (unsigned)(B < 65535 ? B : 65535));
    dim3 block(TILE, 8);
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_elem(kn_dtype_size(x->dtype), [&](auto tag) {
        using T = decltype(tag);
        transpose_kernel<T><<<grid, block, 0, s>>>((T *)y->data, (const T *)x->data, M, N, B);
        return cuda_launched("kn_transpose");
    });
}

template <typename T>
__global__ void upsample_kernel(T *y, const T *x, int64_t H, int64_t W, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        int64_t j = i % (2 * W), r = i / (2 * W), ii = r % (2 * H), p = r / (2 * H);
        y[i] = x[(p * H + ii / 2) * W + j / 2];
    }
}

int cuda_upsample_nearest2x(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x)
{
    int64_t H = x->shape[2], W = x->shape[3], n = kn_numel(y);
    if (n == 0) return 0;
    unsigned grid = cuda_grid(ctx, n);
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_elem(kn_dtype_size(x->dtype), [&](auto tag) {
        using T = decltype(tag);
        upsample_kernel<T><<<grid, CUDA_THREADS, 0, s>>>((T *)y->data, (const T *)x->data, H, W, n);
        return cuda_launched("kn_upsample_nearest2x");
    });
}

/* y[n, c, p r + a, p s + e] = x[n, r gw + s, a st.a + e st.e + c st.c], in y's order. E is an
 * unsigned integer of the element size: the op moves any dtype. */
template <typename E>
__global__ void unpatch_kernel(E *y, const E *x, int64_t C, int64_t H, int64_t W, int p,
                               unpatch_strides st, int64_t n)
{
    int64_t gh = H / p, gw = W / p, feat = (int64_t)p * p * C;
    GRID_STRIDE(i, n)
    {
        int64_t j = i % W, h = i / W % H, c = i / (W * H) % C, b = i / (W * H * C);
        int64_t tok = b * gh * gw + h / p * gw + j / p;
        y[i] = x[tok * feat + h % p * st.a + j % p * st.e + c * st.c];
    }
}

int cuda_unpatch(kn_ctx *ctx, kn_tensor *y, const void *x, int p, unpatch_strides st,
                 const char *what)
{
    int64_t C = y->shape[1], H = y->shape[2], W = y->shape[3], n = kn_numel(y);
    if (n == 0) return 0;
    unsigned grid = cuda_grid(ctx, n);
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_elem(kn_dtype_size(y->dtype), [&](auto tag) {
        using E = decltype(tag);
        unpatch_kernel<E>
            <<<grid, CUDA_THREADS, 0, s>>>((E *)y->data, (const E *)x, C, H, W, p, st, n);
        return cuda_launched(what);
    });
}

/* Features (a, e, c), c fastest: y[n, c, p r + a, p s + e] = x[n, r gw + s, (a p + e) C + c]. */
int cuda_unpatchify(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int p)
{
    int64_t C = y->shape[1];
    unpatch_strides st = {p * C, C, 1};
    return cuda_unpatch(ctx, y, x->data, p, st, "kn_unpatchify");
}
