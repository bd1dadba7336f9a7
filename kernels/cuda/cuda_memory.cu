/* CUDA backend: contexts, device memory, weight uploads, host transfers, dtype conversion and
 * the fill/copy ops. Tensors and scratch come from the stream-ordered allocator on the
 * context's stream, so freeing one never waits for the device; weights are uploaded through two
 * small pinned buffers, never through a full host copy of the file. */
#include "kernels/cuda/cuda_common.h"

#include <stdlib.h>
#include <string.h>

/* cuBLASLt workspace: what NVIDIA recommends for Hopper. */
#define LT_WORKSPACE ((size_t)32 << 20)
/* One pinned staging buffer; two of them alternate so that copying the next chunk out of the
 * mapped file overlaps the DMA of the previous one. */
#define STAGING_BYTES ((size_t)32 << 20)

/* The errors after which the context is corrupt: every later call fails the same way. */
static bool sticky(cudaError_t e)
{
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
    case cudaErrorDevicesUnavailable:
    case cudaErrorContextIsDestroyed:
    case cudaErrorCudartUnloading:
        return true;
    default:
        return false;
    }
}

int cuda_fail(const char *what, cudaError_t e)
{
    if (e == cudaErrorMemoryAllocation)
        return err_set(ERR_NOMEM, "%s: out of GPU memory (%s)", what, cudaGetErrorString(e));
    return err_set(sticky(e) ? ERR_DEVICE_LOST : ERR_DEVICE, "%s: %s", what,
                   cudaGetErrorString(e));
}

int cublas_fail(const char *what, cublasStatus_t s)
{
    return err_set(ERR_DEVICE, "%s: cuBLAS: %s", what, cublasGetStatusString(s));
}

int cuda_launched(const char *what)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : cuda_fail(what, e);
}

unsigned cuda_grid(kn_ctx *ctx, int64_t n)
{
    int64_t blocks = (n + CUDA_THREADS - 1) / CUDA_THREADS;
    int64_t cap = (int64_t)cuda_st(ctx)->sm_count * 16;
    if (blocks > cap) blocks = cap;
    return blocks < 1 ? 1u : (unsigned)blocks;
}

static void state_free(cuda_state *st)
{
    for (int i = 0; i < CUDA_SCRATCH_SLOTS; i++)
        if (st->scratch[i]) cudaFreeAsync(st->scratch[i], st->stream);
    if (st->lt_work) cudaFreeAsync(st->lt_work, st->stream);
    if (st->stream) cudaStreamSynchronize(st->stream);
    for (int i = 0; i < 2; i++) {
        if (st->staging[i]) cudaFreeHost(st->staging[i]);
        if (st->staged[i]) cudaEventDestroy(st->staged[i]);
    }
    if (st->lt) cublasLtDestroy(st->lt);
    if (st->blas) cublasDestroy(st->blas);
    if (st->stream) cudaStreamDestroy(st->stream);
    free(st);
}

/* Everything after the device checks; returns 0 or an error with st partly built. */
static int state_init(cuda_state *st, int index)
{
    cudaError_t e;
    cublasStatus_t s;
    if ((e = cudaSetDevice(index)) != cudaSuccess) return cuda_fail("cudaSetDevice", e);
    if ((e = cudaDeviceGetAttribute(&st->sm_count, cudaDevAttrMultiProcessorCount, index)) !=
        cudaSuccess)
        return cuda_fail("cudaDeviceGetAttribute", e);
    if ((e = cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return cuda_fail("cudaStreamCreate", e);
    for (int i = 0; i < 2; i++)
        if ((e = cudaEventCreateWithFlags(&st->staged[i], cudaEventDisableTiming)) != cudaSuccess)
            return cuda_fail("cudaEventCreate", e);
    /* Keep freed blocks in the pool: a denoising step frees and reallocates the same sizes, and
     * returning them to the driver at every synchronisation would cost more than the step. */
    cudaMemPool_t pool;
    if ((e = cudaDeviceGetDefaultMemPool(&pool, index)) != cudaSuccess)
        return cuda_fail("cudaDeviceGetDefaultMemPool", e);
    uint64_t keep = UINT64_MAX;
    if ((e = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep)) != cudaSuccess)
        return cuda_fail("cudaMemPoolSetAttribute", e);
    if ((s = cublasCreate(&st->blas)) != CUBLAS_STATUS_SUCCESS) return cublas_fail("cublasCreate", s);
    if ((s = cublasSetStream(st->blas, st->stream)) != CUBLAS_STATUS_SUCCESS)
        return cublas_fail("cublasSetStream", s);
    /* Full float32 accumulation everywhere: no split-K reductions in 16 bits. TF32 is chosen per
     * product through the compute type (cuda_gemm_run), never through the math mode. */
    s = cublasSetMathMode(st->blas, (cublasMath_t)(CUBLAS_DEFAULT_MATH |
                                                  CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
    if (s != CUBLAS_STATUS_SUCCESS) return cublas_fail("cublasSetMathMode", s);
    if ((s = cublasLtCreate(&st->lt)) != CUBLAS_STATUS_SUCCESS) return cublas_fail("cublasLtCreate", s);
    if ((e = cudaMallocAsync(&st->lt_work, LT_WORKSPACE, st->stream)) != cudaSuccess)
        return cuda_fail("cuBLASLt workspace", e);
    st->lt_work_size = LT_WORKSPACE;
    if ((s = cublasSetWorkspace(st->blas, st->lt_work, st->lt_work_size)) != CUBLAS_STATUS_SUCCESS)
        return cublas_fail("cublasSetWorkspace", s);
    return 0;
}

/* Device `index` present and of a compute capability the build carries code for; fills *prop. */
static int probe(int index, cudaDeviceProp *prop)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
        return err_set(ERR_DEVICE, "no usable CUDA device (cudaGetDeviceCount: %s)",
                       cudaGetErrorString(e));
    if (count == 0) return err_set(ERR_DEVICE, "no usable CUDA device (none found)");
    if (index < 0 || index >= count)
        return err_set(ERR_DEVICE, "CUDA device %d requested; %d present", index, count);
    if ((e = cudaGetDeviceProperties(prop, index)) != cudaSuccess)
        return cuda_fail("cudaGetDeviceProperties", e);
    /* The build carries code for compute capability 8.0 and later only. */
    if (prop->major < 8)
        return err_set(ERR_DEVICE, "CUDA device %d (%s) has compute capability %d.%d; 8.0 or "
                                   "later is needed", index, prop->name, prop->major, prop->minor);
    return 0;
}

int cuda_probe(int index)
{
    cudaDeviceProp prop;
    return probe(index, &prop);
}

int cuda_ctx_init(kn_ctx *ctx)
{
    cudaDeviceProp prop;
    int rc = probe(ctx->index, &prop);
    if (rc < 0) return rc;
    cuda_state *st = (cuda_state *)calloc(1, sizeof *st);
    if (!st) return err_set(ERR_NOMEM, "cannot allocate the CUDA context");
    rc = state_init(st, ctx->index);
    if (rc < 0) {
        state_free(st);
        return err_prefix(rc, "CUDA device %d (%s): ", ctx->index, prop.name);
    }
    ctx->backend = st;
    ctx->total_bytes = prop.totalGlobalMem;
    kn_account(ctx, (int64_t)st->lt_work_size);
    return 0;
}

void cuda_ctx_fini(kn_ctx *ctx)
{
    if (ctx->backend) state_free(cuda_st(ctx));
    ctx->backend = NULL;
}

void cuda_set_tf32(kn_ctx *ctx, int on)
{
    cuda_st(ctx)->tf32 = on != 0;
}

int cuda_sync(kn_ctx *ctx)
{
    cudaError_t e = cudaStreamSynchronize(cuda_st(ctx)->stream);
    if (e == cudaSuccess) e = cudaGetLastError();
    return e == cudaSuccess ? 0 : cuda_fail("CUDA stream", e);
}

int cuda_alloc(kn_ctx *ctx, kn_tensor *t)
{
    size_t n = kn_nbytes(t);
    t->data = NULL;
    cudaError_t e = cudaMallocAsync(&t->data, n ? n : 256, cuda_st(ctx)->stream);
    if (e != cudaSuccess) {
        t->data = NULL;
        cudaGetLastError();
        return err_prefix(cuda_fail("", e), "a tensor of %zu bytes", n);
    }
    return 0;
}

void cuda_free(kn_ctx *ctx, kn_tensor *t)
{
    cudaFreeAsync(t->data, cuda_st(ctx)->stream);
    t->data = NULL;
}

void *cuda_scratch(kn_ctx *ctx, int slot, size_t n)
{
    cuda_state *st = cuda_st(ctx);
    if (st->scratch_size[slot] >= n && st->scratch[slot]) return st->scratch[slot];
    if (st->scratch[slot]) cudaFreeAsync(st->scratch[slot], st->stream);
    kn_account(ctx, -(int64_t)st->scratch_size[slot]);
    st->scratch[slot] = NULL;
    st->scratch_size[slot] = 0;
    cudaError_t e = cudaMallocAsync(&st->scratch[slot], n ? n : 256, st->stream);
    if (e != cudaSuccess) {
        st->scratch[slot] = NULL;
        cudaGetLastError();
        err_prefix(cuda_fail("", e), "%zu bytes of CUDA scratch", n);
        return NULL;
    }
    st->scratch_size[slot] = n;
    kn_account(ctx, (int64_t)n);
    return st->scratch[slot];
}

int cuda_weight(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *host)
{
    cuda_state *st = cuda_st(ctx);
    size_t n = kn_nbytes(host);
    kn_tensor t = *host;
    t.device = KN_CUDA;
    t.owned = 1;
    int rc = cuda_alloc(ctx, &t);
    if (rc < 0) return rc;
    cudaError_t e = cudaSuccess;
    for (int i = 0; i < 2 && !st->staging[i] && e == cudaSuccess; i++)
        e = cudaHostAlloc(&st->staging[i], STAGING_BYTES, cudaHostAllocDefault);
    for (size_t off = 0, i = 0; off < n && e == cudaSuccess; off += STAGING_BYTES, i ^= 1) {
        size_t len = n - off < STAGING_BYTES ? n - off : STAGING_BYTES;
        /* The previous copy out of this buffer must be done before it is overwritten. */
        if ((e = cudaEventSynchronize(st->staged[i])) != cudaSuccess) break;
        memcpy(st->staging[i], (const char *)host->data + off, len);
        e = cudaMemcpyAsync((char *)t.data + off, st->staging[i], len, cudaMemcpyHostToDevice,
                            st->stream);
        if (e == cudaSuccess) e = cudaEventRecord(st->staged[i], st->stream);
    }
    if (e != cudaSuccess) {
        cuda_free(ctx, &t);
        return err_prefix(cuda_fail("", e), "uploading a weight of %zu bytes", n);
    }
    *dst = t;
    return 0;
}

int cuda_write(kn_ctx *ctx, kn_tensor *dst, const void *host, size_t nbytes)
{
    /* From pageable memory the call returns once the bytes are staged, so the caller may reuse
     * its buffer at once; the copy stays ordered on the stream. */
    cudaError_t e =
        cudaMemcpyAsync(dst->data, host, nbytes, cudaMemcpyHostToDevice, cuda_st(ctx)->stream);
    return e == cudaSuccess ? 0 : cuda_fail("kn_write", e);
}

int cuda_read(kn_ctx *ctx, const kn_tensor *src, void *host, size_t nbytes)
{
    cuda_state *st = cuda_st(ctx);
    cudaError_t e = cudaMemcpyAsync(host, src->data, nbytes, cudaMemcpyDeviceToHost, st->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st->stream);
    return e == cudaSuccess ? 0 : cuda_fail("kn_read", e);
}

template <typename D>
__global__ void convert_kernel(D *dst, const void *src, kn_dtype sdt, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = from_f<D>(load_any(src, sdt, i));
}

int cuda_convert(kn_ctx *ctx, void *dst, kn_dtype ddt, const void *src, kn_dtype sdt, int64_t n,
                 const char *what)
{
    if (n == 0) return 0;
    if (ddt != KN_F32 && ddt != KN_F16 && ddt != KN_BF16)
        return err_set(ERR_INVALID, "%s: conversion to %s", what, kn_dtype_name(ddt));
    unsigned grid = cuda_grid(ctx, n);
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act(ddt, [&](auto tag) {
        using D = decltype(tag);
        convert_kernel<D><<<grid, CUDA_THREADS, 0, s>>>((D *)dst, src, sdt, n);
        return cuda_launched(what);
    });
}

const void *cuda_as_dtype(kn_ctx *ctx, int slot, const kn_tensor *src, kn_dtype dt,
                          const char *what)
{
    if (src->dtype == dt) return src->data;
    int64_t n = kn_numel(src);
    void *buf = cuda_scratch(ctx, slot, (size_t)n * kn_dtype_size(dt));
    if (!buf || cuda_convert(ctx, buf, dt, src->data, src->dtype, n, what) < 0) return NULL;
    return buf;
}

template <typename T> __global__ void fill_kernel(T *p, float v, int64_t n)
{
    T h = from_f<T>(v);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        p[i] = h;
}

int cuda_fill(kn_ctx *ctx, kn_tensor *t, float v)
{
    int64_t n = kn_numel(t);
    if (t->dtype != KN_F32 && t->dtype != KN_F16 && t->dtype != KN_BF16)
        return err_set(ERR_INVALID, "kn_fill of a %s tensor", kn_dtype_name(t->dtype));
    if (n == 0) return 0;
    unsigned grid = cuda_grid(ctx, n);
    cudaStream_t s = cuda_st(ctx)->stream;
    return with_act(t->dtype, [&](auto tag) {
        using T = decltype(tag);
        fill_kernel<T><<<grid, CUDA_THREADS, 0, s>>>((T *)t->data, v, n);
        return cuda_launched("kn_fill");
    });
}

int cuda_copy(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *src)
{
    size_t nb = kn_nbytes(src);
    cudaStream_t s = cuda_st(ctx)->stream;
    if (dst->dtype != src->dtype)
        return cuda_convert(ctx, dst->data, dst->dtype, src->data, src->dtype, kn_numel(src),
                            "kn_copy");
    if (nb == 0 || dst->data == src->data) return 0;
    const char *d = (const char *)dst->data, *p = (const char *)src->data;
    cudaError_t e;
    if (d < p + nb && p < d + nb) { /* overlapping: cudaMemcpy is not a memmove */
        void *tmp = cuda_scratch(ctx, CUDA_SLOT_WORK, nb);
        if (!tmp) return err_code();
        e = cudaMemcpyAsync(tmp, src->data, nb, cudaMemcpyDeviceToDevice, s);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(dst->data, tmp, nb, cudaMemcpyDeviceToDevice, s);
    } else {
        e = cudaMemcpyAsync(dst->data, src->data, nb, cudaMemcpyDeviceToDevice, s);
    }
    return e == cudaSuccess ? 0 : cuda_fail("kn_copy", e);
}

int cuda_copy_cols(kn_ctx *ctx, kn_tensor *dst, int64_t col, const kn_tensor *src)
{
    size_t es = kn_dtype_size(src->dtype);
    int64_t rows = kn_rows(src), n = kn_cols(src), N = kn_cols(dst);
    if (rows == 0 || n == 0) return 0;
    cudaError_t e = cudaMemcpy2DAsync((char *)dst->data + (size_t)col * es, (size_t)N * es,
                                      src->data, (size_t)n * es, (size_t)n * es, (size_t)rows,
                                      cudaMemcpyDeviceToDevice, cuda_st(ctx)->stream);
    return e == cudaSuccess ? 0 : cuda_fail("kn_copy_cols", e);
}
