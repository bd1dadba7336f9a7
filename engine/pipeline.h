/* The step-level text-to-image engine: what focus-run and the daemon's workers drive.
 *
 * An engine is one loaded SD3 pipeline directory (tokenizers, text encoders, MMDiT, VAE,
 * scheduler) resident on one device. A job is one request: engine_job_prepare() tokenizes and
 * encodes its prompts (reusing cached encodings: the empty negative prompt and repeated prompts
 * are encoded once) and draws its initial noise exactly as torch.randn with a CPU generator;
 * engine_step() advances one or several jobs by one denoising step, batching jobs of the same
 * size into one forward pass; engine_job_decode() turns the final latents into 8-bit RGB images.
 * Callers interleave, cancel and report progress between steps. The engine is not thread-safe:
 * one thread drives one engine, except that with text encoders of their own a second thread
 * may encode (engine_encodes_apart). It knows nothing of sockets or queues. */
#ifndef FOCUS_ENGINE_PIPELINE_H
#define FOCUS_ENGINE_PIPELINE_H

#include "engine/focus_control.h"
#include "engine/model_config.h"
#include "kernels/kn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENGINE_MAX_SLG_LAYERS 16
/* Upper bounds engine_check_params enforces, so that one request cannot tie a worker up
 * indefinitely or allocate without bound. */
#define ENGINE_MAX_STEPS 1000
#define ENGINE_MAX_COUNT 64
/* The sampler's name, as PNG metadata and logs report it. */
#define ENGINE_SAMPLER_NAME "FlowMatchEulerDiscrete"

typedef struct engine_options {
    kn_device device;
    int device_index;
    int encode_cache_entries; /* prompt encodings kept (LRU); 0 = a default of 16 */
    /* The compute mode: KN_F32 (0, the reference mode that the parity tests run), KN_BF16 or
     * KN_F16. On CUDA the transformer's and the VAE's activations are 16-bit (float32
     * accumulation). On the CPU, bf16 multiplies every matrix product in bf16 (weights packed
     * once, float32 accumulation, float32 activations), the text encoders' too; fp16 there
     * emulates CUDA's 16-bit activations op by op (slow: a check of that mode). The latents and
     * the sampler stay float32 in every mode. */
    kn_dtype compute;
    /* The text encoders (and the prompt-encoding cache) on a CPU context of their own, the
     * embeddings copied to the device per job: for cards too small for T5-XXL beside the
     * transformer. */
    bool text_on_cpu;
} engine_options;

/* Whether the engine can compute on `device` (CUDA device number `index`), checked without
 * creating anything on it, so that a caller can choose a device before engine_load: the CPU
 * always; CUDA in a build with CUDA, on a present device of compute capability 8.0 or later.
 * Returns 0, or ERR_DEVICE with the reason. */
int engine_probe_device(kn_device device, int index);

/* "fp32", "bf16" or "fp16"; "auto" is bf16 on CUDA and on CPUs that multiply bf16 natively
 * (AVX512-BF16 or AMX), fp32 on other CPUs. ERR_INVALID for anything else. */
int engine_precision_parse(const char *name, kn_device device, kn_dtype *out);
/* The name of a compute dtype as engine_precision_parse spells it. */
const char *engine_precision_name(kn_dtype compute);
/* Puts compute mode `compute` into effect on ctx and gives the activations' dtype for the
 * models on it: bf16 on the CPU is its matrix products' dtype (activations stay float32);
 * elsewhere the activations are in the compute dtype. */
int engine_ctx_precision(kn_ctx *ctx, kn_dtype compute, kn_dtype *activations);

typedef struct gen_params {
    const char *prompt;          /* required; UTF-8 */
    const char *negative_prompt; /* NULL or "" = the empty negative prompt */
    uint64_t seed;               /* torch.Generator("cpu").manual_seed(seed) */
    int steps;                   /* >= 1 */
    float guidance;              /* classifier-free guidance scale; <= 1 means no CFG pass */
    int width, height;           /* pixels; multiples of 8 x patch size */
    int max_seq;                 /* T5 tokens, 1..512 */
    int count;                   /* images per prompt, >= 1 */
    /* Skip-layer guidance: off when slg_count == 0. */
    int slg_layers[ENGINE_MAX_SLG_LAYERS];
    int slg_count;
    float slg_scale;
    double slg_start, slg_stop; /* fractions of the steps; double as Python compares them */
    /* The FOCUS test-time controller (off without subjects or with lambda 0). Its phrases are
     * copied by engine_job_encode like the prompts. */
    focus_request focus;
} gen_params;
/* Skip-layer guidance follows the later diffusers SD3 pipelines (0.31.0 has none): it acts only
 * with CFG on (guidance > 1) and is ignored otherwise, as there. */

/* The defaults of the FOCUS model card: 28 steps, guidance 4.5, 512x512, max_seq 77, count 1,
 * seed 0, SLG off (scale 2.8, start 0.01, stop 0.2 when layers are given), no FOCUS subjects
 * (lambda 1 and the focus heuristic when subjects are given, the reference's defaults). The
 * prompts are left NULL: the caller sets the prompt. */
void gen_params_defaults(gen_params *p);

typedef struct sd3_engine sd3_engine;
typedef struct gen_job gen_job;

/* opts may be NULL: the CPU and the default cache size. */
int engine_load(const char *model_dir, const engine_options *opts, sd3_engine **out);
void engine_free(sd3_engine *e);
const model_config *engine_model_config(const sd3_engine *e);
/* Bytes of weight files the engine maps (for memory reports). */
uint64_t engine_weight_bytes(const sd3_engine *e);

/* The compute dtype the engine was loaded with (engine_options.compute). */
kn_dtype engine_compute(const sd3_engine *e);

/* Memory. Resident: what the engine holds now, measured by its device context (weights
 * uploaded or, on the CPU, mapped; scratch kept between steps; cached prompt encodings).
 * Any thread may ask. */
uint64_t engine_resident_bytes(const sd3_engine *e);
/* The device context's own figures (kn_ctx_memory: in use, peak, the device's total) and a
 * reset of its peak, for measuring what a job takes (the text encoders' CPU context, with
 * text_on_cpu, is not in them). */
void engine_memory(const sd3_engine *e, kn_memory *m);
void engine_memory_reset_peak(sd3_engine *e);
/* An upper bound of the memory a job adds to a freshly loaded engine when it runs alone: the
 * transformer's and the VAE's scratch for its sizes (exact), its own tensors and the step's
 * buffers (exact), and ENGINE_OP_SCRATCH for the ops' own scratch and the text encoders'
 * activations. The daemon refuses at submission what cannot fit. */
uint64_t engine_job_bytes(const sd3_engine *e, const gen_params *p);
/* Op scratch (bounded by fixed budgets in both backends: 32 MiB score blocks, im2col blocks on
 * CUDA, convolution bands of a few output rows on the CPU, weight panels) and text-encoder
 * activations (T5-XXL at 512 tokens: a few 10240-wide rows per token). */
#define ENGINE_OP_SCRATCH ((uint64_t)512 << 20)

/* Texts encoded so far: lookups the prompt-encoding cache could not answer. */
uint64_t engine_encode_count(const sd3_engine *e);

/* Checks parameters without doing any work: sizes the model cannot take, out-of-range values.
 * The daemon calls it at submission. The message names the parameter. */
int engine_check_params(const sd3_engine *e, const gen_params *p);

/* Tokenizes and encodes (or reuses cached encodings), draws the noise, sets up the schedule:
 * engine_job_encode then engine_job_attach. */
int engine_job_prepare(sd3_engine *e, const gen_params *p, gen_job **out);
/* The two halves of engine_job_prepare. encode: checks p, creates the job, encodes its prompts
 * on the text encoders' context. attach: brings the encodings to the engine's device, draws
 * the noise, sets up the schedule; only an attached job can be stepped. On failure of attach
 * the job is left to engine_job_free. */
int engine_job_encode(sd3_engine *e, const gen_params *p, gen_job **out);
int engine_job_attach(sd3_engine *e, gen_job *j);
/* True when the text encoders have a context of their own (text_on_cpu). Then, and only then,
 * one thread may run engine_job_encode while another drives everything else of the engine
 * (attach, step, decode, free): a new prompt's encoding overlaps the other jobs' steps. Two
 * encodes never run at once. */
bool engine_encodes_apart(const sd3_engine *e);
/* Advances each job by one denoising step; each job may be at its own step index. Batchable
 * jobs (engine_jobs_batchable) share one forward pass. A finished job must not be passed again,
 * nor one job twice in one call. On error the jobs may be left partly stepped: free them. */
int engine_step(sd3_engine *e, gen_job **jobs, int n);
/* True when both jobs can share a forward pass: same size, guidance on/off, max_seq (the
 * prompt length the transformer attends over) and skip-layer list. A pass captures the maps of
 * one FOCUS-controlled job at most: engine_step gives a second one a pass of its own. */
bool engine_jobs_batchable(const gen_job *a, const gen_job *b);
int engine_job_steps(const gen_job *j);
int engine_job_step_index(const gen_job *j); /* steps done so far */
bool engine_job_done(const gen_job *j);
/* Decodes a finished job: rgb receives count * height * width * 3 bytes (allocated with malloc,
 * freed by the caller), images one after another, rows top to bottom. */
int engine_job_decode(sd3_engine *e, gen_job *j, uint8_t **rgb);
/* The shape of the job's latents: count, latent channels, height / f, width / f (f = the VAE's
 * scale factor, 8 for SD3). */
void engine_job_latent_shape(const gen_job *j, int64_t shape[4]);
/* The job's latents (count, 16, h/8, w/8) as float32: before the first step they are the
 * initial noise; after the last, the final latents. */
int engine_job_latents(const gen_job *j, float *out, size_t n);
/* The decoded image in [0,1], NHWC, float32 (count * height * width * 3), as the pipeline's
 * output_type="np" returns it; only after engine_job_decode. */
int engine_job_image(const gen_job *j, float *out, size_t n);
/* The FOCUS cost of each step done (before that step's control is applied), steps values
 * into out (n of room); ERR_INVALID for a job without control. */
int engine_job_focus_costs(const gen_job *j, float *out, size_t n);
/* The FOCUS cost's gradient with respect to the latent at the last step done, [1, C, h/8,
 * w/8] float32 into out (n of room), for checks against the reference. */
int engine_job_focus_grad(const gen_job *j, float *out, size_t n);
/* Frees a job (any time; NULL is allowed); jobs must be freed before their engine. */
void engine_job_free(gen_job *j);

#endif
