/* Fair per-session queues of live jobs and the job index; see sched.h. */
#include "daemon/sched.h"

#include "common/xalloc.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(PROTO_SUBJECTS_MAX <= FOCUS_MAX_SUBJECTS, "the engine takes every subject");
_Static_assert(PROTO_SUBJECT_POSITIONS_MAX <= FOCUS_MAX_POSITIONS,
               "the engine takes every position");

void sched_model_init(struct sched_model *m, const char *name, uint32_t batch_max)
{
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->wake, NULL);
    m->max_active = batch_max < SCHED_MAX_ACTIVE ? batch_max : SCHED_MAX_ACTIVE;
    m->active = xcalloc(SCHED_MAX_ACTIVE, sizeof *m->active);
}

void sched_model_destroy(struct sched_model *m)
{
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->wake);
    free(m->queues);
    free(m->active);
}

static struct sched_queue *find_queue(const struct sched_model *m, const char *peer,
                                      size_t *index)
{
    for (size_t i = 0; i < m->n_queues; i++)
        if (strcmp(m->queues[i].peer, peer) == 0) {
            if (index) *index = i;
            return &m->queues[i];
        }
    return NULL;
}

/* Higher priority first, then older (lower seq). */
static bool before(const struct djob *a, const struct djob *b)
{
    if (a->sj.params.priority != b->sj.params.priority)
        return a->sj.params.priority > b->sj.params.priority;
    return a->sj.seq < b->sj.seq;
}

void sched_push(struct sched_model *m, struct djob *j)
{
    struct sched_queue *q = find_queue(m, j->sj.owner, NULL);
    if (!q) {
        /* A new peer joins at the end of the current round. */
        m->queues = xrealloc(m->queues, (m->n_queues + 1) * sizeof *m->queues);
        size_t at = m->n_queues ? m->rr : 0;
        memmove(&m->queues[at + 1], &m->queues[at], (m->n_queues - at) * sizeof *m->queues);
        m->n_queues++;
        if (m->n_queues > 1) m->rr = (m->rr + 1) % m->n_queues;
        q = &m->queues[at];
        memset(q, 0, sizeof *q);
        snprintf(q->peer, sizeof q->peer, "%s", j->sj.owner);
    }
    j->sj.state = PROTO_STATE_QUEUED;
    j->qnext = NULL;
    if (!q->head) {
        q->head = q->tail = j;
    } else if (!before(j, q->tail)) {
        q->tail->qnext = j;
        q->tail = j;
    } else if (before(j, q->head)) {
        j->qnext = q->head;
        q->head = j;
    } else {
        struct djob *p = q->head;
        while (p->qnext && !before(j, p->qnext))
            p = p->qnext;
        j->qnext = p->qnext;
        p->qnext = j;
    }
    q->n++;
    m->n_queued++;
}

static void drop_queue(struct sched_model *m, size_t i)
{
    memmove(&m->queues[i], &m->queues[i + 1], (m->n_queues - i - 1) * sizeof *m->queues);
    m->n_queues--;
    if (i < m->rr) m->rr--;
    if (m->rr >= m->n_queues) m->rr = 0;
}

bool sched_remove(struct sched_model *m, struct djob *j)
{
    size_t qi;
    struct sched_queue *q = find_queue(m, j->sj.owner, &qi);
    if (!q || j->sj.state != PROTO_STATE_QUEUED) return false;
    struct djob *prev = NULL;
    for (struct djob *p = q->head; p; prev = p, p = p->qnext) {
        if (p != j) continue;
        if (prev)
            prev->qnext = p->qnext;
        else
            q->head = p->qnext;
        if (q->tail == p) q->tail = prev;
        q->n--;
        m->n_queued--;
        if (q->n == 0) drop_queue(m, qi);
        return true;
    }
    return false;
}

/* A job's cost in the fair order, in plain jobs. */
static double job_cost(const struct djob *j)
{
    return focus_request_active(&j->gp.focus) ? SCHED_FOCUS_STEP_COST : 1.0;
}

/* The queue whose head goes next, from *rr on: each visit adds one plain job's worth to a
 * queue's deficit, and the first that can pay for its head pays and is served; *rr then names
 * the queue after it. Queues without jobs are passed over (sched_position's copies keep
 * them); at least one has a job. Plain jobs alone give round robin. */
static size_t drr_next(struct sched_queue *qs, size_t n, size_t *rr)
{
    for (size_t i = *rr % n;; i = (i + 1) % n) {
        struct sched_queue *q = &qs[i];
        if (!q->head) continue;
        q->deficit += 1.0;
        double cost = job_cost(q->head);
        if (q->deficit >= cost) {
            q->deficit -= cost;
            *rr = (i + 1) % n;
            return i;
        }
    }
}

struct djob *sched_pop(struct sched_model *m)
{
    if (m->n_queues == 0) return NULL;
    size_t qi = drr_next(m->queues, m->n_queues, &m->rr);
    struct sched_queue *q = &m->queues[qi];
    struct djob *j = q->head;
    q->head = j->qnext;
    if (!q->head) q->tail = NULL;
    q->n--;
    m->n_queued--;
    if (q->n == 0) {
        m->rr = qi;
        drop_queue(m, qi); /* rr now names the session after it */
    }
    j->qnext = NULL;
    j->sj.state = PROTO_STATE_RUNNING;
    m->active[m->n_active++] = j;
    return j;
}

void sched_deactivate(struct sched_model *m, struct djob *j)
{
    for (size_t i = 0; i < m->n_active; i++)
        if (m->active[i] == j) {
            memmove(&m->active[i], &m->active[i + 1], (m->n_active - i - 1) * sizeof *m->active);
            m->n_active--;
            return;
        }
}

uint32_t sched_position(const struct sched_model *m, const struct djob *j)
{
    if (j->sj.state != PROTO_STATE_QUEUED || !find_queue(m, j->sj.owner, NULL)) return 0;
    /* The pops to come, played on a copy of the queues until j's turn. */
    size_t n = m->n_queues, rr = m->rr;
    struct sched_queue *qs = xmalloc(n * sizeof *qs);
    memcpy(qs, m->queues, n * sizeof *qs);
    uint32_t pos = 0;
    for (; pos < m->n_queued; pos++) {
        struct sched_queue *q = &qs[drr_next(qs, n, &rr)];
        if (q->head == j) break;
        q->head = q->head->qnext;
    }
    free(qs);
    return pos < m->n_queued ? pos : 0; /* 0 too for a job in none of the queues */
}

uint32_t sched_peer_queued(const struct sched_model *m, const char *peer)
{
    const struct sched_queue *q = find_queue(m, peer, NULL);
    return q ? q->n : 0;
}

/* ---- Job index ---- */

#define INDEX_BUCKETS 4096
static struct djob *index_buckets[INDEX_BUCKETS];
static size_t index_count;

static size_t bucket_of(const char *id)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *id; id++)
        h = (h ^ (uint8_t)*id) * 16777619u;
    return h % INDEX_BUCKETS;
}

void sched_index_add(struct djob *j)
{
    size_t b = bucket_of(j->sj.id);
    j->hnext = index_buckets[b];
    index_buckets[b] = j;
    index_count++;
}

void sched_index_del(struct djob *j)
{
    for (struct djob **p = &index_buckets[bucket_of(j->sj.id)]; *p; p = &(*p)->hnext)
        if (*p == j) {
            *p = j->hnext;
            index_count--;
            return;
        }
}

struct djob *sched_find(const char *id)
{
    for (struct djob *j = index_buckets[bucket_of(id)]; j; j = j->hnext)
        if (strcmp(j->sj.id, id) == 0) return j;
    return NULL;
}

size_t sched_index_count(void)
{
    return index_count;
}

size_t sched_index_list(struct djob **out, size_t cap)
{
    size_t n = 0;
    for (size_t b = 0; b < INDEX_BUCKETS && n < cap; b++)
        for (struct djob *j = index_buckets[b]; j && n < cap; j = j->hnext)
            out[n++] = j;
    return n;
}

/* The FOCUS fields of p into r (left at gen_params_defaults' without subjects); phrases point
 * into p. A subject given by positions has no phrase for the engine: its label only names it
 * on the wire, as focus-run's --focus-subject beside --focus-tokens does. */
static void focus_from_params(focus_request *r, const struct proto_submit *p)
{
    if (!p->subjects.n) return;
    r->n_subjects = (int)p->subjects.n;
    for (uint32_t k = 0; k < p->subjects.n; k++) {
        const struct proto_subject *ps = &p->subjects.s[k];
        focus_subject *fs = &r->subjects[k];
        fs->phrase = ps->n_t5 || ps->n_clip ? NULL : ps->phrase;
        fs->n_t5 = ps->n_t5;
        fs->n_clip = ps->n_clip;
        for (int i = 0; i < ps->n_t5; i++)
            fs->t5[i] = ps->t5[i];
        for (int i = 0; i < ps->n_clip; i++)
            fs->clip[i] = ps->clip[i];
    }
    r->lambda = (float)p->focus_lambda;
    /* The protocol's names are the engine's: the parse cannot fail. */
    focus_heuristic_parse(proto_heuristic_name(p->focus_heuristic), &r->heuristic);
}

struct djob *djob_new(const struct store_job *sj)
{
    struct djob *j = xcalloc(1, sizeof *j);
    j->sj = *sj;
    const struct proto_submit *p = &j->sj.params;
    gen_params_defaults(&j->gp);
    j->gp.prompt = p->prompt;
    j->gp.negative_prompt = p->negative_prompt;
    j->gp.seed = p->seed;
    j->gp.steps = (int)p->steps;
    j->gp.guidance = (float)p->guidance;
    j->gp.width = (int)p->width;
    j->gp.height = (int)p->height;
    j->gp.max_seq = (int)p->max_seq;
    j->gp.count = (int)p->count;
    focus_from_params(&j->gp.focus, p);
    return j;
}

void djob_free(struct djob *j)
{
    if (!j) return;
    if (j->gj) engine_job_free(j->gj);
    free(j->watchers);
    for (int i = 0; i < PROTO_COUNT_MAX; i++)
        free(j->png[i]);
    free(j);
}

bool djob_add_watcher(struct djob *j, const char *session, bool png)
{
    for (size_t i = 0; i < j->n_watchers; i++)
        if (strcmp(j->watchers[i].session, session) == 0) {
            j->watchers[i].png |= png;
            return false;
        }
    j->watchers = xrealloc(j->watchers, (j->n_watchers + 1) * sizeof *j->watchers);
    struct djob_watcher *w = &j->watchers[j->n_watchers++];
    snprintf(w->session, sizeof w->session, "%s", session);
    w->png = png;
    return true;
}
