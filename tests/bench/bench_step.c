/* Denoising-step benchmark (make bench-step): MMDiT forward passes of a full-size SD3.5-medium
 * directory (tools/make_bench_model.py makes one with random weights) at the shape of an image
 * of each side asked for (512x512 by default) with classifier-free guidance (batch 2) and a
 * 154-token prompt (max_seq 77), then a VAE decode at each side. Prints
 *  - seconds per step (a warm-up pass, then the best and the mean of REPEATS) and the GFLOP/s
 *    the step achieves, counting every linear layer and every attention product of the forward
 *    pass (bench_mmdit_flops), against cblas_sgemm's GFLOP/s measured in the same run on the
 *    same cores (before and after the steps, the better of the two) for the 2356x6144x1536
 *    shape (the transformer's feed-forward GEMM at 512x512);
 *  - the VAE decode time (a warm-up decode, then the best of REPEATS);
 *  - the peak resident memory (VmHWM) against the bytes of the transformer and VAE files.
 * The lines "MMDiT step SxS batch 2, 154 text rows: X s best" and "VAE decode SxS: X s" are
 * read by other scripts (tools/bench_cpu_peers.py): keep their form. Figures, not a test:
 * nothing here passes or fails. The text encoders have their own benchmark (bench_encode.c).
 * Usage: bench_step MODEL_DIR [REPEATS] [--precision P] [--sizes 512,1024]
 *                   [--only step|vae|flops]   (flops: the FLOP count alone, nothing run) */
#include "common/err.h"
#include "engine/mmdit.h"
#include "engine/model_config.h"
#include "engine/pipeline.h"
#include "engine/safetensors.h"
#include "engine/vae.h"
#include "kernels/kn.h"
#include "tests/bench/common/bench_util.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 2       /* CFG: the negative and the positive prompt */
#define TEXT_ROWS 154 /* 77 CLIP rows + max_seq 77 T5 rows */
#define MAX_SIZES 4
#define SGEMM_SIDE 512 /* the side whose token count sizes the sgemm baseline */

typedef struct step_opts {
    const char *model;
    int repeats;
    const char *precision; /* engine_precision_parse's names */
    kn_dtype compute;
    int sizes[MAX_SIZES];
    int n_sizes;
    bool step, vae; /* which parts run */
    bool flops_only;
} step_opts;

static void die(const char *what)
{
    fprintf(stderr, "bench_step: %s: %s\n", what, err_msg());
    exit(1);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_step MODEL_DIR [REPEATS] [--precision P] [--sizes 512,1024]\n"
            "                  [--only step|vae|flops]\n"
            "  REPEATS      timed passes after a warm-up, the best reported (2)\n"
            "  --precision  auto, fp32, bf16 or fp16: the transformer's and the VAE's compute\n"
            "               dtype (auto: as focus-run picks it on the CPU)\n"
            "  --sizes      image sides, multiples of 16 (512)\n"
            "  --only       the MMDiT step or the VAE decode alone (both), or the step's FLOP\n"
            "               count at each side without running anything\n");
    exit(2);
}

static step_opts parse_args(int argc, char **argv)
{
    step_opts o = {
        .repeats = 2, .precision = "fp32", .sizes = {512}, .n_sizes = 1, .step = true, .vae = true};
    if (argc < 2 || argv[1][0] == '-') usage();
    o.model = argv[1];
    int i = 2;
    if (i < argc && argv[i][0] != '-') {
        o.repeats = bench_parse_count(argv[i++], 1, 1000);
        if (o.repeats < 0) usage();
    }
    for (; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (strcmp(a, "--precision") == 0) {
            o.precision = v;
        } else if (strcmp(a, "--sizes") == 0) {
            o.n_sizes = bench_parse_sizes(v, o.sizes, MAX_SIZES);
            if (o.n_sizes < 0) usage();
        } else if (strcmp(a, "--only") == 0 && strcmp(v, "step") == 0) {
            o.vae = false;
        } else if (strcmp(a, "--only") == 0 && strcmp(v, "vae") == 0) {
            o.step = false;
        } else if (strcmp(a, "--only") == 0 && strcmp(v, "flops") == 0) {
            o.flops_only = true;
        } else {
            usage();
        }
    }
    if (engine_precision_parse(o.precision, KN_CPU, &o.compute) < 0) {
        fprintf(stderr, "bench_step: %s\n", err_msg());
        exit(2);
    }
    return o;
}

static uint64_t file_bytes(const model_config *mc, const char *sub)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", mc->path, sub);
    st_archive *a;
    if (st_archive_open(dir, "diffusion_pytorch_model", &a) < 0) die(sub);
    uint64_t n = st_file_bytes(a);
    st_archive_close(a);
    return n;
}

/* Best GFLOP/s of cblas_sgemm for y[M,N] = x[M,K] . w[N,K]^T, as a linear layer calls it. */
static double sgemm_gflops(int M, int N, int K, int repeats)
{
    float *x = malloc((size_t)M * K * sizeof *x), *w = malloc((size_t)N * K * sizeof *w);
    float *y = malloc((size_t)M * N * sizeof *y);
    if (!x || !w || !y) {
        fprintf(stderr, "bench_step: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)M * K; i++)
        x[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < (size_t)N * K; i++)
        w[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
    double best = 1e30;
    for (int r = 0; r < repeats + 1; r++) { /* the first run warms up */
        double t0 = bench_now();
        bench_sgemm_all_cores(M, N, K, x, w, y);
        double t = bench_now() - t0;
        if (r > 0 && t < best) best = t;
    }
    free(x);
    free(w);
    free(y);
    return 2.0 * M * N * K / best * 1e-9;
}

/* Image tokens (patches) of one sample at a side. */
static int64_t image_tokens(const mmdit_config *c, int side)
{
    const int64_t lat = side / 8;
    return (lat / c->patch_size) * (lat / c->patch_size);
}

static double step_flops(const mmdit_config *c, int side)
{
    return bench_mmdit_flops(c, BATCH, (double)image_tokens(c, side), TEXT_ROWS);
}

/* One side's steps: a warm-up pass (it maps the weights and sizes the scratch), then
 * o->repeats timed ones. Returns the best time. */
static double time_steps(const step_opts *o, kn_ctx *ctx, mmdit *m, const mmdit_config *c, int side)
{
    const int64_t lat = side / 8;
    kn_tensor x, text, pooled, out;
    if (bench_random_tensor(ctx, &x, 4, (int64_t[]){BATCH, c->in_channels, lat, lat}) < 0 ||
        bench_random_tensor(ctx, &text, 3, (int64_t[]){BATCH, TEXT_ROWS, c->joint_attention_dim}) <
            0 ||
        bench_random_tensor(ctx, &pooled, 2, (int64_t[]){BATCH, c->pooled_projection_dim}) < 0)
        die("allocating inputs");
    if (kn_alloc(ctx, &out, KN_F32, 4, (int64_t[]){BATCH, c->out_channels, lat, lat}) < 0)
        die("allocating the output");
    const float t[BATCH] = {1000.0f, 1000.0f};
    double best = 1e30, sum = 0;
    for (int r = 0; r < o->repeats + 1; r++) {
        double ts = bench_now();
        if (mmdit_forward(m, &x, t, &text, &pooled, NULL, 0, &out) < 0 || kn_sync(ctx) < 0)
            die("transformer forward");
        double dt = bench_now() - ts;
        printf("  step %d: %.2f s%s\n", r, dt, r == 0 ? " (warm-up)" : "");
        if (r > 0) {
            sum += dt;
            if (dt < best) best = dt;
        }
    }
    printf("MMDiT step %dx%d batch %d, %d text rows: %.2f s best, %.2f s mean of %d\n", side, side,
           BATCH, TEXT_ROWS, best, sum / o->repeats, o->repeats);
    kn_free(ctx, &x);
    kn_free(ctx, &text);
    kn_free(ctx, &pooled);
    kn_free(ctx, &out);
    return best;
}

static void bench_steps(const step_opts *o, kn_ctx *ctx, const model_config *mc)
{
    const mmdit_config *c = &mc->mmdit;
    const int gm = (int)(BATCH * (image_tokens(c, SGEMM_SIDE) + TEXT_ROWS)),
              gn = 4 * c->num_attention_heads * c->attention_head_dim,
              gk = c->num_attention_heads * c->attention_head_dim;
    /* sgemm is measured before and after the steps; the better figure is the reference, so a
     * neighbour's load during one of them does not flatter the ratio. */
    double sgemm = sgemm_gflops(gm, gn, gk, o->repeats);
    printf("cblas_sgemm %dx%dx%d: %.1f GFLOP/s\n", gm, gn, gk, sgemm);

    double t0 = bench_now();
    mmdit *m;
    if (mmdit_load(ctx, mc, &m) < 0) die("loading the transformer");
    kn_dtype act;
    if (engine_ctx_precision(ctx, o->compute, &act) < 0 || mmdit_set_compute(m, act) < 0)
        die("setting the compute dtype");
    printf("transformer load: %.2f s, compute %s\n", bench_now() - t0,
           engine_precision_name(o->compute));
    double best[MAX_SIZES];
    for (int i = 0; i < o->n_sizes; i++)
        best[i] = time_steps(o, ctx, m, c, o->sizes[i]);
    mmdit_free(m);

    double sgemm_after = sgemm_gflops(gm, gn, gk, o->repeats);
    printf("cblas_sgemm %dx%dx%d again: %.1f GFLOP/s\n", gm, gn, gk, sgemm_after);
    if (sgemm_after > sgemm) sgemm = sgemm_after;
    for (int i = 0; i < o->n_sizes; i++) {
        double flops = step_flops(c, o->sizes[i]);
        printf("  %dx%d: %.1f GFLOP per step, %.1f GFLOP/s = %.0f%% of sgemm\n", o->sizes[i],
               o->sizes[i], flops * 1e-9, flops / best[i] * 1e-9,
               100.0 * flops / best[i] * 1e-9 / sgemm);
    }
}

static void bench_vae(const step_opts *o, kn_ctx *ctx, const model_config *mc)
{
    vae *v;
    if (vae_load(ctx, mc, &v) < 0) die("loading the VAE");
    kn_dtype act;
    if (engine_ctx_precision(ctx, o->compute, &act) < 0 || vae_set_compute(v, act) < 0)
        die("setting the compute dtype");
    for (int i = 0; i < o->n_sizes; i++) {
        const int side = o->sizes[i], lat = side / vae_scale_factor(v);
        kn_tensor z, img;
        if (bench_random_tensor(ctx, &z, 4, (int64_t[]){1, mc->vae.latent_channels, lat, lat}) < 0)
            die("allocating inputs");
        if (kn_alloc(ctx, &img, KN_F32, 4, (int64_t[]){1, mc->vae.out_channels, side, side}) < 0)
            die("allocating the image");
        double best = 1e30;
        for (int r = 0; r < o->repeats + 1; r++) { /* the first decode sizes the scratch */
            double ts = bench_now();
            if (vae_decode(v, &z, &img) < 0 || kn_sync(ctx) < 0) die("VAE decode");
            double dt = bench_now() - ts;
            if (r > 0 && dt < best) best = dt;
        }
        printf("VAE decode %dx%d: %.2f s (best of %d after a warm-up)\n", side, side, best,
               o->repeats);
        kn_free(ctx, &z);
        kn_free(ctx, &img);
    }
    vae_free(v);
}

int main(int argc, char **argv)
{
    step_opts o = parse_args(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress reaches a reading pipe line by line */
    model_config *mc;
    kn_ctx *ctx;
    if (model_config_load(o.model, &mc) < 0) die("loading the configuration");
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0) die("creating the CPU context");
    if (o.flops_only) {
        for (int i = 0; i < o.n_sizes; i++)
            printf("  %dx%d: %.1f GFLOP per step\n", o.sizes[i], o.sizes[i],
                   step_flops(&mc->mmdit, o.sizes[i]) * 1e-9);
        kn_ctx_destroy(ctx);
        model_config_free(mc);
        return 0;
    }
    double rss_dit = 0;
    if (o.step) {
        bench_steps(&o, ctx, mc);
        rss_dit = bench_peak_rss();
    }
    if (o.vae) bench_vae(&o, ctx, mc);

    uint64_t tb = o.step ? file_bytes(mc, "transformer") : 0,
             vb = o.vae ? file_bytes(mc, "vae") : 0;
    const double rss = bench_peak_rss();
    if (o.step && o.vae)
        printf("peak RSS: %.2f GB after the transformer, %.2f GB after the VAE; weight files "
               "%.2f GB (transformer %.2f, VAE %.2f): %.2fx\n",
               rss_dit / 1e9, rss / 1e9, (double)(tb + vb) / 1e9, (double)tb / 1e9,
               (double)vb / 1e9, rss / (double)(tb + vb));
    else
        printf("peak RSS: %.2f GB; %s weight files %.2f GB: %.2fx\n", rss / 1e9,
               o.step ? "transformer" : "VAE", (double)(tb + vb) / 1e9, rss / (double)(tb + vb));
    kn_ctx_destroy(ctx);
    model_config_free(mc);
    return 0;
}
