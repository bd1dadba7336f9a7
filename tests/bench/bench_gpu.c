/* GPU benchmark of the engine on the CUDA backend (make bench-gpu; tools/bench-gpu.sh runs it
 * beside the diffusers baseline, tools/bench_gpu_baseline.py, and prints the ratios). On a
 * full-size SD3.5-medium directory (tools/make_bench_model.py makes one with random weights
 * in the published layout) it measures, for each image side (512 and 1024 by default):
 *  - one MMDiT forward pass at batch 2 (classifier-free guidance) with 154 text rows (77 CLIP +
 *    max_seq 77 T5): warm-up, then the median of N passes, each timed by the host clock around
 *    mmdit_forward + kn_sync; the TFLOP/s this achieves, counting every linear layer and every
 *    attention product (tests/bench/common/bench_util.h), and its fraction of the dense BF16
 *    peak given with --peak;
 *  - one image end to end through the step-level engine: engine_job_prepare (the prompt is new
 *    each run, so it is encoded; the empty negative prompt comes from the encode cache, as in
 *    serving), 28 engine_step calls, engine_job_decode; median of the runs after a short
 *    warm-up job;
 *  - throughput: 8 concurrent one-image jobs at the first side, prepared, stepped together
 *    through engine_step (one batch of 16 rows per step) and decoded; images per second.
 * The engine computes in float32 activations with TF32 off (weights widened to float32 on the
 * fly): these are the figures of what exists, not of the 16-bit kernels, and the output says so.
 * Lines starting with "BENCH " carry the figures for tools/bench-gpu.sh.
 * Without a usable CUDA device it prints "skipped: no usable CUDA device (...)" and exits 0;
 * --cpu runs the same code on the CPU backend, to check the program on a small model (its
 * figures say nothing about a GPU). Figures, not a test: nothing here passes or fails. */
#include "common/err.h"
#include "engine/mmdit.h"
#include "engine/model_config.h"
#include "engine/pipeline.h"
#include "kernels/kn.h"
#include "tests/bench/common/bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 2     /* CFG: the negative and the positive prompt */
#define MAX_SIZES 4 /* image sides one run may measure */
#define WARMUP_STEPS 2

typedef struct bench_opts {
    const char *model;
    kn_device device;
    const char *precision; /* engine_precision_parse's names; default auto */
    kn_dtype compute;
    double peak_tflops; /* dense BF16 peak of the card; 0 = not given */
    int repeats;        /* timed forward passes per side */
    int runs;           /* timed end-to-end images per side */
    int steps;          /* denoising steps per image */
    int jobs;           /* concurrent jobs of the throughput figure */
    int sizes[MAX_SIZES];
    int n_sizes;
} bench_opts;

static void die(const char *what)
{
    fprintf(stderr, "bench_gpu: %s: %s\n", what, err_msg());
    exit(1);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_gpu MODEL_DIR [--peak TFLOPS] [--repeats N] [--runs N] [--steps N]\n"
            "                 [--jobs N] [--sizes 512,1024] [--precision P] [--cpu]\n"
            "  --peak     the card's dense BF16 peak in TFLOP/s (H100 SXM, H200: 989)\n"
            "  --repeats  timed forward passes per side (10)\n"
            "  --runs     timed end-to-end images per side (3)\n"
            "  --steps    denoising steps per image (28)\n"
            "  --jobs     concurrent jobs of the throughput figure, at the first side (8)\n"
            "  --sizes    image sides, multiples of 16 (512,1024)\n"
            "  --precision auto, bf16, fp16 or fp32 (auto: bf16 on CUDA, fp32 on the CPU)\n"
            "  --cpu      the CPU backend: checks the program on a small model only\n");
    exit(2);
}

static int parse_count(const char *s, int lo, int hi)
{
    int v = bench_parse_count(s, lo, hi);
    if (v < 0) usage();
    return v;
}

static bench_opts parse_args(int argc, char **argv)
{
    bench_opts o = {.device = KN_CUDA,
                    .precision = "auto",
                    .repeats = 10,
                    .runs = 3,
                    .steps = 28,
                    .jobs = 8,
                    .sizes = {512, 1024},
                    .n_sizes = 2};
    if (argc < 2 || argv[1][0] == '-') usage();
    o.model = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--cpu") == 0) {
            o.device = KN_CPU;
            continue;
        }
        if (!v) usage();
        i++;
        if (strcmp(a, "--peak") == 0) {
            char *end;
            o.peak_tflops = strtod(v, &end);
            if (*end != '\0' || !(o.peak_tflops > 0)) usage();
        } else if (strcmp(a, "--precision") == 0) {
            o.precision = v;
        } else if (strcmp(a, "--repeats") == 0) {
            o.repeats = parse_count(v, 1, 1000);
        } else if (strcmp(a, "--runs") == 0) {
            o.runs = parse_count(v, 1, 100);
        } else if (strcmp(a, "--steps") == 0) {
            o.steps = parse_count(v, 1, ENGINE_MAX_STEPS);
        } else if (strcmp(a, "--jobs") == 0) {
            o.jobs = parse_count(v, 1, ENGINE_MAX_COUNT);
        } else if (strcmp(a, "--sizes") == 0) {
            o.n_sizes = bench_parse_sizes(v, o.sizes, MAX_SIZES);
            if (o.n_sizes < 0) usage();
        } else {
            usage();
        }
    }
    if (engine_precision_parse(o.precision, o.device, &o.compute) < 0) usage();
    return o;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n); sorts v. */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* One MMDiT forward pass per side on ctx: a warm-up pass (it sizes the model's scratch and
 * lets cuBLAS pick its kernels), then the median of o->repeats passes. */
static void bench_steps(const bench_opts *o, kn_ctx *ctx, const model_config *mc)
{
    const mmdit_config *c = &mc->mmdit;
    const int64_t S = 2 * 77; /* CLIP rows + max_seq 77 T5 rows, as the engine's default */
    double t0 = bench_now();
    mmdit *m;
    if (mmdit_load(ctx, mc, &m) < 0 || mmdit_set_compute(m, o->compute) < 0)
        die("loading the transformer");
    printf("transformer load: %.2f s\n", bench_now() - t0);
    double *times = malloc((size_t)o->repeats * sizeof *times);
    if (!times) die("out of memory");
    for (int si = 0; si < o->n_sizes; si++) {
        const int side = o->sizes[si];
        const int64_t lat = side / 8, N = (lat / c->patch_size) * (lat / c->patch_size);
        if (mmdit_check_size(c, lat, lat) < 0) die("image side");
        kn_tensor x, text, pooled, out;
        if (bench_random_tensor(ctx, &x, 4, (int64_t[]){BATCH, c->in_channels, lat, lat}) < 0 ||
            bench_random_tensor(ctx, &text, 3, (int64_t[]){BATCH, S, c->joint_attention_dim}) < 0 ||
            bench_random_tensor(ctx, &pooled, 2, (int64_t[]){BATCH, c->pooled_projection_dim}) <
                0 ||
            kn_alloc(ctx, &out, KN_F32, 4, (int64_t[]){BATCH, c->out_channels, lat, lat}) < 0)
            die("allocating the transformer's inputs");
        const float t[BATCH] = {1000.0f, 1000.0f};
        for (int r = -1; r < o->repeats; r++) {
            double ts = bench_now();
            if (mmdit_forward(m, &x, t, &text, &pooled, NULL, 0, &out) < 0 || kn_sync(ctx) < 0)
                die("transformer forward");
            if (r >= 0) times[r] = bench_now() - ts;
        }
        const double med = median(times, o->repeats), best = times[0]; /* sorted now */
        const double gflop = bench_mmdit_flops(c, BATCH, (double)N, (double)S) * 1e-9;
        const double tflops = gflop / med * 1e-3;
        printf("MMDiT step %dx%d, batch %d, %lld text rows: %.1f ms median of %d (best %.1f)\n",
               side, side, BATCH, (long long)S, med * 1e3, o->repeats, best * 1e3);
        printf("  %.1f GFLOP per step: %.2f TFLOP/s", gflop, tflops);
        if (o->peak_tflops > 0)
            printf(" = %.1f%% of the %.0f TFLOP/s dense BF16 peak given",
                   100 * tflops / o->peak_tflops, o->peak_tflops);
        printf("\n");
        printf("BENCH step_ms_%d %.3f\nBENCH step_gflop_%d %.3f\nBENCH step_tflops_%d %.4f\n", side,
               med * 1e3, side, gflop, side, tflops);
        if (o->peak_tflops > 0)
            printf("BENCH step_peak_fraction_%d %.5f\n", side, tflops / o->peak_tflops);
        fflush(stdout);
        kn_free(ctx, &x);
        kn_free(ctx, &text);
        kn_free(ctx, &pooled);
        kn_free(ctx, &out);
    }
    free(times);
    mmdit_free(m);
}

/* Wall times of one job's phases, seconds. */
typedef struct phase_times {
    double encode, steps, decode;
} phase_times;

/* Prepares, steps and decodes jobs[0..n) of the parameters ps[0..n) together, as a worker
 * batches them; adds each phase's wall time to *pt. */
static void run_jobs(sd3_engine *e, const gen_params *ps, int n, phase_times *pt)
{
    gen_job **jobs = calloc((size_t)n, sizeof *jobs);
    if (!jobs) die("out of memory");
    double t0 = bench_now();
    for (int i = 0; i < n; i++)
        if (engine_job_prepare(e, &ps[i], &jobs[i]) < 0) die("preparing a job");
    double t1 = bench_now();
    while (!engine_job_done(jobs[0]))
        if (engine_step(e, jobs, n) < 0) die("stepping");
    double t2 = bench_now();
    for (int i = 0; i < n; i++) {
        uint8_t *rgb;
        if (engine_job_decode(e, jobs[i], &rgb) < 0) die("decoding");
        free(rgb);
    }
    double t3 = bench_now();
    for (int i = 0; i < n; i++)
        engine_job_free(jobs[i]);
    free(jobs);
    pt->encode += t1 - t0;
    pt->steps += t2 - t1;
    pt->decode += t3 - t2;
}

/* Parameters of job `serial`: the model card's defaults at side x side with a prompt and a
 * seed of its own, so that every job's prompt is encoded. */
static gen_params job_params(int side, int steps, int serial, char *prompt, size_t prompt_size)
{
    gen_params p;
    gen_params_defaults(&p);
    snprintf(prompt, prompt_size, "a lighthouse on a cliff at dawn, study number %d", serial);
    p.prompt = prompt;
    p.seed = (uint64_t)serial;
    p.steps = steps;
    p.width = p.height = side;
    return p;
}

static void bench_images(const bench_opts *o, sd3_engine *e)
{
    static int serial;
    char prompt[128];
    double *times = malloc((size_t)o->runs * sizeof *times);
    if (!times) die("out of memory");
    for (int si = 0; si < o->n_sizes; si++) {
        const int side = o->sizes[si];
        phase_times warm = {0}, sum = {0};
        gen_params p = job_params(side, WARMUP_STEPS, serial++, prompt, sizeof prompt);
        if (engine_check_params(e, &p) < 0) die("image parameters");
        run_jobs(e, &p, 1, &warm);
        for (int r = 0; r < o->runs; r++) {
            phase_times pt = {0};
            p = job_params(side, o->steps, serial++, prompt, sizeof prompt);
            run_jobs(e, &p, 1, &pt);
            times[r] = pt.encode + pt.steps + pt.decode;
            sum.encode += pt.encode;
            sum.steps += pt.steps;
            sum.decode += pt.decode;
        }
        const double med = median(times, o->runs);
        printf("image %dx%d, %d steps, guidance 4.5: %.2f s median of %d (mean encode %.3f s, "
               "steps %.2f s, decode %.3f s)\n",
               side, side, o->steps, med, o->runs, sum.encode / o->runs, sum.steps / o->runs,
               sum.decode / o->runs);
        printf("BENCH image_s_%d %.4f\n", side, med);
        kn_memory m;
        engine_memory(e, &m);
        printf("memory after %dx%d: %.2f GB held by the device context (peak %.2f GB of %.1f GB), "
               "%.2f GB resident in all; engine_job_bytes bound %.2f GB\n",
               side, side, m.in_use / 1e9, m.peak / 1e9, m.total / 1e9,
               engine_resident_bytes(e) / 1e9, engine_job_bytes(e, &p) / 1e9);
        fflush(stdout);
    }
    free(times);
}

static void bench_throughput(const bench_opts *o, sd3_engine *e)
{
    const int side = o->sizes[0], n = o->jobs;
    gen_params *ps = calloc((size_t)n, sizeof *ps);
    char(*prompts)[128] = calloc((size_t)n, sizeof *prompts);
    if (!ps || !prompts) die("out of memory");
    for (int i = 0; i < n; i++)
        ps[i] = job_params(side, o->steps, 1000 + i, prompts[i], sizeof prompts[i]);
    phase_times pt = {0};
    run_jobs(e, ps, n, &pt);
    const double total = pt.encode + pt.steps + pt.decode;
    printf("throughput: %d concurrent %dx%d jobs, %d steps, batched through engine_step: %.2f s "
           "(encode %.2f, steps %.2f, decode %.2f) = %.3f images/s\n",
           n, side, side, o->steps, total, pt.encode, pt.steps, pt.decode, n / total);
    printf("BENCH images_per_s_%dx%d %.5f\n", side, n, n / total);
    fflush(stdout);
    free(ps);
    free(prompts);
}

int main(int argc, char **argv)
{
    bench_opts o = parse_args(argc, argv);
    kn_ctx *ctx;
    if (kn_ctx_create(o.device, 0, &ctx) < 0) {
        if (o.device != KN_CUDA) die("creating the CPU context");
        /* The backend's own message usually says it already; say it once either way. */
        const char *why = err_msg(), *lead = "no usable CUDA device";
        if (strncmp(why, lead, strlen(lead)) == 0)
            printf("bench_gpu: skipped: %s\n", why);
        else
            printf("bench_gpu: skipped: %s (%s)\n", lead, why);
        return 0;
    }
    printf("bench_gpu: %s device 0; model %s\n", o.device == KN_CUDA ? "CUDA" : "CPU (--cpu)",
           o.model);
    printf("precision: %s activations in the transformer and the VAE (float32 accumulation, TF32 "
           "off; text encoders, latents and sampler in float32)\n",
           engine_precision_name(o.compute));
    if (o.peak_tflops > 0)
        printf("peak: %.0f TFLOP/s dense BF16, as given (the kernels interface does not name the "
               "card)\n",
               o.peak_tflops);
    else
        printf("peak: not given (--peak TFLOPS); no fraction of peak is printed\n");
    fflush(stdout);
    model_config *mc;
    if (model_config_load(o.model, &mc) < 0) die("loading the configuration");
    bench_steps(&o, ctx, mc);
    model_config_free(mc);
    kn_ctx_destroy(ctx);

    double t0 = bench_now();
    sd3_engine *e;
    engine_options eo = {.device = o.device, .compute = o.compute};
    if (engine_load(o.model, &eo, &e) < 0) die("loading the engine");
    printf("engine load: %.2f s (%.2f GB of weight files)\n", bench_now() - t0,
           (double)engine_weight_bytes(e) / 1e9);
    fflush(stdout);
    bench_images(&o, e);
    bench_throughput(&o, e);
    engine_free(e);
    return 0;
}
