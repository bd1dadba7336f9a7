/* The step-level SD3 text-to-image engine (see pipeline.h): StableDiffusion3Pipeline.__call__
 * of diffusers 0.31.0 cut at step boundaries, plus skip-layer guidance as later diffusers
 * versions add it. Every tensor operation goes through the kernels interface, so latents and
 * embeddings stay on the engine's device from prepare to decode; only the initial noise goes up
 * and the decoded image comes down.
 *
 * Not here: the denoiser, text encoders and VAE themselves (mmdit.c, text_encode.c, vae.c), the
 * schedule's numbers (scheduler.c), the noise generator (torch_rng.c), post-processing to bytes
 * (png_out.c), and any notion of queues or clients. */
#include "engine/pipeline.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "engine/encode_cache.h"
#include "engine/mmdit.h"
#include "engine/png_out.h"
#include "engine/safetensors.h"
#include "engine/scheduler.h"
#include "engine/text_encode.h"
#include "engine/torch_rng.h"
#include "engine/vae.h"
#include "kernels/kn_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_CACHE_ENTRIES 16

/* A device buffer that only grows; callers take views of the shape they need, so a batch shape
 * seen before allocates nothing. */
typedef struct scratch_buf {
    kn_tensor t;
    int64_t cap;
} scratch_buf;

struct sd3_engine {
    model_config *cfg;
    kn_ctx *ctx;
    kn_ctx *text_ctx; /* the text encoders' and the cache's: ctx, or a CPU context of their own */
    text_encoder *te;
    encode_cache *cache;
    mmdit *dit;
    vae *vae;
    uint64_t weight_bytes, text_weight_bytes;
    /* Step scratch: transformer inputs and outputs for a whole batch, the skip-layer pass's
     * output, the guidance difference, the decoded image; host timesteps. */
    scratch_buf x, emb, pooled, out, skip_out, diff, image;
    float *tvec;
    int tvec_cap;
    kn_dtype compute;
};

struct gen_job {
    sd3_engine *e;
    gen_params p; /* prompt strings owned (copies) */
    bool cfg;     /* guidance > 1 */
    int lh, lw;   /* latent grid */
    kn_tensor latents;
    /* [rows, S, D] and [rows, P]: rows = 2 count with CFG (the negative copies first), else
     * count; on the engine's device once attached. */
    kn_tensor emb, pooled;
    /* The same on the text encoders' own context (text_on_cpu) between encode and attach. */
    kn_tensor text_emb, text_pooled;
    bool attached;
    fm_schedule sched;
    int step;     /* steps done */
    float *image; /* count x H x W x 3 in [0, 1] after decode; NULL before */
    focus_groups groups;  /* the FOCUS subjects' tokens, when controlled */
    focus_control *focus; /* the controller, once attached; NULL without control */
};

void gen_params_defaults(gen_params *p)
{
    memset(p, 0, sizeof *p);
    p->steps = 28;
    p->guidance = 4.5f;
    p->width = p->height = 512;
    p->max_seq = 77;
    p->count = 1;
    p->slg_scale = 2.8f;
    p->slg_start = 0.01;
    p->slg_stop = 0.2;
    p->focus.lambda = 1.0f;
    p->focus.heuristic = FOCUS_HEURISTIC_FOCUS;
}

/* ---- scratch ---- */

static int scratch_view(kn_ctx *ctx, scratch_buf *b, int ndim, const int64_t *shape,
                        kn_tensor *view)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    if (n > b->cap) {
        kn_free(ctx, &b->t);
        b->cap = 0;
        int rc = kn_alloc(ctx, &b->t, KN_F32, 1, (int64_t[]){n});
        if (rc < 0) return err_prefix(rc, "engine scratch of %lld floats: ", (long long)n);
        b->cap = n;
    }
    *view = kn_view(&b->t, 0, ndim, shape);
    return 0;
}

static void scratch_free(kn_ctx *ctx, scratch_buf *b)
{
    kn_free(ctx, &b->t);
    b->cap = 0;
}

/* Rows [first, first + n) of t along dim 0. */
static kn_tensor rows_of(const kn_tensor *t, int64_t first, int64_t n)
{
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    int64_t row = kn_numel(t) / t->shape[0];
    shape[0] = n;
    return kn_view(t, first * row, t->ndim, shape);
}

/* ---- load ---- */

int engine_probe_device(kn_device device, int index)
{
    return kn_device_probe(device, index);
}

int engine_precision_parse(const char *name, kn_device device, kn_dtype *out)
{
    static const struct {
        const char *name;
        kn_dtype dt;
    } names[] = {{"fp32", KN_F32}, {"bf16", KN_BF16}, {"fp16", KN_F16}};
    if (strcmp(name, "auto") == 0) {
        *out = device == KN_CUDA || kn_cpu_native_bf16() ? KN_BF16 : KN_F32;
        return 0;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].name) == 0) {
            *out = names[i].dt;
            return 0;
        }
    return err_set(ERR_INVALID, "precision \"%s\": expected auto, fp32, bf16 or fp16", name);
}

const char *engine_precision_name(kn_dtype compute)
{
    return compute == KN_BF16 ? "bf16" : compute == KN_F16 ? "fp16" : "fp32";
}

int engine_ctx_precision(kn_ctx *ctx, kn_dtype compute, kn_dtype *activations)
{
    *activations = compute;
    if (compute != KN_BF16 || kn_ctx_device(ctx) != KN_CPU) return 0;
    *activations = KN_F32;
    return kn_ctx_set_matmul(ctx, KN_BF16);
}

/* Bytes of one component's weight files, opened as its loader opens them. */
static int component_bytes(const model_config *cfg, const char *sub, const char *stem,
                           uint64_t *total)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", cfg->path, sub);
    st_archive *a;
    int rc = st_archive_open(dir, stem, &a);
    if (rc < 0) return rc;
    *total += st_file_bytes(a);
    st_archive_close(a);
    return 0;
}

/* The weight files' bytes: all of them, and the text encoders' alone. */
static int weight_bytes(const model_config *cfg, uint64_t *total, uint64_t *text)
{
    *text = 0;
    int rc;
    if ((rc = component_bytes(cfg, "text_encoder", "model", text)) < 0 ||
        (rc = component_bytes(cfg, "text_encoder_2", "model", text)) < 0 ||
        (cfg->has_t5 && (rc = component_bytes(cfg, "text_encoder_3", "model", text)) < 0))
        return rc;
    *total = *text;
    if ((rc = component_bytes(cfg, "transformer", "diffusion_pytorch_model", total)) < 0) return rc;
    return component_bytes(cfg, "vae", "diffusion_pytorch_model", total);
}

int engine_load(const char *model_dir, const engine_options *opts, sd3_engine **out)
{
    engine_options def = {.device = KN_CPU};
    if (!opts) opts = &def;
    sd3_engine *e = xcalloc(1, sizeof *e);
    int rc;
    if ((rc = model_config_load(model_dir, &e->cfg)) < 0) goto fail;
    if (e->cfg->vae.out_channels != 3) {
        rc = err_set(ERR_RANGE, "%s/vae/config.json: out_channels %d, the engine writes RGB (3)",
                     e->cfg->path, e->cfg->vae.out_channels);
        goto fail;
    }
    if ((rc = kn_ctx_create(opts->device, opts->device_index, &e->ctx)) < 0) goto fail;
    e->text_ctx = e->ctx;
    if (opts->text_on_cpu && (rc = kn_ctx_create(KN_CPU, 0, &e->text_ctx)) < 0) goto fail;
    /* The text encoders' products follow the mode on whichever context they have. */
    e->compute = opts->compute;
    kn_dtype act, text_act;
    if ((rc = engine_ctx_precision(e->ctx, opts->compute, &act)) < 0 ||
        (e->text_ctx != e->ctx &&
         (rc = engine_ctx_precision(e->text_ctx, opts->compute, &text_act)) < 0))
        goto fail;
    if ((rc = weight_bytes(e->cfg, &e->weight_bytes, &e->text_weight_bytes)) < 0 ||
        (rc = text_encoder_load(e->text_ctx, e->cfg, &e->te)) < 0 ||
        (rc = mmdit_load(e->ctx, e->cfg, &e->dit)) < 0 ||
        (rc = vae_load(e->ctx, e->cfg, &e->vae)) < 0 ||
        (rc = mmdit_set_compute(e->dit, act)) < 0 || (rc = vae_set_compute(e->vae, act)) < 0)
        goto fail;
    int entries =
        opts->encode_cache_entries > 0 ? opts->encode_cache_entries : DEFAULT_CACHE_ENTRIES;
    if ((rc = encode_cache_create(e->te, e->text_ctx, entries, &e->cache)) < 0) goto fail;
    *out = e;
    return 0;
fail:
    engine_free(e);
    return rc;
}

void engine_free(sd3_engine *e)
{
    if (!e) return;
    if (e->ctx) {
        scratch_buf *bufs[] = {&e->x,        &e->emb,  &e->pooled, &e->out,
                               &e->skip_out, &e->diff, &e->image};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            scratch_free(e->ctx, bufs[i]);
    }
    encode_cache_free(e->cache);
    vae_free(e->vae);
    mmdit_free(e->dit);
    text_encoder_free(e->te);
    if (e->text_ctx != e->ctx) kn_ctx_destroy(e->text_ctx);
    if (e->ctx) kn_ctx_destroy(e->ctx);
    model_config_free(e->cfg);
    free(e->tvec);
    free(e);
}

const model_config *engine_model_config(const sd3_engine *e)
{
    return e->cfg;
}

uint64_t engine_weight_bytes(const sd3_engine *e)
{
    return e->weight_bytes;
}

kn_dtype engine_compute(const sd3_engine *e)
{
    return e->compute;
}

uint64_t engine_resident_bytes(const sd3_engine *e)
{
    kn_memory m, t = {0};
    kn_ctx_memory(e->ctx, &m);
    if (e->text_ctx != e->ctx) kn_ctx_memory(e->text_ctx, &t);
    uint64_t mapped = kn_ctx_device(e->ctx) == KN_CPU ? e->weight_bytes
                      : e->text_ctx != e->ctx         ? e->text_weight_bytes
                                                      : 0;
    return m.in_use + t.in_use + mapped;
}

void engine_memory(const sd3_engine *e, kn_memory *m)
{
    kn_ctx_memory(e->ctx, m);
}

void engine_memory_reset_peak(sd3_engine *e)
{
    kn_ctx_reset_peak(e->ctx);
}

/* The controller's capture and reverse pass, its gradient and the cost's map gradient (the
 * subjects' tokens as resolved; the most a request may name when they do not resolve). */
static uint64_t focus_bytes(const sd3_engine *e, const gen_params *p, int64_t rows, int64_t h,
                            int64_t w, int64_t S)
{
    if (!focus_request_active(&p->focus)) return 0;
    focus_groups g;
    const mmdit_config *mc = &e->cfg->mmdit;
    const int64_t N = (h / mc->patch_size) * (w / mc->patch_size);
    const int n = focus_subjects_resolve(text_encoder_tokenizers(e->te), p->prompt, p->max_seq,
                                         p->focus.subjects, p->focus.n_subjects, &g) == 0
                      ? g.n_tok
                      : FOCUS_MAX_TOKENS;
    return mmdit_focus_bytes(e->dit, n, rows, h, w, S) +
           (uint64_t)(mc->in_channels * h * w + (int64_t)mc->num_layers * n * N) * sizeof(float);
}

uint64_t engine_job_bytes(const sd3_engine *e, const gen_params *p)
{
    const int f = vae_scale_factor(e->vae);
    const int64_t h = p->height / f, w = p->width / f, count = p->count;
    const int64_t rows = (p->guidance > 1.0f ? 2 : 1) * count;
    const int64_t S = text_encoder_seq_len(e->te, p->max_seq), J = text_encoder_width(e->te);
    const int64_t P = text_encoder_pooled_width(e->te);
    const int64_t lat = (int64_t)e->cfg->mmdit.in_channels * h * w;
    /* The job's latents and embeddings; the step's inputs, outputs, skip-layer output and
     * guidance difference; gathered embeddings of a batch; one decoded image. */
    const int64_t floats = count * lat + 2 * rows * (S * J + P) + 2 * rows * lat + 2 * count * lat +
                           3 * (int64_t)p->width * p->height;
    return (uint64_t)floats * sizeof(float) + mmdit_scratch_bytes(e->dit, rows, h, w, S) +
           vae_scratch_bytes(e->vae, 1, h, w) + focus_bytes(e, p, rows, h, w, S) +
           ENGINE_OP_SCRATCH;
}

uint64_t engine_encode_count(const sd3_engine *e)
{
    return encode_cache_misses(e->cache);
}

/* ---- parameters ---- */

static int check_side(const char *name, int v, int multiple)
{
    if (v < multiple || v % multiple)
        return err_set(ERR_RANGE, "%s: %d is not a positive multiple of %d pixels", name, v,
                       multiple);
    return 0;
}

/* The FOCUS fields, whenever subjects are given (lambda 0 included), resolved into g. */
static int check_focus(const sd3_engine *e, const gen_params *p, focus_groups *g)
{
    focus_groups scratch;
    if (p->focus.n_subjects == 0) return 0;
    const int f = vae_scale_factor(e->vae), patch = e->cfg->mmdit.patch_size;
    return focus_request_check(&p->focus, text_encoder_tokenizers(e->te), p->prompt, p->max_seq,
                               p->count, p->height / f / patch, p->width / f / patch,
                               g ? g : &scratch);
}

int engine_check_params(const sd3_engine *e, const gen_params *p)
{
    const mmdit_config *mc = &e->cfg->mmdit;
    const int f = vae_scale_factor(e->vae), multiple = f * mc->patch_size;
    int rc;
    if (!p->prompt) return err_set(ERR_INVALID, "prompt: missing");
    if (p->steps < 1 || p->steps > ENGINE_MAX_STEPS)
        return err_set(ERR_RANGE, "steps: %d is outside 1..%d", p->steps, ENGINE_MAX_STEPS);
    if (!isfinite(p->guidance)) return err_set(ERR_RANGE, "guidance: not a finite number");
    if ((rc = check_side("width", p->width, multiple)) < 0 ||
        (rc = check_side("height", p->height, multiple)) < 0)
        return rc;
    if ((rc = mmdit_check_size(mc, p->height / f, p->width / f)) < 0)
        return err_prefix(rc, "width x height %dx%d: ", p->width, p->height);
    if (p->max_seq < 1 || p->max_seq > TEXT_MAX_SEQ_LIMIT)
        return err_set(ERR_RANGE, "max_seq: %d is outside 1..%d", p->max_seq, TEXT_MAX_SEQ_LIMIT);
    if (p->count < 1 || p->count > ENGINE_MAX_COUNT)
        return err_set(ERR_RANGE, "count: %d is outside 1..%d", p->count, ENGINE_MAX_COUNT);
    if (p->slg_count < 0 || p->slg_count > ENGINE_MAX_SLG_LAYERS)
        return err_set(ERR_RANGE, "slg_count: %d is outside 0..%d", p->slg_count,
                       ENGINE_MAX_SLG_LAYERS);
    for (int i = 0; i < p->slg_count; i++)
        if (p->slg_layers[i] < 0 || p->slg_layers[i] >= mc->num_layers)
            return err_set(ERR_RANGE,
                           "slg_layers[%d]: %d is outside the transformer's blocks 0..%d", i,
                           p->slg_layers[i], mc->num_layers - 1);
    if (p->slg_count > 0 &&
        (!isfinite(p->slg_scale) || !isfinite(p->slg_start) || !isfinite(p->slg_stop)))
        return err_set(ERR_RANGE, "slg_scale, slg_start, slg_stop: not all finite numbers");
    return check_focus(e, p, NULL);
}

/* ---- prepare ---- */

/* Tokenizes and encodes (or finds in the cache) the job's prompts and stacks them into its
 * batch rows, all on the text encoders' context. */
static int job_encode(sd3_engine *e, gen_job *j)
{
    const kn_tensor *seq[2], *pooled[2];
    int n = 0, rc;
    if (j->cfg) {
        const char *neg = j->p.negative_prompt ? j->p.negative_prompt : "";
        if ((rc = encode_cache_get(e->cache, neg, j->p.max_seq, &seq[n], &pooled[n])) < 0)
            return err_prefix(rc, "negative prompt: ");
        n++;
    }
    if ((rc = encode_cache_get(e->cache, j->p.prompt, j->p.max_seq, &seq[n], &pooled[n])) < 0)
        return err_prefix(rc, "prompt: ");
    n++;
    bool apart = e->text_ctx != e->ctx;
    if ((rc = text_embeds_stack(e->text_ctx, apart ? &j->text_emb : &j->emb, seq, n,
                                j->p.count)) < 0)
        return rc;
    return text_embeds_stack(e->text_ctx, apart ? &j->text_pooled : &j->pooled, pooled, n,
                             j->p.count);
}

/* A tensor of the text encoders' CPU context copied to the engine's device (host memory, so
 * its bytes upload as they are), then released there. */
static int upload(sd3_engine *e, kn_tensor *dst, kn_tensor *src)
{
    int rc = kn_alloc(e->ctx, dst, src->dtype, src->ndim, src->shape);
    if (rc == 0) rc = kn_write(e->ctx, dst, src->data, kn_nbytes(src));
    kn_free(e->text_ctx, src);
    return rc;
}

/* prepare_latents: one torch.randn call for the whole batch from one CPU generator, float32. */
static int job_noise(sd3_engine *e, gen_job *j)
{
    int64_t shape[4] = {j->p.count, e->cfg->mmdit.in_channels, j->lh, j->lw};
    size_t n = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
    float *host = malloc(n * sizeof *host);
    if (!host) return err_set(ERR_NOMEM, "initial latents: out of memory");
    torch_gen g;
    torch_gen_seed(&g, j->p.seed);
    int rc = torch_randn(&g, host, n, KN_F32);
    if (rc == 0 && (rc = kn_alloc(e->ctx, &j->latents, KN_F32, 4, shape)) == 0)
        rc = kn_write(e->ctx, &j->latents, host, n * sizeof *host);
    free(host);
    return rc;
}

static int job_schedule(sd3_engine *e, gen_job *j)
{
    const scheduler_config *sc = &e->cfg->scheduler;
    double mu = NAN;
    /* diffusers 0.31.0 passes no mu (its set_timesteps then raises); later pipelines pass
     * calculate_shift over the patch grid, which is what a dynamic-shifting config needs. */
    if (sc->use_dynamic_shifting) {
        const int p = e->cfg->mmdit.patch_size;
        mu = fm_calculate_shift((j->lh / p) * (j->lw / p), sc->base_image_seq_len,
                                sc->max_image_seq_len, sc->base_shift, sc->max_shift);
    }
    return fm_set_timesteps(sc, j->p.steps, mu, &j->sched);
}

int engine_job_encode(sd3_engine *e, const gen_params *p, gen_job **out)
{
    *out = NULL;
    int rc = engine_check_params(e, p);
    if (rc < 0) return rc;
    gen_job *j = xcalloc(1, sizeof *j);
    j->e = e;
    j->p = *p;
    j->p.prompt = xstrdup(p->prompt);
    j->p.negative_prompt = p->negative_prompt ? xstrdup(p->negative_prompt) : NULL;
    for (int k = 0; k < p->focus.n_subjects; k++)
        if (p->focus.subjects[k].phrase)
            j->p.focus.subjects[k].phrase = xstrdup(p->focus.subjects[k].phrase);
    j->cfg = p->guidance > 1.0f;
    if (focus_request_active(&p->focus)) check_focus(e, p, &j->groups);
    const int f = vae_scale_factor(e->vae);
    j->lh = p->height / f;
    j->lw = p->width / f;
    if ((rc = job_encode(e, j)) < 0) {
        engine_job_free(j);
        return rc;
    }
    *out = j;
    return 0;
}

int engine_job_attach(sd3_engine *e, gen_job *j)
{
    if (j->e != e || j->attached)
        return err_set(ERR_INVALID, "engine_job_attach: the job is %s",
                       j->attached ? "attached already" : "another engine's");
    int rc = 0;
    if (e->text_ctx != e->ctx &&
        ((rc = upload(e, &j->emb, &j->text_emb)) < 0 ||
         (rc = upload(e, &j->pooled, &j->text_pooled)) < 0))
        return rc;
    if ((rc = job_noise(e, j)) < 0 || (rc = job_schedule(e, j)) < 0) return rc;
    if (focus_request_active(&j->p.focus) &&
        (rc = focus_control_create(e->dit, &j->groups, &j->p.focus, j->p.steps, j->lh, j->lw,
                                   &j->focus)) < 0)
        return err_prefix(rc, "FOCUS control: ");
    j->attached = true;
    return 0;
}

bool engine_encodes_apart(const sd3_engine *e)
{
    return e->text_ctx != e->ctx;
}

int engine_job_prepare(sd3_engine *e, const gen_params *p, gen_job **out)
{
    gen_job *j;
    int rc = engine_job_encode(e, p, &j);
    if (rc == 0 && (rc = engine_job_attach(e, j)) < 0) {
        engine_job_free(j);
        j = NULL;
    }
    *out = j;
    return rc;
}

/* ---- step ---- */

static bool same_slg(const gen_params *a, const gen_params *b)
{
    if (a->slg_count != b->slg_count) return false;
    for (int i = 0; i < a->slg_count; i++)
        if (a->slg_layers[i] != b->slg_layers[i]) return false;
    return true;
}

bool engine_jobs_batchable(const gen_job *a, const gen_job *b)
{
    return a->e == b->e && a->lh == b->lh && a->lw == b->lw && a->cfg == b->cfg &&
           a->p.max_seq == b->p.max_seq && (!a->cfg || same_slg(&a->p, &b->p));
}

static bool slg_now(const gen_job *j)
{
    return j->cfg && j->p.slg_count > 0 &&
           fm_slg_active(j->step, j->p.steps, j->p.slg_start, j->p.slg_stop);
}

/* Which embedding tensor gather_emb assembles. */
enum emb_kind { EMB_SEQ, EMB_POOLED };

static const kn_tensor *emb_of(const gen_job *j, enum emb_kind kind)
{
    return kind == EMB_SEQ ? &j->emb : &j->pooled;
}

/* The embeddings of jobs[0..m) concatenated along the batch: every row, or only the
 * conditional (positive, last) rows when cond_only. One job is used in place, without a copy. */
static int gather_emb(sd3_engine *e, scratch_buf *buf, gen_job *const *jobs, int m,
                      enum emb_kind kind, bool cond_only, kn_tensor *out)
{
    int64_t total = 0;
    for (int i = 0; i < m; i++)
        total += cond_only ? jobs[i]->p.count : emb_of(jobs[i], kind)->shape[0];
    const kn_tensor *t0 = emb_of(jobs[0], kind);
    if (m == 1) {
        *out = rows_of(t0, t0->shape[0] - total, total);
        return 0;
    }
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, t0->shape, sizeof shape);
    shape[0] = total;
    int rc = scratch_view(e->ctx, buf, t0->ndim, shape, out);
    int64_t off = 0;
    for (int i = 0; i < m && rc == 0; i++) {
        const kn_tensor *t = emb_of(jobs[i], kind);
        int64_t n = cond_only ? jobs[i]->p.count : t->shape[0];
        kn_tensor src = rows_of(t, t->shape[0] - n, n), dst = rows_of(out, off, n);
        rc = kn_copy(e->ctx, &dst, &src);
        off += n;
    }
    return rc;
}

/* The transformer's latent input and host timesteps: each job's latents `copies` times
 * (2 = cat([latents, latents]) for CFG), each row with the job's current timestep. */
static int gather_latents(sd3_engine *e, gen_job *const *jobs, int m, int copies, kn_tensor *x)
{
    const gen_job *j0 = jobs[0];
    int64_t total = 0;
    for (int i = 0; i < m; i++)
        total += (int64_t)copies * jobs[i]->p.count;
    if (total > e->tvec_cap) {
        e->tvec = xrealloc(e->tvec, (size_t)total * sizeof *e->tvec);
        e->tvec_cap = (int)total;
    }
    int64_t shape[4] = {total, j0->latents.shape[1], j0->lh, j0->lw};
    int rc = scratch_view(e->ctx, &e->x, 4, shape, x);
    int64_t off = 0;
    for (int i = 0; i < m && rc == 0; i++) {
        const gen_job *j = jobs[i];
        for (int c = 0; c < copies && rc == 0; c++) {
            kn_tensor dst = rows_of(x, off, j->p.count);
            rc = kn_copy(e->ctx, &dst, &j->latents);
            for (int r = 0; r < j->p.count; r++)
                e->tvec[off + r] = j->sched.timesteps[j->step];
            off += j->p.count;
        }
    }
    return rc;
}

/* The skip-layer pass for the jobs of a group inside their SLG window: conditional rows only,
 * the group's skip list (shared, as batchable jobs have one list). */
static int slg_forward(sd3_engine *e, gen_job *const *jobs, int m, kn_tensor *skip_out)
{
    kn_tensor x, emb, pooled;
    int rc;
    if ((rc = gather_latents(e, jobs, m, 1, &x)) < 0 ||
        (rc = gather_emb(e, &e->emb, jobs, m, EMB_SEQ, true, &emb)) < 0 ||
        (rc = gather_emb(e, &e->pooled, jobs, m, EMB_POOLED, true, &pooled)) < 0 ||
        (rc = scratch_view(e->ctx, &e->skip_out, 4, x.shape, skip_out)) < 0)
        return rc;
    const gen_params *p = &jobs[0]->p;
    return mmdit_forward(e->dit, &x, e->tvec, &emb, &pooled, p->slg_layers, p->slg_count, skip_out);
}

/* The guidance combine and Euler update of one job, in the pipeline's op order:
 *   v = uncond + g * (text - uncond); v = v + (text - skip) * slg_scale;
 *   v = v + focus control; x = x + dt * v */
static int job_update(sd3_engine *e, gen_job *j, const kn_tensor *v_rows, const kn_tensor *skip)
{
    const int64_t c = j->p.count;
    kn_tensor v = rows_of(v_rows, 0, c);
    int rc = 0;
    if (j->cfg) {
        kn_tensor text = rows_of(v_rows, c, c), diff;
        if ((rc = scratch_view(e->ctx, &e->diff, 4, v.shape, &diff)) < 0 ||
            (rc = kn_sub(e->ctx, &diff, &text, &v)) < 0 ||
            (rc = kn_add_scaled(e->ctx, &v, &v, j->p.guidance, &diff)) < 0)
            return rc;
        if (skip && ((rc = kn_sub(e->ctx, &diff, &text, skip)) < 0 ||
                     (rc = kn_add_scaled(e->ctx, &v, &v, j->p.slg_scale, &diff)) < 0))
            return rc;
    }
    if (j->focus && (rc = focus_control_apply(j->focus, &v, j->sched.timesteps[j->step])) < 0)
        return rc;
    if ((rc = kn_add_scaled(e->ctx, &j->latents, &j->latents, fm_step_dt(&j->sched, j->step), &v)) <
        0)
        return rc;
    j->step++;
    return 0;
}

/* The group's forward pass: plain, or capturing the conditional row of its controlled job
 * (at most one) and taking that job's cost and gradient. */
static int group_forward(sd3_engine *e, gen_job *const *jobs, int m, int copies, const kn_tensor *x,
                         const kn_tensor *emb, const kn_tensor *pooled, kn_tensor *out)
{
    int64_t row = 0;
    for (int i = 0; i < m; i++) {
        gen_job *j = jobs[i];
        if (j->focus)
            return focus_control_forward(j->focus, x, e->tvec, emb, pooled, out,
                                         (int)(row + (copies - 1) * j->p.count), j->step);
        row += (int64_t)copies * j->p.count;
    }
    return mmdit_forward(e->dit, x, e->tvec, emb, pooled, NULL, 0, out);
}

/* One step of a group of mutually batchable jobs; slg has room for m jobs. */
static int step_group(sd3_engine *e, gen_job *const *jobs, int m, gen_job **slg)
{
    const int copies = jobs[0]->cfg ? 2 : 1;
    kn_tensor x, emb, pooled, out;
    int rc;
    if ((rc = gather_latents(e, jobs, m, copies, &x)) < 0 ||
        (rc = gather_emb(e, &e->emb, jobs, m, EMB_SEQ, false, &emb)) < 0 ||
        (rc = gather_emb(e, &e->pooled, jobs, m, EMB_POOLED, false, &pooled)) < 0 ||
        (rc = scratch_view(e->ctx, &e->out, 4, x.shape, &out)) < 0 ||
        (rc = group_forward(e, jobs, m, copies, &x, &emb, &pooled, &out)) < 0)
        return rc;

    /* The jobs inside their skip-layer window get one more pass, batched together. */
    int n_slg = 0;
    for (int i = 0; i < m; i++)
        if (slg_now(jobs[i])) slg[n_slg++] = jobs[i];
    kn_tensor skip_out = {0};
    if (n_slg > 0 && (rc = slg_forward(e, slg, n_slg, &skip_out)) < 0)
        return err_prefix(rc, "skip-layer guidance pass: ");

    int64_t off = 0, skip_off = 0;
    for (int i = 0; i < m; i++) {
        gen_job *j = jobs[i];
        const int64_t rows = (int64_t)copies * j->p.count;
        kn_tensor v_rows = rows_of(&out, off, rows), skip;
        bool with_skip = slg_now(j);
        if (with_skip) {
            skip = rows_of(&skip_out, skip_off, j->p.count);
            skip_off += j->p.count;
        }
        if ((rc = job_update(e, j, &v_rows, with_skip ? &skip : NULL)) < 0) return rc;
        off += rows;
    }
    return 0;
}

int engine_step(sd3_engine *e, gen_job **jobs, int n)
{
    if (n < 1) return err_set(ERR_INVALID, "engine_step: no jobs");
    for (int i = 0; i < n; i++) {
        if (!jobs[i] || jobs[i]->e != e)
            return err_set(ERR_INVALID, "engine_step: job %d does not belong to this engine", i);
        if (!jobs[i]->attached)
            return err_set(ERR_INVALID, "engine_step: job %d is encoded but not attached", i);
        if (engine_job_done(jobs[i]))
            return err_set(ERR_INVALID, "engine_step: job %d has done all its %d steps", i,
                           jobs[i]->p.steps);
        for (int k = 0; k < i; k++)
            if (jobs[k] == jobs[i])
                return err_set(ERR_INVALID, "engine_step: job %d is also job %d", i, k);
    }
    /* Groups form greedily in the caller's order: each job joins the first group it fits,
     * a controlled job only a group without one. */
    gen_job **group = xmalloc(2 * (size_t)n * sizeof *group), **slg = group + n;
    bool *taken = xcalloc((size_t)n, sizeof *taken);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (taken[i]) continue;
        int m = 0;
        bool controlled = false;
        for (int k = i; k < n; k++)
            if (!taken[k] && engine_jobs_batchable(jobs[i], jobs[k]) &&
                !(controlled && jobs[k]->focus)) {
                taken[k] = true;
                controlled |= jobs[k]->focus != NULL;
                group[m++] = jobs[k];
            }
        rc = step_group(e, group, m, slg);
    }
    free(group);
    free(taken);
    return rc < 0 ? rc : kn_sync(e->ctx);
}

int engine_job_steps(const gen_job *j)
{
    return j->p.steps;
}

int engine_job_step_index(const gen_job *j)
{
    return j->step;
}

bool engine_job_done(const gen_job *j)
{
    return j->step >= j->p.steps;
}

/* ---- decode and results ---- */

int engine_job_decode(sd3_engine *e, gen_job *j, uint8_t **rgb)
{
    if (j->e != e)
        return err_set(ERR_INVALID, "engine_job_decode: the job belongs to another engine");
    if (!engine_job_done(j))
        return err_set(ERR_INVALID, "engine_job_decode: the job has done %d of its %d steps",
                       j->step, j->p.steps);
    const int W = j->p.width, H = j->p.height;
    const size_t pixels = (size_t)W * (size_t)H;
    float *chw = malloc(3 * pixels * sizeof *chw);
    float *unit = malloc((size_t)j->p.count * 3 * pixels * sizeof *unit);
    uint8_t *bytes = malloc((size_t)j->p.count * 3 * pixels);
    int rc = chw && unit && bytes ? 0 : err_set(ERR_NOMEM, "decoding %dx%d: out of memory", W, H);
    kn_tensor img;
    if (rc == 0) rc = scratch_view(e->ctx, &e->image, 4, (int64_t[]){1, 3, H, W}, &img);
    /* One image at a time: the VAE's activations at full resolution dwarf the latents, and
     * each image decodes independently. */
    for (int i = 0; i < j->p.count && rc == 0; i++) {
        kn_tensor z = rows_of(&j->latents, i, 1);
        if ((rc = vae_decode_latents(e->vae, &z, &img)) == 0 &&
            (rc = kn_read_f32(e->ctx, &img, chw)) == 0)
            rc = png_out_postprocess(chw, W, H, KN_F32, unit + (size_t)i * 3 * pixels,
                                     bytes + (size_t)i * 3 * pixels);
    }
    free(chw);
    if (rc < 0) {
        free(unit);
        free(bytes);
        return err_prefix(rc, "decoding: ");
    }
    free(j->image);
    j->image = unit;
    *rgb = bytes;
    return 0;
}

int engine_job_focus_costs(const gen_job *j, float *out, size_t n)
{
    if (!j->focus) return err_set(ERR_INVALID, "engine_job_focus_costs: the job has no control");
    if (n != (size_t)j->p.steps)
        return err_set(ERR_INVALID, "engine_job_focus_costs: room for %zu costs, %d steps", n,
                       j->p.steps);
    memcpy(out, focus_control_costs(j->focus), n * sizeof *out);
    return 0;
}

int engine_job_focus_grad(const gen_job *j, float *out, size_t n)
{
    if (!j->focus) return err_set(ERR_INVALID, "engine_job_focus_grad: the job has no control");
    return focus_control_grad(j->focus, out, n);
}

void engine_job_latent_shape(const gen_job *j, int64_t shape[4])
{
    memcpy(shape, j->latents.shape, 4 * sizeof *shape);
}

int engine_job_latents(const gen_job *j, float *out, size_t n)
{
    if (n != (size_t)kn_numel(&j->latents))
        return err_set(ERR_INVALID,
                       "engine_job_latents: room for %zu floats, the latents hold %lld", n,
                       (long long)kn_numel(&j->latents));
    return kn_read(j->e->ctx, &j->latents, out, n * sizeof *out);
}

int engine_job_image(const gen_job *j, float *out, size_t n)
{
    const size_t want = (size_t)j->p.count * (size_t)j->p.height * (size_t)j->p.width * 3;
    if (!j->image) return err_set(ERR_INVALID, "engine_job_image: the job has not been decoded");
    if (n != want)
        return err_set(ERR_INVALID, "engine_job_image: room for %zu floats, the image holds %zu", n,
                       want);
    memcpy(out, j->image, want * sizeof *out);
    return 0;
}

void engine_job_free(gen_job *j)
{
    if (!j) return;
    kn_ctx *ctx = j->e->ctx;
    kn_free(j->e->text_ctx, &j->text_emb);
    kn_free(j->e->text_ctx, &j->text_pooled);
    kn_free(ctx, &j->latents);
    kn_free(ctx, &j->emb);
    kn_free(ctx, &j->pooled);
    fm_schedule_free(&j->sched);
    focus_control_free(j->focus);
    for (int k = 0; k < j->p.focus.n_subjects; k++)
        free((char *)j->p.focus.subjects[k].phrase);
    free((char *)j->p.prompt);
    free((char *)j->p.negative_prompt);
    free(j->image);
    free(j);
}
