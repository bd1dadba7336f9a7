/* The durable job store: one SQLite database (WAL) in the state directory holding every
 * accepted job (its parameters, state, session, priority, timestamps, step, error) and the
 * SHA-256 of each finished image; the images themselves are PNG files in images/ beside it,
 * written atomically by the workers. Writes are grouped: the first write of a reactor turn
 * opens a transaction and store_commit() ends it, so that many submissions cost one fsync and
 * no reply leaves before its job is on disk. Used by the reactor thread only; not for the
 * in-memory queue (sched.h) or the engine. */
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
};

struct store_image {
    char path[PROTO_MAX_TEXT + 1]; /* absolute */
    uint8_t sha256[32];
    uint64_t bytes;
};

/* Creates state_dir and state_dir/images when missing, opens or creates the database. */
int store_open(const char *state_dir, struct store **out);
void store_close(struct store *s);
const char *store_images_dir(const struct store *s);

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
/* At start: running jobs go back to queued; then fn sees every queued job, oldest first. */
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
int store_count(struct store *s, enum proto_state state, uint64_t *n);

#endif
