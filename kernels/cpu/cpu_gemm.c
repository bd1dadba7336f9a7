/* CPU backend: the matrix products, split over the worker threads of cpu_threads.c with BLAS
 * single-threaded inside each part. OpenBLAS's own threads busy-wait (sched_yield) for about
 * 2^28 cycles after every call; between two products the workers run the norms, softmax and
 * weight widening, and those spinning threads took a core's share from them (a denoising step
 * measured 19.3 s with OpenBLAS threading, 15.5 s with the spinning cut short). One pool that
 * owns the cores leaves nothing to spin. */
#include "kernels/cpu/cpu_ops.h"

#include <cblas.h>

/* Columns (or rows) per unit of a split: whole SIMD tiles for every kernel OpenBLAS has. */
#define GEMM_UNIT 16

/* OpenBLAS as one thread for this process. Checked on every product because a program may
 * have asked for more since (the benchmarks time BLAS on all cores as their baseline). */
static void blas_serial(void)
{
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

void cpu_gemm_run(const cpu_gemm *g)
{
    if (g->M <= 0 || g->N <= 0) return;
    blas_serial();
    if (g->M == 1 && g->b_trans) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)g->N, (int)g->K, g->alpha, g->b, (int)g->ldb,
                    g->a, 1, 0.0f, g->c, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, g->b_trans ? CblasTrans : CblasNoTrans, (int)g->M,
                (int)g->N, (int)g->K, g->alpha, g->a, (int)g->lda, g->b, (int)g->ldb, 0.0f, g->c,
                (int)g->ldc);
}

struct split {
    const cpu_gemm *g;
    int by_cols;
};

static void gemm_range(void *p, int64_t lo, int64_t hi)
{
    const struct split *s = p;
    cpu_gemm part = *s->g;
    int64_t i0 = lo * GEMM_UNIT, n = s->by_cols ? part.N : part.M;
    int64_t i1 = hi * GEMM_UNIT < n ? hi * GEMM_UNIT : n;
    if (s->by_cols) {
        part.N = i1 - i0;
        part.b += part.b_trans ? i0 * part.ldb : i0;
        part.c += i0;
    } else {
        part.M = i1 - i0;
        part.a += i0 * part.lda;
        part.c += i0 * part.ldc;
    }
    cpu_gemm_run(&part);
}

void cpu_gemm_parallel(const cpu_gemm *g)
{
    if (g->M <= 0 || g->N <= 0) return;
    /* Splitting the columns keeps each part's share of B (the weight) to itself; rows are
     * split only when there are too few columns to go round, as in attention's p.v. */
    int by_cols = g->N >= g->M || g->N >= (int64_t)GEMM_UNIT * 4 * cpu_pool_threads();
    int64_t n = by_cols ? g->N : g->M;
    struct split s = {g, by_cols};
    /* "work" in cpu_parallel's units: a product under ~1 MFLOP stays on this thread. */
    cpu_parallel((n + GEMM_UNIT - 1) / GEMM_UNIT, g->M * g->N * g->K / 32, gemm_range, &s);
}
