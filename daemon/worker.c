/* The model workers and their event queue towards the reactor; see worker.h. */
#include "daemon/worker.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/config.h"
#include "daemon/encoder.h"
#include "daemon/log.h"
#include "engine/gen_text.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- Events ---- */

static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static struct wevent *ev_head, *ev_tail;
static int ev_fd = -1;

int worker_events_init(void)
{
    ev_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ev_fd < 0) return err_set(ERR_IO, "eventfd: %s", strerror(errno));
    return 0;
}

int worker_events_fd(void)
{
    return ev_fd;
}

static void post(struct worker *w, enum wev_kind kind, struct djob *job, const struct wevent *tpl)
{
    struct wevent *e = xcalloc(1, sizeof *e);
    if (tpl) *e = *tpl;
    e->kind = kind;
    e->w = w;
    e->job = job;
    e->next = NULL;
    pthread_mutex_lock(&ev_lock);
    if (ev_tail)
        ev_tail->next = e;
    else
        ev_head = e;
    ev_tail = e;
    pthread_mutex_unlock(&ev_lock);
    uint64_t one = 1;
    ssize_t r = write(ev_fd, &one, sizeof one);
    (void)r; /* EAGAIN only when the counter is saturated: the reactor is woken anyway */
}

static void post_error(struct worker *w, enum wev_kind kind, struct djob *job,
                       enum proto_errcode code, const char *msg)
{
    struct wevent tpl = {0};
    tpl.error.code = code;
    snprintf(tpl.error.message, sizeof tpl.error.message, "%s", msg);
    post(w, kind, job, &tpl);
}

struct wevent *worker_events_take(void)
{
    uint64_t n;
    ssize_t r = read(ev_fd, &n, sizeof n);
    (void)r;
    pthread_mutex_lock(&ev_lock);
    struct wevent *e = ev_head;
    ev_head = ev_tail = NULL;
    pthread_mutex_unlock(&ev_lock);
    return e;
}

/* ---- Running jobs ---- */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* PNG text chunks as focus-run generate writes them, the model named as the daemon knows it. */
static int write_image(struct worker *w, struct djob *j, const uint8_t *rgb, uint32_t index)
{
    const gen_params *p = &j->gp;
    gen_text text;
    gen_text_fill(&text, p, w->sm.name, "focusd " FOCUS_VERSION, (int)index);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-%u.png", w->images_dir, j->sj.id, index);
    int rc = png_out_write(path, rgb, p->width, p->height, text.kv, text.n);
    if (rc) return rc;
    /* The checksum is of the bytes as stored, read back rather than encoded twice. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        rc = err_set(ERR_IO, "%s: %s", path, strerror(errno));
    } else {
        uint8_t *buf = malloc((size_t)st.st_size + 1);
        if (!buf)
            rc = err_set(ERR_NOMEM, "%s: out of memory", path);
        else if (read(fd, buf, (size_t)st.st_size) != st.st_size)
            rc = err_set(ERR_IO, "%s: short read", path);
        else {
            proto_sha256(buf, (size_t)st.st_size, j->sha256[index]);
            j->bytes[index] = (uint64_t)st.st_size;
            /* Kept until the reactor has sent the done event, which may carry it. */
            free(j->png[index]);
            j->png[index] = buf;
            buf = NULL;
        }
        free(buf);
    }
    if (fd >= 0) close(fd);
    return rc;
}

static int finish_job(struct worker *w, struct djob *j)
{
    uint8_t *rgb = NULL;
    int rc = engine_job_decode(w->engine, j->gj, &rgb);
    size_t bytes = (size_t)j->gp.width * (size_t)j->gp.height * 3;
    for (int i = 0; !rc && i < j->gp.count; i++)
        rc = write_image(w, j, rgb + (size_t)i * bytes, (uint32_t)i);
    free(rgb);
    return rc;
}

/* Under the lock: whether the worker has anything to do but wait for the encoder. */
static bool actionable(const struct sched_model *m)
{
    if (m->n_queued && m->n_active < m->max_active) return true;
    for (size_t i = 0; i < m->n_active; i++)
        if (m->active[i]->prep != PREP_ENCODING) return true;
    return false;
}

/* Under the lock: drops canceled active jobs into *gone (not while the encoder holds one) and
 * fills free slots from the queue into *fresh. Returns false when the worker should leave. */
static bool take_work(struct worker *w, struct djob **gone, size_t *n_gone, struct djob **fresh,
                      size_t *n_fresh)
{
    struct sched_model *m = &w->sm;
    for (;;) {
        if (m->stop) return false;
        if (actionable(m)) break;
        if (m->retire && !m->n_active && !m->n_queued) return false;
        pthread_cond_wait(&m->wake, &m->lock);
    }
    for (size_t i = 0; i < m->n_active;) {
        struct djob *j = m->active[i];
        if (j->cancel && j->prep != PREP_ENCODING) {
            sched_deactivate(m, j);
            gone[(*n_gone)++] = j;
        } else {
            i++;
        }
    }
    struct djob *j;
    while (m->n_active < m->max_active && (j = sched_pop(m)))
        fresh[(*n_fresh)++] = j;
    return true;
}

/* A job the engine could not get memory for ends out_of_memory: the job, not the daemon. */
static enum proto_errcode failure_code(int rc, enum proto_errcode otherwise)
{
    return rc == ERR_NOMEM ? PROTO_E_OUT_OF_MEMORY : otherwise;
}

static void fail_job(struct worker *w, struct djob *j, int rc, const char *msg)
{
    engine_job_free(j->gj);
    j->gj = NULL;
    pthread_mutex_lock(&w->sm.lock);
    sched_deactivate(&w->sm, j);
    pthread_mutex_unlock(&w->sm.lock);
    post_error(w, WEV_FAILED, j, failure_code(rc, PROTO_E_FAILED), msg);
}

/* Fresh jobs start: encoded and attached here, or handed to the encoder thread. Returns
 * ERR_DEVICE_LOST when the device is lost, else 0. */
static int start_jobs(struct worker *w, struct encoder *enc, struct djob **fresh, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct djob *j = fresh[i];
        j->t_start = mono_now();
        post(w, WEV_STARTED, j, NULL);
        if (enc) {
            pthread_mutex_lock(&w->sm.lock);
            encoder_submit(enc, j);
            pthread_mutex_unlock(&w->sm.lock);
            continue;
        }
        int rc = engine_job_prepare(w->engine, &j->gp, &j->gj);
        if (rc == ERR_DEVICE_LOST) return rc;
        if (rc < 0) {
            fail_job(w, j, rc, err_msg());
            continue;
        }
        pthread_mutex_lock(&w->sm.lock);
        j->prep = PREP_READY;
        pthread_mutex_unlock(&w->sm.lock);
    }
    return 0;
}

/* Jobs the encoder thread has finished: attached to the device, or failed. Returns
 * ERR_DEVICE_LOST when the device is lost, else 0. */
static int attach_encoded(struct worker *w)
{
    struct sched_model *m = &w->sm;
    struct djob *done[SCHED_MAX_ACTIVE];
    size_t n = 0;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_active; i++)
        if (m->active[i]->prep == PREP_ENCODED) done[n++] = m->active[i];
    pthread_mutex_unlock(&m->lock);
    for (size_t i = 0; i < n; i++) {
        struct djob *j = done[i];
        int rc = j->prep_rc < 0 ? j->prep_rc : engine_job_attach(w->engine, j->gj);
        if (rc == ERR_DEVICE_LOST) return rc;
        if (rc < 0) {
            fail_job(w, j, rc, j->prep_rc < 0 ? j->prep_msg : err_msg());
            continue;
        }
        pthread_mutex_lock(&m->lock);
        j->prep = PREP_READY;
        pthread_mutex_unlock(&m->lock);
    }
    return 0;
}

/* Under the lock: the batch, the ready jobs compatible with a leader that rotates over them,
 * so that incompatible jobs take turns. */
static size_t pick_batch(struct sched_model *m, size_t *lead, struct djob **batch)
{
    struct djob *ready[SCHED_MAX_ACTIVE];
    size_t n_ready = 0, n = 0;
    for (size_t i = 0; i < m->n_active; i++)
        if (m->active[i]->prep == PREP_READY) ready[n_ready++] = m->active[i];
    if (!n_ready) return 0;
    struct djob *leader = ready[(*lead)++ % n_ready];
    for (size_t i = 0; i < n_ready; i++)
        if (ready[i] == leader || engine_jobs_batchable(leader->gj, ready[i]->gj))
            batch[n++] = ready[i];
    return n;
}

/* One engine step of the batch and what follows from it: progress, finished jobs decoded
 * and written, failures. Returns ERR_DEVICE_LOST when the device is lost, else 0. */
static int step_batch(struct worker *w, struct djob **batch, size_t n_batch)
{
    struct sched_model *m = &w->sm;
    gen_job *gj[SCHED_MAX_ACTIVE];
    for (size_t i = 0; i < n_batch; i++)
        gj[i] = batch[i]->gj;
    int rc = engine_step(w->engine, gj, (int)n_batch);
    if (rc == ERR_DEVICE_LOST) return rc;
    double now = mono_now();
    for (size_t i = 0; i < n_batch; i++) {
        struct djob *j = batch[i];
        bool done = !rc && engine_job_done(j->gj);
        struct wevent tpl = {0};
        tpl.step = (uint32_t)(rc ? 0 : engine_job_step_index(j->gj));
        tpl.steps = (uint32_t)engine_job_steps(j->gj);
        tpl.elapsed = now - j->t_start;
        pthread_mutex_lock(&m->lock);
        j->sj.step = tpl.step;
        if (rc) sched_deactivate(m, j);
        pthread_mutex_unlock(&m->lock);
        if (!rc) post(w, WEV_PROGRESS, j, &tpl);
        if (!rc && !done) continue;
        int frc = rc ? rc : finish_job(w, j);
        if (frc == ERR_DEVICE_LOST) return frc;
        if (done) {
            pthread_mutex_lock(&m->lock);
            sched_deactivate(m, j);
            pthread_mutex_unlock(&m->lock);
        }
        /* The engine's memory is released on this thread, the one that drives it. */
        engine_job_free(j->gj);
        j->gj = NULL;
        if (frc < 0)
            post_error(w, WEV_FAILED, j,
                       failure_code(frc, rc ? PROTO_E_FAILED : PROTO_E_INTERNAL), err_msg());
        else
            post(w, WEV_DONE, j, &tpl);
    }
    if (rc) log_err("model %s: engine step failed: %s", m->name, err_msg());
    return 0;
}

/* Runs the model's jobs until told to stop. With text encoders of their own the prompts are
 * encoded on an encoder thread meanwhile (encoder.h). An ERR_DEVICE_LOST from the engine ends
 * the loop too: the reactor hears of it and stops the daemon with a failure, so that the
 * service manager starts a new process on a fresh context. The jobs in hand stay active, to be
 * queued again, not failed: the device failed them, not their requests. */
static void run(struct worker *w, struct encoder *enc)
{
    struct sched_model *m = &w->sm;
    struct djob *gone[SCHED_MAX_ACTIVE], *fresh[SCHED_MAX_ACTIVE], *batch[SCHED_MAX_ACTIVE];
    size_t lead = 0;
    int lost = 0;
    while (!lost) {
        size_t n_gone = 0, n_fresh = 0;
        pthread_mutex_lock(&m->lock);
        bool go = take_work(w, gone, &n_gone, fresh, &n_fresh);
        pthread_mutex_unlock(&m->lock);
        for (size_t i = 0; i < n_gone; i++) {
            engine_job_free(gone[i]->gj);
            gone[i]->gj = NULL;
            post(w, WEV_CANCELED, gone[i], NULL);
        }
        if (!go) break;
        if ((lost = start_jobs(w, enc, fresh, n_fresh)) || (lost = attach_encoded(w))) break;
        pthread_mutex_lock(&m->lock);
        size_t n_batch = pick_batch(m, &lead, batch);
        pthread_mutex_unlock(&m->lock);
        if (n_batch) lost = step_batch(w, batch, n_batch);
    }
    if (lost) post_error(w, WEV_DEVICE_LOST, NULL, PROTO_E_INTERNAL, err_msg());
    encoder_stop(enc);
    /* Stopping: the jobs still active are left for the reactor to queue again. */
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_active; i++) {
        engine_job_free(m->active[i]->gj);
        m->active[i]->gj = NULL;
    }
    pthread_mutex_unlock(&m->lock);
}

/* "auto" is the first CUDA device when there is one, else the CPU. */
static int resolve_device(const char *dev, engine_options *o, char *name, size_t cap)
{
    memset(o, 0, sizeof *o);
    o->device = KN_CPU;
    if (strncmp(dev, "cuda", 4) == 0 || strcmp(dev, "auto") == 0) {
        int index = strncmp(dev, "cuda:", 5) == 0 ? atoi(dev + 5) : 0;
        if (engine_probe_device(KN_CUDA, index) == 0) {
            o->device = KN_CUDA;
            o->device_index = index;
        } else if (strcmp(dev, "auto") != 0) {
            return err_prefix(ERR_DEVICE, "device %s: ", dev);
        } else {
            log_info("device auto: %s; computing on the CPU", err_msg());
        }
    }
    if (o->device == KN_CUDA)
        snprintf(name, cap, "cuda:%d", o->device_index);
    else
        snprintf(name, cap, "cpu");
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    engine_options opts;
    double t0 = mono_now();
    int rc = resolve_device(w->device, &opts, w->resolved, sizeof w->resolved);
    if (!rc) rc = engine_precision_parse(w->precision, opts.device, &opts.compute);
    opts.text_on_cpu = w->text_on_cpu;
    if (!rc) rc = engine_load(w->path, &opts, &w->engine);
    if (rc) {
        w->engine = NULL;
        post_error(w, WEV_LOAD_FAILED, NULL, PROTO_E_UNAVAILABLE, err_msg());
        post(w, WEV_EXITED, NULL, NULL);
        return NULL;
    }
    /* The directory read, which for a repository id is its Hugging Face cache snapshot. */
    log_info("model %s: loaded %s on %s (%s%s) in %.1f s (%.2f GB of weights)", w->sm.name,
             engine_model_config(w->engine)->path, w->resolved, engine_precision_name(opts.compute),
             opts.text_on_cpu ? ", text encoders on the CPU" : "", mono_now() - t0,
             (double)engine_weight_bytes(w->engine) / 1e9);
    w->base_bytes = engine_resident_bytes(w->engine);
    atomic_store(&w->loaded, true);
    post(w, WEV_LOADED, NULL, NULL);
    /* Without its own thread the encoding runs inline, as when the encoders share the device. */
    struct encoder *enc = NULL;
    if (engine_encodes_apart(w->engine) && encoder_start(w->engine, &w->sm, &enc) < 0)
        log_err("%s; encoding between steps instead", err_msg());
    run(w, enc);
    post(w, WEV_EXITED, NULL, NULL);
    return NULL;
}

int worker_start(const char *name, const char *path, const struct worker_placement *place,
                 uint32_t batch_max, const char *images_dir, struct worker **out)
{
    struct worker *w = xcalloc(1, sizeof *w);
    sched_model_init(&w->sm, name, batch_max);
    w->path = xstrdup(path);
    snprintf(w->device, sizeof w->device, "%s", place->device);
    snprintf(w->precision, sizeof w->precision, "%s", place->precision);
    w->text_on_cpu = place->text_on_cpu;
    w->images_dir = xstrdup(images_dir);
    atomic_init(&w->loaded, false);
    /* The thread inherits the reactor's blocked signals: only signalfd sees them. */
    int e = pthread_create(&w->thread, NULL, worker_main, w);
    if (e) {
        sched_model_destroy(&w->sm);
        free(w->path);
        free(w->images_dir);
        free(w);
        return err_set(ERR_IO, "model %s: starting its worker thread: %s", name, strerror(e));
    }
    *out = w;
    return 0;
}

static void wake(struct worker *w, bool stop)
{
    pthread_mutex_lock(&w->sm.lock);
    if (stop)
        w->sm.stop = true;
    else
        w->sm.retire = true;
    pthread_cond_signal(&w->sm.wake);
    pthread_mutex_unlock(&w->sm.lock);
}

void worker_stop(struct worker *w)
{
    wake(w, true);
}

void worker_retire(struct worker *w)
{
    wake(w, false);
}

void worker_join(struct worker *w)
{
    if (!w->exited) pthread_join(w->thread, NULL);
    w->exited = true;
}

void worker_free(struct worker *w)
{
    if (w->engine) engine_free(w->engine);
    sched_model_destroy(&w->sm);
    free(w->path);
    free(w->images_dir);
    free(w);
}
