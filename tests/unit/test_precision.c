/* Tests of the engine's 16-bit compute modes (engine_options.compute = BF16, F16) on the CPU
 * against its float32 mode, on the fixture model: the criteria the CUDA backend's bf16 mode is
 * held to (final latents within 2% relative L2, image PSNR 30 dB or more), for a full 28-step
 * run with guidance, two images per prompt and a non-square run without guidance. Each mode
 * must also differ from float32 (the setting is in effect), and bad precision names and
 * compute dtypes are refused. */
#include "engine/mmdit.h"
#include "engine/pipeline.h"

#include "common/err.h"
#include "tests/unit/check.h"
#include "tests/unit/pipeline_compare.h"

#include <string.h>

#define MAX_REL_L2 0.02
#define MIN_PSNR_DB 30.0

static sd3_engine *fp32;

static void compare_mode(kn_dtype compute)
{
    engine_options o = {.device = KN_CPU, .compute = compute};
    sd3_engine *e;
    if (load_fixture_engine(&o, &e) < 0) return;
    gen_params ps[COMPARE_REQUESTS];
    compare_requests(ps);
    for (int i = 0; i < COMPARE_REQUESTS; i++) {
        run_result ref = {0}, got = {0};
        if (run_request(fp32, &ps[i], &ref) == 0 && run_request(e, &ps[i], &got) == 0) {
            double l2 = rel_l2(got.latents, ref.latents, ref.n_latents);
            double db = psnr_u8(got.rgb, ref.rgb, ref.n_rgb);
            printf("  %s, request %d: latents %.3g relative L2, image %.1f dB\n",
                   engine_precision_name(compute), i, l2, db);
            CHECKF(l2 <= MAX_REL_L2, "relative L2 %.4g", l2);
            CHECKF(db >= MIN_PSNR_DB, "PSNR %.2f dB", db);
            CHECKF(l2 > 1e-6, "%s gave the float32 latents: the mode is not in effect",
                   engine_precision_name(compute));
        }
        run_result_free(&ref);
        run_result_free(&got);
    }
    engine_free(e);
}

static void test_bf16(void)
{
    compare_mode(KN_BF16);
}

static void test_fp16(void)
{
    compare_mode(KN_F16);
}

static void test_names(void)
{
    kn_dtype dt;
    /* auto is bf16 exactly where the CPU multiplies bf16 natively. */
    CHECK(engine_precision_parse("auto", KN_CPU, &dt) == 0 &&
          dt == (kn_cpu_native_bf16() ? KN_BF16 : KN_F32));
    CHECK(engine_precision_parse("auto", KN_CUDA, &dt) == 0 && dt == KN_BF16);
    CHECK(engine_precision_parse("fp16", KN_CPU, &dt) == 0 && dt == KN_F16);
    CHECK(engine_precision_parse("bf16", KN_CPU, &dt) == 0 && dt == KN_BF16);
    CHECK(engine_precision_parse("fp32", KN_CUDA, &dt) == 0 && dt == KN_F32);
    CHECK(engine_precision_parse("fp8", KN_CPU, &dt) == ERR_INVALID);
    CHECKF(strstr(err_msg(), "fp8") != NULL, "%s", err_msg());
    CHECK(engine_precision_parse("", KN_CPU, &dt) == ERR_INVALID);
    CHECK(strcmp(engine_precision_name(KN_BF16), "bf16") == 0);

    char path[512];
    snprintf(path, sizeof path, "%s/tiny-sd35", fixtures_dir());
    engine_options o = {.device = KN_CPU, .compute = KN_I32};
    sd3_engine *e = NULL;
    CHECK(engine_load(path, &o, &e) == ERR_INVALID);
    CHECKF(strstr(err_msg(), "I32") != NULL, "%s", err_msg());
    CHECK(e == NULL);
}

int main(void)
{
    if (load_fixture_engine(NULL, &fp32) < 0) {
        printf("RESULT passed=0 failed=1\n");
        return 1;
    }
    RUN(test_names);
    RUN(test_bf16);
    RUN(test_fp16);
    engine_free(fp32);
    CHECK_DONE();
}
