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

#endif
