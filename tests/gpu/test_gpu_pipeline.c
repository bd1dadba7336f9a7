/* The engine on the CUDA backend against the engine on the CPU, on the fixture model: float32
 * mode (TF32 off) must reproduce the CPU's final latents within the tolerance the CPU is held
 * to against diffusers (1e-3 max abs) and its 8-bit images (99% of bytes equal, none off by
 * more than 2); bf16 and fp16 modes must stay within 2% relative L2 of the CPU float32 latents
 * with an image PSNR of 30 dB or more, on the requests of compare_requests().
 * Without a usable CUDA device this prints a SKIP line and reports no tests, never a pass. */
#include "engine/pipeline.h"

#include "common/err.h"
#include "tests/unit/check.h"
#include "tests/unit/pipeline_compare.h"

#include <math.h>
#include <string.h>

#define TOL_LATENTS 1e-3
#define MAX_REL_L2 0.02
#define MIN_PSNR_DB 30.0

static sd3_engine *cpu;
static gen_params reqs[COMPARE_REQUESTS];

static double max_abs(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)a[i] - (double)b[i]) <= m)) m = fabs((double)a[i] - (double)b[i]);
    return m;
}

static void compare(kn_dtype compute)
{
    engine_options o = {.device = KN_CUDA, .compute = compute};
    sd3_engine *gpu;
    if (load_fixture_engine(&o, &gpu) < 0) return;
    for (int i = 0; i < COMPARE_REQUESTS; i++) {
        run_result ref = {0}, got = {0};
        if (run_request(cpu, &reqs[i], &ref) == 0 && run_request(gpu, &reqs[i], &got) == 0) {
            double l2 = rel_l2(got.latents, ref.latents, ref.n_latents);
            double db = psnr_u8(got.rgb, ref.rgb, ref.n_rgb);
            printf("  cuda %s, request %d: latents %.3g relative L2 (%.3g max abs), image %.1f "
                   "dB\n",
                   engine_precision_name(compute), i, l2,
                   max_abs(got.latents, ref.latents, ref.n_latents), db);
            if (compute == KN_F32) {
                size_t same = 0;
                int worst = 0;
                for (size_t k = 0; k < ref.n_rgb; k++) {
                    int d = abs((int)got.rgb[k] - (int)ref.rgb[k]);
                    same += d == 0;
                    if (d > worst) worst = d;
                }
                CHECK(max_abs(got.latents, ref.latents, ref.n_latents) <= TOL_LATENTS);
                CHECKF(same >= 0.99 * (double)ref.n_rgb && worst <= 2,
                       "%zu of %zu bytes equal, worst %d", same, ref.n_rgb, worst);
            } else {
                CHECKF(l2 <= MAX_REL_L2, "relative L2 %.4g", l2);
                CHECKF(db >= MIN_PSNR_DB, "PSNR %.2f dB", db);
            }
        }
        run_result_free(&ref);
        run_result_free(&got);
    }
    engine_free(gpu);
}

static void test_cuda_fp32(void)
{
    compare(KN_F32);
}

static void test_cuda_bf16(void)
{
    compare(KN_BF16);
}

static void test_cuda_fp16(void)
{
    compare(KN_F16);
}

int main(void)
{
    kn_ctx *probe;
    if (kn_ctx_create(KN_CUDA, 0, &probe) != 0) {
        printf("SKIP test_gpu_pipeline: skipped: %s\n", err_msg());
        CHECK_DONE();
    }
    kn_ctx_destroy(probe);
    if (load_fixture_engine(NULL, &cpu) < 0) {
        printf("RESULT passed=0 failed=1\n");
        return 1;
    }
    compare_requests(reqs);
    RUN(test_cuda_fp32);
    RUN(test_cuda_bf16);
    RUN(test_cuda_fp16);
    engine_free(cpu);
    CHECK_DONE();
}
