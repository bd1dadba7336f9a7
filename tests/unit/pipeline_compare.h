/* Shared by the tests that compare two engines on the same requests (CPU 16-bit modes against
 * float32 here, the CUDA backend against the CPU in tests/gpu): the fixture engine, the
 * requests compared, running one to its end and decoding it, and the two measures the
 * precision checks use, relative L2 error of the final latents and PSNR of the 8-bit images.
 * Header-only (static inline), like check.h. */
#ifndef FOCUS_TESTS_PIPELINE_COMPARE_H
#define FOCUS_TESTS_PIPELINE_COMPARE_H

#include "common/err.h"
#include "engine/pipeline.h"
#include "tests/unit/check.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The fixture model loaded with o (NULL: the defaults); 0, or -1 after a failed CHECK. */
static inline int load_fixture_engine(const engine_options *o, sd3_engine **e)
{
    char path[512];
    snprintf(path, sizeof path, "%s/tiny-sd35", fixtures_dir());
    int rc = engine_load(path, o, e);
    CHECKF(rc == 0, "%s", err_msg());
    return rc == 0 ? 0 : -1;
}

/* The requests the precision checks compare on: a full 28-step run with guidance, two images
 * per prompt, and a non-square run without guidance. */
#define COMPARE_REQUESTS 3
static inline void compare_requests(gen_params reqs[COMPARE_REQUESTS])
{
    static const struct {
        const char *prompt;
        int steps;
        float guidance;
        int w, h, count;
        uint64_t seed;
    } r[COMPARE_REQUESTS] = {
        {"a misty forest with ancient trees, volumetric light", 28, 4.5f, 128, 128, 1, 3},
        {"a cute dog in the snow", 4, 4.5f, 128, 128, 2, 7},
        {"a robot astronaut", 3, 1.0f, 192, 128, 1, 2},
    };
    for (int i = 0; i < COMPARE_REQUESTS; i++) {
        gen_params_defaults(&reqs[i]);
        reqs[i].prompt = r[i].prompt;
        reqs[i].steps = r[i].steps;
        reqs[i].guidance = r[i].guidance;
        reqs[i].width = r[i].w;
        reqs[i].height = r[i].h;
        reqs[i].count = r[i].count;
        reqs[i].seed = r[i].seed;
    }
}

/* What one request produced. */
typedef struct run_result {
    float *latents; /* final latents, n_latents floats */
    size_t n_latents;
    uint8_t *rgb; /* count x H x W x 3 bytes */
    size_t n_rgb;
} run_result;

/* Prepares, steps and decodes p on e; 0, or -1 after a failed CHECK naming the error. */
static inline int run_request(sd3_engine *e, const gen_params *p, run_result *r)
{
    gen_job *j = NULL;
    *r = (run_result){0};
    int rc = engine_job_prepare(e, p, &j);
    while (rc == 0 && !engine_job_done(j))
        rc = engine_step(e, &j, 1);
    if (rc == 0) {
        int64_t s[4];
        engine_job_latent_shape(j, s);
        r->n_latents = (size_t)(s[0] * s[1] * s[2] * s[3]);
        r->latents = malloc(r->n_latents * sizeof *r->latents);
        rc = engine_job_latents(j, r->latents, r->n_latents);
    }
    if (rc == 0) {
        r->n_rgb = (size_t)p->count * (size_t)p->width * (size_t)p->height * 3;
        rc = engine_job_decode(e, j, &r->rgb);
    }
    engine_job_free(j);
    CHECKF(rc == 0, "%s", err_msg());
    return rc == 0 ? 0 : -1;
}

static inline void run_result_free(run_result *r)
{
    free(r->latents);
    free(r->rgb);
    *r = (run_result){0};
}

/* ||a - b|| / ||b||. */
static inline double rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* PSNR of 8-bit images in dB (infinite when equal). */
static inline double psnr_u8(const uint8_t *a, const uint8_t *b, size_t n)
{
    double se = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        se += d * d;
    }
    return se == 0 ? INFINITY : 10.0 * log10(255.0 * 255.0 / (se / (double)n));
}

#endif
