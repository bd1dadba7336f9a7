/* Internal to kernels/cuda/: the state a CUDA context owns, error reporting, the element types
 * kernels compute in and the helpers the .cu files share (scratch, dtype conversion, GEMM).
 * Compiled only by nvcc; nothing outside kernels/cuda/ includes it. */
#ifndef FOCUS_KERNELS_CUDA_CUDA_COMMON_H
#define FOCUS_KERNELS_CUDA_CUDA_COMMON_H

/* nvcc does not see the C compiler's flags; every .cu file is by definition the CUDA build, and
 * the headers below declare the cuda_* twins only in that build. */
#ifndef FOCUS_HAVE_CUDA
#define FOCUS_HAVE_CUDA 1
#endif

#include "kernels/cuda/cuda_ops.h"

extern "C" {
#include "common/err.h"
#include "kernels/kn_backend.h"
#include "kernels/kn_check.h"
}

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

/* Scratch slots, so that one op's buffers never collide. */
enum {
    CUDA_SLOT_WEIGHT = 0, /* a widened or narrowed weight panel */
    CUDA_SLOT_WORK = 1,   /* im2col columns, attention scores */
    CUDA_SLOT_PARAM = 2,  /* a converted bias; embedding ids */
    CUDA_SLOT_PARAM2 = 3, /* attention probabilities in 16 bits; group norm partial sums */
    CUDA_SCRATCH_SLOTS = 4
};

struct cuda_state {
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *lt_work; /* cuBLASLt workspace */
    size_t lt_work_size;
    void *scratch[CUDA_SCRATCH_SLOTS];
    size_t scratch_size[CUDA_SCRATCH_SLOTS];
    void *staging[2];        /* pinned host buffers for weight uploads, allocated on first use */
    cudaEvent_t staged[2];   /* the last copy out of each staging buffer */
    int tf32;
    int sm_count;
};

static inline cuda_state *cuda_st(kn_ctx *ctx)
{
    return (cuda_state *)ctx->backend;
}

/* "<what>: <CUDA's message>" as ERR_NOMEM for an allocation failure, ERR_DEVICE_LOST for the
 * sticky errors after which the context is unusable, ERR_DEVICE otherwise. */
int cuda_fail(const char *what, cudaError_t e);
int cublas_fail(const char *what, cublasStatus_t s);
/* Checks the launch just queued; returns 0 or ERR_DEVICE naming `what`. */
int cuda_launched(const char *what);

/* Device scratch of at least n bytes on ctx's stream, valid until the slot's next use; NULL
 * (with ERR_DEVICE set) when the allocation fails. Growth is stream-ordered, so work already
 * queued on the old buffer finishes first. */
void *cuda_scratch(kn_ctx *ctx, int slot, size_t n);

/* Grid for a grid-stride loop over n elements with 256-thread blocks. */
unsigned cuda_grid(kn_ctx *ctx, int64_t n);

/* Converts n elements of float dtype `sdt` into dtype `ddt` (F32, F16 or BF16), rounding to
 * nearest even as the host converters do. */
int cuda_convert(kn_ctx *ctx, void *dst, kn_dtype ddt, const void *src, kn_dtype sdt, int64_t n,
                 const char *what);
/* src as dtype `dt`: src's own memory when it already is, otherwise converted into `slot`. */
const void *cuda_as_dtype(kn_ctx *ctx, int slot, const kn_tensor *src, kn_dtype dt,
                          const char *what);

/* Column-major strided-batched product C = alpha op(A) op(B) + beta C, float32 accumulation.
 * A and B share dtype ab (F32, F16 or BF16); C is F32 or ab. F32 inputs multiply in full float32
 * unless the context allows TF32. */
struct cuda_gemm {
    cublasOperation_t ta, tb;
    int64_t m, n, k;
    const void *a;
    int64_t lda, stride_a;
    const void *b;
    int64_t ldb, stride_b;
    void *c;
    int64_t ldc, stride_c;
    int64_t batch;
    kn_dtype ab, cdt;
    float alpha, beta;
};
int cuda_gemm_run(kn_ctx *ctx, const cuda_gemm *g, const char *what);

/* Where feature (a, e, c) of a token lies in its row, for cuda_unpatch. */
struct unpatch_strides {
    int64_t a, e, c;
};
/* y [B, C, H, W] from tokens x [B, (H / p) (W / p), p p C] of y's dtype:
 * y[n, c, p r + a, p s + e] = x[n, r (W / p) + s, a st.a + e st.e + c st.c]. */
int cuda_unpatch(kn_ctx *ctx, kn_tensor *y, const void *x, int p, unpatch_strides st,
                 const char *what);

/* ---- element types ---- */

static __device__ __forceinline__ float to_f(float x)
{
    return x;
}
static __device__ __forceinline__ float to_f(__half x)
{
    return __half2float(x);
}
static __device__ __forceinline__ float to_f(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

template <typename T> static __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x)
{
    return x;
}
template <> __device__ __forceinline__ __half from_f<__half>(float x)
{
    return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

/* x rounded to T and back: a torch op's intermediate result in the tensor dtype. */
template <typename T> static __device__ __forceinline__ float round_to(float x)
{
    return to_f(from_f<T>(x));
}

/* Element i of a tensor of any float dtype, for parameters (biases, norm weights) whose dtype
 * is only known at run time. */
static __device__ __forceinline__ float load_any(const void *p, kn_dtype dt, int64_t i)
{
    switch (dt) {
    case KN_F16:
        return __half2float(((const __half *)p)[i]);
    case KN_BF16:
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case KN_F8_E4M3:
        return __half2float(
            __half(__nv_cvt_fp8_to_halfraw(((const __nv_fp8_storage_t *)p)[i], __NV_E4M3)));
    case KN_F8_E5M2:
        return __half2float(
            __half(__nv_cvt_fp8_to_halfraw(((const __nv_fp8_storage_t *)p)[i], __NV_E5M2)));
    default:
        return ((const float *)p)[i];
    }
}

/* Stores v rounded to activation dtype dt (F32, F16 or BF16) as element i of p. */
static __device__ __forceinline__ void store_act(void *p, kn_dtype dt, int64_t i, float v)
{
    if (dt == KN_F16)
        ((__half *)p)[i] = __float2half_rn(v);
    else if (dt == KN_BF16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else
        ((float *)p)[i] = v;
}

/* Calls f(T()) with T the element type of activation dtype dt. */
template <typename F> static int with_act(kn_dtype dt, F &&f)
{
    switch (dt) {
    case KN_F16:
        return f(__half());
    case KN_BF16:
        return f(__nv_bfloat16());
    default:
        return f(float());
    }
}

/* Calls f(E()) with E an unsigned integer of es bytes, for ops that only move elements. */
template <typename F> static int with_elem(size_t es, F &&f)
{
    switch (es) {
    case 1:
        return f(uint8_t());
    case 2:
        return f(uint16_t());
    case 8:
        return f(uint64_t());
    default:
        return f(uint32_t());
    }
}

#define CUDA_THREADS 256

/* Widened weight panel budget in floats (64 MiB): every SD3.5-medium linear fits in one. */
#define CUDA_PANEL_FLOATS ((int64_t)16 << 20)

/* A grid-stride loop of index i over [0, n). */
#define GRID_STRIDE(i, n)                                                                          \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

/* Row ops run one block per row: whole warps, at most 256 threads, no more than the row's n
 * elements (or vectors) need. */
static inline unsigned cuda_row_threads(int64_t n)
{
    if (n >= 256) return 256;
    return n > 32 ? (unsigned)((n + 31) / 32 * 32) : 32u;
}

/* Sum of v over the warp (A float or double); every lane gets the result. */
template <typename A> static __device__ __forceinline__ A warp_sum(A v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum of v over the block; every thread gets the result. `red` holds 32 values. */
template <typename A> static __device__ A block_sum(A v, A *red)
{
    v = warp_sum(v);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return warp_sum(lane < nw ? red[lane] : (A)0);
}

/* RMSNorm's 1/sqrt(mean + eps) of a row whose squares sum to ss over D values. */
static __device__ __forceinline__ float rms_rstd(double ss, int64_t D, float eps)
{
    float var = D ? (float)(ss / (double)D) : 0.0f;
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
}

/* A 64 x 64 float32 tile in shared memory, its rows padded by one float so that neither a row
 * nor a column read hits one bank twice; 4 threads per row, 16 columns each. */
#define CUDA_TILE 64
#define CUDA_TILE_LANES 4
#define CUDA_TILE_PER (CUDA_TILE / CUDA_TILE_LANES)
typedef float cuda_tile[CUDA_TILE][CUDA_TILE + 1];

/* Thread (r, lane) of a tile product: acc[t] += sum_k A[r][k] B[lane + 4 t][k] (BT: row r of
 * A . B^T) or acc[t] += sum_k A[r][k] B[k][lane + 4 t] (row r of A . B), k in order. */
template <bool BT>
static __device__ __forceinline__ void tile_mul(float (&acc)[CUDA_TILE_PER], const cuda_tile &A,
                                                const cuda_tile &B, int r, int lane)
{
#pragma unroll 4
    for (int k = 0; k < CUDA_TILE; k++) {
        float x = A[r][k];
#pragma unroll
        for (int t = 0; t < CUDA_TILE_PER; t++) {
            int c = lane + CUDA_TILE_LANES * t;
            acc[t] = fmaf(x, BT ? B[c][k] : B[k][c], acc[t]);
        }
    }
}

#endif
