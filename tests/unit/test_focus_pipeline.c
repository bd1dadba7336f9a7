/* The FOCUS-controlled sampler (engine/focus_control.c through engine_step) against the
 * authors' SD3ControllerPipeline on the fixture model (tools/reference/gen_focus.py,
 * golden/focus/pipeline/): the control factor bit for bit, per-step costs, the step-0
 * gradient and the final latents; lambda 0 as the plain pipeline; the same bytes when a
 * controlled job shares its steps with a plain one; the request's errors. */
#include "common/err.h"
#include "engine/npy.h"
#include "engine/pipeline.h"

#include "check.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static sd3_engine *eng;
static json_t *cases;

/* A golden of case `name`, or NULL after a message. */
static float *read_golden(const char *name, const char *file, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/golden/focus/pipeline/%s/%s.npy", fixtures_dir(), name, file);
    npy_array a;
    if (npy_read_f32(path, &a) < 0) {
        fprintf(stderr, "  %s\n", err_msg());
        return NULL;
    }
    *n = a.count;
    return a.f32;
}

/* The case's request, its subjects as phrases (positions = false) or as the reference's
 * position lists. */
static void case_params(const json_t *c, bool positions, gen_params *p)
{
    gen_params_defaults(p);
    p->prompt = json_string_value(json_object_get(c, "prompt"));
    p->negative_prompt = json_string_value(json_object_get(c, "negative_prompt"));
    p->seed = (uint64_t)json_integer_value(json_object_get(c, "seed"));
    p->steps = (int)json_integer_value(json_object_get(c, "steps"));
    p->guidance = (float)json_number_value(json_object_get(c, "guidance_scale"));
    p->width = (int)json_integer_value(json_object_get(c, "width"));
    p->height = (int)json_integer_value(json_object_get(c, "height"));
    p->max_seq = (int)json_integer_value(json_object_get(c, "max_sequence_length"));
    p->focus.lambda = (float)json_number_value(json_object_get(c, "lambda"));
    focus_heuristic_parse(json_string_value(json_object_get(c, "heuristic")), &p->focus.heuristic);
    const json_t *phrases = json_object_get(c, "subjects");
    p->focus.n_subjects = (int)json_array_size(phrases);
    for (int k = 0; k < p->focus.n_subjects; k++) {
        focus_subject *s = &p->focus.subjects[k];
        if (!positions) {
            s->phrase = json_string_value(json_array_get(phrases, (size_t)k));
            continue;
        }
        const json_t *t5 = json_array_get(json_object_get(c, "t5"), (size_t)k);
        const json_t *clip = json_array_get(json_object_get(c, "clip"), (size_t)k);
        for (size_t i = 0; i < json_array_size(t5); i++)
            s->t5[s->n_t5++] = (int32_t)json_integer_value(json_array_get(t5, i));
        for (size_t i = 0; i < json_array_size(clip); i++)
            s->clip[s->n_clip++] = (int32_t)json_integer_value(json_array_get(clip, i));
    }
}

static size_t latent_count(const gen_job *j)
{
    int64_t s[4];
    engine_job_latent_shape(j, s);
    return (size_t)(s[0] * s[1] * s[2] * s[3]);
}

/* Runs p to the end: the final latents, the per-step costs and the step-0 gradient (either
 * may be NULL; costs only for a controlled job). */
static int run(const gen_params *p, float *latents, float *costs, float *grad0)
{
    gen_job *j;
    int rc = engine_job_prepare(eng, p, &j);
    if (rc < 0) return rc;
    const size_t n = latent_count(j);
    while (rc == 0 && !engine_job_done(j)) {
        rc = engine_step(eng, &j, 1);
        if (rc == 0 && grad0 && engine_job_step_index(j) == 1)
            rc = engine_job_focus_grad(j, grad0, n);
    }
    if (rc == 0 && latents) rc = engine_job_latents(j, latents, n);
    if (rc == 0 && costs) rc = engine_job_focus_costs(j, costs, (size_t)p->steps);
    engine_job_free(j);
    return rc;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)a[i] - b[i]) <= m)) m = fabs((double)a[i] - b[i]);
    return m;
}

static void cosine_l2(const float *a, const float *b, size_t n, double *cosine, double *rel)
{
    double ab = 0, aa = 0, bb = 0, e = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    }
    *cosine = ab / sqrt(aa * bb);
    *rel = sqrt(e / bb);
}

/* The factor lambda * sigma * (1 - t_nom) at each of the case's timesteps, as the reference
 * computed it in float32: bit for bit. */
static void test_control_factor(void)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const float lambda = (float)json_number_value(json_object_get(c, "lambda"));
        const json_t *ts = json_object_get(c, "timesteps"),
                     *fs = json_object_get(c, "control_factors");
        for (size_t k = 0; k < json_array_size(ts); k++) {
            const float t = (float)json_number_value(json_array_get(ts, k));
            const float want = (float)json_number_value(json_array_get(fs, k));
            CHECKF(focus_control_weight(lambda, t) == want,
                   "lambda %g t %.9g: %.9g, reference "
                   "%.9g",
                   (double)lambda, (double)t, (double)focus_control_weight(lambda, t),
                   (double)want);
        }
    }
}

/* fp32 against the reference: per-step cost within 1e-4 relative, the step-0 gradient at
 * cosine >= 0.999 and relative L2 <= 1e-3, final latents within 1e-3 (the bounds). */
static void test_reference_cases(void)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *name = json_string_value(json_object_get(c, "name"));
        gen_params p;
        case_params(c, false, &p);
        size_t n_lat, n_cost, n_grad;
        float *want_lat = read_golden(name, "latents", &n_lat);
        float *want_cost = read_golden(name, "cost", &n_cost);
        float *want_grad = read_golden(name, "grad0", &n_grad);
        CHECK(want_lat && want_cost && want_grad);
        const bool controlled = p.focus.lambda != 0.0f;
        float *lat = calloc(n_lat, sizeof *lat), *cost = calloc(n_cost + 1, sizeof *cost);
        float *grad = calloc(n_grad, sizeof *grad);
        int rc = run(&p, lat, controlled ? cost : NULL, controlled ? grad : NULL);
        CHECKF(rc == 0, "%s: %s", name, err_msg());
        if (rc == 0 && controlled) {
            double worst = 0, cosine, rel;
            for (size_t k = 0; k < n_cost; k++) {
                const double d = fabs((double)cost[k] - want_cost[k]) / fabs(want_cost[k]);
                if (!(d <= worst)) worst = d;
            }
            cosine_l2(grad, want_grad, n_grad, &cosine, &rel);
            CHECKF(worst <= 1e-4, "%s: cost rel error %.3g", name, worst);
            CHECKF(cosine >= 0.999 && rel <= 1e-3, "%s: step-0 gradient cosine %.7f rel L2 %.3g",
                   name, cosine, rel);
            printf("  %s: cost rel %.2e, grad0 cosine %.7f rel L2 %.2e, ", name, worst, cosine,
                   rel);
        }
        const double dl = rc == 0 ? max_abs_diff(lat, want_lat, n_lat) : INFINITY;
        CHECKF(dl <= 1e-3, "%s: final latents max error %.3g", name, dl);
        printf("%slatents max %.2e\n", controlled ? "" : "  ", dl);
        free(lat), free(cost), free(grad), free(want_lat), free(want_cost), free(want_grad);
    }
}

/* Position lists in the reference's format name the same tokens as the phrases: the same bytes.
 * lambda 0 is the plain pipeline, bit for bit. */
static void test_positions_and_lambda0(void)
{
    const json_t *c = json_array_get(cases, 0);
    gen_params by_phrase, by_position, plain;
    case_params(c, false, &by_phrase);
    case_params(c, true, &by_position);
    by_phrase.steps = by_position.steps = 2;
    size_t n;
    free(read_golden(json_string_value(json_object_get(c, "name")), "latents", &n));
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *d = malloc(n * sizeof *d);
    CHECK(run(&by_phrase, a, NULL, NULL) == 0 && run(&by_position, b, NULL, NULL) == 0);
    CHECK(!memcmp(a, b, n * sizeof *a));
    plain = by_phrase;
    plain.focus.lambda = 0.0f;
    CHECK(run(&plain, a, NULL, NULL) == 0);
    plain.focus.n_subjects = 0;
    CHECK(run(&plain, d, NULL, NULL) == 0);
    CHECK(!memcmp(a, d, n * sizeof *a));
    CHECK(memcmp(a, b, n * sizeof *a) != 0); /* the control does move the latents */
    free(a), free(b), free(d);
}

/* A controlled job stepped beside a plain one (one forward pass) and beside a second
 * controlled one (then two passes) gives the bytes it gives alone. */
static void test_batched(void)
{
    const json_t *c = json_array_get(cases, 0);
    gen_params ctl, other;
    case_params(c, false, &ctl);
    ctl.steps = 2;
    other = ctl;
    other.focus.n_subjects = 0;
    other.seed = 5;
    gen_job *alone;
    CHECK(engine_job_prepare(eng, &ctl, &alone) == 0);
    const size_t n = latent_count(alone);
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    while (!engine_job_done(alone))
        CHECK(engine_step(eng, &alone, 1) == 0);
    CHECK(engine_job_latents(alone, want, n) == 0);
    engine_job_free(alone);
    for (int second_controlled = 0; second_controlled < 2; second_controlled++) {
        gen_params q = second_controlled ? ctl : other;
        if (second_controlled) q.seed = 9;
        gen_job *jobs[2];
        CHECK(engine_job_prepare(eng, &q, &jobs[0]) == 0 &&
              engine_job_prepare(eng, &ctl, &jobs[1]) == 0);
        while (!engine_job_done(jobs[1]))
            CHECK(engine_step(eng, jobs, 2) == 0);
        CHECK(engine_job_latents(jobs[1], got, n) == 0);
        CHECKF(!memcmp(want, got, n * sizeof *got), "beside a %s job",
               second_controlled ? "controlled" : "plain");
        engine_job_free(jobs[0]), engine_job_free(jobs[1]);
    }
    free(want), free(got);
}

/* Refused at the check and at prepare, naming the field; costs of a plain job are an error. */
static void test_errors(void)
{
    gen_params p;
    case_params(json_array_get(cases, 0), false, &p);
    static const char *const field[] = {"subjects", "count", "focus_lambda"};
    for (int i = 0; i < 3; i++) {
        gen_params q = p;
        if (i == 0) q.focus.subjects[1].phrase = "zebra"; /* not in the prompt */
        if (i == 1) q.count = 2;
        if (i == 2) q.focus.lambda = INFINITY;
        gen_job *j = NULL;
        CHECKF(engine_check_params(eng, &q) < 0 && strstr(err_msg(), field[i]), "%s: %s", field[i],
               err_msg());
        CHECK(engine_job_prepare(eng, &q, &j) < 0 && j == NULL);
    }
    gen_job *plain;
    p.focus.n_subjects = 0;
    CHECK(engine_job_prepare(eng, &p, &plain) == 0);
    float c[8];
    CHECK(engine_job_focus_costs(plain, c, 8) == ERR_INVALID);
    engine_job_free(plain);
}

int main(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/golden/focus/pipeline/cases.json", fixtures_dir());
    cases = json_load_file(path, 0, NULL);
    snprintf(path, sizeof path, "%s/tiny-sd35", fixtures_dir());
    if (!cases || engine_load(path, NULL, &eng) < 0) {
        fprintf(stderr, "setup: %s\n", cases ? err_msg() : "no golden/focus/pipeline/cases.json");
        return 1;
    }
    RUN(test_control_factor);
    RUN(test_reference_cases);
    RUN(test_positions_and_lambda0);
    RUN(test_batched);
    RUN(test_errors);
    engine_free(eng);
    json_decref(cases);
    CHECK_DONE();
}
