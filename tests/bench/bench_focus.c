/* FOCUS-controlled step benchmark (make bench-focus): on a full-size SD3.5-medium directory
 * (tools/make_bench_model.py), at each side asked for, with classifier-free guidance (batch 2)
 * and 154 text rows (max_seq 77), in the same run on the same cores:
 *  - a plain step (mmdit_forward), then a controlled one (the forward capturing the
 *    conditional row's maps, the FOCUS cost of two subjects of two tokens each, the reverse
 *    pass to the latent gradient), each the best of REPEATS after a warm-up, and their ratio
 *    (the reference pipeline's controlled step costs about 2.5 plain ones: one batch-1
 *    forward and its full backward beside the CFG forward);
 *  - memory: what the first controlled step adds to the context for good (the weights packed
 *    for the reverse pass's products, once per engine), and the peak above that during the
 *    timed controlled steps against what the daemon's bound (engine_job_bytes) counts for the
 *    transformer per job: its scratch, the capture's tensors and ENGINE_OP_SCRATCH.
 * Figures, not a test. Usage: bench_focus MODEL_DIR [REPEATS] [--precision P] [--sizes 512] */
#include "common/err.h"
#include "engine/focus_cost.h"
#include "engine/mmdit.h"
#include "engine/model_config.h"
#include "engine/pipeline.h"
#include "kernels/kn.h"
#include "tests/bench/common/bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 2
#define TEXT_ROWS 154
#define MAX_SIZES 4

static void die(const char *what)
{
    fprintf(stderr, "bench_focus: %s: %s\n", what, err_msg());
    exit(1);
}

typedef struct inputs {
    kn_tensor x, text, pooled, out, grad;
} inputs;

static void inputs_make(kn_ctx *ctx, const mmdit_config *c, int64_t lat, inputs *in)
{
    if (bench_random_tensor(ctx, &in->x, 4, (int64_t[]){BATCH, c->in_channels, lat, lat}) < 0 ||
        bench_random_tensor(ctx, &in->text, 3,
                            (int64_t[]){BATCH, TEXT_ROWS, c->joint_attention_dim}) < 0 ||
        bench_random_tensor(ctx, &in->pooled, 2, (int64_t[]){BATCH, c->pooled_projection_dim}) <
            0 ||
        kn_alloc(ctx, &in->out, KN_F32, 4, (int64_t[]){BATCH, c->out_channels, lat, lat}) < 0 ||
        kn_alloc(ctx, &in->grad, KN_F32, 4, (int64_t[]){1, c->in_channels, lat, lat}) < 0)
        die("allocating inputs");
}

static void inputs_free(kn_ctx *ctx, inputs *in)
{
    kn_tensor *t[] = {&in->x, &in->text, &in->pooled, &in->out, &in->grad};
    for (int i = 0; i < 5; i++)
        kn_free(ctx, t[i]);
}

/* "A horse and a bear ...": CLIP 2 and T5 1 for the first subject, CLIP 5 and T5 5 for the
 * second, as joint text rows. */
static focus_groups two_subjects(void)
{
    return (focus_groups){
        .n_subjects = 2, .n_tok = 4, .first = {0, 2, 4}, .tok = {77 + 1, 2, 77 + 5, 5}};
}

/* One controlled step: the capturing forward, the cost, the reverse pass. */
static void controlled_step(mmdit *m, mmdit_focus *f, const focus_groups *g, inputs *in,
                            const float *t, float *dmaps, double secs[3])
{
    int64_t gh, gw;
    double t0 = bench_now();
    if (mmdit_forward_focus(m, &in->x, t, &in->text, &in->pooled, &in->out, f) < 0)
        die("capturing forward");
    double t1 = bench_now();
    float cost;
    const float *maps = mmdit_focus_maps(f, &gh, &gw);
    if (focus_cost(g, FOCUS_HEURISTIC_FOCUS, maps, mmdit_get_config(m)->num_layers, gh, gw, &cost,
                   dmaps) < 0)
        die("cost");
    double t2 = bench_now();
    if (mmdit_focus_grad(m, f, dmaps, &in->grad) < 0 || kn_sync(mmdit_ctx(m)) < 0)
        die("reverse pass");
    secs[0] = t1 - t0, secs[1] = t2 - t1, secs[2] = bench_now() - t2;
}

static void bench_side(kn_ctx *ctx, mmdit *m, int side, int repeats)
{
    const mmdit_config *c = mmdit_get_config(m);
    const int64_t lat = side / 8, N = (lat / c->patch_size) * (lat / c->patch_size);
    const focus_groups g = two_subjects();
    const float t[BATCH] = {1000.0f, 1000.0f};
    inputs in;
    inputs_make(ctx, c, lat, &in);
    mmdit_focus *f;
    if (mmdit_focus_create(m, g.tok, g.n_tok, 1, &f) < 0) die("creating the capture");
    float *dmaps = malloc((size_t)c->num_layers * g.n_tok * N * sizeof *dmaps);
    double plain = 1e30, ctl = 1e30, part[3] = {0}, best_part[3] = {0};
    kn_memory before, after_first, mem;
    for (int r = 0; r < repeats + 1; r++) {
        double ts = bench_now();
        if (mmdit_forward(m, &in.x, t, &in.text, &in.pooled, NULL, 0, &in.out) < 0 ||
            kn_sync(ctx) < 0)
            die("plain forward");
        const double dp = bench_now() - ts;
        if (r == 0) kn_ctx_memory(ctx, &before);
        if (r == 1) kn_ctx_reset_peak(ctx);
        controlled_step(m, f, &g, &in, t, dmaps, part);
        if (r == 0) kn_ctx_memory(ctx, &after_first);
        const double dc = part[0] + part[1] + part[2];
        printf("  %dx%d pass %d: plain %.2f s, controlled %.2f s (forward %.2f, cost %.3f, "
               "reverse %.2f)%s\n",
               side, side, r, dp, dc, part[0], part[1], part[2], r == 0 ? " (warm-up)" : "");
        if (r == 0) continue;
        if (dp < plain) plain = dp;
        if (dc < ctl) ctl = dc, memcpy(best_part, part, sizeof part);
    }
    printf("FOCUS step %dx%d batch %d, %d text rows: plain %.2f s, controlled %.2f s best: "
           "%.2fx (reverse pass %.2f s = %.2fx a plain step)\n",
           side, side, BATCH, TEXT_ROWS, plain, ctl, ctl / plain, best_part[2],
           best_part[2] / plain);
    kn_ctx_memory(ctx, &mem);
    const uint64_t bound = mmdit_scratch_bytes(m, BATCH, lat, lat, TEXT_ROWS) +
                           mmdit_focus_bytes(m, g.n_tok, BATCH, lat, lat, TEXT_ROWS) +
                           ENGINE_OP_SCRATCH;
    printf("  memory %dx%d: the first controlled step keeps %.2f GB more in the context; "
           "later ones peak %.2f GB above that; the bound's transformer part per job %.2f GB "
           "(scratch %.2f, capture %.2f, op scratch %.2f)\n",
           side, side, ((double)after_first.in_use - (double)before.in_use) / 1e9,
           ((double)mem.peak - (double)after_first.in_use) / 1e9, bound / 1e9,
           mmdit_scratch_bytes(m, BATCH, lat, lat, TEXT_ROWS) / 1e9,
           mmdit_focus_bytes(m, g.n_tok, BATCH, lat, lat, TEXT_ROWS) / 1e9,
           ENGINE_OP_SCRATCH / 1e9);
    free(dmaps);
    mmdit_focus_free(f);
    inputs_free(ctx, &in);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: bench_focus MODEL_DIR [REPEATS] [--precision P] [--sizes 512]\n");
        return 2;
    }
    int repeats = 1, sizes[MAX_SIZES] = {512}, n_sizes = 1, i = 2;
    const char *precision = "auto";
    if (i < argc && argv[i][0] != '-') repeats = bench_parse_count(argv[i++], 1, 100);
    for (; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--precision"))
            precision = argv[i + 1];
        else if (!strcmp(argv[i], "--sizes"))
            n_sizes = bench_parse_sizes(argv[i + 1], sizes, MAX_SIZES);
        else
            break;
    }
    if (i < argc || n_sizes < 1) {
        fprintf(stderr, "bench_focus: bad arguments (see the usage line)\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    model_config *mc;
    kn_ctx *ctx;
    mmdit *m;
    kn_dtype compute, act;
    if (model_config_load(argv[1], &mc) < 0) die("loading the configuration");
    if (kn_ctx_create(KN_CPU, 0, &ctx) < 0) die("creating the CPU context");
    if (engine_precision_parse(precision, KN_CPU, &compute) < 0) die("--precision");
    if (mmdit_load(ctx, mc, &m) < 0) die("loading the transformer");
    if (engine_ctx_precision(ctx, compute, &act) < 0 || mmdit_set_compute(m, act) < 0)
        die("setting the compute dtype");
    printf("compute %s, %d repeats after a warm-up\n", engine_precision_name(compute), repeats);
    for (int s = 0; s < n_sizes; s++)
        bench_side(ctx, m, sizes[s], repeats);
    printf("peak RSS: %.2f GB\n", bench_peak_rss() / 1e9);
    mmdit_free(m);
    kn_ctx_destroy(ctx);
    model_config_free(mc);
    return 0;
}
