/* The lifecycle of live jobs in the reactor: queueing, status, events to watchers, the
 * transitions the workers report, and recovery from the store. Persisting goes through the
 * store's grouped transaction, so a state change and the event announcing it leave together
 * after the commit at the end of the reactor turn. */
#include "daemon/daemon.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct worker *daemon_worker(const char *model)
{
    for (struct worker *w = D.workers; w; w = w->next)
        if (strcmp(w->sm.name, model) == 0 && !w->sm.retire) return w;
    return NULL;
}

void jobs_counts(uint32_t *queued, uint32_t *running)
{
    *queued = *running = 0;
    for (struct worker *w = D.workers; w; w = w->next) {
        pthread_mutex_lock(&w->sm.lock);
        *queued += w->sm.n_queued;
        *running += (uint32_t)w->sm.n_active;
        pthread_mutex_unlock(&w->sm.lock);
    }
}

void jobs_status_stored(const struct store_job *sj, struct proto_job_status *st)
{
    memset(st, 0, sizeof *st);
    snprintf(st->job, sizeof st->job, "%s", sj->id);
    st->state = sj->state;
    st->step = sj->step;
    st->steps = sj->steps;
    st->images = sj->state == PROTO_STATE_DONE ? sj->images : 0;
    st->created = sj->created;
    st->started = sj->started;
    st->finished = sj->finished;
    st->params = sj->params;
    st->params.set = proto_params_set(&st->params);
    st->error = sj->error;
}

void jobs_status(const struct djob *j, struct proto_job_status *st)
{
    if (j->mirror || j->unrecorded) {
        jobs_status_stored(&j->sj, st);
        if (j->unrecorded) { /* its end is told once it is durable */
            st->state = PROTO_STATE_RUNNING;
            st->images = 0;
            st->finished = 0;
        }
        return;
    }
    /* state and step are the worker's too: read under the model's lock. */
    struct sched_model *m = j->model;
    pthread_mutex_lock(&m->lock);
    jobs_status_stored(&j->sj, st);
    if (st->state == PROTO_STATE_QUEUED) st->position = sched_position(m, j);
    pthread_mutex_unlock(&m->lock);
}

void jobs_emit_to(struct djob *j, struct session *s, const struct proto_event *ev)
{
    /* Numbered before it is queued: one coalesced or dropped leaves a gap in the seqs. */
    struct proto_event e = *ev;
    e.seq = ++s->event_seq;
    msgpack_sbuffer_clear(&D.sb);
    int rc = proto_event_encode(&D.sb, &e);
    if (rc < 0 && e.n_png) { /* no memory for the images: the event without them */
        e.n_png = 0;
        msgpack_sbuffer_clear(&D.sb);
        rc = proto_event_encode(&D.sb, &e);
    }
    if (rc < 0) {
        log_err("job %s: encoding a %s event: %s", j->sj.id, proto_event_name(ev->kind), err_msg());
        return;
    }
    if (session_send(s, D.sb.data, D.sb.size, ev->kind == PROTO_EV_PROGRESS ? j->sj.id : NULL,
                     D.cfg->client_buffer) < 0 &&
        e.n_png) {
        e.n_png = 0;
        msgpack_sbuffer_clear(&D.sb);
        if (proto_event_encode(&D.sb, &e) == 0)
            session_send(s, D.sb.data, D.sb.size, NULL, D.cfg->client_buffer);
    }
}

void jobs_emit(struct djob *j, const struct proto_event *ev)
{
    /* A done event with the images, for the watchers that asked, while the frame limit
     * allows; without them the client fetches. */
    struct proto_event with = *ev;
    const uint8_t *png[PROTO_COUNT_MAX];
    size_t len[PROTO_COUNT_MAX], total = 0;
    for (uint32_t i = 0; ev->kind == PROTO_EV_DONE && i < j->sj.images && j->png[i]; i++) {
        png[i] = j->png[i];
        len[i] = j->bytes[i];
        total += len[i];
        with.n_png = i + 1;
    }
    if (with.n_png != j->sj.images || total > PROTO_MAX_SERVER - 65536) with.n_png = 0;
    with.png = png;
    with.png_len = len;
    with.png_sha256 = (const uint8_t(*)[32])j->sha256;
    for (size_t i = 0; i < j->n_watchers; i++) {
        struct session *s = session_by_name(j->watchers[i].session);
        if (s) jobs_emit_to(j, s, j->watchers[i].png ? &with : ev);
    }
}

void jobs_watch(struct djob *j, struct session *s, bool png)
{
    if (djob_add_watcher(j, s->name, png)) s->watching++;
}

void jobs_enqueue(struct djob *j, struct worker *w)
{
    j->model = &w->sm;
    sched_index_add(j);
    pthread_mutex_lock(&w->sm.lock);
    sched_push(&w->sm, j);
    pthread_cond_signal(&w->sm.wake);
    pthread_mutex_unlock(&w->sm.lock);
}

static void event_init(struct proto_event *ev, enum proto_event_kind kind, const struct djob *j)
{
    memset(ev, 0, sizeof *ev);
    ev->kind = kind;
    snprintf(ev->job, sizeof ev->job, "%s", j->sj.id);
}

static void unwatch_all(struct djob *j)
{
    for (size_t i = 0; i < j->n_watchers; i++) {
        struct session *s = session_by_name(j->watchers[i].session);
        if (s && s->watching) s->watching--;
    }
}

/* Waits in arrival order; at most JOBS_WAITS_PER_SESSION per session, so the list stays
 * short enough to scan. */
struct wait {
    char session[PROTO_MAX_NAME + 1];
    char job[PROTO_MAX_NAME + 1];
    struct proto_id id;
    double deadline;
    struct wait *next;
};
static struct wait *waits;

void jobs_wait(struct djob *j, struct session *s, const struct proto_id *id, double deadline)
{
    struct wait *w = xcalloc(1, sizeof *w);
    snprintf(w->session, sizeof w->session, "%s", s->name);
    snprintf(w->job, sizeof w->job, "%s", j->sj.id);
    w->id = *id;
    w->deadline = deadline;
    w->next = waits;
    waits = w;
    s->waits++;
}

/* Answers and frees the waits that pick selects (st: the status to answer with; NULL: the
 * live job's, read now). */
static void answer_waits(bool (*pick)(const struct wait *w, const void *arg), const void *arg,
                         const struct proto_job_status *st)
{
    for (struct wait **p = &waits; *p;) {
        struct wait *w = *p;
        if (!pick(w, arg)) {
            p = &w->next;
            continue;
        }
        *p = w->next;
        struct session *s = session_by_name(w->session);
        struct proto_job_status now;
        struct djob *j = st ? NULL : sched_find(w->job);
        if (j) jobs_status(j, &now);
        if (s && (st || j)) {
            s->waits--;
            msgpack_sbuffer_clear(&D.sb);
            if (proto_reply_job(&D.sb, &w->id, st ? st : &now) == 0)
                session_send(s, D.sb.data, D.sb.size, NULL, D.cfg->client_buffer);
        } else if (s) {
            s->waits--;
        }
        free(w);
    }
}

static bool wait_for_job(const struct wait *w, const void *job)
{
    return strcmp(w->job, job) == 0;
}

static bool wait_due(const struct wait *w, const void *now)
{
    return w->deadline <= *(const double *)now;
}

double jobs_waits_due(double now)
{
    answer_waits(wait_due, &now, NULL);
    double next = 1e9;
    for (struct wait *w = waits; w; w = w->next)
        if (w->deadline - now < next) next = w->deadline - now;
    return next;
}

void jobs_waits_free(void)
{
    while (waits) {
        struct wait *w = waits;
        waits = w->next;
        free(w);
    }
}

bool jobs_may_cancel(const struct store_job *j, const char *peer)
{
    return !j->owner[0] || strcmp(j->owner, peer) == 0;
}

void jobs_finish(struct djob *j, enum proto_state state, const struct proto_error *err)
{
    j->sj.state = state;
    j->sj.finished = now_wall();
    if (err) j->sj.error = *err;
    if (store_shared(D.store)) {
        if (share_record_end(j)) return;
    } else if (store_update(D.store, &j->sj) < 0) {
        log_err("job %s: %s", j->sj.id, err_msg());
    }
    jobs_end(j);
}

void jobs_end(struct djob *j)
{
    enum proto_state state = j->sj.state;
    const struct proto_error *err = j->sj.error.code ? &j->sj.error : NULL;
    struct proto_event ev;
    static const enum proto_event_kind kinds[PROTO_STATE_COUNT] = {
        [PROTO_STATE_DONE] = PROTO_EV_DONE,
        [PROTO_STATE_FAILED] = PROTO_EV_FAILED,
        [PROTO_STATE_CANCELED] = PROTO_EV_CANCELED};
    event_init(&ev, kinds[state], j);
    ev.images = state == PROTO_STATE_DONE ? j->sj.images : 0;
    ev.elapsed = j->sj.started > 0 ? j->sj.finished - j->sj.started : 0;
    if (err) ev.error = *err;
    jobs_emit(j, &ev);
    struct proto_job_status st;
    jobs_status_stored(&j->sj, &st);
    answer_waits(wait_for_job, j->sj.id, &st);
    if (!j->mirror) /* the daemon that ran it logs its end */
        log_msg(state == PROTO_STATE_FAILED ? LOG_WARNING : LOG_DEBUG, "job %s: %s%s%s", j->sj.id,
                proto_state_name(state), err ? ": " : "", err ? err->message : "");
    unwatch_all(j);
    sched_index_del(j);
    djob_free(j);
}

int jobs_add_images(struct djob *j)
{
    int rc = 0;
    char path[PROTO_MAX_TEXT + 1];
    for (uint32_t i = 0; !rc && i < j->sj.params.count; i++) {
        snprintf(path, sizeof path, "%s-%u.png", j->sj.id, i);
        rc = store_add_image(D.store, j->sj.id, i, path, j->sha256[i], j->bytes[i]);
    }
    return rc;
}

static void on_done(struct djob *j)
{
    /* Shared: the image rows are written with the job's end, and retried with it. */
    int rc = store_shared(D.store) ? 0 : jobs_add_images(j);
    if (rc) {
        struct proto_error e = {.code = PROTO_E_INTERNAL};
        snprintf(e.message, sizeof e.message, "%s", err_msg());
        jobs_finish(j, PROTO_STATE_FAILED, &e);
        return;
    }
    j->sj.images = j->sj.params.count;
    j->sj.step = j->sj.steps;
    jobs_finish(j, PROTO_STATE_DONE, NULL);
}

void jobs_progress(struct djob *j, uint32_t step, uint32_t steps, double elapsed)
{
    struct proto_event ev;
    event_init(&ev, PROTO_EV_PROGRESS, j);
    ev.step = step;
    ev.steps = steps;
    ev.elapsed = elapsed;
    ev.eta = step ? elapsed / step * (steps - step) : 0;
    jobs_emit(j, &ev);
}

bool jobs_cancel(struct djob *j)
{
    if (j->unrecorded) return false; /* it has ended already */
    struct sched_model *m = j->model;
    pthread_mutex_lock(&m->lock);
    bool removed = sched_remove(m, j);
    if (!removed) j->cancel = true; /* running: the worker stops it at the next step */
    pthread_mutex_unlock(&m->lock);
    if (removed) {
        struct proto_error err = {.code = PROTO_E_CANCELED};
        snprintf(err.message, sizeof err.message, "canceled while queued");
        jobs_finish(j, PROTO_STATE_CANCELED, &err);
    }
    return removed;
}

void jobs_worker_event(struct wevent *e)
{
    struct djob *j = e->job;
    struct proto_event ev;
    switch (e->kind) {
    case WEV_STARTED: {
        /* The worker may be stepping it already: its step is read under the model's lock. */
        pthread_mutex_lock(&j->model->lock);
        j->sj.started = now_wall();
        struct store_job snap = j->sj;
        pthread_mutex_unlock(&j->model->lock);
        if (store_update(D.store, &snap) < 0) log_err("job %s: %s", j->sj.id, err_msg());
        share_publish(STORE_EV_STARTED, j, 0, j->sj.steps, 0);
        event_init(&ev, PROTO_EV_STARTED, j);
        ev.steps = j->sj.steps;
        jobs_emit(j, &ev);
        break;
    }
    case WEV_PROGRESS:
        share_publish(STORE_EV_PROGRESS, j, e->step, e->steps, e->elapsed);
        jobs_progress(j, e->step, e->steps, e->elapsed);
        break;
    case WEV_DONE:
        on_done(j);
        share_want_claims();
        break;
    case WEV_FAILED:
        jobs_finish(j, PROTO_STATE_FAILED, &e->error);
        share_want_claims();
        break;
    case WEV_CANCELED: {
        struct proto_error err = {.code = PROTO_E_CANCELED};
        snprintf(err.message, sizeof err.message, "canceled");
        jobs_finish(j, PROTO_STATE_CANCELED, &err);
        share_want_claims();
        break;
    }
    case WEV_LOADED:
        break;
    case WEV_LOAD_FAILED:
        log_err("model %s: %s", e->w->sm.name, e->error.message);
        break;
    case WEV_DEVICE_LOST:
        reactor_fail(e->w->sm.name, e->error.message);
        break;
    case WEV_EXITED:
        worker_join(e->w);
        break;
    }
}

struct recover_ctx {
    struct worker *w; /* NULL: any configured model */
    unsigned loaded, orphans;
};

static void recover_one(void *ctx, const struct store_job *sj)
{
    struct recover_ctx *rc = ctx;
    if (sched_find(sj->id)) return;
    struct worker *w = rc->w ? rc->w : daemon_worker(sj->params.model);
    if (!w || strcmp(w->sm.name, sj->params.model) != 0) {
        rc->orphans += rc->w == NULL;
        return;
    }
    jobs_enqueue(djob_new(sj), w);
    rc->loaded++;
}

int jobs_recover(struct worker *w, bool at_start)
{
    struct recover_ctx ctx = {w, 0, 0};
    /* Shared: the claims take the queued jobs, of this daemon's previous life too. */
    if (store_shared(D.store)) return at_start ? store_recover(D.store, recover_one, &ctx) : 0;
    int rc = at_start ? store_recover(D.store, recover_one, &ctx)
                      : store_list(D.store,
                                   &(struct store_filter){.has_state = true,
                                                          .state = PROTO_STATE_QUEUED},
                                   UINT32_MAX >> 1, recover_one, &ctx);
    if (ctx.loaded) log_info("job store: %u queued job(s) resumed", ctx.loaded);
    if (ctx.orphans)
        log_warn("job store: %u queued job(s) wait for a model that is not configured",
                 ctx.orphans);
    return rc;
}

static void release(struct djob *j)
{
    sched_index_del(j);
    djob_free(j);
}

void jobs_release_worker(struct worker *w)
{
    struct sched_model *m = &w->sm;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_active; i++) {
        struct djob *j = m->active[i];
        if (j->cancel) { /* asked before the stop: honoured rather than run again */
            struct proto_error err = {.code = PROTO_E_CANCELED};
            snprintf(err.message, sizeof err.message, "canceled");
            jobs_finish(j, PROTO_STATE_CANCELED, &err);
            continue;
        }
        j->sj.state = PROTO_STATE_QUEUED;
        j->sj.step = 0;
        j->sj.started = 0;
        if (store_update(D.store, &j->sj) < 0) log_err("job %s: %s", j->sj.id, err_msg());
        release(j);
    }
    m->n_active = 0;
    struct djob *j;
    while (m->n_queues && (j = m->queues[0].head)) {
        sched_remove(m, j);
        /* Shared: the lease is given back for another daemon to claim the job now. */
        if (store_shared(D.store) && store_update(D.store, &j->sj) < 0)
            log_err("job %s: %s", j->sj.id, err_msg());
        release(j);
    }
    pthread_mutex_unlock(&m->lock);
}
