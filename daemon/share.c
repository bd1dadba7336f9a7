/* The jobs of a store shared with other daemons (store = postgresql://...): this daemon
 * claims queued jobs only for the models it serves and only as many as they have free slots,
 * so that the job goes to whichever daemon is free first; it renews the leases of the jobs it
 * runs; and it follows, as mirrors (struct djob with mirror set, never queued), the jobs
 * that other daemons run on behalf of its sessions: their events arrive through the store
 * (store_poll) and go to the sessions as a local job's would, cancel is asked of their
 * holder through the store, and their end is read from the store's row. With a store of one
 * daemon every function here does nothing: jobs are queued at submission as before. */
#include "daemon/daemon.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool claims_wanted = true;
static double last_renew = -1e9, last_retry;
static size_t n_unrecorded;

void share_want_claims(void)
{
    claims_wanted = true;
}

void share_publish(enum store_event_kind kind, const struct djob *j, uint32_t step, uint32_t steps,
                   double elapsed)
{
    if (!store_shared(D.store)) return;
    struct store_event e = {.kind = kind, .step = step, .steps = steps, .elapsed = elapsed};
    snprintf(e.job, sizeof e.job, "%s", j->sj.id);
    if (store_publish(D.store, &e) < 0) log_debug("job %s: %s", j->sj.id, err_msg());
}

/* The end's rows, then the news; 0, ERR_MISSING when the lease has passed to another. */
static int record(struct djob *j)
{
    int rc = j->sj.state == PROTO_STATE_DONE ? jobs_add_images(j) : 0;
    if (!rc) rc = store_update(D.store, &j->sj);
    if (rc) return rc;
    share_publish(STORE_EV_ENDED, j, 0, 0, 0);
    return 0;
}

/* Another daemon runs the job now: this one follows it instead. */
static void become_mirror(struct djob *j)
{
    log_warn("job %s: %s", j->sj.id, err_msg());
    j->mirror = true;
    j->model = NULL;
    j->sj.state = PROTO_STATE_QUEUED;
    j->sj.finished = 0;
    j->sj.images = 0;
    j->sj.error = (struct proto_error){0};
}

bool share_record_end(struct djob *j)
{
    int rc = record(j);
    if (rc == 0) return false;
    if (rc == ERR_MISSING) {
        become_mirror(j);
        return true;
    }
    log_warn("job %s: %s; its end is recorded and told once the store is back", j->sj.id,
             err_msg());
    j->unrecorded = true;
    n_unrecorded++;
    return true;
}

/* The ends that waited for the store, written again. */
static void retry_ends(void)
{
    size_t cap = sched_index_count();
    struct djob **all = xcalloc(cap + 1, sizeof *all);
    size_t n = sched_index_list(all, cap);
    for (size_t i = 0; i < n; i++) {
        struct djob *j = all[i];
        if (!j->unrecorded) continue;
        int rc = record(j);
        if (rc && rc != ERR_MISSING) break; /* still away */
        j->unrecorded = false;
        n_unrecorded--;
        if (rc)
            become_mirror(j);
        else
            jobs_end(j);
    }
    free(all);
}

/* A job claimed: it replaces the mirror this daemon followed it by, if any, and keeps that
 * mirror's watchers. */
static void claimed(void *ctx, const struct store_job *sj)
{
    struct worker *w = ctx;
    struct djob *old = sched_find(sj->id);
    if (old && !old->mirror) return; /* ours already */
    struct djob *j = djob_new(sj);
    if (old) {
        j->watchers = old->watchers;
        j->n_watchers = old->n_watchers;
        old->watchers = NULL;
        old->n_watchers = 0;
        sched_index_del(old);
        djob_free(old);
    }
    jobs_enqueue(j, w);
    if (sj->cancel_asked) jobs_cancel(j);
}

static void claim(void)
{
    claims_wanted = false;
    for (struct worker *w = D.workers; w; w = w->next) {
        if (!atomic_load(&w->loaded) || w->exited) continue;
        pthread_mutex_lock(&w->sm.lock);
        size_t busy = w->sm.n_active + w->sm.n_queued;
        uint32_t free_slots =
            w->sm.retire || busy >= w->sm.max_active ? 0 : (uint32_t)(w->sm.max_active - busy);
        pthread_mutex_unlock(&w->sm.lock);
        if (free_slots && store_claim(D.store, w->sm.name, free_slots, claimed, w) < 0) {
            log_debug("claims: %s", err_msg());
            claims_wanted = true; /* again next turn */
        }
    }
}

static void cancel_asked(void *ctx, const char *id)
{
    (void)ctx;
    struct djob *j = sched_find(id);
    if (j && !j->mirror && !j->cancel) jobs_cancel(j);
}

bool share_sync(struct djob *j)
{
    struct store_job *sj = xmalloc(sizeof *sj);
    int rc = store_get(D.store, j->sj.id, sj);
    bool ended = false;
    if (rc == 0) {
        /* The row has the step the job started again from; the events the step it is at. */
        uint32_t step = j->sj.step;
        j->sj = *sj;
        if (sj->state == PROTO_STATE_RUNNING && step > sj->step) j->sj.step = step;
        ended = sj->state == PROTO_STATE_DONE || sj->state == PROTO_STATE_FAILED ||
                sj->state == PROTO_STATE_CANCELED;
    } else if (rc == ERR_MISSING) { /* removed by retention meanwhile */
        j->sj.state = PROTO_STATE_FAILED;
        j->sj.error.code = PROTO_E_EXPIRED;
        snprintf(j->sj.error.message, sizeof j->sj.error.message, "the job has expired");
        ended = true;
    }
    free(sj);
    if (ended) jobs_end(j);
    return ended;
}

/* The leases of the jobs this daemon runs are renewed, and the mirrors brought up to date
 * in case an event was missed. */
static void renew(void)
{
    size_t cap = sched_index_count();
    struct djob **all = xcalloc(cap + 1, sizeof *all);
    const char **ids = xcalloc(cap + 1, sizeof *ids);
    size_t n = sched_index_list(all, cap), n_ids = 0;
    for (size_t i = 0; i < n; i++)
        if (!all[i]->mirror) ids[n_ids++] = all[i]->sj.id;
    if (n_ids && store_renew(D.store, ids, n_ids, cancel_asked, NULL) < 0)
        log_warn("leases: %s", err_msg());
    free(ids);
    for (size_t i = 0; i < n; i++)
        if (all[i]->mirror) share_sync(all[i]);
    free(all);
}

void share_turn(double now)
{
    if (!store_shared(D.store)) return;
    if (n_unrecorded && now - last_retry >= 1.0) {
        last_retry = now;
        retry_ends();
    }
    if (D.stopping) return;
    if (now - last_renew >= D.cfg->lease_time / 3) {
        last_renew = now;
        renew();
        claims_wanted = true; /* leases of others may have expired */
    }
    if (claims_wanted) claim();
}

void share_event(void *ctx, const struct store_event *e)
{
    (void)ctx;
    struct djob *j = e->job[0] ? sched_find(e->job) : NULL;
    struct proto_event ev = {0};
    switch (e->kind) {
    case STORE_EV_QUEUED:
        if (daemon_worker(e->model)) claims_wanted = true;
        break;
    case STORE_EV_STARTED:
        if (!j || !j->mirror) break;
        j->sj.state = PROTO_STATE_RUNNING;
        j->sj.started = now_wall();
        j->sj.step = 0;
        ev.kind = PROTO_EV_STARTED;
        snprintf(ev.job, sizeof ev.job, "%s", j->sj.id);
        ev.steps = e->steps;
        jobs_emit(j, &ev);
        break;
    case STORE_EV_PROGRESS:
        if (!j || !j->mirror) break;
        j->sj.step = e->step;
        jobs_progress(j, e->step, e->steps, e->elapsed);
        break;
    case STORE_EV_ENDED:
        if (j && j->mirror) share_sync(j);
        break;
    case STORE_EV_CANCEL:
        if (j && !j->mirror && !j->cancel) jobs_cancel(j);
        break;
    case STORE_EV_RECONNECTED:
        last_renew = -1e9; /* renew and resynchronise at once */
        claims_wanted = true;
        break;
    }
}

struct djob *share_find_live(const char *id, bool *failed)
{
    *failed = false;
    struct djob *j = sched_find(id);
    if (j || !store_shared(D.store)) return j;
    struct store_job *sj = xmalloc(sizeof *sj);
    int rc = store_get(D.store, id, sj);
    *failed = rc < 0 && rc != ERR_MISSING;
    if (rc == 0 && (sj->state == PROTO_STATE_QUEUED || sj->state == PROTO_STATE_RUNNING)) {
        j = djob_new(sj);
        j->mirror = true;
        sched_index_add(j);
    }
    free(sj);
    return j;
}

int share_cancel(struct djob *j, bool *ended)
{
    struct proto_error err = {.code = PROTO_E_CANCELED};
    snprintf(err.message, sizeof err.message, "canceled while queued");
    int rc = store_cancel(D.store, j->sj.id, &err, now_wall(), ended);
    if (rc || !*ended) return rc;
    j->sj.state = PROTO_STATE_CANCELED;
    j->sj.finished = now_wall();
    j->sj.error = err;
    jobs_end(j);
    return 0;
}

void share_free(void)
{
    size_t cap = sched_index_count();
    struct djob **all = xcalloc(cap + 1, sizeof *all);
    size_t n = sched_index_list(all, cap);
    for (size_t i = 0; i < n; i++) {
        struct djob *j = all[i];
        if (!j->mirror && !j->unrecorded) continue;
        if (j->unrecorded) /* its lease expires: another daemon runs it again */
            log_warn("job %s: its end was never recorded; it will run again", j->sj.id);
        sched_index_del(j);
        djob_free(j);
    }
    free(all);
}
