/* Text-encoder benchmark (make bench-encode): loads the three text encoders of a full-size
 * SD3.5-medium directory (tools/make_bench_model.py makes one with random weights) and prints
 *  - the peak resident memory after loading, against the bytes of the weight files (loading
 *    maps the files, so this stays near 1x until the weights are touched);
 *  - the time to encode one prompt with CLIP-L, CLIP-G and T5-XXL, T5 at 77 and 256 tokens;
 *  - the peak resident memory after encoding, against the weight files.
 * Figures, not a test: nothing here passes or fails. */
#include "common/err.h"
#include "engine/clip_text.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "engine/t5_encoder.h"
#include "kernels/kn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* VmHWM of this process, bytes. */
static double peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = atof(line + 6);
    if (f)
        fclose(f);
    return kb * 1024.0;
}

static uint64_t files_bytes(const char *dir)
{
    st_archive *a;
    if (st_archive_open(dir, "model", &a) < 0)
        return 0;
    uint64_t n = st_file_bytes(a);
    st_archive_close(a);
    return n;
}

static void fill_ids(int32_t *ids, int n, int vocab)
{
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 7919 + 13) % (vocab - 2));
    ids[n - 1] = vocab - 1; /* an EOS-like maximum id, where CLIP pools */
}

static int fail(const char *what)
{
    fprintf(stderr, "bench_encode: %s: %s\n", what, err_msg());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: bench_encode MODEL_DIR\n");
        return 2;
    }
    model_config *cfg;
    if (model_config_load(argv[1], &cfg) < 0)
        return fail(argv[1]);
    kn_ctx *ctx;
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0)
        return fail("context");

    char dir[3][4096];
    const char *sub[3] = {"text_encoder", "text_encoder_2", "text_encoder_3"};
    uint64_t bytes = 0;
    for (int i = 0; i < 3; i++) {
        snprintf(dir[i], sizeof dir[i], "%s/%s", argv[1], sub[i]);
        bytes += files_bytes(dir[i]);
    }

    double rss0 = peak_rss(), t0 = now();
    clip_text *clip_l, *clip_g;
    t5_encoder *t5;
    if (clip_text_load(ctx, dir[0], &cfg->clip_l, &clip_l) < 0 ||
        clip_text_load(ctx, dir[1], &cfg->clip_g, &clip_g) < 0 ||
        t5_encoder_load(ctx, dir[2], &cfg->t5, &t5) < 0)
        return fail("loading the text encoders");
    double rss_load = peak_rss();
    printf("weight files               %8.2f GB\n", (double)bytes / 1e9);
    printf("load time                  %8.3f s\n", now() - t0);
    printf("peak RSS after loading     %8.2f GB  (%.3f x the weight files; %.2f GB before)\n",
           rss_load / 1e9, rss_load / (double)bytes, rss0 / 1e9);

    int32_t ids[256];
    struct {
        const char *name;
        clip_text *m;
        const clip_config *c;
    } clips[2] = {{"CLIP-L", clip_l, &cfg->clip_l}, {"CLIP-G", clip_g, &cfg->clip_g}};
    for (int i = 0; i < 2; i++) {
        kn_tensor seq, pooled;
        int64_t s[2] = {77, clips[i].c->hidden_size}, p[2] = {1, clips[i].c->projection_dim};
        if (kn_alloc(ctx, &seq, KN_F32, 2, s) < 0 || kn_alloc(ctx, &pooled, KN_F32, 2, p) < 0)
            return fail("alloc");
        fill_ids(ids, 77, clips[i].c->vocab_size);
        double best = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            double t = now();
            if (clip_text_forward(clips[i].m, ids, 77, &seq, &pooled) < 0 || kn_sync(ctx) < 0)
                return fail(clips[i].name);
            t = now() - t;
            best = t < best ? t : best;
        }
        printf("%-6s encode, 77 tokens     %8.3f s  (best of 3)\n", clips[i].name, best);
        kn_free(ctx, &seq);
        kn_free(ctx, &pooled);
    }
    const int t5_lens[2] = {77, 256};
    for (int i = 0; i < 2; i++) {
        kn_tensor out;
        int64_t s[2] = {t5_lens[i], cfg->t5.d_model};
        if (kn_alloc(ctx, &out, KN_F32, 2, s) < 0)
            return fail("alloc");
        fill_ids(ids, t5_lens[i], 2000);
        double best = 1e30;
        for (int rep = 0; rep < 2; rep++) {
            double t = now();
            if (t5_encoder_forward(t5, ids, t5_lens[i], &out) < 0 || kn_sync(ctx) < 0)
                return fail("T5");
            t = now() - t;
            best = t < best ? t : best;
        }
        printf("T5-XXL encode, %3d tokens  %8.3f s  (best of 2)\n", t5_lens[i], best);
        kn_free(ctx, &out);
    }
    double rss_end = peak_rss();
    printf("peak RSS after encoding    %8.2f GB  (%.3f x the weight files)\n", rss_end / 1e9,
           rss_end / (double)bytes);
    t5_encoder_free(t5);
    clip_text_free(clip_g);
    clip_text_free(clip_l);
    kn_ctx_destroy(ctx);
    model_config_free(cfg);
    return 0;
}
