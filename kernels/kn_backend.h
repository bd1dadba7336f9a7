/* Internal to kernels/: the context structure and the backend entry points that the op
 * front-ends dispatch to. The cpu_* functions live in kernels/cpu/, the cuda_* ones in
 * kernels/cuda/ (built only with FOCUS_HAVE_CUDA). Front-ends have already checked shapes and
 * dtypes when a backend function is called. */
#ifndef FOCUS_KERNELS_KN_BACKEND_H
#define FOCUS_KERNELS_KN_BACKEND_H

#include "kernels/kn.h"

struct kn_ctx {
    kn_device device;
    int index;
    void *backend;       /* cuda: stream, handles and scratch; cpu: scratch buffers */
    uint64_t bytes;      /* device memory held: tensors, uploaded weights, scratch */
    uint64_t peak_bytes; /* the most held since creation or kn_ctx_reset_peak */
    uint64_t total_bytes; /* the device's memory (physical RAM for the CPU) */
    kn_dtype matmul;      /* what the CPU's matrix products multiply in: F32 or BF16 */
};

/* Counts memory taken (delta > 0) or given back (delta < 0) on ctx, for kn_ctx_memory. The
 * thread driving ctx is the only writer; atomics let another thread read the figures. */
static inline void kn_account(kn_ctx *ctx, int64_t delta)
{
    uint64_t now = __atomic_add_fetch(&ctx->bytes, (uint64_t)delta, __ATOMIC_RELAXED);
    if (now > __atomic_load_n(&ctx->peak_bytes, __ATOMIC_RELAXED))
        __atomic_store_n(&ctx->peak_bytes, now, __ATOMIC_RELAXED);
}

/* CPU memory primitives. */
int cpu_ctx_init(kn_ctx *ctx);
void cpu_ctx_fini(kn_ctx *ctx);
int cpu_alloc(kn_ctx *ctx, kn_tensor *t);
void cpu_free(kn_ctx *ctx, kn_tensor *t);
/* Drops the packed copies of the weight whose data is src (cpu_pack.c), at its kn_free. */
void cpu_packed_forget(kn_ctx *ctx, const void *src);
/* Hands the whole pages of a mapped file's bytes [p, p + n) back to the kernel (MADV_PAGEOUT):
 * read again from the file if touched later. */
void cpu_release_mapped(const void *p, size_t n);
int cpu_fill(kn_ctx *ctx, kn_tensor *t, float v);
int cpu_copy(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *src);
int cpu_copy_cols(kn_ctx *ctx, kn_tensor *dst, int64_t col, const kn_tensor *src);
/* Scratch memory of at least n bytes owned by the context, reused between ops; NULL, with the
 * error set, when there is no memory (the slot keeps its former buffer). */
void *cpu_scratch(kn_ctx *ctx, int slot, size_t n);
#define CPU_SCRATCH_SLOTS 4

#ifdef FOCUS_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

/* Dispatch helper for op front-ends: `KN_DISPATCH(ctx, op, args...)` calls cpu_op or cuda_op. */
#ifdef FOCUS_HAVE_CUDA
#define KN_DISPATCH(ctx, op, ...)                                                          \
    ((ctx)->device == KN_CUDA ? cuda_##op(ctx, __VA_ARGS__) : cpu_##op(ctx, __VA_ARGS__))
#else
#define KN_DISPATCH(ctx, op, ...) cpu_##op(ctx, __VA_ARGS__)
#endif

#endif
