/* Denoising-step benchmark (make bench-step): one MMDiT forward pass of a full-size SD3.5-medium
 * directory (tools/make_bench_model.py makes one with random weights) at the shape of a
 * 512x512 image with classifier-free guidance (batch 2) and a 154-token prompt (max_seq 77),
 * then one VAE decode at 512x512. Prints
 *  - seconds per step and the GFLOP/s the step achieves, counting every linear layer and every
 *    attention product of the forward pass, against cblas_sgemm's GFLOP/s measured in the same
 *    run on the same cores (before and after the step, the better of the two) for the
 *    2356x6144x1536 shape (the transformer's feed-forward GEMM);
 *  - the VAE decode time;
 *  - the peak resident memory (VmHWM) against the bytes of the transformer and VAE files.
 * Figures, not a test: nothing here passes or fails. The text encoders have their own
 * benchmark (bench_encode.c).
 * Usage: bench_step MODEL_DIR [repeats] */
#include "common/err.h"
#include "engine/mmdit.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "engine/vae.h"
#include "kernels/kn.h"
#include "tests/bench/common/bench_util.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IMAGE_SIDE 512
#define BATCH 2       /* CFG: the negative and the positive prompt */
#define TEXT_ROWS 154 /* 77 CLIP rows + max_seq 77 T5 rows */

static void die(const char *what)
{
    fprintf(stderr, "bench_step: %s: %s\n", what, err_msg());
    exit(1);
}

/* VmHWM of this process, bytes. */
static double peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = atof(line + 6);
    if (f) fclose(f);
    return kb * 1024;
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

/* Floating-point operations of one forward pass (2 per multiply-add) in the linear layers and
 * the attention products (q.k^T and p.v), following diffusers' SD3Transformer2DModel: every
 * block but the last updates the context stream; dual-attention blocks add a self-attention
 * over the image tokens. Norms, activations and softmax are left out (a few percent). */
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

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_step MODEL_DIR [repeats]\n");
        return 2;
    }
    const int repeats = argc > 2 ? atoi(argv[2]) : 2;
    model_config *mc;
    kn_ctx *ctx;
    if (model_config_load(argv[1], &mc) < 0) die("loading the configuration");
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0) die("creating the CPU context");
    const mmdit_config *c = &mc->mmdit;
    const int64_t lat = IMAGE_SIDE / 8, N = (lat / c->patch_size) * (lat / c->patch_size);
    const int gm = (int)(BATCH * (N + TEXT_ROWS)),
              gn = 4 * c->num_attention_heads * c->attention_head_dim,
              gk = c->num_attention_heads * c->attention_head_dim;

    /* sgemm is measured before and after the step; the better figure is the reference, so a
     * neighbour's load during one of them does not flatter the ratio. */
    double sgemm = sgemm_gflops(gm, gn, gk, repeats < 1 ? 1 : repeats);
    printf("cblas_sgemm %dx%dx%d: %.1f GFLOP/s\n", gm, gn, gk, sgemm);

    double t0 = bench_now();
    mmdit *m;
    if (mmdit_load(ctx, mc, &m) < 0) die("loading the transformer");
    printf("transformer load: %.2f s\n", bench_now() - t0);
    kn_tensor x, text, pooled, out;
    if (bench_random_tensor(ctx, &x, 4, (int64_t[]){BATCH, c->in_channels, lat, lat}) < 0)
        die("allocating inputs");
    if (bench_random_tensor(ctx, &text, 3, (int64_t[]){BATCH, TEXT_ROWS, c->joint_attention_dim}) <
        0)
        die("allocating inputs");
    if (bench_random_tensor(ctx, &pooled, 2, (int64_t[]){BATCH, c->pooled_projection_dim}) < 0)
        die("allocating inputs");
    if (kn_alloc(ctx, &out, KN_F32, 4, (int64_t[]){BATCH, c->out_channels, lat, lat}) < 0)
        die("allocating the output");
    const float t[BATCH] = {1000.0f, 1000.0f};
    double best = 1e30, sum = 0;
    for (int r = 0; r < repeats + 1; r++) { /* the first pass maps the weights and the arena */
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
    double sgemm_after = sgemm_gflops(gm, gn, gk, repeats < 1 ? 1 : repeats);
    printf("cblas_sgemm %dx%dx%d again: %.1f GFLOP/s\n", gm, gn, gk, sgemm_after);
    if (sgemm_after > sgemm) sgemm = sgemm_after;
    double flops = bench_mmdit_flops(c, BATCH, (double)N, TEXT_ROWS);
    printf("MMDiT step %dx%d batch %d, %d text rows: %.2f s best, %.2f s mean of %d\n", IMAGE_SIDE,
           IMAGE_SIDE, BATCH, TEXT_ROWS, best, sum / repeats, repeats);
    printf("  %.1f GFLOP per step, %.1f GFLOP/s = %.0f%% of sgemm\n", flops * 1e-9,
           flops / best * 1e-9, 100.0 * flops / best * 1e-9 / sgemm);
    kn_free(ctx, &x);
    kn_free(ctx, &text);
    kn_free(ctx, &pooled);
    kn_free(ctx, &out);
    double rss_dit = peak_rss();
    mmdit_free(m);

    vae *v;
    if (vae_load(ctx, mc, &v) < 0) die("loading the VAE");
    kn_tensor z, img;
    if (bench_random_tensor(ctx, &z, 4, (int64_t[]){1, mc->vae.latent_channels, lat, lat}) < 0)
        die("allocating inputs");
    if (kn_alloc(ctx, &img, KN_F32, 4,
                 (int64_t[]){1, mc->vae.out_channels, IMAGE_SIDE, IMAGE_SIDE}) < 0)
        die("allocating the image");
    best = 1e30;
    for (int r = 0; r < 2; r++) {
        double ts = bench_now();
        if (vae_decode(v, &z, &img) < 0 || kn_sync(ctx) < 0) die("VAE decode");
        double dt = bench_now() - ts;
        if (dt < best) best = dt;
    }
    printf("VAE decode %dx%d: %.2f s (best of 2)\n", IMAGE_SIDE, IMAGE_SIDE, best);
    kn_free(ctx, &z);
    kn_free(ctx, &img);
    vae_free(v);

    uint64_t tb = file_bytes(mc, "transformer"), vb = file_bytes(mc, "vae");
    printf("peak RSS: %.2f GB after the transformer, %.2f GB after the VAE; weight files %.2f GB "
           "(transformer %.2f, VAE %.2f): %.2fx\n",
           rss_dit / 1e9, peak_rss() / 1e9, (double)(tb + vb) / 1e9, (double)tb / 1e9,
           (double)vb / 1e9, peak_rss() / (double)(tb + vb));
    kn_ctx_destroy(ctx);
    model_config_free(mc);
    return 0;
}
