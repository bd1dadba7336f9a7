/* The SQLite engine of the job store (store_engine.h): one database jobs.db (WAL) in the
 * state directory, for one daemon. Seeds are stored as the int64 with the same bits. */
#include "daemon/store_engine.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/log.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct store_sqlite {
    struct store base;
    sqlite3 *db;
    char *path;
    bool in_tx;
};

#define DB(s) ((struct store_sqlite *)(s))

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
    " error_code, error_field, error_message, owner, focus_subjects, focus_lambda,"                \
    " focus_heuristic"

/* Columns added since the first schema: added to an older database on open. */
static const char *const added_columns[] = {
    "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
    /* The FOCUS control: the subjects as proto_subjects_pack gives them (NULL: none). */
    "ALTER TABLE jobs ADD COLUMN focus_subjects BLOB",
    "ALTER TABLE jobs ADD COLUMN focus_lambda REAL NOT NULL DEFAULT 1",
    "ALTER TABLE jobs ADD COLUMN focus_heuristic TEXT NOT NULL DEFAULT 'focus'",
};

static int db_fail(struct store_sqlite *s, const char *what)
{
    return err_set(ERR_IO, "job store %s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

static int prepare(struct store_sqlite *s, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK) return db_fail(s, "prepare");
    return 0;
}

/* Steps a statement that returns no rows and finalizes it. */
static int run_done(struct store_sqlite *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : db_fail(s, what);
}

static int begin(struct store_sqlite *s)
{
    if (s->in_tx) return 0;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(s, "begin");
    s->in_tx = true;
    return 0;
}

static void rollback(struct store_sqlite *s)
{
    if (!s->in_tx) return;
    s->in_tx = false;
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

static int sq_commit(struct store *base)
{
    struct store_sqlite *s = DB(base);
    if (!s->in_tx) return 0;
    s->in_tx = false;
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        int rc = db_fail(s, "commit");
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    return 0;
}

static void sq_close(struct store *base);

static int sq_open(const struct store_settings *set, struct store **out)
{
    struct store_sqlite *s = xcalloc(1, sizeof *s);
    size_t n = strlen(set->state_dir) + 16;
    char *dbpath = s->path = xmalloc(n);
    snprintf(dbpath, n, "%s/jobs.db", set->state_dir);
    int rc = 0;
    if (sqlite3_open_v2(dbpath, &s->db,
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
    if (rc) {
        sq_close(&s->base);
        return rc;
    }
    *out = &s->base;
    return 0;
}

static void sq_close(struct store *base)
{
    struct store_sqlite *s = DB(base);
    if (s->db) {
        sq_commit(base);
        sqlite3_close(s->db);
    }
    free(s->path);
    free(s);
}

static int sq_insert(struct store *base, struct store_job *j)
{
    struct store_sqlite *s = DB(base);
    sqlite3_stmt *st;
    int rc = begin(s);
    if (rc || (rc = prepare(s,
                            "INSERT INTO jobs (id, session, model, prompt, negative_prompt, seed,"
                            " steps, guidance, width, height, max_seq, count, priority, state,"
                            " created, owner, focus_subjects, focus_lambda, focus_heuristic)"
                            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            &st)))
        return rc;
    const struct proto_submit *p = &j->params;
    msgpack_sbuffer subjects;
    msgpack_sbuffer_init(&subjects);
    if ((rc = proto_subjects_pack(&subjects, &p->subjects))) {
        sqlite3_finalize(st);
        return rc;
    }
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
    if (subjects.size) sqlite3_bind_blob(st, 17, subjects.data, (int)subjects.size, SQLITE_STATIC);
    sqlite3_bind_double(st, 18, p->focus_lambda);
    sqlite3_bind_text(st, 19, proto_heuristic_name(p->focus_heuristic), -1, SQLITE_STATIC);
    rc = run_done(s, st, "insert");
    msgpack_sbuffer_destroy(&subjects);
    if (!rc) j->seq = sqlite3_last_insert_rowid(s->db);
    return rc;
}

static int sq_update(struct store *base, const struct store_job *j)
{
    struct store_sqlite *s = DB(base);
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

static int sq_add_image(struct store *base, const char *job, uint32_t index, const char *file,
                        const uint8_t sha256[32], uint64_t bytes)
{
    struct store_sqlite *s = DB(base);
    sqlite3_stmt *st;
    int rc = begin(s);
    if (rc || (rc = prepare(s,
                            "INSERT OR REPLACE INTO images (job, idx, file, sha256, bytes)"
                            " VALUES (?,?,?,?,?)",
                            &st)))
        return rc;
    sqlite3_bind_text(st, 1, job, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, (int)index);
    sqlite3_bind_text(st, 3, file, -1, SQLITE_STATIC);
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
    const unsigned char *heuristic = sqlite3_column_text(st, 26);
    store_read_focus(p, j->id, sqlite3_column_blob(st, 24), (size_t)sqlite3_column_bytes(st, 24),
                     sqlite3_column_double(st, 25), heuristic ? (const char *)heuristic : "");
}

static int sq_get(struct store *base, const char *id, struct store_job *j)
{
    struct store_sqlite *s = DB(base);
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

static int sq_image(struct store *base, const char *job, uint32_t index, struct store_image *img)
{
    struct store_sqlite *s = DB(base);
    sqlite3_stmt *st;
    int rc = prepare(s, "SELECT file, sha256, bytes FROM images WHERE job=? AND idx=?", &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, job, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, (int)index);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW && sqlite3_column_bytes(st, 1) == 32) {
        copy_col(st, 0, img->path, sizeof img->path);
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

static int for_each(struct store_sqlite *s, sqlite3_stmt *st,
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

static int sq_list(struct store *base, const struct store_filter *f, uint32_t limit,
                   void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    struct store_sqlite *s = DB(base);
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

static int sq_recover(struct store *base, void (*fn)(void *ctx, const struct store_job *j),
                      void *ctx)
{
    struct store_sqlite *s = DB(base);
    int rc = begin(s);
    if (rc) return rc;
    if (sqlite3_exec(s->db, "UPDATE jobs SET state='queued', step=0 WHERE state='running'", NULL,
                     NULL, NULL) != SQLITE_OK) {
        rc = db_fail(s, "requeue");
        rollback(s);
        return rc;
    }
    int requeued = sqlite3_changes(s->db);
    if ((rc = sq_commit(base))) return rc;
    if (requeued) log_info("job store: %d interrupted job(s) queued again", requeued);
    sqlite3_stmt *st;
    if ((rc =
             prepare(s, "SELECT " JOB_COLUMNS " FROM jobs WHERE state='queued' ORDER BY seq", &st)))
        return rc;
    return for_each(s, st, fn, ctx);
}

/* ---- Retention's primitives ---- */

/* Binds id to ?1 of sql and steps it to the end. */
static int exec_id(struct store_sqlite *s, const char *sql, const char *id, double at,
                   const char *what)
{
    sqlite3_stmt *st;
    int rc = prepare(s, sql, &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, at);
    return run_done(s, st, what);
}

static int sq_image_files(struct store *base, const char *job,
                          void (*fn)(void *ctx, const char *file), void *ctx)
{
    struct store_sqlite *s = DB(base);
    sqlite3_stmt *st;
    int rc = prepare(s, "SELECT file FROM images WHERE job=?", &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, job, -1, SQLITE_STATIC);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW)
        fn(ctx, (const char *)sqlite3_column_text(st, 0));
    if (r != SQLITE_DONE) rc = db_fail(s, "retention files");
    sqlite3_finalize(st);
    return rc;
}

static int sq_retire(struct store *base, const store_id *ids, int n, double now)
{
    struct store_sqlite *s = DB(base);
    int rc = begin(s);
    for (int i = 0; !rc && i < n; i++) {
        rc = exec_id(s, "INSERT OR REPLACE INTO expired (id, at) VALUES (?1, ?2)", ids[i], now,
                     "retention");
        if (!rc) rc = exec_id(s, "DELETE FROM images WHERE job=?1", ids[i], 0, "retention");
        if (!rc) rc = exec_id(s, "DELETE FROM jobs WHERE id=?1", ids[i], 0, "retention");
    }
    if (!rc) rc = sq_commit(base);
    if (rc) rollback(s);
    return rc;
}

/* Finished jobs alone have finished > 0, which keeps the index scan off the live ones. */
static int sq_finished_before(struct store *base, double cutoff, store_id *ids, int max, int *n)
{
    struct store_sqlite *s = DB(base);
    sqlite3_stmt *st;
    int rc = prepare(s,
                     "SELECT id FROM jobs WHERE finished > 0 AND finished < ?1"
                     " AND state IN ('done','failed','canceled') ORDER BY finished LIMIT ?2",
                     &st);
    if (rc) return rc;
    sqlite3_bind_double(st, 1, cutoff);
    sqlite3_bind_int(st, 2, max);
    int r;
    *n = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW)
        copy_col(st, 0, ids[(*n)++], sizeof ids[0]);
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? 0 : db_fail(s, "retention select");
}

static int sq_image_bytes(struct store *base, const char *job, uint64_t *out)
{
    struct store_sqlite *s = DB(base);
    sqlite3_stmt *st;
    int rc = prepare(s,
                     job ? "SELECT COALESCE(SUM(bytes), 0) FROM images WHERE job=?"
                         : "SELECT COALESCE(SUM(bytes), 0) FROM images",
                     &st);
    if (rc) return rc;
    if (job) sqlite3_bind_text(st, 1, job, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    *out = r == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return r == SQLITE_ROW ? 0 : db_fail(s, "retention bytes");
}

static int sq_forget_expired(struct store *base, double before)
{
    struct store_sqlite *s = DB(base);
    sqlite3_stmt *st;
    int rc = prepare(s,
                     "DELETE FROM expired WHERE rowid IN"
                     " (SELECT rowid FROM expired WHERE at < ?1 LIMIT 1024)",
                     &st);
    if (rc) return rc;
    sqlite3_bind_double(st, 1, before);
    return run_done(s, st, "tombstones");
}

static int sq_expired(struct store *base, const char *id, bool *expired)
{
    struct store_sqlite *s = DB(base);
    sqlite3_stmt *st;
    int rc = prepare(s, "SELECT 1 FROM expired WHERE id=?", &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    *expired = r == SQLITE_ROW;
    sqlite3_finalize(st);
    return r == SQLITE_ROW || r == SQLITE_DONE ? 0 : db_fail(s, "expired");
}

static int sq_count(struct store *base, enum proto_state state, const char *owner, uint64_t *n)
{
    struct store_sqlite *s = DB(base);
    sqlite3_stmt *st;
    int rc =
        prepare(s, "SELECT COUNT(*) FROM jobs WHERE state=?1 AND (?2 IS NULL OR owner=?2)", &st);
    if (rc) return rc;
    sqlite3_bind_text(st, 1, proto_state_name(state), -1, SQLITE_STATIC);
    if (owner) sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    *n = sqlite3_step(st) == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return 0;
}

const struct store_ops store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .commit = sq_commit,
    .insert = sq_insert,
    .update = sq_update,
    .add_image = sq_add_image,
    .get = sq_get,
    .image = sq_image,
    .list = sq_list,
    .recover = sq_recover,
    .expired = sq_expired,
    .count = sq_count,
    .finished_before = sq_finished_before,
    .image_bytes = sq_image_bytes,
    .image_files = sq_image_files,
    .retire = sq_retire,
    .forget_expired = sq_forget_expired,
};
