/* Text-encoder benchmark (make bench-encode): loads the text encoders of a full-size
 * SD3.5-medium directory (tools/make_bench_model.py makes one with random weights) and prints
 *  - the peak resident memory after loading, against the bytes of the weight files (loading
 *    maps the files, so this stays near 1x until the weights are touched);
 *  - the time to encode one prompt with CLIP-L, CLIP-G and T5-XXL, T5 at 77 and 256 tokens
 *    (a warm-up pass, then the best of REPEATS);
 *  - the peak resident memory after encoding, against the weight files.
 * The line "T5-XXL encode, N tokens X s" is read by tools/bench_cpu_peers.py: keep its form.
 * Figures, not a test: nothing here passes or fails.
 * Usage: bench_encode MODEL_DIR [--repeats N] [--tokens 77,256] [--only t5] [--precision P] */
#include "common/err.h"
#include "engine/clip_text.h"
#include "engine/model_config.h"
#include "engine/pipeline.h"
#include "engine/safetensors.h"
#include "engine/t5_encoder.h"
#include "kernels/kn.h"
#include "tests/bench/common/bench_util.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LENS 4

typedef struct encode_opts {
    const char *model;
    int repeats;
    int t5_lens[MAX_LENS];
    int n_lens;
    bool clips; /* false with --only t5 */
    kn_dtype compute;
} encode_opts;

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_encode MODEL_DIR [--repeats N] [--tokens 77,256] [--only t5]\n"
            "                    [--precision P]\n"
            "  --repeats    timed passes after a warm-up, the best reported (2)\n"
            "  --tokens     T5 sequence lengths, 1..512 (77,256)\n"
            "  --only t5    T5-XXL alone, without loading the CLIPs\n"
            "  --precision  auto, fp32, bf16 or fp16: the engine's precision mode (bf16: the\n"
            "               text encoders' products in bf16, as the engine runs them)\n");
    exit(2);
}

static encode_opts parse_args(int argc, char **argv)
{
    encode_opts o = {.repeats = 2, .t5_lens = {77, 256}, .n_lens = 2, .clips = true};
    const char *precision = "fp32";
    if (argc < 2 || argv[1][0] == '-') usage();
    o.model = argv[1];
    for (int i = 2; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (strcmp(a, "--repeats") == 0) {
            o.repeats = bench_parse_count(v, 1, 1000);
            if (o.repeats < 0) usage();
        } else if (strcmp(a, "--tokens") == 0) {
            o.n_lens = bench_parse_list(v, 1, 512, 1, o.t5_lens, MAX_LENS);
            if (o.n_lens < 0) usage();
        } else if (strcmp(a, "--only") == 0 && strcmp(v, "t5") == 0) {
            o.clips = false;
        } else if (strcmp(a, "--precision") == 0) {
            precision = v;
        } else {
            usage();
        }
    }
    if (engine_precision_parse(precision, KN_CPU, &o.compute) < 0) {
        fprintf(stderr, "bench_encode: %s\n", err_msg());
        exit(2);
    }
    return o;
}

static uint64_t files_bytes(const char *dir)
{
    st_archive *a;
    if (st_archive_open(dir, "model", &a) < 0) return 0;
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

/* Best time of o->repeats encodes after a warm-up; fwd runs one. */
static int best_of(const encode_opts *o, kn_ctx *ctx, int (*fwd)(void *), void *arg, double *best)
{
    *best = 1e30;
    for (int rep = 0; rep < o->repeats + 1; rep++) {
        double t = bench_now();
        if (fwd(arg) < 0 || kn_sync(ctx) < 0) return -1;
        t = bench_now() - t;
        if (rep > 0 && t < *best) *best = t;
    }
    return 0;
}

struct clip_run {
    clip_text *m;
    const int32_t *ids;
    kn_tensor *seq, *pooled;
};

static int clip_run(void *p)
{
    struct clip_run *r = p;
    return clip_text_forward(r->m, r->ids, 77, r->seq, r->pooled);
}

struct t5_run {
    t5_encoder *m;
    const int32_t *ids;
    int n;
    kn_tensor *out;
};

static int t5_run(void *p)
{
    struct t5_run *r = p;
    return t5_encoder_forward(r->m, r->ids, r->n, r->out);
}

int main(int argc, char **argv)
{
    encode_opts o = parse_args(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress reaches a reading pipe line by line */
    model_config *cfg;
    if (model_config_load(o.model, &cfg) < 0) return fail(o.model);
    kn_ctx *ctx;
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0) return fail("context");
    /* As engine_load sets the text encoders' context in each mode. */
    if (o.compute == KN_BF16 && kn_ctx_set_matmul(ctx, KN_BF16) < 0) return fail("context");

    char dir[3][4096];
    const char *sub[3] = {"text_encoder", "text_encoder_2", "text_encoder_3"};
    uint64_t bytes = 0;
    for (int i = o.clips ? 0 : 2; i < 3; i++) {
        snprintf(dir[i], sizeof dir[i], "%s/%s", o.model, sub[i]);
        bytes += files_bytes(dir[i]);
    }

    double rss0 = bench_peak_rss(), t0 = bench_now();
    clip_text *clip_l = NULL, *clip_g = NULL;
    t5_encoder *t5;
    if (o.clips && (clip_text_load(ctx, dir[0], &cfg->clip_l, &clip_l) < 0 ||
                    clip_text_load(ctx, dir[1], &cfg->clip_g, &clip_g) < 0))
        return fail("loading the CLIP text encoders");
    if (t5_encoder_load(ctx, dir[2], &cfg->t5, &t5) < 0) return fail("loading T5-XXL");
    double rss_load = bench_peak_rss();
    printf("weight files               %8.2f GB\n", (double)bytes / 1e9);
    printf("load time                  %8.3f s\n", bench_now() - t0);
    printf("peak RSS after loading     %8.2f GB  (%.3f x the weight files; %.2f GB before)\n",
           rss_load / 1e9, rss_load / (double)bytes, rss0 / 1e9);
    printf("text encoders compute in %s\n", engine_precision_name(o.compute));

    int32_t ids[512];
    struct {
        const char *name;
        clip_text *m;
        const clip_config *c;
    } clips[2] = {{"CLIP-L", clip_l, &cfg->clip_l}, {"CLIP-G", clip_g, &cfg->clip_g}};
    for (int i = 0; o.clips && i < 2; i++) {
        kn_tensor seq, pooled;
        int64_t s[2] = {77, clips[i].c->hidden_size}, p[2] = {1, clips[i].c->projection_dim};
        if (kn_alloc(ctx, &seq, KN_F32, 2, s) < 0 || kn_alloc(ctx, &pooled, KN_F32, 2, p) < 0)
            return fail("alloc");
        fill_ids(ids, 77, clips[i].c->vocab_size);
        struct clip_run r = {clips[i].m, ids, &seq, &pooled};
        double best;
        if (best_of(&o, ctx, clip_run, &r, &best) < 0) return fail(clips[i].name);
        printf("%-6s encode, 77 tokens     %8.3f s  (best of %d)\n", clips[i].name, best,
               o.repeats);
        kn_free(ctx, &seq);
        kn_free(ctx, &pooled);
    }
    for (int i = 0; i < o.n_lens; i++) {
        kn_tensor out;
        int64_t s[2] = {o.t5_lens[i], cfg->t5.d_model};
        if (kn_alloc(ctx, &out, KN_F32, 2, s) < 0) return fail("alloc");
        fill_ids(ids, o.t5_lens[i], 2000);
        struct t5_run r = {t5, ids, o.t5_lens[i], &out};
        double best;
        if (best_of(&o, ctx, t5_run, &r, &best) < 0) return fail("T5");
        printf("T5-XXL encode, %3d tokens  %8.3f s  (best of %d)\n", o.t5_lens[i], best, o.repeats);
        kn_free(ctx, &out);
    }
    double rss_end = bench_peak_rss();
    printf("peak RSS after encoding    %8.2f GB  (%.3f x the weight files)\n", rss_end / 1e9,
           rss_end / (double)bytes);
    t5_encoder_free(t5);
    if (clip_g) clip_text_free(clip_g);
    if (clip_l) clip_text_free(clip_l);
    kn_ctx_destroy(ctx);
    model_config_free(cfg);
    return 0;
}
