/* Benchmark of the CPU backend's linear layer against plain BLAS on the transformer's main
 * shape (M = 2 x (1024 + 154) tokens, K = 1536, N = 6144: the first feed-forward projection
 * of SD3.5-medium at 512x512 with classifier-free guidance), for F32 and BF16 weights in a
 * float32 context and for the bf16 mode's product (a context whose products multiply in bf16,
 * the weight packed once), plus the single-row case of the pooled projections. Prints
 * GFLOP/s, the best of a few runs, and the ratio to sgemm measured in the same run;
 * tools/bench_cpu_peers.py reads the "kn_linear bf16 products" line as the engine's bf16 GEMM
 * rate. Then the FOCUS controller's backward shapes: kn_linear_grad of that projection, and
 * the joint attention of one sample at 512x512 (1024 + 154 tokens, 24 heads of 64) forward
 * and backward (kn_attention_grad with its map term), in float32 and bf16 products. Not a
 * test: it checks nothing and is not part of `make test`.
 * Usage: bench_kernels [repeats] [--shape MxKxN] [--attn S]
 *   --shape: that linear shape alone; --attn: the attention at S tokens alone (4250 is
 *   1024x1024) */
#include "kernels/kn_convert.h"
#include "kernels/kn_grad.h"
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

/* Exits on a failed op. */
static void ok(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", what, err_msg());
        exit(1);
    }
}

static kn_tensor bench_tensor(kn_ctx *ctx, int ndim, const int64_t *shape)
{
    kn_tensor t;
    ok(bench_random_tensor(ctx, &t, ndim, shape), "allocation");
    return t;
}

/* kn_linear_grad of the projection above: dx[M, K] = dy[M, N] . w[N, K]. */
static void run_linear_grad(kn_ctx *ctx, kn_ctx *bf16, int64_t M, int64_t K, int64_t N, int repeats)
{
    int64_t ys[2] = {M, N}, xs[2] = {M, K}, ws[2] = {N, K};
    kn_tensor dy = bench_tensor(ctx, 2, ys), dx = bench_tensor(ctx, 2, xs);
    kn_tensor w32 = bench_tensor(ctx, 2, ws), w16;
    ok(kn_alloc(ctx, &w16, KN_BF16, 2, ws), "allocation");
    ok(kn_copy(ctx, &w16, &w32), "kn_copy");
    kn_ctx *ctxs[3] = {ctx, ctx, bf16};
    const kn_tensor *ws3[3] = {&w32, &w16, &w16};
    static const char *const names[3] = {"F32 weights ", "BF16 weights", "bf16 products"};
    double best[3] = {1e30, 1e30, 1e30}, flop = 2.0 * (double)M * (double)N * (double)K;
    for (int r = -1; r < repeats; r++) /* r = -1: warm-up (the bf16 context packs w^T) */
        for (int i = 0; i < 3; i++) {
            double t0 = bench_now();
            ok(kn_linear_grad(ctxs[i], &dx, &dy, ws3[i]), "kn_linear_grad");
            if (r >= 0) best[i] = min2(best[i], bench_now() - t0);
        }
    printf("kn_linear_grad M=%lld N=%lld K=%lld (dy . w, best of %d)\n", (long long)M, (long long)N,
           (long long)K, repeats);
    for (int i = 0; i < 3; i++)
        printf("  kn_linear_grad %-13s %8.1f GFLOP/s  %8.3f ms\n", names[i], flop / best[i] * 1e-9,
               best[i] * 1e3);
    kn_free(ctx, &dy);
    kn_free(ctx, &dx);
    kn_free(ctx, &w32);
    kn_free(ctx, &w16);
}

/* The joint attention of one sample, S tokens of which the last 154 are text: the forward
 * with its log-sum-exp, then the gradient with do and the maps of the image rows to 8 text
 * keys. GFLOP/s count the products' multiply-adds: 2 products forward, and the 5 a backward
 * needs (2.5 times the forward's, as FlashAttention counts; this one recomputes the scores
 * and dP of the key pass, 7 products in all). */
static void run_attention(kn_ctx *ctx, kn_ctx *bf16, int64_t S, int repeats)
{
    const int H = 24, Dh = 64;
    const int64_t rows = S > 154 ? S - 154 : S;
    int64_t xs[3] = {1, S, H * Dh}, ls[3] = {1, H, S}, ms[3] = {1, 8, rows};
    kn_tensor q = bench_tensor(ctx, 3, xs), k = bench_tensor(ctx, 3, xs),
              v = bench_tensor(ctx, 3, xs);
    kn_tensor o = bench_tensor(ctx, 3, xs), dout = bench_tensor(ctx, 3, xs);
    kn_tensor dq = bench_tensor(ctx, 3, xs), dk = bench_tensor(ctx, 3, xs),
              dv = bench_tensor(ctx, 3, xs);
    kn_tensor lse = bench_tensor(ctx, 3, ls), dmaps = bench_tensor(ctx, 3, ms);
    int32_t sel[8];
    for (int j = 0; j < 8; j++)
        sel[j] = (int32_t)(rows + j * 3 < S ? rows + j * 3 : S - 1);
    kn_attn_args args = {.heads = H, .scale = 0.125f, .lse = &lse};
    kn_map_grad map = {&dmaps, sel, 8, rows};
    kn_ctx *ctxs[2] = {ctx, bf16};
    double fwd[2] = {1e30, 1e30}, bwd[2] = {1e30, 1e30};
    for (int r = -1; r < repeats; r++)
        for (int i = 0; i < 2; i++) {
            double t0 = bench_now();
            ok(kn_attention(ctxs[i], &o, &q, &k, &v, &args), "kn_attention");
            double t1 = bench_now();
            ok(kn_attention_grad(ctxs[i], &dq, &dk, &dv, &dout, &q, &k, &v, &o, &args, &map),
               "kn_attention_grad");
            double t2 = bench_now();
            if (r >= 0) fwd[i] = min2(fwd[i], t1 - t0), bwd[i] = min2(bwd[i], t2 - t1);
        }
    double flop = 4.0 * (double)S * (double)S * Dh * H;
    printf("attention B=1 S=%lld H=%d Dh=%d, maps of %lld rows to 8 keys (best of %d)\n",
           (long long)S, H, Dh, (long long)rows, repeats);
    static const char *const names[2] = {"f32 products ", "bf16 products"};
    for (int i = 0; i < 2; i++) {
        printf("  kn_attention      %s %8.1f GFLOP/s  %8.3f ms\n", names[i], flop / fwd[i] * 1e-9,
               fwd[i] * 1e3);
        printf("  kn_attention_grad %s %8.1f GFLOP/s  %8.3f ms  %4.2fx the forward's time\n",
               names[i], 2.5 * flop / bwd[i] * 1e-9, bwd[i] * 1e3, bwd[i] / fwd[i]);
    }
    kn_tensor *all[10] = {&q, &k, &v, &o, &dout, &dq, &dk, &dv, &lse, &dmaps};
    for (int i = 0; i < 10; i++)
        kn_free(ctx, all[i]);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_kernels [repeats] [--shape MxKxN] [--attn S]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int repeats = 5, shape[3] = {0, 0, 0}, attn = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--attn") == 0 && i + 1 < argc) {
            if ((attn = bench_parse_count(argv[++i], 1, 100000)) < 0) usage();
        } else if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc) {
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
    } else if (attn > 0) {
        run_attention(ctx, bf16, attn, repeats);
    } else {
        run_shape(ctx, bf16, 2356, 1536, 6144, repeats);
        run_shape(ctx, bf16, 1, 1536, 6144, repeats * 20);
        run_linear_grad(ctx, bf16, 2356, 1536, 6144, repeats);
        run_attention(ctx, bf16, 1178, repeats);
    }
    kn_ctx_destroy(bf16);
    kn_ctx_destroy(ctx);
    return 0;
}
