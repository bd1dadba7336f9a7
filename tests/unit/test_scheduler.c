/* The flow-match schedule against golden/scheduler.json (diffusers 0.31.0's set_timesteps for
 * the fixture's scheduler config, with and without dynamic shifting), bit for bit; the Euler
 * step sizes; the skip-layer guidance window; argument errors. */
#include "common/err.h"
#include "engine/scheduler.h"
#include "tests/unit/check.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

static json_t *golden;

static json_t *load_golden(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/scheduler.json", fixtures_dir());
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        fprintf(stderr, "  %s: %s\n", path, jerr.text);
    return root;
}

static scheduler_config golden_config(bool dynamic)
{
    json_t *c = json_object_get(golden, "config");
    scheduler_config cfg = {
        .num_train_timesteps = (int)json_integer_value(json_object_get(c, "num_train_timesteps")),
        .shift = (float)json_number_value(json_object_get(c, "shift")),
        .use_dynamic_shifting = dynamic,
        .base_shift = (float)json_number_value(json_object_get(c, "base_shift")),
        .max_shift = (float)json_number_value(json_object_get(c, "max_shift")),
        .base_image_seq_len = (int)json_integer_value(json_object_get(c, "base_image_seq_len")),
        .max_image_seq_len = (int)json_integer_value(json_object_get(c, "max_image_seq_len")),
    };
    return cfg;
}

/* Compares one golden entry's sigmas and timesteps with the schedule, exactly. */
static void check_entry(json_t *e, const fm_schedule *s, const char *what)
{
    json_t *sig = json_object_get(e, "sigmas"), *ts = json_object_get(e, "timesteps");
    int n = s->num_steps;
    CHECKF(json_array_size(sig) == (size_t)n + 1 && json_array_size(ts) == (size_t)n, "%s N=%d", what, n);
    if (json_array_size(sig) != (size_t)n + 1 || json_array_size(ts) != (size_t)n)
        return;
    for (int i = 0; i <= n; i++) {
        float want = (float)json_number_value(json_array_get(sig, (size_t)i));
        CHECKF(memcmp(&want, &s->sigmas[i], sizeof want) == 0, "%s N=%d sigmas[%d]: got %a want %a", what, n, i,
               (double)s->sigmas[i], (double)want);
    }
    for (int i = 0; i < n; i++) {
        float want = (float)json_number_value(json_array_get(ts, (size_t)i));
        CHECKF(memcmp(&want, &s->timesteps[i], sizeof want) == 0, "%s N=%d timesteps[%d]: got %a want %a", what, n,
               i, (double)s->timesteps[i], (double)want);
    }
}

static void test_static_golden(void)
{
    CHECK(golden != NULL);
    if (!golden)
        return;
    scheduler_config cfg = golden_config(false);
    json_t *list = json_object_get(golden, "static");
    CHECK(json_array_size(list) >= 8);
    size_t k;
    json_t *e;
    json_array_foreach(list, k, e) {
        int n = (int)json_integer_value(json_object_get(e, "num_inference_steps"));
        fm_schedule s;
        CHECKF(fm_set_timesteps(&cfg, n, 0.0, &s) == 0, "N=%d: %s", n, err_msg());
        check_entry(e, &s, "static");
        fm_schedule_free(&s);
    }
}

static void test_dynamic_golden(void)
{
    CHECK(golden != NULL);
    if (!golden)
        return;
    scheduler_config cfg = golden_config(true);
    json_t *c = json_object_get(golden, "config");
    /* The config's float64 values, as the pipeline's calculate_shift sees them. */
    double base_shift = json_number_value(json_object_get(c, "base_shift"));
    double max_shift = json_number_value(json_object_get(c, "max_shift"));
    json_t *list = json_object_get(json_object_get(golden, "dynamic_shifting"), "cases");
    CHECK(json_array_size(list) >= 4);
    size_t k;
    json_t *e;
    json_array_foreach(list, k, e) {
        int w = (int)json_integer_value(json_object_get(e, "width"));
        int h = (int)json_integer_value(json_object_get(e, "height"));
        int seq = (h / 8 / 2) * (w / 8 / 2); /* latent size over patch size 2 */
        CHECK(seq == (int)json_integer_value(json_object_get(e, "image_seq_len")));
        double mu = fm_calculate_shift(seq, cfg.base_image_seq_len, cfg.max_image_seq_len, base_shift, max_shift);
        int n = (int)json_integer_value(json_object_get(e, "num_inference_steps"));
        fm_schedule s;
        CHECKF(fm_set_timesteps(&cfg, n, mu, &s) == 0, "N=%d: %s", n, err_msg());
        check_entry(e, &s, "dynamic");
        fm_schedule_free(&s);
    }
}

/* The spec's computed values for N=28 (shift 3), and the Euler step sizes built from them. */
static void test_spec_values_and_dt(void)
{
    scheduler_config cfg = {.num_train_timesteps = 1000, .shift = 3.0f, .base_shift = 0.5f,
                            .max_shift = 1.15f, .base_image_seq_len = 256, .max_image_seq_len = 4096};
    fm_schedule s;
    CHECK(fm_set_timesteps(&cfg, 28, NAN, &s) == 0); /* mu unused without dynamic shifting */
    if (s.num_steps != 28)
        return;
    CHECK(s.sigmas[0] == 1.0f && s.timesteps[0] == 1000.0f);
    CHECK(s.sigmas[1] == 0.987380624f && s.timesteps[1] == 987.380615f);
    CHECK(s.sigmas[27] == 0.00892857183f && s.timesteps[27] == 8.9285717f);
    CHECK(s.sigmas[28] == 0.0f);
    for (int i = 0; i < 28; i++) {
        float dt = fm_step_dt(&s, i);
        CHECK(dt == s.sigmas[i + 1] - s.sigmas[i] && dt < 0.0f);
    }
    CHECK(fm_step_dt(&s, 27) == -0.00892857183f);
    fm_schedule_free(&s);
    CHECK(s.sigmas == NULL && s.timesteps == NULL);
}

static void test_calculate_shift(void)
{
    /* The line's end points, and 1024x1024 (64x64 patches of the 128x128 latent). */
    CHECK(fm_calculate_shift(256, 256, 4096, 0.5, 1.15) == 0.5);
    CHECK(fabs(fm_calculate_shift(4096, 256, 4096, 0.5, 1.15) - 1.15) < 1e-15);
    CHECK(isnan(fm_calculate_shift(300, 256, 256, 0.5, 1.15)));
}

static void test_slg_window(void)
{
    /* Defaults 0.01 / 0.2 at 28 steps: 0.28 < i < 5.6. */
    int active = 0, first = -1, last = -1;
    for (int i = 0; i < 28; i++) {
        if (fm_slg_active(i, 28, 0.01, 0.2)) {
            active++;
            if (first < 0)
                first = i;
            last = i;
        }
    }
    CHECK(active == 5 && first == 1 && last == 5);
    /* At 100 steps, 100 * 0.01 == 1.0 exactly, so step 1 is outside; 100 * 0.2 == 20.0. */
    CHECK(!fm_slg_active(1, 100, 0.01, 0.2) && fm_slg_active(2, 100, 0.01, 0.2));
    CHECK(fm_slg_active(19, 100, 0.01, 0.2) && !fm_slg_active(20, 100, 0.01, 0.2));
    CHECK(!fm_slg_active(0, 28, 0.0, 1.0) && fm_slg_active(27, 28, 0.0, 1.0));
}

static void test_errors(void)
{
    scheduler_config cfg = {.num_train_timesteps = 1000, .shift = 3.0f};
    fm_schedule s;
    CHECK(fm_set_timesteps(&cfg, 0, 0.0, &s) == ERR_RANGE && strstr(err_msg(), "num_inference_steps"));
    CHECK(s.sigmas == NULL && s.timesteps == NULL);
    cfg.use_dynamic_shifting = true;
    CHECK(fm_set_timesteps(&cfg, 28, NAN, &s) == ERR_RANGE && strstr(err_msg(), "mu"));
    cfg.use_dynamic_shifting = false;
    cfg.shift = 0.0f;
    CHECK(fm_set_timesteps(&cfg, 28, 0.0, &s) == ERR_RANGE && strstr(err_msg(), "shift"));
    cfg.shift = 3.0f;
    cfg.num_train_timesteps = 0;
    CHECK(fm_set_timesteps(&cfg, 28, 0.0, &s) == ERR_RANGE && strstr(err_msg(), "num_train_timesteps"));
}

int main(void)
{
    golden = load_golden();
    RUN(test_static_golden);
    RUN(test_dynamic_golden);
    RUN(test_spec_values_and_dt);
    RUN(test_calculate_shift);
    RUN(test_slg_window);
    RUN(test_errors);
    json_decref(golden);
    CHECK_DONE();
}
