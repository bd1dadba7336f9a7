/* The durable job store: every accepted job (its parameters, state, session, priority,
 * timestamps, step, error) and the SHA-256 of each finished image, in one of two engines
 * (store_engine.h): SQLite (WAL) in the state directory, the default, for one daemon; or
 * PostgreSQL (store = postgresql://...), shared by several daemons that take jobs from one
 * queue through leases. The images themselves are PNG files in the state directory's images/,
 * written atomically by the workers (a directory every daemon of a shared store mounts).
 * Writes are grouped: the first write of a reactor turn opens a transaction and
 * store_commit() ends it, so that many submissions cost one fsync and no reply leaves before
 * its job is durable. Used by the reactor thread only; not for the in-memory queue (sched.h)
 * or the engine. */
#ifndef FOCUS_DAEMON_STORE_H
#define FOCUS_DAEMON_STORE_H

#include "protocol/proto.h"

#include <stdbool.h>
#include <stdint.h>

struct store;

struct store_job {
    char id[PROTO_MAX_NAME + 1];
    char session[PROTO_MAX_NAME + 1];
    char owner[PROTO_MAX_NAME + 1]; /* the submitting peer (session_peer); "" if not recorded */
    struct proto_submit params; /* resolved: model and every field set */
    enum proto_state state;
    int64_t seq; /* submission order, across restarts */
    double created, started, finished;
    uint32_t step, steps, images;
    struct proto_error error; /* failed, canceled */
    bool cancel_asked; /* shared store: a daemon was asked to cancel it while another held it */
};

struct store_image {
    char path[PROTO_MAX_TEXT + 1]; /* absolute */
    uint8_t sha256[32];
    uint64_t bytes;
};

struct store_settings {
    const char *state_dir;
    const char *uri;   /* "sqlite", or a libpq URI postgresql://... (a shared store) */
    const char *owner; /* shared: this daemon's name in the leases it holds */
    double lease_time; /* shared: seconds a lease lasts unless renewed */
};

/* Whether uri names an engine: "sqlite", or a valid libpq URI postgresql://...
 * (postgres://...); the message says why not, without the URI. */
int store_check_uri(const char *uri);
/* Creates state_dir and state_dir/images when missing, opens or creates the database (and
 * migrates its schema). */
int store_open(const struct store_settings *set, struct store **out);
void store_close(struct store *s);
const char *store_images_dir(const struct store *s);
/* Whether several daemons share the store: jobs are then claimed (store_claim), not queued
 * at submission, and events cross daemons (store_publish, store_poll). */
bool store_shared(const struct store *s);

/* Commits the open transaction, when there is one. */
int store_commit(struct store *s);

/* Assigns j->seq. */
int store_insert(struct store *s, struct store_job *j);
/* Writes the mutable columns: state, started, finished, step, images, error. */
int store_update(struct store *s, const struct store_job *j);
int store_add_image(struct store *s, const char *job, uint32_t index, const char *path,
                    const uint8_t sha256[32], uint64_t bytes);

int store_get(struct store *s, const char *id, struct store_job *j); /* ERR_MISSING: none */
int store_image(struct store *s, const char *job, uint32_t index, struct store_image *img);

/* Which jobs store_list sees: owner NULL any, else that peer's; has_state: only those in
 * state; before_seq > 0: only those submitted before that seq (a page after it). */
struct store_filter {
    const char *owner;
    bool has_state;
    enum proto_state state;
    int64_t before_seq;
};

/* Calls fn for each job that f admits, newest first, at most limit. */
int store_list(struct store *s, const struct store_filter *f, uint32_t limit,
               void (*fn)(void *ctx, const struct store_job *j), void *ctx);
/* At start: running jobs go back to queued; then fn sees every queued job, oldest first. A
 * shared store gives back the leases of this daemon's previous life instead, for the claims
 * to take, and calls fn for none. */
int store_recover(struct store *s, void (*fn)(void *ctx, const struct store_job *j), void *ctx);

/* Deletes finished jobs (done, failed, canceled) and their image files older than max_age
 * seconds (0: no age limit), then the oldest finished ones until the images total at most
 * max_bytes (0: no limit), each deleted id remembered as expired. A bounded amount of work
 * per call: *more is true when some was left for the next. *removed: jobs deleted. Files go
 * only after the transaction that deletes their rows has committed. */
int store_retention(struct store *s, double now, double max_age, uint64_t max_bytes,
                    uint64_t *removed, bool *more);
/* How long an expired job's id is remembered (store_expired) after retention removed it. */
#define STORE_EXPIRED_KEEP (30 * 86400.0)
/* Whether id named a job that retention removed. */
int store_expired(struct store *s, const char *id, bool *expired);
/* Jobs in state; owner NULL: of every peer. */
int store_count(struct store *s, enum proto_state state, const char *owner, uint64_t *n);

/* ---- Shared stores only ---- */

/* Claims up to limit queued jobs of model whose lease is free or has expired, into a lease
 * of this daemon, oldest of the highest priority first, skipping rows another daemon is
 * claiming; fn sees each, its state queued and its step 0 (a job taken over starts again). */
int store_claim(struct store *s, const char *model, uint32_t limit,
                void (*fn)(void *ctx, const struct store_job *j), void *ctx);
/* Extends the leases of the n jobs this daemon holds; fn sees each whose cancel was asked. A
 * job not renewed (given up, or finished without its write) falls to the others once its
 * lease expires. */
int store_renew(struct store *s, const char *const *ids, size_t n,
                void (*fn)(void *ctx, const char *id), void *ctx);
/* Cancels job id if it is queued and no daemon holds it (*done true: it ends canceled with
 * err); otherwise asks its holder to (the cancel_asked column and a STORE_EV_CANCEL). */
int store_cancel(struct store *s, const char *id, const struct proto_error *err, double now,
                 bool *done);

enum store_event_kind {
    STORE_EV_QUEUED,      /* a job of model was queued */
    STORE_EV_STARTED,     /* job started on its holder (steps) */
    STORE_EV_PROGRESS,    /* job made a step (step, steps, elapsed) */
    STORE_EV_ENDED,       /* job ended: its row says how */
    STORE_EV_CANCEL,      /* job is to be canceled by its holder */
    STORE_EV_RECONNECTED, /* the connection came back: events may have been missed */
};

struct store_event {
    enum store_event_kind kind;
    char job[PROTO_MAX_NAME + 1];
    char model[PROTO_MAX_NAME + 1];
    uint32_t step, steps;
    double elapsed;
};

/* Sends e to the other daemons once the current transaction commits. */
int store_publish(struct store *s, const struct store_event *e);
/* The descriptor to poll for the others' events (-1 when none now: disconnected). */
int store_fd(const struct store *s);
/* Reads what the other daemons published and passes each event to fn; reconnects (at most
 * once a second) when the connection was lost. */
void store_poll(struct store *s, double now, void (*fn)(void *ctx, const struct store_event *e),
                void *ctx);

#endif
