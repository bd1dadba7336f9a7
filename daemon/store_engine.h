/* The job store's engines behind one table of functions: store.c dispatches each store_*
 * call of store.h to the engine the store was opened with (store_sqlite.c, store_pg.c) and
 * runs, over the engine's primitives, what both share: the state directory and the retention
 * passes. An engine's struct begins with a struct store. The sharing functions (claim to
 * poll) are NULL in an engine for one daemon. Not for callers outside the store. */
#ifndef FOCUS_DAEMON_STORE_ENGINE_H
#define FOCUS_DAEMON_STORE_ENGINE_H

#include "daemon/store.h"

/* Retention works in batches of STORE_RETENTION_BATCH jobs, one transaction each. */
#define STORE_RETENTION_BATCH 64

typedef char store_id[PROTO_MAX_NAME + 1];

struct store_ops {
    const char *name;
    /* NULL: any spelling the engine is chosen by will do. */
    int (*check_uri)(const char *uri);
    int (*open)(const struct store_settings *set, struct store **out);
    void (*close)(struct store *s);
    int (*commit)(struct store *s);
    int (*insert)(struct store *s, struct store_job *j);
    int (*update)(struct store *s, const struct store_job *j);
    /* file: the name inside images/ */
    int (*add_image)(struct store *s, const char *job, uint32_t index, const char *file,
                     const uint8_t sha256[32], uint64_t bytes);
    int (*get)(struct store *s, const char *id, struct store_job *j);
    /* img->path set to the file's name inside images/ */
    int (*image)(struct store *s, const char *job, uint32_t index, struct store_image *img);
    int (*list)(struct store *s, const struct store_filter *f, uint32_t limit,
                void (*fn)(void *ctx, const struct store_job *j), void *ctx);
    int (*recover)(struct store *s, void (*fn)(void *ctx, const struct store_job *j), void *ctx);
    int (*expired)(struct store *s, const char *id, bool *expired);
    int (*count)(struct store *s, enum proto_state state, const char *owner, uint64_t *n);

    /* Retention's primitives, each outside the grouped transaction. Whether this daemon
     * runs retention now (*ours), and the end of its pass. */
    int (*retention_begin)(struct store *s, bool *ours);
    void (*retention_end)(struct store *s);
    /* Up to max finished jobs finished before cutoff, oldest first. */
    int (*finished_before)(struct store *s, double cutoff, store_id *ids, int max, int *n);
    /* The image bytes of job, or of every job when job is NULL. */
    int (*image_bytes)(struct store *s, const char *job, uint64_t *bytes);
    /* fn sees the name inside images/ of each image file of job. */
    int (*image_files)(struct store *s, const char *job, void (*fn)(void *ctx, const char *file),
                       void *ctx);
    /* Deletes the jobs and their image rows, leaving a tombstone for each id, in one
     * committed transaction (nothing deleted when it fails). */
    int (*retire)(struct store *s, const store_id *ids, int n, double now);
    /* Deletes up to a bounded number of tombstones older than before. */
    int (*forget_expired)(struct store *s, double before);

    /* Sharing; NULL in an engine for one daemon. */
    int (*claim)(struct store *s, const char *model, uint32_t limit,
                 void (*fn)(void *ctx, const struct store_job *j), void *ctx);
    int (*renew)(struct store *s, const char *const *ids, size_t n,
                 void (*fn)(void *ctx, const char *id), void *ctx);
    int (*cancel)(struct store *s, const char *id, const struct proto_error *err, double now,
                  bool *done);
    int (*publish)(struct store *s, const struct store_event *e);
    int (*fd)(const struct store *s);
    void (*poll)(struct store *s, double now, void (*fn)(void *ctx, const struct store_event *e),
                 void *ctx);
};

struct store {
    const struct store_ops *ops;
    char *dir;    /* the state directory */
    char *images; /* its images/ */
};

/* The FOCUS fields of a job's row into p, which has the others: subjects in the form
 * proto_subjects_pack gives (len 0: none), lambda, the heuristic's name; then p->set. A row
 * that does not read (written by something else) loses its subjects, with a warning naming
 * job. Columns both engines keep: focus_subjects, focus_lambda, focus_heuristic. */
void store_read_focus(struct proto_submit *p, const char *job, const void *subjects, size_t len,
                      double lambda, const char *heuristic);

extern const struct store_ops store_sqlite_ops;
extern const struct store_ops store_pg_ops;

#endif
