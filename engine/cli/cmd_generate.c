/* focus-run generate: one text-to-image run through the step-level engine, as
 * StableDiffusion3Pipeline(prompt, ...) with a CPU generator seeded with --seed would make it,
 * written as PNG files carrying the generation parameters as text chunks. Progress goes to
 * stderr per step; --dump also writes the noise, the final latents and the float image as .npy
 * for comparison with the reference. Not a server: one job, then exit. */
#include "engine/cli/cli_common.h"

#include "common/err.h"
#include "engine/gen_text.h"
#include "engine/npy.h"
#include "engine/pipeline.h"
#include "engine/png_out.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The defaults stated here are gen_params_defaults()'s (the FOCUS model card). */
static const cli_opt generate_opts[] = {
    {"model", "MODEL", "model directory, or ORG/NAME in the Hugging Face cache, optionally as NAME=MODEL (required)", 0, false},
    {"prompt", "TEXT", "the prompt (required; may be empty)", 0, false},
    {"negative", "TEXT", "the negative prompt (default: \"\"; unused without CFG)", 0, false},
    {"seed", "N", "seed of the torch CPU generator, 0..2^64-1 (default 0; low 32 bits count)", 0, false},
    {"steps", "N", "denoising steps, 1..1000 (default 28)", 0, false},
    {"cfg", "G", "classifier-free guidance scale; <= 1 turns CFG off (default 4.5)", 0, false},
    {"width", "W", "image width in pixels, a multiple of 16 (default 512)", 0, false},
    {"height", "H", "image height in pixels, a multiple of 16 (default 512)", 0, false},
    {"max-seq", "N", "T5 max_sequence_length, 1..512 (default 77)", 0, false},
    {"count", "N", "images from one prompt and seed, 1..64 (default 1)", 0, false},
    {"slg", "LAYERS", "skip-layer guidance on these blocks, e.g. 7,8,9 (default: off)", 0, false},
    {"slg-scale", "S", "skip-layer guidance scale (default 2.8)", 0, false},
    {"slg-start", "F", "skip-layer guidance starts after this fraction of the steps (default 0.01)",
     0, false},
    {"slg-stop", "F", "skip-layer guidance stops at this fraction of the steps (default 0.2)", 0, false},
    {"focus-subject", "PHRASE", "a subject for the FOCUS control: a phrase of the prompt "
     "(repeatable, up to 8)", 0, true},
    {"focus-tokens", "POS", "a subject's positions, 't5=1,2;clip=2' (repeatable; one per "
     "subject, given in place of or beside --focus-subject)", 0, true},
    {"focus-lambda", "L", "strength of the FOCUS control; 0 turns it off (default 1)", 0, false},
    {"focus-heuristic", "NAME", "focus, attend_and_excite or divide_and_bind (default focus)",
     0, false},
    {"output", "FILE", "the PNG to write (required); see below for --count > 1", 'o', false},
    {"dump", "DIR", "also write noise.npy, latents.npy, image.npy (and focus_cost.npy) here "
     "(default: none)", 0, false},
    {"device", "DEV", "cpu, cuda or cuda:N (default cpu)", 0, false},
    {"precision", "P",
     "fp32, bf16, fp16 or auto (default auto: bf16 on CUDA and on CPUs with native bf16, fp32 "
     "elsewhere; fp16 on the CPU is an emulation, slow)",
     0, false},
    {"threads", "N", "CPU threads, 1..64 (default: the online CPUs); the bytes never change", 0, false},
    {"text-device", "WHERE",
     "same (the text encoders on --device) or cpu (on the CPU, for small cards; default same)", 0, false},
    {NULL, NULL, NULL, 0, false},
};

/* A finite number option, or def when absent. */
static int opt_number(const cli_args *a, const char *name, double def, double *out)
{
    const char *v = cli_str(a, name, NULL);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(d) || fabs(d) > 1e30)
        return cli_usage_error(a, "--%s: '%s' is not a finite number", name, v);
    *out = d;
    return 0;
}

static int opt_seed(const cli_args *a, uint64_t *out)
{
    const char *v = cli_str(a, "seed", NULL);
    if (!v) return 0;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 0);
    if (end == v || *end || errno || strchr(v, '-'))
        return cli_usage_error(a, "--seed: '%s' is not an integer in 0..2^64-1", v);
    *out = n;
    return 0;
}

/* "7,8,9" into p->slg_layers; range checks are the engine's. */
static int opt_slg_layers(const cli_args *a, gen_params *p)
{
    const char *v = cli_str(a, "slg", NULL);
    if (!v) return 0;
    const char *s = v;
    do {
        char *end;
        errno = 0;
        long n = strtol(s, &end, 10);
        if (end == s || errno || n < 0 || n > 1000 || (*end && *end != ','))
            return cli_usage_error(a, "--slg: '%s' is not a comma-separated list of block indices",
                                   v);
        if (p->slg_count == ENGINE_MAX_SLG_LAYERS)
            return cli_usage_error(a, "--slg: more than %d blocks", ENGINE_MAX_SLG_LAYERS);
        p->slg_layers[p->slg_count++] = (int)n;
        s = *end ? end + 1 : end;
    } while (*s);
    return 0;
}

/* --focus-subject and --focus-tokens into p->focus: the phrases name the subjects; positions,
 * when given, say which tokens they are (then one per subject). */
static int opt_focus(const cli_args *a, gen_params *p)
{
    focus_request *r = &p->focus;
    const char *const *phrases, *const *tokens;
    const int n_phrases = cli_all(a, "focus-subject", &phrases);
    const int n_tokens = cli_all(a, "focus-tokens", &tokens);
    if (n_phrases && n_tokens && n_phrases != n_tokens)
        return cli_usage_error(a, "%d --focus-subject and %d --focus-tokens: give one "
                               "--focus-tokens per subject", n_phrases, n_tokens);
    r->n_subjects = n_tokens ? n_tokens : n_phrases;
    for (int k = 0; k < n_tokens; k++)
        if (focus_positions_parse(tokens[k], &r->subjects[k]) < 0)
            return cli_usage_error(a, "--focus-tokens: %s", err_msg());
    for (int k = 0; k < n_phrases && !n_tokens; k++)
        r->subjects[k].phrase = phrases[k];
    double lambda;
    int rc = opt_number(a, "focus-lambda", r->lambda, &lambda);
    if (rc) return rc;
    r->lambda = (float)lambda;
    const char *h = cli_str(a, "focus-heuristic", NULL);
    if (h && focus_heuristic_parse(h, &r->heuristic) < 0)
        return cli_usage_error(a, "--focus-heuristic: %s", err_msg());
    return 0;
}

static int parse_params(const cli_args *a, gen_params *p)
{
    gen_params_defaults(p);
    p->prompt = cli_str(a, "prompt", NULL);
    if (!p->prompt) return cli_usage_error(a, "--prompt is required");
    p->negative_prompt = cli_str(a, "negative", NULL);
    double guidance, slg_scale;
    int rc;
    if ((rc = opt_seed(a, &p->seed)) ||
        (rc = cli_int(a, "steps", p->steps, 1, ENGINE_MAX_STEPS, &p->steps)) ||
        (rc = opt_number(a, "cfg", p->guidance, &guidance)) ||
        (rc = cli_int(a, "width", p->width, 16, 1 << 16, &p->width)) ||
        (rc = cli_int(a, "height", p->height, 16, 1 << 16, &p->height)) ||
        (rc = cli_int(a, "max-seq", p->max_seq, 1, 512, &p->max_seq)) ||
        (rc = cli_int(a, "count", p->count, 1, ENGINE_MAX_COUNT, &p->count)) ||
        (rc = opt_slg_layers(a, p)) ||
        (rc = opt_number(a, "slg-scale", p->slg_scale, &slg_scale)) ||
        (rc = opt_number(a, "slg-start", p->slg_start, &p->slg_start)) ||
        (rc = opt_number(a, "slg-stop", p->slg_stop, &p->slg_stop)) || (rc = opt_focus(a, p)))
        return rc;
    p->guidance = (float)guidance;
    p->slg_scale = (float)slg_scale;
    return 0;
}

/* Image i of a batch goes to path for i = 0, else to the path with "-i" before its extension:
 * out.png, out-1.png, out-2.png, ... */
static void image_path(const char *path, int i, char *buf, size_t n)
{
    if (i == 0) {
        snprintf(buf, n, "%s", path);
        return;
    }
    const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
    if (!dot || (slash && dot < slash) || dot == (slash ? slash + 1 : path))
        dot = path + strlen(path);
    snprintf(buf, n, "%.*s-%d%s", (int)(dot - path), path, i, dot);
}

static int write_images(const cli_args *a, const gen_params *p, const char *model,
                        const uint8_t *rgb)
{
    const size_t bytes = (size_t)p->width * (size_t)p->height * 3;
    const char *out = cli_str(a, "output", NULL);
    for (int i = 0; i < p->count; i++) {
        char path[4096];
        image_path(out, i, path, sizeof path);
        gen_text text;
        gen_text_fill(&text, p, model, "focus-run " FOCUS_VERSION, i);
        if (png_out_write(path, rgb + (size_t)i * bytes, p->width, p->height, text.kv, text.n) < 0)
            return cli_fail(a, "writing the image");
        printf("%s\n", path);
    }
    return CLI_EXIT_OK;
}

static int dump_npy(const char *dir, const char *name, const float *data, int ndim,
                    const int64_t *shape)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return npy_write_f32(path, data, ndim, shape);
}

/* Reads the job's latents and writes them as DIR/name. */
static int dump_latents(const gen_job *j, const char *dir, const char *name)
{
    int64_t shape[4];
    engine_job_latent_shape(j, shape);
    size_t n = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
    float *x = malloc(n * sizeof *x);
    if (!x) return err_set(ERR_NOMEM, "%s: out of memory", name);
    int rc = engine_job_latents(j, x, n);
    if (rc == 0) rc = dump_npy(dir, name, x, 4, shape);
    free(x);
    return rc;
}

/* focus_cost.npy: the cost at each step before its control, for a controlled job. */
static int dump_costs(const gen_job *j, const gen_params *p, const char *dir)
{
    float *c = malloc((size_t)p->steps * sizeof *c);
    if (!c) return err_set(ERR_NOMEM, "focus_cost.npy: out of memory");
    int rc = engine_job_focus_costs(j, c, (size_t)p->steps);
    if (rc == 0) rc = dump_npy(dir, "focus_cost.npy", c, 1, (int64_t[]){p->steps});
    free(c);
    return rc;
}

static int dump_image(const gen_job *j, const gen_params *p, const char *dir)
{
    int64_t shape[4] = {p->count, p->height, p->width, 3};
    size_t n = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
    float *x = malloc(n * sizeof *x);
    if (!x) return err_set(ERR_NOMEM, "image.npy: out of memory");
    int rc = engine_job_image(j, x, n);
    if (rc == 0) rc = dump_npy(dir, "image.npy", x, 4, shape);
    free(x);
    return rc;
}

/* prepare, step to the end with progress, decode, write. */
static int run_job(const cli_args *a, sd3_engine *e, const gen_params *p, const char *model)
{
    const char *dump = cli_str(a, "dump", NULL);
    gen_job *j;
    double t0 = cli_now();
    if (engine_job_prepare(e, p, &j) < 0) return cli_fail(a, "preparing the job");
    fprintf(stderr, "prepared in %.2f s (%s, seed %llu, %dx%d, %d step%s, guidance %g)\n",
            cli_now() - t0, engine_model_config(e)->path, (unsigned long long)p->seed, p->width,
            p->height, p->steps, p->steps == 1 ? "" : "s", (double)p->guidance);
    int rc = CLI_EXIT_OK;
    if (dump && dump_latents(j, dump, "noise.npy") < 0) rc = cli_fail(a, "--dump");
    double start = cli_now();
    while (rc == CLI_EXIT_OK && !engine_job_done(j)) {
        double ts = cli_now();
        if (engine_step(e, &j, 1) < 0) {
            rc = cli_fail(a, "denoising");
            break;
        }
        double now = cli_now();
        int k = engine_job_step_index(j);
        fprintf(stderr, "step %d/%d  %.2f s/it  (%.1f s elapsed)\n", k, p->steps, now - ts,
                now - start);
    }
    uint8_t *rgb = NULL;
    if (rc == CLI_EXIT_OK && dump && dump_latents(j, dump, "latents.npy") < 0)
        rc = cli_fail(a, "--dump");
    if (rc == CLI_EXIT_OK && dump && focus_request_active(&p->focus) && dump_costs(j, p, dump) < 0)
        rc = cli_fail(a, "--dump");
    if (rc == CLI_EXIT_OK) {
        double td = cli_now();
        if (engine_job_decode(e, j, &rgb) < 0)
            rc = cli_fail(a, "decoding");
        else
            fprintf(stderr, "decoded in %.2f s\n", cli_now() - td);
    }
    if (rc == CLI_EXIT_OK && dump && dump_image(j, p, dump) < 0) rc = cli_fail(a, "--dump");
    if (rc == CLI_EXIT_OK) rc = write_images(a, p, model, rgb);
    free(rgb);
    engine_job_free(j);
    return rc;
}

static int generate_run(const cli_args *a)
{
    const char *model = cli_model(a);
    if (!model || !cli_required(a, "output")) return CLI_EXIT_USAGE;
    gen_params p;
    int rc = parse_params(a, &p);
    if (rc) return rc;
    const char *dump = cli_str(a, "dump", NULL);
    if (dump && mkdir(dump, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "focus-run generate: %s: cannot create: %s\n", dump, strerror(errno));
        return CLI_EXIT_FAIL;
    }
    /* The engine opens its own context: this one only validates --device and reports an
     * unusable device before the model is read. */
    kn_ctx *probe;
    if ((rc = cli_open_device(a, &probe)) != 0) return rc;
    engine_options opts = {.device = kn_ctx_device(probe)};
    kn_ctx_destroy(probe);
    const char *d = cli_str(a, "device", "cpu");
    if (strncmp(d, "cuda:", 5) == 0) opts.device_index = atoi(d + 5);
    if (engine_precision_parse(cli_str(a, "precision", "auto"), opts.device, &opts.compute) < 0)
        return cli_usage_error(a, "--precision: %s", err_msg());
    int threads = kn_cpu_threads();
    if ((rc = cli_int(a, "threads", threads, 1, KN_CPU_MAX_THREADS, &threads)) != 0) return rc;
    if (kn_cpu_set_threads(threads) < 0) return cli_usage_error(a, "--threads: %s", err_msg());
    const char *text = cli_str(a, "text-device", "same");
    if (strcmp(text, "same") != 0 && strcmp(text, "cpu") != 0)
        return cli_usage_error(a, "--text-device: '%s' is not same or cpu", text);
    opts.text_on_cpu = strcmp(text, "cpu") == 0;

    sd3_engine *e;
    double t0 = cli_now();
    if (engine_load(model, &opts, &e) < 0) return cli_fail(a, "loading the model");
    fprintf(stderr, "loaded in %.2f s (%.2f GB of weights)\n", cli_now() - t0,
            (double)engine_weight_bytes(e) / 1e9);
    /* The command line's own ranges are wide; the model decides the sizes it can take. */
    if (engine_check_params(e, &p) < 0) {
        fprintf(stderr, "focus-run generate: %s\n(see focus-run generate --help)\n", err_msg());
        engine_free(e);
        return CLI_EXIT_USAGE;
    }
    rc = run_job(a, e, &p, model);
    engine_free(e);
    return rc;
}

const cli_cmd cli_cmd_generate = {
    .name = "generate",
    .usage = "--model MODEL --prompt TEXT -o FILE [OPTIONS]",
    .summary = "generate images as StableDiffusion3Pipeline does; write PNG files",
    .details =
        "The run matches diffusers' StableDiffusion3Pipeline in float32 with\n"
        "generator=torch.Generator(\"cpu\").manual_seed(SEED): the same seed gives the same\n"
        "initial noise, bit for bit. With --count N > 1 all N images come from one draw of\n"
        "that generator (num_images_per_prompt=N) and are written to FILE, then FILE with\n"
        "-1, -2, ... before its extension (out.png, out-1.png, out-2.png). Each PNG carries\n"
        "text chunks: prompt, negative_prompt, seed, steps, guidance, width, height, max_seq,\n"
        "model, sampler, Software, count, index (and skip_layer_guidance, focus_subjects and\n"
        "focus_lambda when used). The paths written go to stdout; per-step progress and\n"
        "timings go to stderr.\n"
        "--dump DIR writes float32 .npy files: noise.npy (the initial latents, [N, 16, H/8,\n"
        "W/8]), latents.npy (the final latents, before decoding), image.npy (the decoded\n"
        "images in [0, 1], [N, H, W, 3], as output_type=\"np\" returns them) and, with the\n"
        "FOCUS control, focus_cost.npy (the cost at each step before its control).\n"
        "Skip-layer guidance follows later diffusers pipelines and acts only with CFG on.\n"
        "The FOCUS control (ericbill21/FOCUS's test-time controller) keeps the subjects apart:\n"
        "each --focus-subject is a phrase of the prompt, mapped to its CLIP and T5 tokens; or\n"
        "--focus-tokens gives the positions as the reference's datasets list them (T5 from 0\n"
        "without BOS, CLIP counting BOS as 0). One image (--count 1); the reference runs\n"
        "--max-seq 77.",
    .opts = generate_opts,
    .min_pos = 0,
    .max_pos = 0,
    .run = generate_run,
};
