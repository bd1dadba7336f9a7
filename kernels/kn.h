/* The kernels interface, part one: tensors, dtypes, devices and the execution context.
 *
 * A tensor is a dense row-major block of one dtype on one device. Its data pointer is backend
 * memory (a host pointer on the CPU backend, a device pointer on CUDA): engine code never
 * dereferences it, it only passes tensors to ops and moves data with kn_write/kn_read. Every op
 * runs in a kn_ctx, which on CUDA owns one stream; ops on one context run in order.
 *
 * The ops themselves are declared in kn_ops.h (text and transformer ops) and kn_image.h
 * (convolutions, group norm, upsampling, modulation). Each op front-end (a .c file directly in kernels/) checks
 * shapes and dtypes, then dispatches to kernels/cpu/ or kernels/cuda/. Kernels know nothing of
 * models. */
#ifndef FOCUS_KERNELS_KN_H
#define FOCUS_KERNELS_KN_H

#include <stddef.h>
#include <stdint.h>

typedef enum kn_dtype {
    KN_F32,
    KN_F16,
    KN_BF16,
    KN_F8_E4M3,
    KN_F8_E5M2,
    KN_F64,
    KN_I64,
    KN_I32,
    KN_I16,
    KN_I8,
    KN_U8,
    KN_BOOL,
    KN_DTYPE_COUNT
} kn_dtype;

/* Bytes per element. */
size_t kn_dtype_size(kn_dtype dt);
/* The safetensors spelling: "F32", "BF16", "F8_E4M3", ... */
const char *kn_dtype_name(kn_dtype dt);
/* Parses a safetensors dtype name; returns 0, or ERR_FORMAT for an unknown name. */
int kn_dtype_parse(const char *name, kn_dtype *out);
/* True for the dtypes a weight may have (F32, F16, BF16, F8_E4M3, F8_E5M2). */
int kn_dtype_is_float(kn_dtype dt);

typedef enum kn_device { KN_CPU, KN_CUDA } kn_device;

#define KN_MAX_DIMS 5

typedef struct kn_tensor {
    kn_dtype dtype;
    kn_device device;
    int ndim;
    int64_t shape[KN_MAX_DIMS];
    void *data; /* backend memory; never dereferenced outside kernels/ */
    int owned;  /* 1: kn_free releases data; 0: a view or a mapped weight */
} kn_tensor;

int64_t kn_numel(const kn_tensor *t);
size_t kn_nbytes(const kn_tensor *t);
/* Product of all dimensions but the last: the row count ops see. */
int64_t kn_rows(const kn_tensor *t);
/* Size of the last dimension. */
int64_t kn_cols(const kn_tensor *t);
/* Formats the shape as "[2, 77, 768]" into buf; returns buf. */
char *kn_shape_str(const kn_tensor *t, char *buf, size_t n);
int kn_same_shape(const kn_tensor *a, const kn_tensor *b);

/* A non-owning view of a contiguous range of t: elem_offset elements in, with a new shape whose
 * element count must fit inside t. Works on any device (pointer arithmetic only). */
kn_tensor kn_view(const kn_tensor *t, int64_t elem_offset, int ndim, const int64_t *shape);
/* The same data under a new shape of equal element count. */
kn_tensor kn_reshape(const kn_tensor *t, int ndim, const int64_t *shape);
/* A host tensor describing memory the caller owns (a mapped file, a host buffer). */
kn_tensor kn_host_tensor(void *data, kn_dtype dt, int ndim, const int64_t *shape);

typedef struct kn_ctx kn_ctx;

/* KN_CPU always works; KN_CUDA needs a build with CUDA and a usable device `index`. */
int kn_ctx_create(kn_device dev, int index, kn_ctx **out);
void kn_ctx_destroy(kn_ctx *ctx);
/* Whether kn_ctx_create(dev, index) finds its device usable, without creating anything on it
 * (no context, stream or library handle): 0, or ERR_DEVICE with the reason. */
int kn_device_probe(kn_device dev, int index);
kn_device kn_ctx_device(const kn_ctx *ctx);
/* Waits until every op queued on ctx has finished; reports a deferred backend error. */
int kn_sync(kn_ctx *ctx);

/* What the CPU backend's matrix products multiply in: KN_F32 (the default, the reference mode)
 * or KN_BF16 (bf16 operands, float32 accumulation and activations; weights packed once on first
 * use). ERR_INVALID for other dtypes. The CUDA backend computes in its activations' dtype and
 * ignores this. */
int kn_ctx_set_matmul(kn_ctx *ctx, kn_dtype dt);
/* Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16). */
int kn_cpu_native_bf16(void);
/* The CPU backend's threads, the caller's included: every op is split over this many (1 to
 * KN_CPU_MAX_THREADS; the default is the online CPUs). Results never depend on it. */
#define KN_CPU_MAX_THREADS 64
int kn_cpu_set_threads(int n);
int kn_cpu_threads(void);

/* Memory of a context, as counted at each allocation and release: what it holds now (tensors,
 * uploaded weights, op scratch and library workspaces; a mapped CPU weight belongs to the page
 * cache, not to the context), the most it has held since creation or kn_ctx_reset_peak, and the
 * device's total memory (the physical RAM for the CPU). */
typedef struct kn_memory {
    uint64_t in_use, peak, total;
} kn_memory;
void kn_ctx_memory(const kn_ctx *ctx, kn_memory *m); /* any thread */
void kn_ctx_reset_peak(kn_ctx *ctx);

/* Allocates an uninitialised tensor on ctx's device. */
int kn_alloc(kn_ctx *ctx, kn_tensor *t, kn_dtype dt, int ndim, const int64_t *shape);
/* Releases an owned tensor and zeroes the struct; views and mapped weights are left alone. */
void kn_free(kn_ctx *ctx, kn_tensor *t);
/* Makes a host tensor (usually a mapped weight) usable by ops on ctx: a view on the CPU, an
 * upload once into device memory on CUDA. */
int kn_weight(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *host);
/* One weight owned by ctx, made of n host tensors stacked along their first dimension (of one
 * dtype, the other dimensions equal): the q, k and v projections of an attention joined into
 * one product. The parts' mapped pages are handed back once copied. */
int kn_weight_rows(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *const *hosts, int n);

/* Host <-> backend copies of the raw bytes (nbytes must equal kn_nbytes(t)). */
int kn_write(kn_ctx *ctx, kn_tensor *dst, const void *host, size_t nbytes);
int kn_read(kn_ctx *ctx, const kn_tensor *src, void *host, size_t nbytes);
/* Writes host[kn_numel(dst)] float32 values into a float tensor of any dtype, rounding to it. */
int kn_write_f32(kn_ctx *ctx, kn_tensor *dst, const float *host);
/* Reads any float tensor as float32 into host[kn_numel(src)]. */
int kn_read_f32(kn_ctx *ctx, const kn_tensor *src, float *host);
/* Sets every element of a float tensor to v. */
int kn_fill(kn_ctx *ctx, kn_tensor *t, float v);
/* dst = src for equal element counts, converting between float dtypes. */
int kn_copy(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *src);
/* Copies src [M, n] into columns [col, col+n) of dst [M, N] (M = rows of both). */
int kn_copy_cols(kn_ctx *ctx, kn_tensor *dst, int64_t col, const kn_tensor *src);

#endif
