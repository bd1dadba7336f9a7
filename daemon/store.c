/* The SQLite job store; see store.h. Image rows keep file names relative to images/ so that a
 * state directory can be moved; seeds are stored as the int64 with the same bits. */
#include "daemon/store.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/log.h"

#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct store {
    sqlite3 *db;
    char *dir;
    char *images;
    bool in_tx;
};

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS jobs ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, session TEXT NOT NULL,"
    " model TEXT NOT NULL, prompt TEXT NOT NULL, negative_prompt TEXT NOT NULL,"
    " seed INTEGER NOT NULL, steps INTEGER NOT NULL, guidance REAL NOT NULL,"
    " width INTEGER NOT NULL, height INTEGER NOT NULL, max_seq INTEGER NOT NULL,"
    " count INTEGER NOT NULL, priority INTEGER NOT NULL, state TEXT NOT NULL,"
    " created REAL NOT NULL, started REAL NOT NULL DEFAULT 0, finished REAL NOT NULL DEFAULT 0,"
    " step INTEGER NOT NULL DEFAULT 0, images INTEGER NOT NULL DEFAULT 0,"
    " error_code TEXT NOT NULL DEFAULT '', error_field TEXT NOT NULL DEFAULT '',"
    " error_message TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);"
    "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);"
    "CREATE TABLE IF NOT EXISTS images ("
    " job TEXT NOT NULL, idx INTEGER NOT NULL, file TEXT NOT NULL, sha256 BLOB NOT NULL,"
    " bytes INTEGER NOT NULL, PRIMARY KEY (job, idx));"
    "CREATE TABLE IF NOT EXISTS expired (id TEXT PRIMARY KEY, at REAL NOT NULL);"
    "CREATE INDEX IF NOT EXISTS expired_at ON expired (at);";

#define JOB_COLUMNS                                                                                \
    "seq, id, session, model, prompt, negative_prompt, seed, steps, guidance, width, height,"      \
    " max_seq, count, priority, state, created, started, finished, step, images,"                  \
    " error_code, error_field, error_message, owner"

/* Columns added since the first schema: added to an older database on open. */
static const char *const added_columns[] = {
    "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
};

static int db_fail(struct store *s, const char *what)
{
    return err_set(ERR_IO, "job store %s/jobs.db: %s: %s", s->dir, what, sqlite3_errmsg(s->db));
}

static int prepare(struct store *s, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK) return db_fail(s, "prepare");
    return 0;
}

/* Steps a statement that returns no rows and finalizes it. */
static int run_done(struct store *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : db_fail(s, what);
}

static int begin(struct store *s)
{
    if (s->in_tx) return 0;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(s, "begin");
    s->in_tx = true;
    return 0;
}

static void rollback(struct store *s)
{
    if (!s->in_tx) return;
    s->in_tx = false;
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

int store_commit(struct store *s)
{
    if (!s->in_tx) return 0;
    s->in_tx = false;
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        int rc = db_fail(s, "commit");
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    return 0;
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0750) != 0 && errno != EEXIST)
        return err_set(ERR_IO, "state directory %s: %s", path, strerror(errno));
    return 0;
}

int store_open(const char *state_dir, struct store **out)
{
    struct store *s = xcalloc(1, sizeof *s);
    s->dir = xstrdup(state_dir);
    size_t n = strlen(state_dir) + 16;
    s->images = xmalloc(n);
    snprintf(s->images, n, "%s/images", state_dir);
    char *dbpath = xmalloc(n);
    snprintf(dbpath, n, "%s/jobs.db", state_dir);
    int rc = make_dir(state_dir);
    if (!rc) rc = make_dir(s->images);
    if (!rc && sqlite3_open_v2(dbpath, &s->db,
                               SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                               NULL) != SQLITE_OK)
        rc = err_set(ERR_IO, "job store %s: %s", dbpath,
                     s->db ? sqlite3_errmsg(s->db) : "out of memory");
    if (!rc) {
        sqlite3_busy_timeout(s->db, 5000);
        if (sqlite3_exec(s->db, schema, NULL, NULL, NULL) != SQLITE_OK) rc = db_fail(s, "schema");
        for (size_t i = 0; !rc && i < sizeof added_columns / sizeof *added_columns; i++)
            if (sqlite3_exec(s->db, added_columns[i], NULL, NULL, NULL) != SQLITE_OK &&
                !strstr(sqlite3_errmsg(s->db), "duplicate column"))
                rc = db_fail(s, "schema upgrade");
        if (!rc && sqlite3_exec(s->db, "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq)",
                                NULL, NULL, NULL) != SQLITE_OK)
            rc = db_fail(s, "schema");
    }
    free(dbpath);
    if (rc) {
        store_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void store_close(struct store *s)
{
    if (!s) return;
    if (s->db) {
        store_commit(s);
        sqlite3_close(s->db);
    }
    free(s->dir);
    free(s->images);
    free(s);
}

const char *store_images_dir(const struct store *s)
{
    return s->images;
}

int store_insert(struct store *s, struct store_job *j)
{
    sqlite3_stmt *st;
    int rc = begin(s);
    if (rc || (rc = prepare(s,
                            "INSERT INTO jobs (id, session, model, prompt, negative_prompt, seed,"
                            " steps, guidance, width, height, max_seq, count, priority, state,"
                            " created, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            &st)))
        return rc;
    const struct proto_submit *p = &j->params;
    sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, j->session, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, p->model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, p->prompt, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, p->negative_prompt, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)p->seed);
    sqlite3_bind_int(st, 7, (int)p->steps);
    sqlite3_bind_double(st, 8, p->guidance);
    sqlite3_bind_int(st, 9, (int)p->width);
    sqlite3_bind_int(st, 10, (int)p->height);
    sqlite3_bind_int(st, 11, (int)p->max_seq);
    sqlite3_bind_int(st, 12, (int)p->count);
    sqlite3_bind_int(st, 13, p->priority);
    sqlite3_bind_text(st, 14, proto_state_name(j->state), -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 15, j->created);
    sqlite3_bind_text(st, 16, j->owner, -1, SQLITE_STATIC);
    rc = run_done(s, st, "insert");
    if (!rc) j->seq = sqlite3_last_insert_rowid(s->db);
    return rc;
}

int store_update(struct store *s, const struct store_job *j)
{
    sqlite3_stmt *st;
    int rc = begin(s);
    if (rc || (rc = prepare(s,
                            "UPDATE jobs SET state=?, started=?, finished=?, step=?, images=?,"
                            " error_code=?, error_field=?, error_message=? WHERE id=?",
                            &st)))
        return rc;
    sqlite3_bind_text(st, 1, proto_state_name(j->state), -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, j->started);
    sqlite3_bind_double(st, 3, j->finished);
    sqlite3_bind_int(st, 4, (int)j->step);
    sqlite3_bind_int(st, 5, (int)j->images);
    sqlite3_bind_text(st, 6, j->error.code ? proto_errcode_name(j->error.code) : "", -1,
                      SQLITE_STATIC);
    sqlite3_bind_text(st, 7, j->error.field, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, j->error.message, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, j->id, -1, SQLITE_STATIC);
    return run_done(s, st, "update");
}

int store_add_image(struct store *s, const char *job, uint32_t index, const char *path,
                    const uint8_t sha256[32], uint64_t bytes)
{
    const char *slash = strrchr(path, '/');
    sqlite3_stmt *st;
    int rc = begin(s);
    if (rc || (rc = prepare(s,
                            "INSERT OR REPLACE INTO images (job, idx, file, sha256, bytes)"
                            " VALUES (?,?,?,?,?)",
                            &st)))
        return rc;
    sqlite3_bind_text(st, 1, job, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, (int)index);
    sqlite3_bind_text(st, 3, slash ? slash + 1 : path, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, sha256, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)bytes);
    return run_done(s, st, "add image");
}

static void copy_col(sqlite3_stmt *st, int col, char *dst, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

static void read_job(sqlite3_stmt *st, struct store_job *j)
{
    memset(j, 0, sizeof *j);
    struct proto_submit *p = &j->params;
    proto_submit_init(p);
    p->set = PROTO_SUBMIT_PARAMS;
    j->seq = sqlite3_column_int64(st, 0);
    copy_col(st, 1, j->id, sizeof j->id);
    copy_col(st, 2, j->session, sizeof j->session);
    copy_col(st, 3, p->model, sizeof p->model);
    copy_col(st, 4, p->prompt, sizeof p->prompt);
    copy_col(st, 5, p->negative_prompt, sizeof p->negative_prompt);
    p->seed = (uint64_t)sqlite3_column_int64(st, 6);
    p->steps = (uint32_t)sqlite3_column_int(st, 7);
    p->guidance = sqlite3_column_double(st, 8);
    p->width = (uint32_t)sqlite3_column_int(st, 9);
    p->height = (uint32_t)sqlite3_column_int(st, 10);
    p->max_seq = (uint32_t)sqlite3_column_int(st, 11);
    p->count = (uint32_t)sqlite3_column_int(st, 12);
    p->priority = sqlite3_column_int(st, 13);
    const unsigned char *state = sqlite3_column_text(st, 14);
    for (int i = 0; i < PROTO_STATE_COUNT; i++)
        if (state && strcmp((const char *)state, proto_state_name(i)) == 0)
            j->state = (enum proto_state)i;
    j->created = sqlite3_column_double(st, 15);
    j->started = sqlite3_column_double(st, 16);
    j->finished = sqlite3_column_double(st, 17);
    j->step = (uint32_t)sqlite3_column_int(st, 18);
    j->steps = p->steps;
    j->images = (uint32_t)sqlite3_column_int(st, 19);
    const unsigned char *code = sqlite3_column_text(st, 20);
    if (code && *code)
        j->error.code = proto_errcode_parse((const char *)code, strlen((const char *)code));
    copy_col(st, 21, j->error.field, sizeof j->error.field);
    copy_col(st, 22, j->error.message, sizeof j->error.message);
    copy_col(st, 23, j->owner, sizeof j->owner);
}

int store_get(struct store *s, const char *id, struct store_job *j)
{
    sqlite3_stmt *st;
    int rc = prepare(s, "SELECT " JOB_COLUMNS " FROM jobs WHERE id=?", &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        read_job(st, j);
    else if (r == SQLITE_DONE)
        rc = err_set(ERR_MISSING, "no job \"%s\"", id);
    else
        rc = db_fail(s, "get");
    sqlite3_finalize(st);
    return rc;
}

int store_image(struct store *s, const char *job, uint32_t index, struct store_image *img)
{
    sqlite3_stmt *st;
    int rc = prepare(s, "SELECT file, sha256, bytes FROM images WHERE job=? AND idx=?", &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, job, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, (int)index);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW && sqlite3_column_bytes(st, 1) == 32) {
        snprintf(img->path, sizeof img->path, "%s/%s", s->images,
                 (const char *)sqlite3_column_text(st, 0));
        memcpy(img->sha256, sqlite3_column_blob(st, 1), 32);
        img->bytes = (uint64_t)sqlite3_column_int64(st, 2);
    } else if (r == SQLITE_ROW || r == SQLITE_DONE) {
        rc = err_set(ERR_MISSING, "no image %u of job \"%s\"", index, job);
    } else {
        rc = db_fail(s, "image");
    }
    sqlite3_finalize(st);
    return rc;
}

static int for_each(struct store *s, sqlite3_stmt *st,
                    void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    struct store_job *j = xmalloc(sizeof *j);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        read_job(st, j);
        fn(ctx, j);
    }
    free(j);
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? 0 : db_fail(s, "list");
}

int store_list(struct store *s, const struct store_filter *f, uint32_t limit,
               void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    /* Unset filters match everything; with an owner the (owner, seq) index serves. */
    sqlite3_stmt *st;
    int rc = prepare(s,
                     "SELECT " JOB_COLUMNS " FROM jobs WHERE (?1 IS NULL OR owner=?1)"
                     " AND (?2 IS NULL OR state=?2) AND seq < ?3 ORDER BY seq DESC LIMIT ?4",
                     &st);
    if (rc) return rc;
    if (f->owner) sqlite3_bind_text(st, 1, f->owner, -1, SQLITE_STATIC);
    if (f->has_state) sqlite3_bind_text(st, 2, proto_state_name(f->state), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, f->before_seq > 0 ? f->before_seq : INT64_MAX);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)limit);
    return for_each(s, st, fn, ctx);
}

int store_recover(struct store *s, void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    int rc = begin(s);
    if (rc) return rc;
    if (sqlite3_exec(s->db, "UPDATE jobs SET state='queued', step=0 WHERE state='running'", NULL,
                     NULL, NULL) != SQLITE_OK) {
        rc = db_fail(s, "requeue");
        rollback(s);
        return rc;
    }
    int requeued = sqlite3_changes(s->db);
    if ((rc = store_commit(s))) return rc;
    if (requeued) log_info("job store: %d interrupted job(s) queued again", requeued);
    sqlite3_stmt *st;
    if ((rc =
             prepare(s, "SELECT " JOB_COLUMNS " FROM jobs WHERE state='queued' ORDER BY seq", &st)))
        return rc;
    return for_each(s, st, fn, ctx);
}

/* Retention works in batches of RETENTION_BATCH jobs, one transaction each, and at most
 * RETENTION_BATCHES of them per call, so that a large backlog never holds the reactor long:
 * the rest waits for the next call. */
#define RETENTION_BATCH 64
#define RETENTION_BATCHES 4
#define FILE_NAME_MAX (PROTO_MAX_NAME + 16)

struct batch {
    char ids[RETENTION_BATCH][PROTO_MAX_NAME + 1];
    int n;
    char files[RETENTION_BATCH * PROTO_COUNT_MAX][FILE_NAME_MAX];
    int n_files;
};

/* Binds id to ?1 of sql and steps it to the end. */
static int exec_id(struct store *s, const char *sql, const char *id, double at, const char *what)
{
    sqlite3_stmt *st;
    int rc = prepare(s, sql, &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, at);
    return run_done(s, st, what);
}

/* The batch's image file names, read before its rows go. */
static int batch_files(struct store *s, struct batch *b)
{
    sqlite3_stmt *st;
    int rc = prepare(s, "SELECT file FROM images WHERE job=?", &st);
    for (int i = 0; !rc && i < b->n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, b->ids[i], -1, SQLITE_STATIC);
        int r;
        while ((r = sqlite3_step(st)) == SQLITE_ROW && b->n_files < RETENTION_BATCH * PROTO_COUNT_MAX)
            copy_col(st, 0, b->files[b->n_files++], FILE_NAME_MAX);
        if (r != SQLITE_ROW && r != SQLITE_DONE) rc = db_fail(s, "retention files");
    }
    sqlite3_finalize(st);
    return rc;
}

/* Deletes the batch's rows, leaving a tombstone for each id, in one transaction; only once it
 * has committed are the image files unlinked, so that a failed commit leaves every row with
 * its files. */
static int retire(struct store *s, struct batch *b, double now, uint64_t *removed)
{
    b->n_files = 0;
    int rc = batch_files(s, b);
    if (!rc) rc = begin(s);
    for (int i = 0; !rc && i < b->n; i++) {
        rc = exec_id(s, "INSERT OR REPLACE INTO expired (id, at) VALUES (?1, ?2)", b->ids[i], now,
                     "retention");
        if (!rc) rc = exec_id(s, "DELETE FROM images WHERE job=?1", b->ids[i], 0, "retention");
        if (!rc) rc = exec_id(s, "DELETE FROM jobs WHERE id=?1", b->ids[i], 0, "retention");
    }
    if (!rc) rc = store_commit(s);
    if (rc) {
        rollback(s);
        return rc;
    }
    char path[PATH_MAX];
    for (int i = 0; i < b->n_files; i++) {
        snprintf(path, sizeof path, "%s/%s", s->images, b->files[i]);
        if (unlink(path) != 0 && errno != ENOENT)
            log_warn("retention: %s: %s", path, strerror(errno));
    }
    *removed += (uint64_t)b->n;
    return 0;
}

/* Up to RETENTION_BATCH finished jobs, oldest first, finished before cutoff. Finished jobs
 * alone have finished > 0, which keeps the index scan off the live ones. */
static int select_batch(struct store *s, double cutoff, struct batch *b)
{
    sqlite3_stmt *st;
    int rc = prepare(s,
                     "SELECT id FROM jobs WHERE finished > 0 AND finished < ?1"
                     " AND state IN ('done','failed','canceled') ORDER BY finished LIMIT ?2",
                     &st);
    if (rc) return rc;
    sqlite3_bind_double(st, 1, cutoff);
    sqlite3_bind_int(st, 2, RETENTION_BATCH);
    int r;
    b->n = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW)
        copy_col(st, 0, b->ids[b->n++], sizeof b->ids[0]);
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? 0 : db_fail(s, "retention select");
}

static int image_bytes(struct store *s, const char *job, uint64_t *out)
{
    sqlite3_stmt *st;
    int rc = prepare(s, job ? "SELECT COALESCE(SUM(bytes), 0) FROM images WHERE job=?"
                            : "SELECT COALESCE(SUM(bytes), 0) FROM images",
                     &st);
    if (rc) return rc;
    if (job) sqlite3_bind_text(st, 1, job, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    *out = r == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return r == SQLITE_ROW ? 0 : db_fail(s, "retention bytes");
}

int store_retention(struct store *s, double now, double max_age, uint64_t max_bytes,
                    uint64_t *removed, bool *more)
{
    *removed = 0;
    *more = false;
    int rc = store_commit(s);
    struct batch *b = xmalloc(sizeof *b);
    int batches = 0;
    /* By age. */
    while (!rc && max_age > 0 && batches < RETENTION_BATCHES) {
        if ((rc = select_batch(s, now - max_age, b)) || b->n == 0) break;
        rc = retire(s, b, now, removed);
        batches++;
    }
    /* By size: the total is summed once, then lowered by what each retired job held. */
    uint64_t total = 0;
    if (!rc && max_bytes && batches < RETENTION_BATCHES) rc = image_bytes(s, NULL, &total);
    while (!rc && max_bytes && total > max_bytes && batches < RETENTION_BATCHES) {
        if ((rc = select_batch(s, now + 1, b)) || b->n == 0) break;
        uint64_t freed = 0;
        int keep = 0;
        for (int i = 0; !rc && i < b->n && total - freed > max_bytes; i++) {
            uint64_t bytes;
            rc = image_bytes(s, b->ids[i], &bytes);
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
    if (!rc && !*more) {
        sqlite3_stmt *st;
        rc = prepare(s,
                     "DELETE FROM expired WHERE rowid IN"
                     " (SELECT rowid FROM expired WHERE at < ?1 LIMIT 1024)",
                     &st);
        if (!rc) {
            sqlite3_bind_double(st, 1, now - STORE_EXPIRED_KEEP);
            rc = run_done(s, st, "tombstones");
        }
    }
    free(b);
    return rc;
}

int store_expired(struct store *s, const char *id, bool *expired)
{
    sqlite3_stmt *st;
    int rc = prepare(s, "SELECT 1 FROM expired WHERE id=?", &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    *expired = r == SQLITE_ROW;
    sqlite3_finalize(st);
    return r == SQLITE_ROW || r == SQLITE_DONE ? 0 : db_fail(s, "expired");
}

int store_count(struct store *s, enum proto_state state, uint64_t *n)
{
    sqlite3_stmt *st;
    int rc = prepare(s, "SELECT COUNT(*) FROM jobs WHERE state=?", &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, proto_state_name(state), -1, SQLITE_STATIC);
    *n = sqlite3_step(st) == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return 0;
}
