/* The PostgreSQL engine of the job store (store_engine.h), through libpq: one database that
 * several daemons share. The schema is versioned (schema_version) and created or migrated at
 * open under a transaction-level advisory lock, so that daemons starting together migrate
 * once. A daemon takes jobs by claiming them into a lease (lease_owner, lease_until, in the
 * database's clock) with FOR UPDATE SKIP LOCKED and renews the leases of the jobs it runs;
 * every write of a job's state is guarded by the lease, so that a daemon whose lease expired
 * (it stopped, or lost the database long enough) can no longer finish the job another one
 * has taken over. Events between daemons travel by LISTEN/NOTIFY on one channel, sent inside
 * the grouped transaction so that they leave with the rows they announce. When the
 * connection drops every call fails at once, and store_poll reconnects at most once a
 * second; the daemon keeps its jobs in memory meanwhile. Images stay files in the shared
 * images/ directory; the rows hold their names, sizes and SHA-256. */
#include "daemon/store_engine.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/log.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHANNEL "focusd"
/* Advisory lock keys: "focusd" in ASCII, then what they guard. */
#define LOCK_SCHEMA "7310588876411838465"
#define LOCK_RETENTION "7310588876411838466"
/* The database's clock, in seconds since the epoch: leases compare against one clock. */
#define DB_NOW "extract(epoch from clock_timestamp())"

struct store_pg {
    struct store base;
    PGconn *conn; /* NULL while disconnected */
    char *uri;
    char *shown; /* the URI without its password, for messages */
    char *owner;
    char lease[32]; /* lease_time in seconds, as a parameter */
    bool in_tx;
    double last_try; /* monotonic time of the last reconnection attempt */
};

#define PG(s) ((struct store_pg *)(s))

/* ---- Schema ---- */

/* migrations[v] takes a database from schema version v to v + 1. */
static const char *const migrations[] = {
    "CREATE TABLE jobs ("
    " seq bigserial PRIMARY KEY, id text UNIQUE NOT NULL, session text NOT NULL,"
    " owner text NOT NULL DEFAULT '', model text NOT NULL, prompt text NOT NULL,"
    " negative_prompt text NOT NULL, seed bigint NOT NULL, steps integer NOT NULL,"
    " guidance double precision NOT NULL, width integer NOT NULL, height integer NOT NULL,"
    " max_seq integer NOT NULL, count integer NOT NULL, priority integer NOT NULL,"
    " state text NOT NULL, created double precision NOT NULL,"
    " started double precision NOT NULL DEFAULT 0, finished double precision NOT NULL DEFAULT 0,"
    " step integer NOT NULL DEFAULT 0, images integer NOT NULL DEFAULT 0,"
    " error_code text NOT NULL DEFAULT '', error_field text NOT NULL DEFAULT '',"
    " error_message text NOT NULL DEFAULT '', lease_owner text NOT NULL DEFAULT '',"
    " lease_until double precision NOT NULL DEFAULT 0,"
    " cancel_asked boolean NOT NULL DEFAULT false);"
    "CREATE INDEX jobs_state ON jobs (state, seq);"
    "CREATE INDEX jobs_finished ON jobs (finished);"
    "CREATE INDEX jobs_owner ON jobs (owner, seq);"
    "CREATE INDEX jobs_claim ON jobs (model, priority DESC, seq)"
    " WHERE state IN ('queued', 'running');"
    "CREATE INDEX jobs_lease ON jobs (lease_owner) WHERE lease_owner <> '';"
    "CREATE TABLE images ("
    " job text NOT NULL, idx integer NOT NULL, file text NOT NULL, sha256 bytea NOT NULL,"
    " bytes bigint NOT NULL, PRIMARY KEY (job, idx));"
    "CREATE TABLE expired (id text PRIMARY KEY, at double precision NOT NULL);"
    "CREATE INDEX expired_at ON expired (at);",
    /* 2: the FOCUS control; the subjects as proto_subjects_pack gives them (NULL: none). */
    "ALTER TABLE jobs ADD COLUMN focus_subjects bytea,"
    " ADD COLUMN focus_lambda double precision NOT NULL DEFAULT 1,"
    " ADD COLUMN focus_heuristic text NOT NULL DEFAULT 'focus';",
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof *migrations))

#define JOB_COLUMNS                                                                                \
    "seq, id, session, model, prompt, negative_prompt, seed, steps, guidance, width, height,"      \
    " max_seq, count, priority, state, created, started, finished, step, images,"                  \
    " error_code, error_field, error_message, owner, cancel_asked,"                                \
    " encode(focus_subjects, 'hex'), focus_lambda, focus_heuristic"

/* ---- Connection and statements ---- */

static int unavailable(struct store_pg *s)
{
    return err_set(ERR_IO, "job store %s: the database is unavailable; reconnecting", s->shown);
}

static void disconnect(struct store_pg *s)
{
    if (!s->conn) return;
    log_warn("job store %s: the connection to the database is lost; the jobs in memory carry "
             "on while it reconnects",
             s->shown);
    PQfinish(s->conn);
    s->conn = NULL;
    s->in_tx = false;
}

/* The first line of libpq's message. */
static const char *pg_message(PGconn *c)
{
    static char msg[512];
    snprintf(msg, sizeof msg, "%s", c ? PQerrorMessage(c) : "out of memory");
    msg[strcspn(msg, "\n")] = 0;
    return msg;
}

/* Runs sql with text parameters (NULL: SQL NULL), or, without parameters, the statements of
 * sql; the result, or NULL with the message set (the connection dropped: it is closed for
 * store_poll to reopen). */
static PGresult *run(struct store_pg *s, const char *what, const char *sql, int n,
                     const char *const *params)
{
    if (!s->conn) {
        unavailable(s);
        return NULL;
    }
    PGresult *r =
        n ? PQexecParams(s->conn, sql, n, NULL, params, NULL, NULL, 0) : PQexec(s->conn, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return r;
    err_set(ERR_IO, "job store %s: %s: %s", s->shown, what, pg_message(s->conn));
    PQclear(r);
    if (PQstatus(s->conn) == CONNECTION_BAD) disconnect(s);
    return NULL;
}

/* run() for a statement whose rows are not needed. */
static int exec(struct store_pg *s, const char *what, const char *sql, int n,
                const char *const *params)
{
    PGresult *r = run(s, what, sql, n, params);
    PQclear(r);
    return r ? 0 : ERR_IO;
}

static int begin(struct store_pg *s)
{
    if (s->in_tx) return 0;
    int rc = exec(s, "begin", "BEGIN", 0, NULL);
    s->in_tx = rc == 0;
    return rc;
}

static void rollback(struct store_pg *s)
{
    if (!s->in_tx) return;
    s->in_tx = false;
    if (s->conn) PQclear(PQexec(s->conn, "ROLLBACK"));
}

/* run() and exec() inside the grouped transaction, opened when it is not. */
static PGresult *run_in_tx(struct store_pg *s, const char *what, const char *sql, int n,
                           const char *const *params)
{
    return begin(s) ? NULL : run(s, what, sql, n, params);
}

static int exec_in_tx(struct store_pg *s, const char *what, const char *sql, int n,
                      const char *const *params)
{
    return begin(s) ? ERR_IO : exec(s, what, sql, n, params);
}

static int pg_commit(struct store *base)
{
    struct store_pg *s = PG(base);
    if (!s->in_tx) return 0;
    s->in_tx = false;
    /* COMMIT of a transaction that an error aborted reports success and rolls back. */
    PGresult *r = run(s, "commit", "COMMIT", 0, NULL);
    int rc = r && strcmp(PQcmdStatus(r), "COMMIT") == 0 ? 0
             : r ? err_set(ERR_IO, "job store %s: commit: the transaction was aborted", s->shown)
                 : ERR_IO;
    PQclear(r);
    return rc;
}

/* Formatting of parameters: a few numbers per statement, each in its own slot. */
struct args {
    const char *v[24];
    char num[24][32];
    int n;
};

static void arg_text(struct args *a, const char *t)
{
    a->v[a->n++] = t;
}

static void arg_int(struct args *a, long long x)
{
    snprintf(a->num[a->n], sizeof a->num[0], "%lld", x);
    a->v[a->n] = a->num[a->n];
    a->n++;
}

static void arg_real(struct args *a, double x)
{
    snprintf(a->num[a->n], sizeof a->num[0], "%.17g", x);
    a->v[a->n] = a->num[a->n];
    a->n++;
}

/* A text[] literal of job ids (ours: letters and digits), each quoted. */
static char *id_array(const char *const *ids, size_t n)
{
    size_t cap = 3 + n * (PROTO_MAX_NAME + 3);
    char *out = xmalloc(cap), *p = out;
    *p++ = '{';
    for (size_t i = 0; i < n; i++)
        p += snprintf(p, cap - (size_t)(p - out), "%s\"%s\"", i ? "," : "", ids[i]);
    snprintf(p, cap - (size_t)(p - out), "}");
    return out;
}

static int connect_db(struct store_pg *s)
{
    /* The URI's own connect_timeout, when it has one, wins over this default. */
    const char *const keys[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *const vals[] = {"5", "focusd", s->uri, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        int rc = err_set(ERR_IO, "job store %s: cannot connect: %s", s->shown, pg_message(c));
        PQfinish(c);
        return rc;
    }
    s->conn = c;
    s->in_tx = false;
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    return exec(s, "listen", "LISTEN " CHANNEL, 0, NULL);
}

/* The URI with its password, in the user part or as a parameter, replaced by ***. */
static char *redact(const char *uri)
{
    char *out = xmalloc(strlen(uri) + 8); /* each *** may be longer than what it hides */
    const char *auth = strstr(uri, "://");
    auth = auth ? auth + 3 : uri;
    size_t host_len = strcspn(auth, "/?");
    const char *at = NULL, *colon = NULL;
    for (const char *p = auth; p < auth + host_len; p++)
        if (*p == '@') at = p;
    for (const char *p = auth; at && p < at && !colon; p++)
        if (*p == ':') colon = p;
    if (colon)
        sprintf(out, "%.*s***%s", (int)(colon + 1 - uri), uri, at);
    else
        strcpy(out, uri);
    char *pw = strstr(out, "password=");
    if (pw) {
        char *end = pw + 9 + strcspn(pw + 9, "&");
        memmove(pw + 12, end, strlen(end) + 1);
        memcpy(pw + 9, "***", 3);
    }
    return out;
}

static int pg_check_uri(const char *uri)
{
    char *why = NULL;
    PQconninfoOption *opts = PQconninfoParse(uri, &why);
    int rc = 0;
    if (!opts) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", why ? why : "out of memory");
        msg[strcspn(msg, "\n")] = 0;
        rc = err_set(ERR_RANGE, "not a valid PostgreSQL connection URI: %s", msg);
    }
    PQfreemem(why);
    PQconninfoFree(opts);
    return rc;
}

static int migrate(struct store_pg *s)
{
    int rc = begin(s);
    if (!rc) rc = exec(s, "schema lock", "SELECT pg_advisory_xact_lock(" LOCK_SCHEMA ")", 0, NULL);
    if (!rc)
        rc = exec(s, "schema",
                  "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)", 0, NULL);
    PGresult *r =
        rc ? NULL
           : run(s, "schema", "SELECT COALESCE(MAX(version), 0) FROM schema_version", 0, NULL);
    int version = r ? atoi(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    if (!rc && !r) rc = ERR_IO;
    if (!rc && version > SCHEMA_VERSION)
        rc = err_set(ERR_FORMAT,
                     "job store %s: the database's schema version %d is newer than this "
                     "focusd's (%d)",
                     s->shown, version, SCHEMA_VERSION);
    for (int v = version; !rc && v < SCHEMA_VERSION; v++)
        rc = exec(s, "schema migration", migrations[v], 0, NULL);
    if (!rc && version < SCHEMA_VERSION) {
        struct args a = {0};
        arg_int(&a, SCHEMA_VERSION);
        rc = exec(s, "schema", "DELETE FROM schema_version", 0, NULL);
        if (!rc)
            rc = exec(s, "schema", "INSERT INTO schema_version (version) VALUES ($1)", a.n, a.v);
        if (!rc) log_info("job store %s: schema version %d", s->shown, SCHEMA_VERSION);
    }
    if (!rc) rc = pg_commit(&s->base);
    if (rc) rollback(s);
    return rc;
}

static void pg_close(struct store *base);

static int pg_open(const struct store_settings *set, struct store **out)
{
    struct store_pg *s = xcalloc(1, sizeof *s);
    s->uri = xstrdup(set->uri);
    s->shown = redact(set->uri);
    s->owner = xstrdup(set->owner);
    snprintf(s->lease, sizeof s->lease, "%.3f", set->lease_time);
    int rc = connect_db(s);
    if (!rc) rc = migrate(s);
    if (rc) {
        pg_close(&s->base);
        return rc;
    }
    log_info("job store %s: shared, this daemon is %s", s->shown, s->owner);
    *out = &s->base;
    return 0;
}

static void pg_close(struct store *base)
{
    struct store_pg *s = PG(base);
    if (s->conn) {
        pg_commit(base);
        PQfinish(s->conn);
    }
    free(s->uri);
    free(s->shown);
    free(s->owner);
    free(s);
}

/* ---- Jobs ---- */

static void copy_val(const PGresult *r, int row, int col, char *dst, size_t cap)
{
    snprintf(dst, cap, "%s", PQgetvalue(r, row, col));
}

static long long val_int(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static double val_real(const PGresult *r, int row, int col)
{
    return strtod(PQgetvalue(r, row, col), NULL);
}

/* Bytes as lowercase hex into out[2 n + 1], for decode($n, 'hex'). */
static void hex_encode(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    out[2 * n] = 0;
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The bytes of encode(..., 'hex') into out (room for strlen(hex) / 2); their count, or -1
 * when hex is not hex. */
static long hex_decode(const char *hex, uint8_t *out)
{
    size_t n = strlen(hex);
    if (n % 2) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return (long)(n / 2);
}

static void read_job(const PGresult *r, int row, struct store_job *j)
{
    memset(j, 0, sizeof *j);
    struct proto_submit *p = &j->params;
    proto_submit_init(p);
    p->set = PROTO_SUBMIT_PARAMS;
    j->seq = val_int(r, row, 0);
    copy_val(r, row, 1, j->id, sizeof j->id);
    copy_val(r, row, 2, j->session, sizeof j->session);
    copy_val(r, row, 3, p->model, sizeof p->model);
    copy_val(r, row, 4, p->prompt, sizeof p->prompt);
    copy_val(r, row, 5, p->negative_prompt, sizeof p->negative_prompt);
    p->seed = (uint64_t)val_int(r, row, 6);
    p->steps = (uint32_t)val_int(r, row, 7);
    p->guidance = val_real(r, row, 8);
    p->width = (uint32_t)val_int(r, row, 9);
    p->height = (uint32_t)val_int(r, row, 10);
    p->max_seq = (uint32_t)val_int(r, row, 11);
    p->count = (uint32_t)val_int(r, row, 12);
    p->priority = (int)val_int(r, row, 13);
    const char *state = PQgetvalue(r, row, 14);
    for (int i = 0; i < PROTO_STATE_COUNT; i++)
        if (strcmp(state, proto_state_name(i)) == 0) j->state = (enum proto_state)i;
    j->created = val_real(r, row, 15);
    j->started = val_real(r, row, 16);
    j->finished = val_real(r, row, 17);
    j->step = (uint32_t)val_int(r, row, 18);
    j->steps = p->steps;
    j->images = (uint32_t)val_int(r, row, 19);
    const char *code = PQgetvalue(r, row, 20);
    if (*code) j->error.code = proto_errcode_parse(code, strlen(code));
    copy_val(r, row, 21, j->error.field, sizeof j->error.field);
    copy_val(r, row, 22, j->error.message, sizeof j->error.message);
    copy_val(r, row, 23, j->owner, sizeof j->owner);
    j->cancel_asked = PQgetvalue(r, row, 24)[0] == 't';
    const char *hex = PQgetvalue(r, row, 25);
    uint8_t *subjects = xmalloc(strlen(hex) / 2 + 1);
    long len = hex_decode(hex, subjects);
    if (len < 0) { /* not hex: 0xc1, the byte MessagePack never uses, makes it a bad row */
        subjects[0] = 0xc1;
        len = 1;
    }
    store_read_focus(p, j->id, subjects, (size_t)len, val_real(r, row, 26), PQgetvalue(r, row, 27));
    free(subjects);
}

/* fn for each row of r, a job; frees r. */
static int each_job(PGresult *r, void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    if (!r) return ERR_IO;
    struct store_job *j = xmalloc(sizeof *j);
    for (int i = 0; i < PQntuples(r); i++) {
        read_job(r, i, j);
        fn(ctx, j);
    }
    free(j);
    PQclear(r);
    return 0;
}

/* Inserted with the news for the daemons that serve the model. */
static int pg_insert(struct store *base, struct store_job *j)
{
    struct store_pg *s = PG(base);
    const struct proto_submit *p = &j->params;
    char news[PROTO_MAX_NAME + 8];
    snprintf(news, sizeof news, "Q %s", p->model);
    struct args a = {0};
    arg_text(&a, j->id);
    arg_text(&a, j->session);
    arg_text(&a, p->model);
    arg_text(&a, p->prompt);
    arg_text(&a, p->negative_prompt);
    arg_int(&a, (long long)p->seed);
    arg_int(&a, p->steps);
    arg_real(&a, p->guidance);
    arg_int(&a, p->width);
    arg_int(&a, p->height);
    arg_int(&a, p->max_seq);
    arg_int(&a, p->count);
    arg_int(&a, p->priority);
    arg_text(&a, proto_state_name(j->state));
    arg_real(&a, j->created);
    arg_text(&a, j->owner);
    arg_text(&a, news);
    msgpack_sbuffer subjects;
    msgpack_sbuffer_init(&subjects);
    int rc = proto_subjects_pack(&subjects, &p->subjects);
    if (rc) return rc;
    char *hex = xmalloc(2 * subjects.size + 1);
    hex_encode((const uint8_t *)subjects.data, subjects.size, hex);
    msgpack_sbuffer_destroy(&subjects);
    arg_text(&a, *hex ? hex : NULL);
    arg_real(&a, p->focus_lambda);
    arg_text(&a, proto_heuristic_name(p->focus_heuristic));
    PGresult *r = run_in_tx(s, "insert",
                            "WITH ins AS (INSERT INTO jobs (id, session, model, prompt,"
                            " negative_prompt, seed, steps, guidance, width, height, max_seq,"
                            " count, priority, state, created, owner, focus_subjects,"
                            " focus_lambda, focus_heuristic) VALUES ($1, $2, $3, $4, $5,"
                            " $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,"
                            " decode($18, 'hex'), $19, $20) RETURNING seq)"
                            " SELECT seq, pg_notify('" CHANNEL "', $17) FROM ins",
                            a.n, a.v);
    free(hex);
    if (!r) return ERR_IO;
    j->seq = val_int(r, 0, 0);
    PQclear(r);
    return 0;
}

/* Only while the lease is ours; a state other than running gives the lease up. */
static int pg_update(struct store *base, const struct store_job *j)
{
    struct store_pg *s = PG(base);
    struct args a = {0};
    arg_text(&a, proto_state_name(j->state));
    arg_real(&a, j->started);
    arg_real(&a, j->finished);
    arg_int(&a, j->step);
    arg_int(&a, j->images);
    arg_text(&a, j->error.code ? proto_errcode_name(j->error.code) : "");
    arg_text(&a, j->error.field);
    arg_text(&a, j->error.message);
    arg_text(&a, j->id);
    arg_text(&a, s->owner);
    PGresult *r = run_in_tx(s, "update",
                            "UPDATE jobs SET state=$1, started=$2, finished=$3, step=$4,"
                            " images=$5, error_code=$6, error_field=$7, error_message=$8,"
                            " lease_owner = CASE WHEN $1 = 'running' THEN lease_owner ELSE '' END,"
                            " lease_until = CASE WHEN $1 = 'running' THEN lease_until ELSE 0 END"
                            " WHERE id=$9 AND lease_owner=$10",
                            a.n, a.v);
    if (!r) return ERR_IO;
    bool ours = strcmp(PQcmdTuples(r), "0") != 0;
    PQclear(r);
    if (!ours)
        return err_set(ERR_MISSING,
                       "its lease passed to another daemon, whose run of it counts; this "
                       "daemon's %s is not recorded",
                       proto_state_name(j->state));
    return 0;
}

static int pg_add_image(struct store *base, const char *job, uint32_t index, const char *file,
                        const uint8_t sha256[32], uint64_t bytes)
{
    struct store_pg *s = PG(base);
    char hex[65];
    hex_encode(sha256, 32, hex);
    struct args a = {0};
    arg_text(&a, job);
    arg_int(&a, index);
    arg_text(&a, file);
    arg_text(&a, hex);
    arg_int(&a, (long long)bytes);
    return exec_in_tx(s, "add image",
                      "INSERT INTO images (job, idx, file, sha256, bytes)"
                      " VALUES ($1, $2, $3, decode($4, 'hex'), $5) ON CONFLICT (job, idx) DO UPDATE"
                      " SET file = EXCLUDED.file, sha256 = EXCLUDED.sha256, bytes = EXCLUDED.bytes",
                      a.n, a.v);
}

static int pg_get(struct store *base, const char *id, struct store_job *j)
{
    struct store_pg *s = PG(base);
    const char *v[] = {id};
    PGresult *r = run(s, "get", "SELECT " JOB_COLUMNS " FROM jobs WHERE id=$1", 1, v);
    if (!r) return ERR_IO;
    int rc = PQntuples(r) ? 0 : err_set(ERR_MISSING, "no job \"%s\"", id);
    if (!rc) read_job(r, 0, j);
    PQclear(r);
    return rc;
}

static int pg_image(struct store *base, const char *job, uint32_t index, struct store_image *img)
{
    struct store_pg *s = PG(base);
    struct args a = {0};
    arg_text(&a, job);
    arg_int(&a, index);
    PGresult *r = run(
        s, "image", "SELECT file, encode(sha256, 'hex'), bytes FROM images WHERE job=$1 AND idx=$2",
        a.n, a.v);
    if (!r) return ERR_IO;
    const char *hex = PQntuples(r) ? PQgetvalue(r, 0, 1) : "";
    int rc = strlen(hex) == 64 && hex_decode(hex, img->sha256) == 32
                 ? 0
                 : err_set(ERR_MISSING, "no image %u of job \"%s\"", index, job);
    if (!rc) {
        copy_val(r, 0, 0, img->path, sizeof img->path);
        img->bytes = (uint64_t)val_int(r, 0, 2);
    }
    PQclear(r);
    return rc;
}

static int pg_list(struct store *base, const struct store_filter *f, uint32_t limit,
                   void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    struct store_pg *s = PG(base);
    struct args a = {0};
    arg_text(&a, f->owner);
    arg_text(&a, f->has_state ? proto_state_name(f->state) : NULL);
    arg_int(&a, f->before_seq > 0 ? f->before_seq : INT64_MAX);
    arg_int(&a, limit);
    return each_job(run(s, "list",
                        "SELECT " JOB_COLUMNS " FROM jobs WHERE ($1::text IS NULL OR owner=$1)"
                        " AND ($2::text IS NULL OR state=$2) AND seq < $3"
                        " ORDER BY seq DESC LIMIT $4",
                        a.n, a.v),
                    fn, ctx);
}

/* The leases this daemon held before it stopped are given back at once: the claims then
 * take the jobs, here or elsewhere. */
static int pg_recover(struct store *base, void (*fn)(void *ctx, const struct store_job *j),
                      void *ctx)
{
    (void)fn;
    (void)ctx;
    struct store_pg *s = PG(base);
    const char *v[] = {s->owner};
    PGresult *r = run(s, "recover",
                      "UPDATE jobs SET state='queued', step=0, started=0, lease_owner='',"
                      " lease_until=0 WHERE lease_owner=$1 AND state IN ('queued', 'running')",
                      1, v);
    if (!r) return ERR_IO;
    long n = atol(PQcmdTuples(r));
    PQclear(r);
    if (n) log_info("job store: %ld interrupted job(s) queued again", n);
    return 0;
}

static int pg_expired(struct store *base, const char *id, bool *expired)
{
    struct store_pg *s = PG(base);
    const char *v[] = {id};
    PGresult *r = run(s, "expired", "SELECT 1 FROM expired WHERE id=$1", 1, v);
    if (!r) return ERR_IO;
    *expired = PQntuples(r) > 0;
    PQclear(r);
    return 0;
}

/* One number from a query. */
static int scalar(struct store_pg *s, const char *what, const char *sql, int n,
                  const char *const *params, uint64_t *out)
{
    PGresult *r = run(s, what, sql, n, params);
    if (!r) return ERR_IO;
    *out = PQntuples(r) ? strtoull(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    return 0;
}

static int pg_count(struct store *base, enum proto_state state, const char *owner, uint64_t *n)
{
    const char *v[] = {proto_state_name(state), owner};
    return scalar(PG(base), "count",
                  "SELECT COUNT(*) FROM jobs WHERE state=$1 AND ($2::text IS NULL OR owner=$2)", 2,
                  v, n);
}

/* ---- Retention's primitives ---- */

/* One daemon at a time: the others skip their pass while it holds the lock. */
static int pg_retention_begin(struct store *base, bool *ours)
{
    uint64_t got = 0;
    int rc = scalar(PG(base), "retention lock",
                    "SELECT pg_try_advisory_lock(" LOCK_RETENTION ")::int", 0, NULL, &got);
    *ours = got == 1;
    return rc;
}

static void pg_retention_end(struct store *base)
{
    exec(PG(base), "retention unlock", "SELECT pg_advisory_unlock(" LOCK_RETENTION ")", 0, NULL);
}

static int pg_finished_before(struct store *base, double cutoff, store_id *ids, int max, int *n)
{
    struct args a = {0};
    arg_real(&a, cutoff);
    arg_int(&a, max);
    PGresult *r = run(PG(base), "retention select",
                      "SELECT id FROM jobs WHERE finished > 0 AND finished < $1"
                      " AND state IN ('done', 'failed', 'canceled') ORDER BY finished LIMIT $2",
                      a.n, a.v);
    if (!r) return ERR_IO;
    for (*n = 0; *n < PQntuples(r) && *n < max; (*n)++)
        copy_val(r, *n, 0, ids[*n], sizeof ids[0]);
    PQclear(r);
    return 0;
}

static int pg_image_bytes(struct store *base, const char *job, uint64_t *bytes)
{
    const char *v[] = {job};
    return scalar(PG(base), "retention bytes",
                  "SELECT COALESCE(SUM(bytes), 0) FROM images WHERE $1::text IS NULL OR job=$1", 1,
                  v, bytes);
}

static int pg_image_files(struct store *base, const char *job,
                          void (*fn)(void *ctx, const char *file), void *ctx)
{
    const char *v[] = {job};
    PGresult *r = run(PG(base), "retention files", "SELECT file FROM images WHERE job=$1", 1, v);
    if (!r) return ERR_IO;
    for (int i = 0; i < PQntuples(r); i++)
        fn(ctx, PQgetvalue(r, i, 0));
    PQclear(r);
    return 0;
}

static int pg_retire(struct store *base, const store_id *ids, int n, double now)
{
    struct store_pg *s = PG(base);
    const char *list[STORE_RETENTION_BATCH];
    for (int i = 0; i < n && i < STORE_RETENTION_BATCH; i++)
        list[i] = ids[i];
    char *array = id_array(list, (size_t)n);
    struct args a = {0};
    arg_text(&a, array);
    arg_real(&a, now);
    int rc = begin(s);
    if (!rc)
        rc = exec(s, "retention",
                  "INSERT INTO expired (id, at) SELECT unnest($1::text[]), $2"
                  " ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
                  a.n, a.v);
    if (!rc) rc = exec(s, "retention", "DELETE FROM images WHERE job = ANY($1::text[])", 1, a.v);
    if (!rc) rc = exec(s, "retention", "DELETE FROM jobs WHERE id = ANY($1::text[])", 1, a.v);
    if (!rc) rc = pg_commit(base);
    if (rc) rollback(s);
    free(array);
    return rc;
}

static int pg_forget_expired(struct store *base, double before)
{
    struct args a = {0};
    arg_real(&a, before);
    return exec(PG(base), "tombstones",
                "DELETE FROM expired WHERE id IN (SELECT id FROM expired WHERE at < $1 LIMIT 1024)",
                a.n, a.v);
}

/* ---- Sharing ---- */

static int pg_claim(struct store *base, const char *model, uint32_t limit,
                    void (*fn)(void *ctx, const struct store_job *j), void *ctx)
{
    struct store_pg *s = PG(base);
    struct args a = {0};
    arg_text(&a, s->owner);
    arg_text(&a, s->lease);
    arg_text(&a, model);
    arg_int(&a, limit);
    return each_job(run_in_tx(s, "claim",
                              "UPDATE jobs SET lease_owner=$1, lease_until=" DB_NOW " + $2::float8,"
                              " state='queued', step=0, started=0 WHERE seq IN (SELECT seq FROM"
                              " jobs WHERE state IN ('queued', 'running') AND model=$3 AND"
                              " (lease_owner='' OR lease_until < " DB_NOW ")"
                              " ORDER BY priority DESC, seq LIMIT $4 FOR UPDATE SKIP LOCKED)"
                              " RETURNING " JOB_COLUMNS,
                              a.n, a.v),
                    fn, ctx);
}

static int pg_renew(struct store *base, const char *const *ids, size_t n,
                    void (*fn)(void *ctx, const char *id), void *ctx)
{
    struct store_pg *s = PG(base);
    char *array = id_array(ids, n);
    struct args a = {0};
    arg_text(&a, s->owner);
    arg_text(&a, s->lease);
    arg_text(&a, array);
    PGresult *r =
        run_in_tx(s, "renew",
                  "UPDATE jobs SET lease_until=" DB_NOW " + $2::float8"
                  " WHERE lease_owner=$1 AND id = ANY($3::text[]) RETURNING id, cancel_asked",
                  a.n, a.v);
    free(array);
    if (!r) return ERR_IO;
    if ((size_t)PQntuples(r) < n)
        log_warn("job store: %zu job(s) of this daemon's are held by another now",
                 n - (size_t)PQntuples(r));
    for (int i = 0; i < PQntuples(r); i++)
        if (PQgetvalue(r, i, 1)[0] == 't') fn(ctx, PQgetvalue(r, i, 0));
    PQclear(r);
    return 0;
}

static int notify(struct store_pg *s, const char *msg)
{
    const char *v[] = {msg};
    return exec_in_tx(s, "notify", "SELECT pg_notify('" CHANNEL "', $1)", 1, v);
}

static int pg_cancel(struct store *base, const char *id, const struct proto_error *err, double now,
                     bool *done)
{
    struct store_pg *s = PG(base);
    struct args a = {0};
    arg_text(&a, id);
    arg_real(&a, now);
    arg_text(&a, proto_errcode_name(err->code));
    arg_text(&a, err->message);
    PGresult *r = run_in_tx(s, "cancel",
                            "UPDATE jobs SET state='canceled', finished=$2, error_code=$3,"
                            " error_message=$4 WHERE id=$1 AND state='queued'"
                            " AND (lease_owner='' OR lease_until < " DB_NOW ")",
                            a.n, a.v);
    if (!r) return ERR_IO;
    *done = strcmp(PQcmdTuples(r), "0") != 0;
    PQclear(r);
    char msg[PROTO_MAX_NAME + 8];
    snprintf(msg, sizeof msg, "%c %s", *done ? 'E' : 'C', id);
    int rc = *done ? 0 : exec(s, "cancel", "UPDATE jobs SET cancel_asked=true WHERE id=$1", 1, a.v);
    return rc ? rc : notify(s, msg);
}

static int pg_publish(struct store *base, const struct store_event *e)
{
    char msg[PROTO_MAX_NAME + 96];
    switch (e->kind) {
    case STORE_EV_STARTED:
        snprintf(msg, sizeof msg, "S %s %u", e->job, e->steps);
        break;
    case STORE_EV_PROGRESS:
        snprintf(msg, sizeof msg, "P %s %u %u %.6f", e->job, e->step, e->steps, e->elapsed);
        break;
    case STORE_EV_ENDED:
        snprintf(msg, sizeof msg, "E %s", e->job);
        break;
    default:
        return err_set(ERR_INVALID, "job store: no such event to publish");
    }
    return notify(PG(base), msg);
}

static int pg_fd(const struct store *base)
{
    const struct store_pg *s = (const struct store_pg *)base;
    return s->conn ? PQsocket(s->conn) : -1;
}

/* A notification's payload back into an event; false for one this version does not know. */
static bool parse_event(const char *msg, struct store_event *e)
{
    memset(e, 0, sizeof *e);
    char kind = 0;
    int n = sscanf(msg, "%c %64s %u %u %lf", &kind, e->job, &e->step, &e->steps, &e->elapsed);
    switch (kind) {
    case 'Q':
        snprintf(e->model, sizeof e->model, "%s", e->job);
        e->job[0] = 0;
        e->kind = STORE_EV_QUEUED;
        return n >= 2;
    case 'S':
        e->steps = e->step;
        e->step = 0;
        e->kind = STORE_EV_STARTED;
        return n == 3;
    case 'P':
        e->kind = STORE_EV_PROGRESS;
        return n == 5;
    case 'E':
        e->kind = STORE_EV_ENDED;
        return n == 2;
    case 'C':
        e->kind = STORE_EV_CANCEL;
        return n == 2;
    default:
        return false;
    }
}

static void pg_poll(struct store *base, double now,
                    void (*fn)(void *ctx, const struct store_event *e), void *ctx)
{
    struct store_pg *s = PG(base);
    struct store_event e;
    if (!s->conn) {
        if (now - s->last_try < 1.0) return;
        s->last_try = now;
        if (connect_db(s) < 0) {
            log_debug("%s", err_msg());
            if (s->conn) disconnect(s);
            return;
        }
        log_info("job store %s: reconnected", s->shown);
        memset(&e, 0, sizeof e);
        e.kind = STORE_EV_RECONNECTED;
        fn(ctx, &e);
    }
    if (!PQconsumeInput(s->conn)) {
        if (PQstatus(s->conn) == CONNECTION_BAD) disconnect(s);
        return;
    }
    int self = PQbackendPID(s->conn);
    for (PGnotify *n; s->conn && (n = PQnotifies(s->conn));) {
        if (n->be_pid != self && parse_event(n->extra, &e)) fn(ctx, &e);
        PQfreemem(n);
    }
}

const struct store_ops store_pg_ops = {
    .name = "postgresql",
    .check_uri = pg_check_uri,
    .open = pg_open,
    .close = pg_close,
    .commit = pg_commit,
    .insert = pg_insert,
    .update = pg_update,
    .add_image = pg_add_image,
    .get = pg_get,
    .image = pg_image,
    .list = pg_list,
    .recover = pg_recover,
    .expired = pg_expired,
    .count = pg_count,
    .retention_begin = pg_retention_begin,
    .retention_end = pg_retention_end,
    .finished_before = pg_finished_before,
    .image_bytes = pg_image_bytes,
    .image_files = pg_image_files,
    .retire = pg_retire,
    .forget_expired = pg_forget_expired,
    .claim = pg_claim,
    .renew = pg_renew,
    .cancel = pg_cancel,
    .publish = pg_publish,
    .fd = pg_fd,
    .poll = pg_poll,
};
