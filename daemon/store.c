/* The job store's front: store.h's calls dispatched to the engine the store was opened with
 * (store_engine.h), and what the engines share: the state directory and its images/, image
 * paths (rows keep file names relative to images/, so that a state directory can be moved)
 * and the retention passes over the engines' primitives. */
#include "daemon/store_engine.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/log.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int make_dir(const char *path)
{
    if (mkdir(path, 0750) != 0 && errno != EEXIST)
        return err_set(ERR_IO, "state directory %s: %s", path, strerror(errno));
    return 0;
}

static const struct store_ops *engine_of(const char *uri)
{
    if (strcmp(uri, "sqlite") == 0) return &store_sqlite_ops;
    if (strncmp(uri, "postgresql://", 13) == 0 || strncmp(uri, "postgres://", 11) == 0)
        return &store_pg_ops;
    return NULL;
}

int store_check_uri(const char *uri)
{
    const struct store_ops *ops = engine_of(uri);
    if (!ops) return err_set(ERR_RANGE, "neither sqlite nor a postgresql:// URI");
    return ops->check_uri ? ops->check_uri(uri) : 0;
}

int store_open(const struct store_settings *set, struct store **out)
{
    int rc = store_check_uri(set->uri);
    if (rc) return err_prefix(rc, "store: ");
    const struct store_ops *ops = engine_of(set->uri);
    size_t n = strlen(set->state_dir) + 16;
    char *images = xmalloc(n);
    snprintf(images, n, "%s/images", set->state_dir);
    rc = make_dir(set->state_dir);
    if (!rc) rc = make_dir(images);
    struct store *s = NULL;
    if (!rc) rc = ops->open(set, &s);
    if (rc) {
        free(images);
        return rc;
    }
    s->ops = ops;
    s->dir = xstrdup(set->state_dir);
    s->images = images;
    *out = s;
    return 0;
}

void store_close(struct store *s)
{
    if (!s) return;
    char *dir = s->dir, *images = s->images;
    s->ops->close(s);
    free(dir);
    free(images);
}

const char *store_images_dir(const struct store *s)
{
    return s->images;
}

bool store_shared(const struct store *s)
{
    return s->ops->claim != NULL;
}

int store_commit(struct store *s)
{
    return s->ops->commit(s);
}

int store_insert(struct store *s, struct store_job *j)
{
    return s->ops->insert(s, j);
}

int store_update(struct store *s, const struct store_job *j)
{
    return s->ops->update(s, j);
}

int store_add_image(struct store *s, const char *job, uint32_t index, const char *path,
                    const uint8_t sha256[32], uint64_t bytes)
{
    const char *slash = strrchr(path, '/');
    return s->ops->add_image(s, job, index, slash ? slash + 1 : path, sha256, bytes);
}

int store_get(struct store *s, const char *id, struct store_job *j)
{
    return s->ops->get(s, id, j);
}

int store_image(struct store *s, const char *job, uint32_t index, struct store_image *img)
{
    int rc = s->ops->image(s, job, index, img);
    if (rc) return rc;
    char file[sizeof img->path];
    snprintf(file, sizeof file, "%s", img->path);
    if ((size_t)snprintf(img->path, sizeof img->path, "%s/%s", s->images, file) >= sizeof img->path)
        return err_set(ERR_RANGE, "image %u of job \"%s\": its path is too long", index, job);
    return 0;
}

int store_list(struct store *s, const struct store_filter *f, uint32_t limit,
               void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    return s->ops->list(s, f, limit, fn, ctx);
}

int store_recover(struct store *s, void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    return s->ops->recover(s, fn, ctx);
}

int store_expired(struct store *s, const char *id, bool *expired)
{
    return s->ops->expired(s, id, expired);
}

int store_count(struct store *s, enum proto_state state, const char *owner, uint64_t *n)
{
    return s->ops->count(s, state, owner, n);
}

int store_claim(struct store *s, const char *model, uint32_t limit,
                void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    return s->ops->claim(s, model, limit, fn, ctx);
}

int store_renew(struct store *s, const char *const *ids, size_t n,
                void (*fn)(void *ctx, const char *id), void *ctx)
{
    return s->ops->renew(s, ids, n, fn, ctx);
}

int store_cancel(struct store *s, const char *id, const struct proto_error *err, double now,
                 bool *done)
{
    return s->ops->cancel(s, id, err, now, done);
}

int store_publish(struct store *s, const struct store_event *e)
{
    return s->ops->publish ? s->ops->publish(s, e) : 0;
}

int store_fd(const struct store *s)
{
    return s->ops->fd ? s->ops->fd(s) : -1;
}

void store_poll(struct store *s, double now, void (*fn)(void *ctx, const struct store_event *e),
                void *ctx)
{
    if (s->ops->poll) s->ops->poll(s, now, fn, ctx);
}

void store_read_focus(struct proto_submit *p, const char *job, const void *subjects, size_t len,
                      double lambda, const char *heuristic)
{
    struct proto_error e;
    if (proto_subjects_unpack(subjects, len, &p->subjects, &e) < 0)
        log_warn("job store: job %s: its FOCUS subjects do not read (%s); it has none now", job,
                 e.message);
    p->focus_lambda = lambda;
    for (int h = 0; h < PROTO_HEURISTIC_COUNT; h++)
        if (strcmp(heuristic, proto_heuristic_name((enum proto_heuristic)h)) == 0)
            p->focus_heuristic = (enum proto_heuristic)h;
    p->set = proto_params_set(p);
}

/* ---- Retention ---- */

/* At most RETENTION_BATCHES batches per call, so that a large backlog never holds the
 * reactor long: the rest waits for the next call. */
#define RETENTION_BATCHES 4
#define FILE_NAME_MAX (PROTO_MAX_NAME + 16)

struct batch {
    store_id ids[STORE_RETENTION_BATCH];
    int n;
    char files[STORE_RETENTION_BATCH * PROTO_COUNT_MAX][FILE_NAME_MAX];
    int n_files;
};

static void add_file(void *ctx, const char *file)
{
    struct batch *b = ctx;
    if (b->n_files < STORE_RETENTION_BATCH * PROTO_COUNT_MAX)
        snprintf(b->files[b->n_files++], FILE_NAME_MAX, "%s", file);
}

/* The batch's image file names are read before its rows go; only once the transaction that
 * deletes them has committed are the files unlinked, so that a failed commit leaves every
 * row with its files. */
static int retire(struct store *s, struct batch *b, double now, uint64_t *removed)
{
    b->n_files = 0;
    int rc = 0;
    for (int i = 0; !rc && i < b->n; i++)
        rc = s->ops->image_files(s, b->ids[i], add_file, b);
    if (!rc) rc = s->ops->retire(s, (const store_id *)b->ids, b->n, now);
    if (rc) return rc;
    char path[PATH_MAX];
    for (int i = 0; i < b->n_files; i++) {
        snprintf(path, sizeof path, "%s/%s", s->images, b->files[i]);
        if (unlink(path) != 0 && errno != ENOENT)
            log_warn("retention: %s: %s", path, strerror(errno));
    }
    *removed += (uint64_t)b->n;
    return 0;
}

static int passes(struct store *s, struct batch *b, double now, double max_age, uint64_t max_bytes,
                  uint64_t *removed, bool *more)
{
    const struct store_ops *o = s->ops;
    int rc = 0, batches = 0;
    /* By age. */
    while (!rc && max_age > 0 && batches < RETENTION_BATCHES) {
        if ((rc = o->finished_before(s, now - max_age, b->ids, STORE_RETENTION_BATCH, &b->n)) ||
            b->n == 0)
            break;
        rc = retire(s, b, now, removed);
        batches++;
    }
    /* By size: the total is summed once, then lowered by what each retired job held. */
    uint64_t total = 0;
    if (!rc && max_bytes && batches < RETENTION_BATCHES) rc = o->image_bytes(s, NULL, &total);
    while (!rc && max_bytes && total > max_bytes && batches < RETENTION_BATCHES) {
        if ((rc = o->finished_before(s, now + 1, b->ids, STORE_RETENTION_BATCH, &b->n)) ||
            b->n == 0)
            break;
        uint64_t freed = 0;
        int keep = 0;
        for (int i = 0; !rc && i < b->n && total - freed > max_bytes; i++) {
            uint64_t bytes;
            rc = o->image_bytes(s, b->ids[i], &bytes);
            freed += bytes;
            keep = i + 1;
        }
        b->n = keep;
        if (!rc) rc = retire(s, b, now, removed);
        if (!rc) total -= freed;
        batches++;
    }
    *more = !rc && batches == RETENTION_BATCHES;
    /* Tombstones are kept for STORE_EXPIRED_KEEP seconds, a bounded number per call. */
    if (!rc && !*more) rc = o->forget_expired(s, now - STORE_EXPIRED_KEEP);
    return rc;
}

int store_retention(struct store *s, double now, double max_age, uint64_t max_bytes,
                    uint64_t *removed, bool *more)
{
    *removed = 0;
    *more = false;
    int rc = store_commit(s);
    bool ours = true;
    if (!rc && s->ops->retention_begin) rc = s->ops->retention_begin(s, &ours);
    if (rc || !ours) return rc;
    struct batch *b = xmalloc(sizeof *b);
    rc = passes(s, b, now, max_age, max_bytes, removed, more);
    free(b);
    if (s->ops->retention_end) s->ops->retention_end(s);
    return rc;
}
