/* Benchmark of the CPU backend's linear layer against plain BLAS on the transformer's main
 * shape (M = 2 x (1024 + 154) tokens, K = 1536, N = 6144: the first feed-forward projection
 * of SD3.5-medium at 512x512 with classifier-free guidance), for F32 and BF16 weights in a
 * float32 context and for the bf16 mode's product (a context whose products multiply in bf16,
 * the weight packed once), plus the single-row case of the pooled projections. Prints
 * GFLOP/s, the best of a few runs, and the ratio to sgemm measured in the same run;
 * tools/bench_cpu_peers.py reads the "kn_linear bf16 products" line as the engine's bf16 GEMM
 * rate. Not a test: it checks
 * nothing and is not part of `make test`.
 * Usage: bench_kernels [repeats] [--shape MxKxN]  (--shape: that shape alone) */
#include "kernels/kn_convert.h"
#include "kernels/kn_ops.h"

#include "common/err.h"
#include "tests/bench/common/bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bench {
    kn_ctx *ctx, *bf16; /* float32 products; bf16 ones */
    int64_t M, K, N;
    int repeats;
    kn_tensor x, y, w32, w16;
};

/* Time of one kn_linear of x into y (or of sgemm when w is NULL). */
static double time_linear(struct bench *b, kn_ctx *ctx, kn_tensor *y, const kn_tensor *x,
                          const kn_tensor *w)
{
    double t0 = bench_now();
    if (w) {
        if (kn_linear(ctx, y, x, w, NULL) != 0) {
            fprintf(stderr, "kn_linear: %s\n", err_msg());
            exit(1);
        }
    } else {
        bench_sgemm_all_cores((int)b->M, (int)b->N, (int)b->K, b->x.data, b->w32.data, b->y.data);
    }
    return bench_now() - t0;
}

static double min2(double a, double b)
{
    return a < b ? a : b;
}

static void run_shape(kn_ctx *ctx, kn_ctx *bf16, int64_t M, int64_t K, int64_t N, int repeats)
{
    struct bench b = {.ctx = ctx, .bf16 = bf16, .M = M, .K = K, .N = N, .repeats = repeats};
    int64_t xs[2] = {M, K}, ys[2] = {M, N}, ws[2] = {N, K};
    if (kn_alloc(ctx, &b.x, KN_F32, 2, xs) || kn_alloc(ctx, &b.y, KN_F32, 2, ys) ||
        kn_alloc(ctx, &b.w32, KN_F32, 2, ws) || kn_alloc(ctx, &b.w16, KN_BF16, 2, ws)) {
        fprintf(stderr, "allocation: %s\n", err_msg());
        exit(1);
    }
    float *xd = b.x.data, *wd = b.w32.data;
    for (int64_t i = 0; i < M * K; i++)
        xd[i] = (float)((i * 7919) % 2003) / 2003.0f - 0.5f;
    for (int64_t i = 0; i < N * K; i++)
        wd[i] = (float)((i * 104729) % 4001) / 40010.0f - 0.05f;
    kn_convert_from_f32(b.w16.data, wd, KN_BF16, (size_t)(N * K));

    /* warm-up: scratch allocation, threads, the bf16 context's packing of the weight */
    time_linear(&b, ctx, &b.y, &b.x, &b.w16);
    time_linear(&b, bf16, &b.y, &b.x, &b.w16);
    double flop = 2.0 * (double)M * (double)N * (double)K;
    /* Rounds interleave the four so that load from other processes hits them alike. */
    double t_ref = 1e30, t_f32 = 1e30, t_bf16 = 1e30, t_act16 = 1e30;
    for (int r = 0; r < repeats; r++) {
        t_ref = min2(t_ref, time_linear(&b, ctx, &b.y, &b.x, NULL));
        t_f32 = min2(t_f32, time_linear(&b, ctx, &b.y, &b.x, &b.w32));
        t_bf16 = min2(t_bf16, time_linear(&b, ctx, &b.y, &b.x, &b.w16));
        t_act16 = min2(t_act16, time_linear(&b, bf16, &b.y, &b.x, &b.w16));
    }
    printf("M=%lld K=%lld N=%lld (best of %d)\n", (long long)M, (long long)K, (long long)N,
           repeats);
    printf("  cblas_sgemm            %8.1f GFLOP/s  %8.3f ms\n", flop / t_ref * 1e-9, t_ref * 1e3);
    printf("  kn_linear F32 weights  %8.1f GFLOP/s  %8.3f ms  %5.1f%% of sgemm\n",
           flop / t_f32 * 1e-9, t_f32 * 1e3, 100.0 * t_ref / t_f32);
    printf("  kn_linear BF16 weights %8.1f GFLOP/s  %8.3f ms  %5.1f%% of sgemm\n",
           flop / t_bf16 * 1e-9, t_bf16 * 1e3, 100.0 * t_ref / t_bf16);
    printf("  kn_linear bf16 products %8.1f GFLOP/s  %8.3f ms  %5.1f%% of sgemm\n",
           flop / t_act16 * 1e-9, t_act16 * 1e3, 100.0 * t_ref / t_act16);
    kn_free(ctx, &b.x);
    kn_free(ctx, &b.y);
    kn_free(ctx, &b.w32);
    kn_free(ctx, &b.w16);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_kernels [repeats] [--shape MxKxN]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int repeats = 5, shape[3] = {0, 0, 0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc) {
            char tail;
            if (sscanf(argv[++i], "%dx%dx%d%c", &shape[0], &shape[1], &shape[2], &tail) != 3 ||
                shape[0] < 1 || shape[1] < 1 || shape[2] < 1)
                usage();
        } else if ((repeats = bench_parse_count(argv[i], 1, 10000)) < 0) {
            usage();
        }
    }
    kn_ctx *ctx, *bf16;
    if (kn_ctx_create(KN_CPU, 0, &ctx) != 0 || kn_ctx_create(KN_CPU, 0, &bf16) != 0 ||
        kn_ctx_set_matmul(bf16, KN_BF16) != 0) {
        fprintf(stderr, "kn_ctx_create: %s\n", err_msg());
        return 1;
    }
    if (shape[0] > 0) {
        run_shape(ctx, bf16, shape[0], shape[1], shape[2], repeats);
    } else {
        run_shape(ctx, bf16, 2356, 1536, 6144, repeats);
        run_shape(ctx, bf16, 1, 1536, 6144, repeats * 20);
    }
    kn_ctx_destroy(bf16);
    kn_ctx_destroy(ctx);
    return 0;
}
