/* The in-memory side of the job queue: live jobs (queued or running), their per-model queues
 * and the fair choice of what runs next. Each model has one queue per peer (the authenticated
 * client: its uid, or its CURVE key, however many sockets it opens); the next job comes from
 * the peers in round-robin order, and within a peer by priority, then age. A turn is worth one
 * plain job: a peer whose next job costs more (a FOCUS-controlled one, SCHED_FOCUS_STEP_COST)
 * waits the rounds that make up the difference (deficit round robin). Up to batch_max jobs of
 * a model are active (prepared and stepping) at once.
 *
 * Locking: one mutex per model guards its queues, its active list and the scheduling fields of
 * its jobs (state, step, cancel). The reactor takes it briefly to queue, cancel or read a job;
 * the worker takes it between steps, never across one. The job index (sched_find) belongs to
 * the reactor thread alone. Not for durability (store.h) or for running the engine
 * (worker.h). */
#ifndef FOCUS_DAEMON_SCHED_H
#define FOCUS_DAEMON_SCHED_H

#include "daemon/store.h"
#include "engine/pipeline.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define SCHED_MAX_ACTIVE 64 /* the most batch_max may be */
/* What a FOCUS-controlled job's steps cost in the fair order, in plain steps: each runs the
 * forward pass and then one reverse pass through the transformer for the latent's gradient,
 * which measures at about 2 to 2.5 plain steps (make bench-focus); the upper figure, so that a
 * peer submitting controlled jobs cannot crowd out the others. */
#define SCHED_FOCUS_STEP_COST 2.5

struct sched_model;

/* How far the worker has got a job ready to step (guarded by the model's lock). */
enum djob_prep {
    PREP_FRESH,    /* active, not yet encoded */
    PREP_ENCODING, /* handed to the encoder thread (encoder.h) */
    PREP_ENCODED,  /* encoded there (gj set) or failed (prep_rc < 0); to be attached */
    PREP_READY,    /* attached: steppable */
};

struct djob {
    struct store_job sj; /* state, step guarded by the model's lock once queued */
    gen_params gp;       /* strings point into sj.params */
    struct sched_model *model;
    gen_job *gj; /* the worker's (the encoder's while encoding) */
    enum djob_prep prep;
    int prep_rc;                         /* the encoder's result */
    char prep_msg[512];                  /* its message when prep_rc < 0 */
    bool cancel;                         /* asked to stop at the next step boundary */
    bool mirror;     /* held by another daemon of a shared store: followed here for the
                      * sessions that watch or wait on it, never queued (model NULL) */
    bool unrecorded; /* ended, but the shared store could not record it yet (share.c) */
    double t_start;                      /* monotonic seconds when it started */
    uint8_t sha256[PROTO_COUNT_MAX][32]; /* done: set by the worker */
    uint64_t bytes[PROTO_COUNT_MAX];
    uint8_t *png[PROTO_COUNT_MAX]; /* done: the files' bytes, kept for the done event */
    struct djob_watcher *watchers; /* sessions to tell; the reactor's */
    size_t n_watchers;
    struct djob *qnext; /* in its session queue */
    struct djob *hnext; /* in the job index */
};

struct djob_watcher {
    char session[PROTO_MAX_NAME + 1];
    bool png; /* its done event carries the PNG files */
};

struct sched_queue {
    char peer[PROTO_MAX_NAME + 1]; /* the jobs' sj.owner */
    struct djob *head, *tail;
    uint32_t n;
    double deficit; /* credit of the turns it passed because its next job cost more */
};

struct sched_model {
    char name[PROTO_MAX_NAME + 1];
    pthread_mutex_t lock;
    pthread_cond_t wake;        /* the worker waits here for work or a stop */
    struct sched_queue *queues; /* peers with queued jobs; rr: the next to serve */
    size_t n_queues, rr;
    uint32_t n_queued;
    struct djob **active; /* running: prepared or about to be */
    size_t n_active, max_active;
    bool stop;   /* finish the current step, then leave */
    bool retire; /* leave once idle (the model left the configuration) */
};

void sched_model_init(struct sched_model *m, const char *name, uint32_t batch_max);
void sched_model_destroy(struct sched_model *m);

/* Under m->lock: queue a job (state queued); remove a queued job; take the next job in fair
 * order (NULL when none), which becomes running and active. */
void sched_push(struct sched_model *m, struct djob *j);
bool sched_remove(struct sched_model *m, struct djob *j);
struct djob *sched_pop(struct sched_model *m);
void sched_deactivate(struct sched_model *m, struct djob *j);
/* Under m->lock: jobs that would start before j (0: it is next). */
uint32_t sched_position(const struct sched_model *m, const struct djob *j);
uint32_t sched_peer_queued(const struct sched_model *m, const char *peer);

/* The job index: live jobs by id (reactor thread only). */
void sched_index_add(struct djob *j);
void sched_index_del(struct djob *j);
struct djob *sched_find(const char *id);
size_t sched_index_count(void);
/* Every indexed job, at most cap of them, into out; returns how many. */
size_t sched_index_list(struct djob **out, size_t cap);

struct djob *djob_new(const struct store_job *sj);
void djob_free(struct djob *j);
/* False when the session already watches the job (png then added to what it asked). */
bool djob_add_watcher(struct djob *j, const char *session, bool png);

#endif
