/* One worker thread per served model: it loads the engine, then repeatedly takes the next jobs
 * in fair order (sched.h), prepares them, advances the active ones one engine_step at a time
 * (compatible jobs batched), writes finished images atomically into the store's images/
 * directory and reports each transition to the reactor through an event queue whose eventfd
 * the reactor polls. The worker never touches a socket or the database, and holds its model's
 * lock only between steps. Not for deciding fairness (sched.c) or persisting (store.c). */
#ifndef FOCUS_DAEMON_WORKER_H
#define FOCUS_DAEMON_WORKER_H

#include "daemon/sched.h"
#include "engine/pipeline.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

enum wev_kind {
    WEV_LOADED,      /* the engine is resident */
    WEV_LOAD_FAILED, /* error says why; the worker has exited */
    WEV_STARTED,
    WEV_PROGRESS,
    WEV_DONE, /* job->sha256 and job->bytes are set, the files written */
    WEV_FAILED,
    WEV_CANCELED,
    WEV_DEVICE_LOST, /* error says why; the worker stops, its jobs stay queued */
    WEV_EXITED       /* stopped or retired; join it */
};

struct worker;

struct wevent {
    enum wev_kind kind;
    struct worker *w;
    struct djob *job;
    uint32_t step, steps;
    double elapsed;
    struct proto_error error;
    struct wevent *next;
};

struct worker {
    struct sched_model sm;
    char *path;
    char device[PROTO_MAX_NAME + 1];   /* as configured: auto, cpu, cuda:N */
    char precision[8];                 /* as configured: auto, fp32, bf16, fp16 */
    bool text_on_cpu;                  /* text_device = cpu */
    char resolved[PROTO_MAX_NAME + 1]; /* after loading: cpu, cuda:N */
    char *images_dir;
    sd3_engine *engine;  /* read by others only once loaded is true */
    uint64_t base_bytes; /* engine_resident_bytes right after loading; the same */
    atomic_bool loaded;
    bool exited; /* joined */
    pthread_t thread;
    struct worker *next;
};

/* The queue of events towards the reactor; worker_events_fd() becomes readable when it is not
 * empty. Call worker_events_init() once before starting any worker. */
int worker_events_init(void);
int worker_events_fd(void);
/* Takes every pending event, oldest first; the caller frees each with free(). */
struct wevent *worker_events_take(void);

/* How a worker loads its model: where, in what precision, with the text encoders where. */
struct worker_placement {
    const char *device, *precision;
    bool text_on_cpu;
};

/* Starts a thread that loads path as placed and serves the model's queue. */
int worker_start(const char *name, const char *path, const struct worker_placement *place,
                 uint32_t batch_max, const char *images_dir, struct worker **out);
/* Wakes the worker to stop (finish the current step) or to retire once idle. */
void worker_stop(struct worker *w);
void worker_retire(struct worker *w);
/* Joins the thread once it has posted WEV_EXITED. */
void worker_join(struct worker *w);
/* Frees a joined worker and its engine; its jobs are left to the caller. */
void worker_free(struct worker *w);

#endif
