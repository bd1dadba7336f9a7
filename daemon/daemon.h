/* The daemon's state as the reactor thread holds it, shared by the event loop (reactor.c),
 * the request handlers (ops.c) and the job lifecycle (jobs.c). Every field belongs to the
 * reactor thread; the workers see only their own struct worker and the jobs handed to them.
 * Not a public API: focusd.c starts the reactor through reactor_run(). */
#ifndef FOCUS_DAEMON_DAEMON_H
#define FOCUS_DAEMON_DAEMON_H

#include "daemon/config.h"
#include "daemon/sched.h"
#include "daemon/session.h"
#include "daemon/store.h"
#include "daemon/worker.h"
#include "protocol/proto.h"

#include <msgpack.h>
#include <stdbool.h>

/* The most bytes of one frame the sockets read (ZMQ_MAXMSGSIZE): above PROTO_MAX_REQUEST, so
 * that an over-size request is answered; past it libzmq drops the connection. */
#define DAEMON_MAX_FRAME (16u << 20)

struct daemon {
    struct config *cfg;
    const struct config_overrides *ov;
    void *zctx, *router_ipc, *router_tcp, *zap;
    int sigfd;
    char *socket_path; /* the ipc socket file we created; NULL when inherited */
    struct store *store;
    struct worker *workers;
    msgpack_sbuffer sb; /* scratch for encoding one message */
    double t_start;     /* monotonic */
    bool stopping, ready;
    char failure[512]; /* why the daemon stops with a failure; empty: it does not */
};

extern struct daemon D;

double now_wall(void);
double now_mono(void);

/* jobs.c: the lifecycle of live jobs. */
struct worker *daemon_worker(const char *model); /* a configured, not retiring model */
void jobs_status(const struct djob *j, struct proto_job_status *st);
void jobs_status_stored(const struct store_job *sj, struct proto_job_status *st);
void jobs_emit(struct djob *j, const struct proto_event *ev);
/* One event to one session (numbered for it). */
void jobs_emit_to(struct djob *j, struct session *s, const struct proto_event *ev);
void jobs_watch(struct djob *j, struct session *s, bool png);
/* Admits a durable job into its model's queue and the index (state queued). */
void jobs_enqueue(struct djob *j, struct worker *w);
/* The cancel policy, the one place it is written: a job may be canceled by the peer that
 * submitted it (the same uid on ipc, the same CURVE key on tcp), from any of its sessions,
 * and by no other; a job whose submitter was not recorded (stored by a version before
 * owners were) by any peer. */
bool jobs_may_cancel(const struct store_job *j, const char *peer);
/* Answers request id of session s with j's status when j ends or at deadline (monotonic),
 * whichever comes first. */
#define JOBS_WAITS_PER_SESSION 64
void jobs_wait(struct djob *j, struct session *s, const struct proto_id *id, double deadline);
/* Answers the waits whose deadline has passed; returns seconds to the next deadline (a
 * large number when none). */
double jobs_waits_due(double now);
void jobs_waits_free(void);
/* Ends a live job: persists its final state, tells its watchers, frees it. */
void jobs_finish(struct djob *j, enum proto_state state, const struct proto_error *err);
/* The image rows of a job done. */
int jobs_add_images(struct djob *j);
/* Tells the watchers and waiters of a job the end its sj holds, and frees it; the end of a
 * job this daemon ran is logged. */
void jobs_end(struct djob *j);
/* A progress event to the job's watchers. */
void jobs_progress(struct djob *j, uint32_t step, uint32_t steps, double elapsed);
/* Cancels a job this daemon runs: at once when queued (true: it has ended and is freed),
 * else at its next step boundary. */
bool jobs_cancel(struct djob *j);
void jobs_worker_event(struct wevent *e);
/* Loads the store's queued jobs of a model that are not in memory yet (start: first turns
 * interrupted running jobs back into queued ones). */
int jobs_recover(struct worker *w, bool at_start);
/* Jobs queued and running, over all models. */
void jobs_counts(uint32_t *queued, uint32_t *running);
/* A stopped worker's jobs: the active ones are queued again in the store; all are freed. */
void jobs_release_worker(struct worker *w);

/* share.c: the jobs of a store shared with other daemons (no-ops with a store of one). */
/* Claims queued jobs for the models with free slots when something may wait for them, and
 * renews this daemon's leases when due; called each turn before the commit. */
void share_turn(double now);
void share_want_claims(void);
/* Records the end of a job this daemon ran (its images too when done) and tells the other
 * daemons. Returns false when the caller may announce it now; true when the job is held:
 * its end is retried until the store is back (unrecorded), or another daemon has taken it
 * over meanwhile (it is followed as a mirror now). */
bool share_record_end(struct djob *j);
/* Tells the other daemons of a step in the life of a job this daemon runs. */
void share_publish(enum store_event_kind kind, const struct djob *j, uint32_t step, uint32_t steps,
                   double elapsed);
/* What the other daemons published (store_poll's callback). */
void share_event(void *ctx, const struct store_event *e);
/* The live job id names, here or (shared) on another daemon, followed here as a mirror; NULL
 * when it is not live (or the store failed: then *failed). */
struct djob *share_find_live(const char *id, bool *failed);
/* Brings a mirror up to its row; true when the row says it has ended (it is then ended
 * here too, and freed). */
bool share_sync(struct djob *j);
/* Asks the store to cancel a mirrored job; true when it ended now (and is freed). */
int share_cancel(struct djob *j, bool *ended);
void share_free(void);

/* ops.c: one request from a session. */
void ops_dispatch(struct session *s, const void *buf, size_t len);
struct fetch_task;
/* A fetch the fetch thread has finished: its reply goes to its session, if still there. */
void ops_fetched(struct fetch_task *t);
/* The id of a request frame, for a reply that does not serve it (kind NONE when unreadable). */
const struct proto_id *ops_request_id(const void *buf, size_t len);
void ops_reply_error(struct session *s, const struct proto_id *id, enum proto_errcode code,
                     const char *field, const char *message);

/* reactor.c */
int reactor_run(struct config *cfg, const struct config_overrides *ov);
/* A model's device is lost (ERR_DEVICE_LOST): stops the daemon as SIGTERM does, keeping every
 * job queued, but reactor_run then returns the failure so that focusd exits with status 1 and
 * the service manager restarts it on a fresh device context. */
void reactor_fail(const char *model, const char *why);

#endif
