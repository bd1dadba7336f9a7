/* Memory benchmark (make bench-memory): what one job adds to a freshly loaded engine, measured
 * by the device context's own counters (kn_ctx_memory), against the engine's bound
 * (engine_job_bytes) that the daemon refuses jobs by. Full-size SD3.5-medium shapes
 * (tools/make_bench_model.py), guidance on, the longest T5 prompt (max_seq 512, the text
 * encoders' worst case), one denoising step, one decode, at each image side given. Prints the
 * measured peak over the loaded engine, the bound, its exact part (scratch of the transformer
 * and the VAE, the job's tensors) and the part ENGINE_OP_SCRATCH must cover (op scratch and
 * text-encoder activations) as measured. Each side runs on a freshly loaded engine. Figures,
 * not a test.
 * Usage: bench_memory MODEL_DIR [side ...]   (default 512) */
#include "common/err.h"
#include "engine/pipeline.h"
#include "tests/bench/common/bench_util.h"

#include <stdio.h>
#include <stdlib.h>

static void die(const char *what)
{
    fprintf(stderr, "bench_memory: %s: %s\n", what, err_msg());
    exit(1);
}

/* One job on a freshly loaded engine, so that no scratch of an earlier size is counted. */
static void one_job(const char *model, int side)
{
    sd3_engine *e;
    if (engine_load(model, NULL, &e) < 0) die("loading the engine");
    kn_memory m;
    engine_memory(e, &m);
    printf("loaded: %.3f GB held by the context, %.3f GB resident with the mapped weights; "
           "device total %.1f GB\n",
           m.in_use / 1e9, engine_resident_bytes(e) / 1e9, m.total / 1e9);
    gen_params p;
    gen_params_defaults(&p);
    p.prompt = "a lighthouse on a rocky coast at dawn, volumetric light, oil painting";
    p.steps = 1;
    p.width = p.height = side;
    p.max_seq = 512;
    kn_memory before, after;
    engine_memory(e, &before);
    engine_memory_reset_peak(e);
    double t0 = bench_now();
    gen_job *j;
    uint8_t *rgb = NULL;
    if (engine_job_prepare(e, &p, &j) < 0 || engine_step(e, &j, 1) < 0 ||
        engine_job_decode(e, j, &rgb) < 0)
        die("the job");
    free(rgb);
    engine_job_free(j);
    engine_memory(e, &after);
    const uint64_t used = after.peak - before.in_use, bound = engine_job_bytes(e, &p);
    const uint64_t exact = bound - ENGINE_OP_SCRATCH;
    printf("%dx%d, CFG, max_seq 512, 1 step + decode (%.1f s):\n", side, side, bench_now() - t0);
    printf("  measured peak over the loaded engine  %8.3f GB\n", used / 1e9);
    printf("  engine_job_bytes bound                %8.3f GB (%.2fx the measure)\n", bound / 1e9,
           (double)bound / (double)used);
    printf("  of it exact (scratch, job tensors)    %8.3f GB\n", exact / 1e9);
    printf("  ops and text encoders, measured       %8.3f GB of the %.3f GB allowed\n",
           used > exact ? (used - exact) / 1e9 : 0.0, ENGINE_OP_SCRATCH / 1e9);
    fflush(stdout);
    engine_free(e);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_memory MODEL_DIR [side ...]\n");
        return 2;
    }
    if (argc == 2) one_job(argv[1], 512);
    for (int i = 2; i < argc; i++)
        one_job(argv[1], atoi(argv[i]));
    return 0;
}
