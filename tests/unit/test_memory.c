/* Tests of the engine's memory figures on the fixture model: the device context counts what it
 * holds (engine_memory), and engine_job_bytes bounds what a job adds to a freshly loaded engine
 * from above while covering at least the transformer's and the VAE's scratch that the job
 * really allocates; a second job of the same shape reuses that scratch. */
#include "engine/mmdit.h"
#include "engine/pipeline.h"

#include "common/err.h"
#include "tests/unit/check.h"
#include "tests/unit/pipeline_compare.h"

static void job(gen_params *p, int w, int h, int count, int max_seq, float guidance)
{
    gen_params_defaults(p);
    p->prompt = "a lighthouse on a rocky coast";
    p->steps = 2;
    p->width = w;
    p->height = h;
    p->count = count;
    p->max_seq = max_seq;
    p->guidance = guidance;
}

static void check_job_bound(const gen_params *p)
{
    sd3_engine *e;
    if (load_fixture_engine(NULL, &e) < 0) return;
    kn_memory before, after, again;
    engine_memory(e, &before);
    CHECK(before.total > 0);
    CHECK(engine_resident_bytes(e) >= engine_weight_bytes(e)); /* mapped weights count */
    run_result r;
    uint64_t bound = engine_job_bytes(e, p);
    if (run_request(e, p, &r) == 0) {
        engine_memory(e, &after);
        uint64_t used = after.peak - before.in_use;
        uint64_t floor = bound - ENGINE_OP_SCRATCH;
        printf("  %dx%d x%d, max_seq %d: measured %.2f MB, bound %.2f MB (%.2f MB without the "
               "op allowance)\n",
               p->width, p->height, p->count, p->max_seq, used / 1e6, bound / 1e6, floor / 1e6);
        CHECKF(used <= bound, "the job took %llu bytes, over the bound %llu",
               (unsigned long long)used, (unsigned long long)bound);
        /* The exact parts (arenas, tensors) are all allocated: the measure is not empty. */
        CHECKF(used >= floor / 2, "the job took %llu bytes, under half of %llu",
               (unsigned long long)used, (unsigned long long)floor);
        /* The scratch stays: the same shape again allocates only the job's own tensors. */
        engine_memory_reset_peak(e);
        run_result r2;
        if (run_request(e, p, &r2) == 0) {
            engine_memory(e, &again);
            CHECKF(again.peak <= after.peak, "a second job raised the peak from %llu to %llu",
                   (unsigned long long)after.peak, (unsigned long long)again.peak);
        }
        run_result_free(&r2);
    }
    run_result_free(&r);
    engine_free(e);
}

static void test_cfg_square(void)
{
    gen_params p;
    job(&p, 128, 128, 2, 256, 4.5f);
    check_job_bound(&p);
}

static void test_nocfg_wide(void)
{
    gen_params p;
    job(&p, 256, 128, 1, 77, 1.0f);
    check_job_bound(&p);
}

static void test_bound_grows(void)
{
    sd3_engine *e;
    if (load_fixture_engine(NULL, &e) < 0) return;
    gen_params a, b, c;
    job(&a, 128, 128, 1, 77, 4.5f);
    job(&b, 256, 256, 1, 77, 4.5f);
    job(&c, 128, 128, 4, 77, 4.5f);
    CHECK(engine_job_bytes(e, &b) > engine_job_bytes(e, &a));
    CHECK(engine_job_bytes(e, &c) > engine_job_bytes(e, &a));
    engine_free(e);
}

int main(void)
{
    RUN(test_cfg_square);
    RUN(test_nocfg_wide);
    RUN(test_bound_grows);
    CHECK_DONE();
}
