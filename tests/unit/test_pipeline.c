/* Tests of the step-level engine (engine/pipeline.c) against StableDiffusion3Pipeline runs on the
 * fixture model (tests/fixtures/golden/pipeline/): for every case the initial noise is bit-exact,
 * the final latents agree to 1e-3 and the 8-bit image to the rounding of a float ulp (99% of the
 * bytes equal, none off by more than 2; the float image, where kept, within 1e-4). Beyond the
 * reference: jobs batched into one forward pass (at different step indices, with several images
 * each) match the same jobs run alone; the prompt-encoding cache encodes a repeated prompt once;
 * skip-layer guidance acts only inside its window and batches like the main pass; bad
 * parameters are refused with a message naming the parameter. */
#include "engine/pipeline.h"

#include "common/err.h"
#include "engine/npy.h"
#include "tests/unit/check.h"
#include "tests/unit/pipeline_compare.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Measured on the fixture with OpenBLAS: final latents within 2.5e-5 of the reference, the
 * float image within 4e-6, at most 1 in 1000 bytes of the 8-bit image off (by 1). */
#define TOL_LATENTS 1e-3
#define TOL_IMAGE 1e-4

static sd3_engine *eng;
static json_t *cases;

static void golden_path(char *buf, size_t n, const char *name, const char *file)
{
    snprintf(buf, n, "%s/golden/pipeline/%s/%s", fixtures_dir(), name, file);
}

static int case_params(const json_t *c, gen_params *p)
{
    gen_params_defaults(p);
    p->prompt = json_string_value(json_object_get(c, "prompt"));
    p->negative_prompt =
        json_string_value(json_object_get(c, "negative_prompt")); /* NULL for null */
    p->seed = (uint64_t)json_integer_value(json_object_get(c, "seed"));
    p->steps = (int)json_integer_value(json_object_get(c, "steps"));
    p->guidance = (float)json_number_value(json_object_get(c, "guidance_scale"));
    p->width = (int)json_integer_value(json_object_get(c, "width"));
    p->height = (int)json_integer_value(json_object_get(c, "height"));
    p->max_seq = (int)json_integer_value(json_object_get(c, "max_sequence_length"));
    p->count = (int)json_integer_value(json_object_get(c, "num_images_per_prompt"));
    /* Skip-layer guidance cases (made with diffusers 0.32, see tools/reference/README.md). */
    const json_t *layers = json_object_get(c, "skip_guidance_layers"), *l;
    size_t i;
    if (json_array_size(layers) > ENGINE_MAX_SLG_LAYERS) return -1;
    json_array_foreach(layers, i, l) p->slg_layers[p->slg_count++] = (int)json_integer_value(l);
    if (p->slg_count) {
        p->slg_scale = (float)json_number_value(json_object_get(c, "skip_layer_guidance_scale"));
        p->slg_start = json_number_value(json_object_get(c, "skip_layer_guidance_start"));
        p->slg_stop = json_number_value(json_object_get(c, "skip_layer_guidance_stop"));
    }
    return p->prompt && p->steps > 0 ? 0 : -1;
}

static const json_t *find_case(const char *name)
{
    size_t i;
    json_t *c;
    json_array_foreach(
        cases, i, c) if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0) return c;
    return NULL;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

/* The job's latents read back (n floats). */
static float *read_latents(const gen_job *j, size_t n)
{
    float *x = malloc(n * sizeof *x);
    if (x && engine_job_latents(j, x, n) < 0) {
        fprintf(stderr, "  %s\n", err_msg());
        free(x);
        return NULL;
    }
    return x;
}

static void run_to_end(gen_job *j)
{
    while (!engine_job_done(j))
        if (engine_step(eng, &j, 1) < 0) {
            CHECKF(0, "engine_step: %s", err_msg());
            return;
        }
}

static size_t latent_count(const gen_params *p)
{
    return (size_t)p->count * 16 * (size_t)(p->height / 8) * (size_t)(p->width / 8);
}

/* ---- the reference cases ---- */

static void check_case(const json_t *c)
{
    const char *name = json_string_value(json_object_get(c, "name"));
    gen_params p;
    CHECK(case_params(c, &p) == 0);
    gen_job *j = NULL;
    if (engine_job_prepare(eng, &p, &j) < 0) {
        CHECKF(0, "%s: prepare: %s", name, err_msg());
        return;
    }
    char path[512];
    npy_array noise = {0}, lat = {0}, img = {0}, u8 = {0};
    const size_t n = latent_count(&p);
    golden_path(path, sizeof path, name, "noise.npy");
    CHECKF(npy_read_f32(path, &noise) == 0 && noise.count == n, "%s: %s", path, err_msg());
    float *x = read_latents(j, n);
    CHECK(x != NULL);
    if (x && noise.count == n)
        CHECKF(memcmp(x, noise.f32, n * sizeof *x) == 0, "%s: initial noise differs (max %g)", name,
               max_abs_diff(x, noise.f32, n));
    free(x);

    run_to_end(j);
    CHECK(engine_job_step_index(j) == p.steps && engine_job_done(j));
    golden_path(path, sizeof path, name, "latents.npy");
    CHECKF(npy_read_f32(path, &lat) == 0 && lat.count == n, "%s: %s", path, err_msg());
    x = read_latents(j, n);
    if (x && lat.count == n) {
        double d = max_abs_diff(x, lat.f32, n);
        CHECKF(d <= TOL_LATENTS, "%s: final latents max abs error %g", name, d);
    }
    free(x);

    uint8_t *rgb = NULL;
    const size_t nb = (size_t)p.count * (size_t)p.width * (size_t)p.height * 3;
    if (engine_job_decode(eng, j, &rgb) < 0) {
        CHECKF(0, "%s: decode: %s", name, err_msg());
    } else {
        golden_path(path, sizeof path, name, "image_u8.npy");
        CHECKF(npy_read_int(path, &u8) == 0 && u8.count == nb, "%s: %s", path, err_msg());
        if (u8.count == nb) {
            size_t same = 0;
            int64_t worst = 0;
            for (size_t i = 0; i < nb; i++) {
                int64_t d = llabs((int64_t)rgb[i] - u8.i64[i]);
                same += d == 0;
                if (d > worst) worst = d;
            }
            CHECKF(same >= nb * 99 / 100 && worst <= 2, "%s: %zu of %zu bytes equal, worst %lld",
                   name, same, nb, (long long)worst);
        }
        /* The float image is kept for some cases only (tools/reference/README.md). */
        golden_path(path, sizeof path, name, "image.npy");
        float *im = malloc(nb * sizeof *im);
        CHECK(im && engine_job_image(j, im, nb) == 0);
        if (im && access(path, F_OK) == 0) {
            CHECKF(npy_read_f32(path, &img) == 0 && img.count == nb, "%s: %s", path, err_msg());
            if (img.count == nb) {
                double d = max_abs_diff(im, img.f32, nb);
                CHECKF(d <= TOL_IMAGE, "%s: float image max abs error %g", name, d);
            }
        }
        free(im);
        free(rgb);
    }
    npy_array_free(&noise);
    npy_array_free(&lat);
    npy_array_free(&img);
    npy_array_free(&u8);
    engine_job_free(j);
}

static void test_reference_cases(void)
{
    size_t i;
    json_t *c;
    CHECK(json_array_size(cases) >= 10);
    json_array_foreach(cases, i, c) check_case(c);
}

/* ---- batching ---- */

/* The parameters of the reference case `name`. */
static void params_of(const char *name, gen_params *p)
{
    const json_t *c = find_case(name);
    gen_params_defaults(p);
    CHECKF(c && case_params(c, p) == 0, "no case %s", name);
}

static gen_job *prepare_case(const char *name, gen_params *p)
{
    params_of(name, p);
    gen_job *j = NULL;
    if (engine_job_prepare(eng, p, &j) < 0) CHECKF(0, "%s: prepare: %s", name, err_msg());
    return j;
}

/* Jobs a and b (both batchable) run separately and then together, b started one step after a
 * so that the shared passes mix step indices; the latents must be the same bit for bit. */
static void check_batched(gen_params *pa, gen_params *pb)
{
    gen_job *sa = NULL, *sb = NULL, *ba = NULL, *bb = NULL;
    if (engine_job_prepare(eng, pa, &sa) < 0 || engine_job_prepare(eng, pb, &sb) < 0 ||
        engine_job_prepare(eng, pa, &ba) < 0 || engine_job_prepare(eng, pb, &bb) < 0) {
        CHECKF(0, "prepare: %s", err_msg());
        goto out;
    }
    CHECK(engine_jobs_batchable(ba, bb));
    run_to_end(sa);
    run_to_end(sb);
    CHECK(engine_step(eng, &ba, 1) == 0);
    while (!engine_job_done(ba) || !engine_job_done(bb)) {
        gen_job *both[2];
        int m = 0;
        if (!engine_job_done(ba)) both[m++] = ba;
        if (!engine_job_done(bb)) both[m++] = bb;
        if (engine_step(eng, both, m) < 0) {
            CHECKF(0, "engine_step: %s", err_msg());
            goto out;
        }
    }
    const gen_job *single[2] = {sa, sb}, *batched[2] = {ba, bb};
    const gen_params *ps[2] = {pa, pb};
    for (int k = 0; k < 2; k++) {
        size_t n = latent_count(ps[k]);
        float *x = read_latents(single[k], n), *y = read_latents(batched[k], n);
        CHECK(x && y);
        if (x && y)
            CHECKF(memcmp(x, y, n * sizeof *x) == 0,
                   "job %d: batched and single latents differ by %g", k, max_abs_diff(x, y, n));
        free(x);
        free(y);
    }
out:
    engine_job_free(sa);
    engine_job_free(sb);
    engine_job_free(ba);
    engine_job_free(bb);
}

static void test_batching(void)
{
    gen_params a, b;
    /* Two CFG jobs of one size with different prompts, guidance and image counts. */
    params_of("two_images", &a);
    params_of("negative", &b);
    check_batched(&a, &b);
    /* Two jobs without CFG. */
    params_of("nocfg128", &a);
    b = a;
    b.prompt = "a different prompt";
    b.seed = 99;
    check_batched(&a, &b);
}

static void test_not_batchable(void)
{
    gen_params a, b, c, d;
    gen_job *ja = prepare_case("negative", &a), *jb = prepare_case("nocfg128", &b);
    gen_job *jc = prepare_case("msl77_tall128x192", &c), *jd = prepare_case("wide320x192", &d);
    if (ja && jb && jc && jd) {
        CHECK(!engine_jobs_batchable(ja, jb)); /* CFG on and off */
        CHECK(!engine_jobs_batchable(jc, jd)); /* size */
        /* All four in one call: each runs in its own pass, and all advance. */
        gen_job *all[4] = {ja, jb, jc, jd};
        CHECKF(engine_step(eng, all, 4) == 0, "%s", err_msg());
        for (int i = 0; i < 4; i++)
            CHECK(engine_job_step_index(all[i]) == 1);
        gen_job *twice[2] = {ja, ja};
        CHECK(engine_step(eng, twice, 2) == ERR_INVALID);
    }
    engine_job_free(ja);
    engine_job_free(jb);
    engine_job_free(jc);
    engine_job_free(jd);
}

/* ---- encoding cache ---- */

static void test_encode_cache(void)
{
    gen_params p;
    gen_params_defaults(&p);
    p.prompt = "a prompt the cache has not seen";
    p.width = p.height = 128;
    p.steps = 1;
    gen_job *a = NULL, *b = NULL;
    uint64_t n0 = engine_encode_count(eng);
    CHECKF(engine_job_prepare(eng, &p, &a) == 0, "%s", err_msg());
    uint64_t n1 = engine_encode_count(eng);
    /* The prompt is new; the empty negative prompt may already be cached (at max_seq 77). */
    CHECK(n1 - n0 >= 1 && n1 - n0 <= 2);
    CHECKF(engine_job_prepare(eng, &p, &b) == 0, "%s", err_msg());
    CHECK(engine_encode_count(eng) == n1);
    /* A different max_seq is a different encoding. */
    gen_job *c = NULL;
    p.max_seq = 100;
    CHECKF(engine_job_prepare(eng, &p, &c) == 0, "%s", err_msg());
    CHECK(engine_encode_count(eng) == n1 + 2);
    engine_job_free(a);
    engine_job_free(b);
    engine_job_free(c);
}

/* A job encoded on another thread (engine_job_encode) while this one steps. */
struct encode_arg {
    sd3_engine *e;
    const gen_params *p;
    gen_job *j;
    int rc;
};

static void *encode_thread(void *p)
{
    struct encode_arg *a = p;
    a->rc = engine_job_encode(a->e, a->p, &a->j);
    return NULL;
}

/* Steps j on e to its end and compares its final latents with ref's, bit for bit. */
static void same_latents(sd3_engine *e, gen_job *j, gen_job *ref, size_t n)
{
    while (!engine_job_done(j))
        if (engine_step(e, &j, 1) < 0) {
            CHECKF(0, "engine_step: %s", err_msg());
            return;
        }
    float *lr = read_latents(ref, n), *lj = read_latents(j, n);
    CHECK(lr && lj && memcmp(lr, lj, n * sizeof *lr) == 0);
    free(lr);
    free(lj);
}

/* The text encoders on a context of their own (engine_options.text_on_cpu): the same latents
 * bit for bit, a second job encoded on another thread while the first steps (and refused by
 * engine_step until attached), the cache's entries counted in what the engine holds. */
static void test_text_on_cpu(void)
{
    engine_options o = {.device = KN_CPU, .text_on_cpu = true};
    sd3_engine *sep;
    if (load_fixture_engine(&o, &sep) < 0) return;
    CHECK(engine_encodes_apart(sep) && !engine_encodes_apart(eng));
    gen_params p, q;
    params_of("negative", &p);
    params_of("two_images", &q);
    gen_job *a = NULL, *b = NULL, *ra = NULL, *rb = NULL;
    struct encode_arg arg = {sep, &q, NULL, -1};
    pthread_t t;
    if (engine_job_prepare(eng, &p, &ra) == 0 && engine_job_prepare(eng, &q, &rb) == 0 &&
        engine_job_prepare(sep, &p, &a) == 0 &&
        pthread_create(&t, NULL, encode_thread, &arg) == 0) {
        run_to_end(ra);
        same_latents(sep, a, ra, latent_count(&p));
        pthread_join(t, NULL);
        CHECKF(arg.rc == 0, "%s", err_msg());
        b = arg.j;
        if (b) {
            CHECK(engine_step(sep, &b, 1) == ERR_INVALID);
            CHECKF(engine_job_attach(sep, b) == 0, "%s", err_msg());
            run_to_end(rb);
            same_latents(sep, b, rb, latent_count(&q));
        }
    } else {
        CHECKF(0, "prepare: %s", err_msg());
    }
    kn_memory m;
    engine_memory(sep, &m);
    CHECK(engine_resident_bytes(sep) > m.in_use + engine_weight_bytes(sep));
    gen_job *all[] = {a, b, ra, rb};
    for (int i = 0; i < 4; i++)
        engine_job_free(all[i]);
    engine_free(sep);
}

/* ---- skip-layer guidance ---- */

static void test_slg(void)
{
    gen_params base, off, on;
    params_of("negative", &base);
    base.steps = 10;
    off = on = base;
    /* A window that holds no step: identical to no SLG, bit for bit. */
    off.slg_count = on.slg_count = 2;
    off.slg_layers[0] = on.slg_layers[0] = 1;
    off.slg_layers[1] = on.slg_layers[1] = 2;
    off.slg_start = off.slg_stop = 0.5;
    on.slg_start = 0.1; /* steps 2..4 of 10 */
    on.slg_stop = 0.5;
    gen_job *jb = NULL, *jo = NULL, *jn = NULL;
    if (engine_job_prepare(eng, &base, &jb) < 0 || engine_job_prepare(eng, &off, &jo) < 0 ||
        engine_job_prepare(eng, &on, &jn) < 0) {
        CHECKF(0, "prepare: %s", err_msg());
    } else {
        CHECK(!engine_jobs_batchable(jb, jn)); /* different skip lists */
        size_t n = latent_count(&base);
        float *x[3] = {0};
        gen_job *js[3] = {jb, jo, jn};
        for (int k = 0; k < 3; k++) {
            /* Up to step 2 SLG is inactive: all three agree; after it, `on` departs. */
            for (int s = 0; s < 2; s++)
                CHECK(engine_step(eng, &js[k], 1) == 0);
            x[k] = read_latents(js[k], n);
        }
        CHECK(x[0] && x[1] && x[2] && memcmp(x[0], x[2], n * sizeof(float)) == 0);
        for (int k = 0; k < 3; k++) {
            run_to_end(js[k]);
            free(x[k]);
            x[k] = read_latents(js[k], n);
        }
        CHECK(x[0] && x[1] && x[2]);
        if (x[0] && x[1] && x[2]) {
            CHECK(memcmp(x[0], x[1], n * sizeof(float)) == 0);
            CHECKF(max_abs_diff(x[0], x[2], n) > 1e-2, "SLG changed the latents by only %g",
                   max_abs_diff(x[0], x[2], n));
        }
        for (int k = 0; k < 3; k++)
            free(x[k]);
    }
    engine_job_free(jb);
    engine_job_free(jo);
    engine_job_free(jn);
    /* Two SLG jobs batched, one inside its window while the other is not yet. */
    gen_params other = on;
    other.prompt = "another prompt";
    other.seed = 17;
    other.count = 2;
    check_batched(&on, &other);
}

/* ---- parameter checks ---- */

static void expect_refused(const gen_params *p, const char *param)
{
    int rc = engine_check_params(eng, p);
    CHECKF(rc == ERR_RANGE || rc == ERR_INVALID, "%s: accepted", param);
    CHECKF(strstr(err_msg(), param) != NULL, "message \"%s\" does not name %s", err_msg(), param);
    gen_job *j = NULL;
    CHECKF(engine_job_prepare(eng, p, &j) < 0 && j == NULL, "%s: prepare accepted it", param);
}

static void test_invalid_params(void)
{
    gen_params ok, p;
    gen_params_defaults(&ok);
    ok.prompt = "x";
    CHECK(engine_check_params(eng, &ok) == 0); /* 512x512: the fixture's largest size */
    p = ok, p.width = 120;
    expect_refused(&p, "width");
    p = ok, p.height = 0;
    expect_refused(&p, "height");
    p = ok, p.width = 528;
    expect_refused(&p, "width x height");
    p = ok, p.steps = 0;
    expect_refused(&p, "steps");
    p = ok, p.count = 0;
    expect_refused(&p, "count");
    p = ok, p.max_seq = 0;
    expect_refused(&p, "max_seq");
    p = ok, p.max_seq = 513;
    expect_refused(&p, "max_seq");
    p = ok, p.prompt = NULL;
    expect_refused(&p, "prompt");
    p = ok, p.guidance = NAN;
    expect_refused(&p, "guidance");
    p = ok, p.slg_count = 1, p.slg_layers[0] = 3;
    expect_refused(&p, "slg_layers[0]");
}

static void test_defaults(void)
{
    gen_params p;
    gen_params_defaults(&p);
    CHECK(p.steps == 28 && p.guidance == 4.5f && p.width == 512 && p.height == 512);
    CHECK(p.max_seq == 77 && p.count == 1 && p.seed == 0 && p.slg_count == 0);
    CHECK(p.slg_scale == 2.8f && p.slg_start == 0.01 && p.slg_stop == 0.2);
}

/* A device the probe refuses is one a context cannot be made on, for the same reason, and a
 * device a context is made on passes the probe: the daemon chooses its device by the probe. */
static void test_probe_device(void)
{
    CHECK(engine_probe_device(KN_CPU, 0) == 0);
    for (int index = -1; index <= 1; index++) {
        kn_ctx *ctx = NULL;
        int made = kn_ctx_create(KN_CUDA, index, &ctx);
        char why[256];
        snprintf(why, sizeof why, "%s", made < 0 ? err_msg() : "");
        kn_ctx_destroy(ctx);
        int probed = engine_probe_device(KN_CUDA, index);
        if (made == 0) CHECKF(probed == 0, "cuda:%d: %s", index, err_msg());
        if (probed < 0) {
            CHECK(probed == ERR_DEVICE && made == ERR_DEVICE);
            CHECKF(strcmp(why, err_msg()) == 0, "probe: \"%s\", context: \"%s\"", err_msg(), why);
        }
    }
    CHECK(engine_probe_device(KN_CUDA, -1) == ERR_DEVICE);
    CHECK(engine_probe_device(KN_CUDA, 1 << 20) == ERR_DEVICE);
}

int main(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/golden/pipeline/cases.json", fixtures_dir());
    json_error_t jerr;
    cases = json_load_file(path, 0, &jerr);
    snprintf(path, sizeof path, "%s/tiny-sd35", fixtures_dir());
    if (!cases || engine_load(path, NULL, &eng) < 0) {
        fprintf(stderr, "setup: %s\n", cases ? err_msg() : jerr.text);
        printf("RESULT passed=0 failed=1\n");
        return 1;
    }
    RUN(test_defaults);
    RUN(test_probe_device);
    RUN(test_reference_cases);
    RUN(test_batching);
    RUN(test_not_batchable);
    RUN(test_encode_cache);
    RUN(test_text_on_cpu);
    RUN(test_slg);
    RUN(test_invalid_params);
    engine_free(eng);
    json_decref(cases);
    CHECK_DONE();
}
