/* The request handlers: a frame from a session is validated and decoded by the protocol
 * library (size, then structure, then types and ranges), then dispatched by op. Every request
 * gets exactly one reply, an error naming the field when it cannot be served; nothing a
 * client sends can make the reactor block or compute. */
#include "daemon/daemon.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/fetch.h"
#include "daemon/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static void send_sb(struct session *s)
{
    session_send(s, D.sb.data, D.sb.size, NULL, D.cfg->client_buffer);
}

/* A reply too large to queue now is answered out_of_memory instead: small enough to queue. */
static void send_or_refuse(struct session *s, const struct proto_id *id, const void *buf,
                           size_t len)
{
    if (session_send(s, buf, len, NULL, D.cfg->client_buffer) == 0) return;
    log_err("%s", err_msg());
    ops_reply_error(s, id, PROTO_E_OUT_OF_MEMORY, "", "no memory to queue the reply now");
}

void ops_reply_error(struct session *s, const struct proto_id *id, enum proto_errcode code,
                     const char *field, const char *message)
{
    msgpack_sbuffer_clear(&D.sb);
    if (proto_reply_error(&D.sb, id, code, field, message) == 0) send_sb(s);
}

/* An encoder's failure (out of memory, an image over the frame limit) becomes an internal
 * error reply rather than silence. */
static void finish_reply(struct session *s, const struct proto_id *id, int rc)
{
    if (rc == 0) {
        send_or_refuse(s, id, D.sb.data, D.sb.size);
        return;
    }
    char msg[PROTO_MAX_TEXT + 1];
    snprintf(msg, sizeof msg, "%s", err_msg());
    ops_reply_error(s, id, PROTO_E_INTERNAL, "", msg);
}

static void op_hello(struct session *s, const struct proto_request *r)
{
    if (r->u.hello.client[0]) snprintf(s->client, sizeof s->client, "%s", r->u.hello.client);
    struct proto_hello_reply h = {.protocol = PROTO_VERSION, .max_queue = D.cfg->max_queue};
    snprintf(h.server, sizeof h.server, "focusd");
    snprintf(h.version, sizeof h.version, "%s", FOCUS_VERSION);
    snprintf(h.session, sizeof h.session, "%s", s->name);
    snprintf(h.default_model, sizeof h.default_model, "%s", D.cfg->default_model);
    const char *names[64];
    for (size_t i = 0; i < D.cfg->n_models && i < 64; i++)
        names[h.n_models++] = D.cfg->models[i].name;
    h.models = names;
    /* Every limit of the daemon's that a client can reach, by its configuration key. */
    const struct config *c = D.cfg;
    const struct proto_limit limits[] = {
        {"max_frame", DAEMON_MAX_FRAME},
        {"max_queue", c->max_queue},
        {"max_jobs_per_peer", c->max_jobs_per_peer},
        {"max_job_pixels", c->max_job_pixels},
        {"batch_max", c->batch_max},
        {"memory_limit", c->memory_limit},
        {"client_buffer", c->client_buffer},
        {"client_backlog", c->client_backlog},
        {"max_sessions", c->max_sessions},
        {"max_sessions_per_peer", c->max_sessions_per_peer},
        {"session_timeout", (uint64_t)c->session_timeout},
        {"retention_age", (uint64_t)c->retention_age},
        {"retention_bytes", c->retention_bytes},
        {"waits_per_session", JOBS_WAITS_PER_SESSION},
    };
    h.daemon_limits = limits;
    h.n_daemon_limits = sizeof limits / sizeof *limits;
    msgpack_sbuffer_clear(&D.sb);
    finish_reply(s, &r->id, proto_reply_hello(&D.sb, &r->id, &h));
}

/* The parameter an engine message is about, for the error's field: the one whose words come
 * first in it. */
static const char *field_of(const char *msg)
{
    static const struct {
        const char *words, *field;
    } names[] = {
        {"negative_prompt", "negative_prompt"},
        {"prompt", "prompt"},
        {"steps", "steps"},
        {"guidance", "guidance"},
        {"width", "width"},
        {"height", "height"},
        {"max_seq", "max_seq"},
        {"count", "count"},
        {"seed", "seed"},
        {"subjects:", "subjects"},
        {"focus_lambda", "focus_lambda"},
        {"focus_heuristic", "focus_heuristic"},
    };
    const char *best = "", *at = NULL;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const char *p = strstr(msg, names[i].words);
        if (p && (!at || p < at)) {
            at = p;
            best = names[i].field;
        }
    }
    return best;
}

static void new_job_id(char *id, size_t cap)
{
    uint8_t r[8];
    if (getrandom(r, sizeof r, 0) != sizeof r) {
        /* Without entropy, time and a counter still give unique ids. */
        static uint32_t serial;
        uint64_t t = (uint64_t)(now_wall() * 1e6);
        memcpy(r, &t, 4);
        serial++;
        memcpy(r + 4, &serial, 4);
    }
    snprintf(id, cap, "j%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5], r[6],
             r[7]);
}

/* Whether the job, run alone, fits beside the model in its device's memory (or memory_limit):
 * the model as measured once loaded, plus the engine's bound for the job. The message says
 * how much it would take. */
static bool fits_memory(const struct worker *w, const gen_params *p)
{
    kn_memory m;
    engine_memory(w->engine, &m);
    uint64_t cap = D.cfg->memory_limit && (D.cfg->memory_limit < m.total || !m.total)
                       ? D.cfg->memory_limit
                       : m.total;
    uint64_t need = engine_job_bytes(w->engine, p);
    if (!cap || w->base_bytes + need <= cap) return true;
    err_set(ERR_RANGE,
            "%dx%d x %d image(s) need about %.2f GB of %s memory beside the model's %.2f GB; "
            "%s allows %.2f GB",
            p->width, p->height, p->count, need / 1e9, w->resolved, w->base_bytes / 1e9,
            cap == m.total ? "the device" : "memory_limit", cap / 1e9);
    return false;
}

static void op_submit(struct session *s, const struct proto_request *r)
{
    const struct proto_submit *in = &r->u.submit;
    const char *model = in->model[0] ? in->model : D.cfg->default_model;
    struct worker *w = daemon_worker(model);
    if (!w) return ops_reply_error(s, &r->id, PROTO_E_NOT_FOUND, "model", "no such model");
    if (D.stopping)
        return ops_reply_error(s, &r->id, PROTO_E_UNAVAILABLE, "", "the daemon is stopping");
    if (!atomic_load(&w->loaded))
        return ops_reply_error(s, &r->id, PROTO_E_UNAVAILABLE, "model",
                               w->exited ? "the model failed to load" : "the model is loading");
    struct store_job sj = {0};
    sj.params = *in;
    snprintf(sj.params.model, sizeof sj.params.model, "%s", model);
    sj.params.set = proto_params_set(&sj.params);
    sj.params.watch = false;
    sj.params.png = false;
    /* No seed: a random one, 32 bits since the torch generator uses only those; the job's
     * status reports it, so the image can be made again. */
    uint32_t seed32;
    if (!(in->set & PROTO_SUBMIT_SEED)) {
        if (getrandom(&seed32, sizeof seed32, 0) != (ssize_t)sizeof seed32)
            return ops_reply_error(s, &r->id, PROTO_E_INTERNAL, "", "no random seed available");
        sj.params.seed = seed32;
    }
    const struct proto_submit *p = &sj.params;
    uint64_t px = (uint64_t)p->width * p->height;
    if (px * p->count > D.cfg->max_job_pixels) {
        char msg[160];
        snprintf(msg, sizeof msg, "%ux%u x %u images exceed the %llu pixels a job may take",
                 p->width, p->height, p->count, (unsigned long long)D.cfg->max_job_pixels);
        return ops_reply_error(s, &r->id, PROTO_E_TOO_LARGE,
                               px > D.cfg->max_job_pixels ? "width" : "count", msg);
    }
    struct djob *j = djob_new(&sj);
    if (engine_check_params(w->engine, &j->gp) < 0) {
        char msg[PROTO_MAX_TEXT + 1];
        snprintf(msg, sizeof msg, "%s", err_msg());
        djob_free(j);
        return ops_reply_error(s, &r->id, PROTO_E_BAD_FIELD, field_of(msg), msg);
    }
    if (!fits_memory(w, &j->gp)) {
        char msg[PROTO_MAX_TEXT + 1];
        snprintf(msg, sizeof msg, "%s", err_msg());
        djob_free(j);
        return ops_reply_error(s, &r->id, PROTO_E_TOO_LARGE, p->count > 1 ? "count" : "width", msg);
    }
    uint32_t queued, running, mine = 0;
    jobs_counts(&queued, &running);
    for (struct worker *wk = D.workers; wk; wk = wk->next) {
        pthread_mutex_lock(&wk->sm.lock);
        mine += sched_peer_queued(&wk->sm, s->peer);
        pthread_mutex_unlock(&wk->sm.lock);
    }
    if (store_shared(D.store)) { /* the queue is the store's, shared with other daemons */
        uint64_t all = 0, own = 0;
        if (store_count(D.store, PROTO_STATE_QUEUED, NULL, &all) < 0 ||
            store_count(D.store, PROTO_STATE_QUEUED, s->peer, &own) < 0) {
            djob_free(j);
            log_err("%s", err_msg());
            return ops_reply_error(s, &r->id, PROTO_E_INTERNAL, "", "the job store failed");
        }
        queued = all > UINT32_MAX ? UINT32_MAX : (uint32_t)all;
        mine = own > UINT32_MAX ? UINT32_MAX : (uint32_t)own;
    }
    if (queued >= D.cfg->max_queue || mine >= D.cfg->max_jobs_per_peer) {
        djob_free(j);
        bool full = queued >= D.cfg->max_queue;
        struct proto_error e = {.code = PROTO_E_BUSY};
        snprintf(e.limit, sizeof e.limit, "%s", full ? "max_queue" : "max_jobs_per_peer");
        snprintf(e.message, sizeof e.message, "%s",
                 full ? "the queue is full" : "this peer has max_jobs_per_peer jobs queued");
        msgpack_sbuffer_clear(&D.sb);
        if (proto_reply_refusal(&D.sb, &r->id, &e) == 0) send_sb(s);
        return;
    }
    new_job_id(j->sj.id, sizeof j->sj.id);
    snprintf(j->sj.session, sizeof j->sj.session, "%s", s->name);
    j->sj.state = PROTO_STATE_QUEUED;
    j->sj.created = now_wall();
    j->sj.steps = p->steps;
    snprintf(j->sj.owner, sizeof j->sj.owner, "%s", s->peer);
    /* The reply waits in the session's queue for the commit at the end of this turn. */
    if (store_insert(D.store, &j->sj) < 0) {
        char msg[PROTO_MAX_TEXT + 1];
        snprintf(msg, sizeof msg, "%s", err_msg());
        djob_free(j);
        log_err("%s", msg);
        return ops_reply_error(s, &r->id, PROTO_E_INTERNAL, "", "the job store failed");
    }
    if (store_shared(D.store)) {
        /* Followed until a daemon, this one or another, claims it. */
        j->mirror = true;
        sched_index_add(j);
        share_want_claims();
    } else {
        jobs_enqueue(j, w);
    }
    msgpack_sbuffer_clear(&D.sb);
    finish_reply(s, &r->id, proto_reply_submit(&D.sb, &r->id, j->sj.id));
    if (in->watch) {
        jobs_watch(j, s, in->png);
        struct proto_event ev = {.kind = PROTO_EV_QUEUED};
        snprintf(ev.job, sizeof ev.job, "%s", j->sj.id);
        if (!j->mirror) {
            pthread_mutex_lock(&w->sm.lock);
            ev.position = j->sj.state == PROTO_STATE_QUEUED ? sched_position(&w->sm, j) : 0;
            pthread_mutex_unlock(&w->sm.lock);
        }
        jobs_emit_to(j, s, &ev);
    }
}

/* A job id the store does not hold: one that retention removed, or none ever. */
static void reply_missing(struct session *s, const struct proto_id *id, const char *job)
{
    bool expired = false;
    if (store_expired(D.store, job, &expired) < 0)
        return ops_reply_error(s, id, PROTO_E_INTERNAL, "", "the job store failed");
    if (expired)
        return ops_reply_error(s, id, PROTO_E_EXPIRED, "job",
                               "the job has expired: retention removed it and its images");
    ops_reply_error(s, id, PROTO_E_NOT_FOUND, "job", "no such job");
}

/* watch, cancel and job: the job's status, live or stored. */
static void op_job(struct session *s, const struct proto_request *r)
{
    struct proto_job_status st;
    /* Watching or canceling a job another daemon runs follows it here (a mirror). */
    bool failed = false;
    struct djob *j =
        r->op == PROTO_OP_JOB ? sched_find(r->u.job.job) : share_find_live(r->u.job.job, &failed);
    if (failed) return ops_reply_error(s, &r->id, PROTO_E_INTERNAL, "", "the job store failed");
    /* The row, not the events that may still be on their way, tells how a mirror stands. */
    if (j && j->mirror && share_sync(j)) j = NULL;
    if (j) {
        if (r->op == PROTO_OP_CANCEL && !jobs_may_cancel(&j->sj, s->peer))
            return ops_reply_error(s, &r->id, PROTO_E_FORBIDDEN, "job",
                                   "only the peer that submitted the job may cancel it");
        if (r->op == PROTO_OP_WATCH) jobs_watch(j, s, r->u.job.png);
        jobs_status(j, &st);
        bool ended = false;
        if (r->op == PROTO_OP_CANCEL && j->mirror && share_cancel(j, &ended) < 0) {
            log_err("%s", err_msg());
            return ops_reply_error(s, &r->id, PROTO_E_INTERNAL, "", "the job store failed");
        }
        if (r->op == PROTO_OP_CANCEL && !j->mirror) ended = jobs_cancel(j);
        if (ended) { /* j is freed */
            st.state = PROTO_STATE_CANCELED;
            st.position = 0;
            st.error = (struct proto_error){.code = PROTO_E_CANCELED};
            snprintf(st.error.message, sizeof st.error.message, "canceled while queued");
            st.finished = now_wall();
        }
    } else {
        struct store_job *sj = xmalloc(sizeof *sj);
        int rc = store_get(D.store, r->u.job.job, sj);
        if (rc == 0) jobs_status_stored(sj, &st);
        free(sj);
        if (rc == ERR_MISSING) return reply_missing(s, &r->id, r->u.job.job);
        if (rc) return ops_reply_error(s, &r->id, PROTO_E_INTERNAL, "", "the job store failed");
    }
    msgpack_sbuffer_clear(&D.sb);
    finish_reply(s, &r->id, proto_reply_job(&D.sb, &r->id, &st));
}

struct list_ctx {
    struct proto_job_status *st;
    size_t n;
    int64_t last_seq, prev_seq; /* of the last row listed and of the one before it */
};

static void list_one(void *ctx, const struct store_job *sj)
{
    struct list_ctx *lc = ctx;
    struct djob *j = sched_find(sj->id);
    if (j)
        jobs_status(j, &lc->st[lc->n]);
    else
        jobs_status_stored(sj, &lc->st[lc->n]);
    lc->n++;
    lc->prev_seq = lc->last_seq;
    lc->last_seq = sj->seq;
}

/* The caller's own jobs, newest first, a page at a time: the cursor names the seq the next
 * page starts below. One more row than the page is read to know whether another follows. */
static void op_jobs(struct session *s, const struct proto_request *r)
{
    struct store_filter f = {s->peer, r->u.jobs.has_state, r->u.jobs.state, 0};
    const char *cur = r->u.jobs.cursor;
    if (*cur) {
        char *end;
        long long seq = cur[0] == 'c' ? strtoll(cur + 1, &end, 10) : 0;
        if (seq <= 0 || *end)
            return ops_reply_error(s, &r->id, PROTO_E_BAD_FIELD, "cursor",
                                   "not a cursor from a jobs reply's next");
        f.before_seq = seq;
    }
    uint32_t limit = r->u.jobs.limit;
    struct list_ctx lc = {xcalloc(limit + 1, sizeof *lc.st), 0, 0, 0};
    /* The store lags behind memory for live jobs; they are listed as they are now. */
    int rc = store_list(D.store, &f, limit + 1, list_one, &lc);
    char next[PROTO_MAX_CURSOR + 1];
    bool more = lc.n > limit;
    if (more) {
        lc.n = limit;
        /* The next page starts below the last job of this one. */
        snprintf(next, sizeof next, "c%lld", (long long)lc.prev_seq);
    }
    msgpack_sbuffer_clear(&D.sb);
    if (rc)
        ops_reply_error(s, &r->id, PROTO_E_INTERNAL, "", "the job store failed");
    else
        finish_reply(s, &r->id, proto_reply_jobs(&D.sb, &r->id, lc.st, lc.n, more ? next : NULL));
    free(lc.st);
}

/* The image is read and its reply encoded on the fetch thread (fetch.h); the reply counts
 * against the session's buffer from now on. */
static void op_fetch(struct session *s, const struct proto_request *r)
{
    struct store_job *sj = xmalloc(sizeof *sj);
    struct store_image img;
    int rc = store_get(D.store, r->u.fetch.job, sj);
    if (rc == ERR_MISSING) {
        reply_missing(s, &r->id, r->u.fetch.job);
    } else if (rc) {
        ops_reply_error(s, &r->id, PROTO_E_INTERNAL, "", "the job store failed");
    } else if (sj->state != PROTO_STATE_DONE) {
        ops_reply_error(s, &r->id, PROTO_E_NOT_FOUND, "job",
                        sched_find(sj->id) ? "the job has not finished" : "the job has no images");
    } else if (r->u.fetch.index >= sj->images) {
        ops_reply_error(s, &r->id, PROTO_E_NOT_FOUND, "index", "no image with this index");
    } else if (store_image(D.store, sj->id, r->u.fetch.index, &img) < 0) {
        ops_reply_error(s, &r->id, PROTO_E_NOT_FOUND, "index", "the image is gone");
    } else {
        struct fetch_task *t = xcalloc(1, sizeof *t);
        snprintf(t->session, sizeof t->session, "%s", s->name);
        t->id = r->id;
        snprintf(t->path, sizeof t->path, "%s", img.path);
        struct proto_image *pi = &t->img;
        pi->index = r->u.fetch.index;
        pi->png_len = img.bytes;
        pi->width = sj->params.width;
        pi->height = sj->params.height;
        pi->seed = sj->params.seed;
        pi->params = sj->params;
        pi->params.set = proto_params_set(&pi->params);
        snprintf(pi->job, sizeof pi->job, "%s", sj->id);
        memcpy(pi->sha256, img.sha256, 32);
        s->pending_bytes += img.bytes;
        s->fetching++;
        fetch_submit(t);
    }
    free(sj);
}

void ops_fetched(struct fetch_task *t)
{
    struct session *s = session_by_name(t->session);
    if (!s) return;
    s->pending_bytes -= t->img.png_len;
    s->fetching--;
    send_or_refuse(s, &t->id, t->reply, t->reply_len);
}

static void op_models(struct session *s, const struct proto_request *r)
{
    struct proto_model_info *mi = xcalloc(D.cfg->n_models + 1, sizeof *mi);
    size_t n = 0;
    for (size_t i = 0; i < D.cfg->n_models; i++) {
        const struct config_model *cm = &D.cfg->models[i];
        struct worker *w = daemon_worker(cm->name);
        struct proto_model_info *m = &mi[n++];
        snprintf(m->name, sizeof m->name, "%s", cm->name);
        bool loaded = w && atomic_load(&w->loaded);
        snprintf(m->path, sizeof m->path, "%s",
                 loaded ? engine_model_config(w->engine)->path : cm->path);
        snprintf(m->device, sizeof m->device, "%s",
                 loaded ? w->resolved : config_model_device(D.cfg, cm));
        snprintf(m->dtype, sizeof m->dtype, "%s",
                 loaded ? engine_precision_name(engine_compute(w->engine)) : D.cfg->precision);
        m->memory = loaded ? engine_resident_bytes(w->engine) : 0;
        m->loaded = loaded;
    }
    msgpack_sbuffer_clear(&D.sb);
    finish_reply(s, &r->id, proto_reply_models(&D.sb, &r->id, mi, n));
    free(mi);
}

static void op_stats(struct session *s, const struct proto_request *r)
{
    struct proto_stats st = {0};
    uint32_t queued, running;
    jobs_counts(&queued, &running);
    st.queued = queued;
    st.running = running;
    if (store_count(D.store, PROTO_STATE_DONE, NULL, &st.done) < 0 ||
        store_count(D.store, PROTO_STATE_FAILED, NULL, &st.failed) < 0 ||
        store_count(D.store, PROTO_STATE_CANCELED, NULL, &st.canceled) < 0)
        return ops_reply_error(s, &r->id, PROTO_E_INTERNAL, "", "the job store failed");
    st.sessions = session_count(now_mono(), D.cfg->session_timeout);
    st.uptime = now_mono() - D.t_start;
    msgpack_sbuffer_clear(&D.sb);
    finish_reply(s, &r->id, proto_reply_stats(&D.sb, &r->id, &st));
}

static struct proto_request req; /* large (two prompts); the reactor is one thread */

const struct proto_id *ops_request_id(const void *buf, size_t len)
{
    proto_parse_request(buf, len, &req, NULL);
    return &req.id;
}

/* A live job's status once it ends or the timeout passes; an ended job's at once. */
static void op_wait(struct session *s, const struct proto_request *r)
{
    bool failed = false;
    struct djob *j = r->u.wait.timeout > 0 ? share_find_live(r->u.wait.job, &failed) : NULL;
    if (!j || r->u.wait.timeout <= 0) {
        struct proto_request as_job = *r;
        as_job.op = PROTO_OP_JOB;
        snprintf(as_job.u.job.job, sizeof as_job.u.job.job, "%s", r->u.wait.job);
        as_job.u.job.png = false;
        return op_job(s, &as_job);
    }
    if (s->waits >= JOBS_WAITS_PER_SESSION) {
        struct proto_error e = {.code = PROTO_E_BUSY};
        snprintf(e.limit, sizeof e.limit, "waits_per_session");
        snprintf(e.message, sizeof e.message, "this session has %d waits unanswered",
                 JOBS_WAITS_PER_SESSION);
        msgpack_sbuffer_clear(&D.sb);
        if (proto_reply_refusal(&D.sb, &r->id, &e) == 0) send_sb(s);
        return;
    }
    jobs_wait(j, s, &r->id, now_mono() + r->u.wait.timeout);
}

void ops_dispatch(struct session *s, const void *buf, size_t len)
{
    struct proto_request *const r = &req;
    struct proto_error perr = {0};
    if (proto_parse_request(buf, len, r, &perr) < 0) {
        log_debug("session %s: refused request: %s", s->name, err_msg());
        return ops_reply_error(s, &r->id, perr.code ? perr.code : PROTO_E_BAD_MESSAGE, perr.field,
                               perr.message);
    }
    switch (r->op) {
    case PROTO_OP_HELLO:
        op_hello(s, r);
        break;
    case PROTO_OP_SUBMIT:
        op_submit(s, r);
        break;
    case PROTO_OP_WATCH:
    case PROTO_OP_CANCEL:
    case PROTO_OP_JOB:
        op_job(s, r);
        break;
    case PROTO_OP_JOBS:
        op_jobs(s, r);
        break;
    case PROTO_OP_FETCH:
        op_fetch(s, r);
        break;
    case PROTO_OP_MODELS:
        op_models(s, r);
        break;
    case PROTO_OP_STATS:
        op_stats(s, r);
        break;
    case PROTO_OP_WAIT:
        op_wait(s, r);
        break;
    case PROTO_OP_PING:
        msgpack_sbuffer_clear(&D.sb);
        finish_reply(s, &r->id, proto_reply_pong(&D.sb, &r->id));
        break;
    default:
        ops_reply_error(s, &r->id, PROTO_E_UNKNOWN_OP, "op", "unknown op");
    }
}
