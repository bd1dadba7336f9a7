/* The one-request commands of `focus`: status, jobs, cancel, models, stats and ping. Each
 * connects, asks once, and prints the answer as text or, with --json, as JSON lines. */
#include "client/cli_args.h"
#include "client/follow.h"
#include "client/output.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

/* Sends a request with no fields of its own and keeps the reply in *reply. */
static int simple_call(struct fc_conn *c, enum proto_op op, struct fc_msg *reply)
{
    struct proto_request req;
    proto_request_init(&req, op);
    return fc_conn_call(c, &req, proto_op_name(op), reply, NULL, NULL);
}

static int get_stats(struct fc_conn *c, struct proto_stats *st)
{
    struct fc_msg reply;
    int rc = simple_call(c, PROTO_OP_STATS, &reply);
    if (rc) return rc;
    struct proto_error perr;
    rc = proto_decode_stats(&reply.in, st, &perr);
    fc_msg_free(&reply);
    return rc ? fc_conn_bad_reply(c, "stats reply") : 0;
}

static json_t *json_stats(const struct proto_stats *s)
{
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:o}", "queued", (json_int_t)s->queued, "running",
                     (json_int_t)s->running, "done", (json_int_t)s->done, "failed",
                     (json_int_t)s->failed, "canceled", (json_int_t)s->canceled, "sessions",
                     (json_int_t)s->sessions, "uptime", fc_json_seconds(s->uptime));
}

static void print_counts(const struct proto_stats *s)
{
    char up[24];
    fc_format_duration(s->uptime, up, sizeof up);
    printf("jobs:      %" PRIu64 " queued, %" PRIu64 " running, %" PRIu64 " done, %" PRIu64
           " failed, %" PRIu64 " canceled\nsessions:  %" PRIu64 "\nuptime:    %s\n",
           s->queued, s->running, s->done, s->failed, s->canceled, s->sessions, up);
}

/* `status` without a job: who the daemon is (from hello) and its job counts. */
static int daemon_summary(struct fc_conn *c)
{
    struct proto_stats st;
    int rc = get_stats(c, &st);
    if (rc) return rc;
    const struct proto_hello_reply *h = &c->hello;
    if (c->ctx->json) {
        json_t *models = json_array();
        for (size_t i = 0; i < h->n_models; i++)
            json_array_append_new(models, json_string(h->models[i]));
        fc_out_json(json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:I,s:o,s:o}", "endpoint", c->ctx->endpoint,
                              "server", h->server, "version", h->version, "protocol",
                              (json_int_t)h->protocol, "session", h->session, "default_model",
                              h->default_model, "max_queue", (json_int_t)h->max_queue, "models",
                              models, "stats", json_stats(&st)));
        return 0;
    }
    printf("daemon:    %s %s at %s (protocol %" PRIu32 ")\nsession:   %s\nmodels:   ", h->server,
           h->version, c->ctx->endpoint, h->protocol, h->session);
    for (size_t i = 0; i < h->n_models; i++)
        printf(" %s%s", h->models[i], strcmp(h->models[i], h->default_model) ? "" : " (default)");
    printf("\nqueue:     at most %" PRIu32 " jobs\n", h->max_queue);
    print_counts(&st);
    return 0;
}

static int run_status(struct fc_ctx *ctx, const struct fc_args *a)
{
    const char *job = NULL;
    int rc = a->npos ? fc_arg_job(ctx, a, &job) : 0;
    if (rc) return rc;
    struct fc_conn c;
    rc = fc_conn_open(&c, ctx);
    if (!rc && !job) rc = daemon_summary(&c);
    struct proto_job_status st;
    if (!rc && job) rc = fc_job_op(&c, PROTO_OP_JOB, job, &st, NULL, NULL);
    if (!rc && job) {
        if (ctx->json)
            fc_out_json(fc_json_status(&st));
        else
            fc_print_status(stdout, &st);
    }
    fc_conn_close(&c);
    return rc;
}

static int parse_state(struct fc_ctx *ctx, const char *s, enum proto_state *out)
{
    for (int i = 0; i < PROTO_STATE_COUNT; i++)
        if (strcmp(s, proto_state_name((enum proto_state)i)) == 0) {
            *out = (enum proto_state)i;
            return 0;
        }
    return fc_fail(ctx, FC_EXIT_USAGE,
                   "--state: '%s' is not one of queued, running, done, failed, canceled", s);
}

static void print_job_row(const struct proto_job_status *st, int job_width)
{
    char progress[24], created[32], size[24];
    snprintf(progress, sizeof progress, "%" PRIu32 "/%" PRIu32, st->step, st->steps);
    snprintf(size, sizeof size, "%" PRIu32 "x%" PRIu32, st->params.width, st->params.height);
    fc_format_time(st->created, created, sizeof created);
    printf("%-*s %-9s %-8s %-10s %-19s %.48s%s\n", job_width, st->job, proto_state_name(st->state),
           progress, size, created, st->params.prompt, strlen(st->params.prompt) > 48 ? "..." : "");
}

static int run_jobs(struct fc_ctx *ctx, const struct fc_args *a)
{
    struct proto_request req;
    proto_request_init(&req, PROTO_OP_JOBS);
    const char *state = fc_arg_str(a, "state");
    int rc = state ? parse_state(ctx, state, &req.u.jobs.state) : 0;
    req.u.jobs.has_state = state != NULL;
    if (!rc) {
        int got = fc_arg_u32(ctx, a, "limit", 1, PROTO_JOBS_LIMIT_MAX, &req.u.jobs.limit);
        rc = got < 0 ? got : 0;
    }
    if (rc) return rc;
    struct fc_conn c;
    rc = fc_conn_open(&c, ctx);
    struct fc_msg reply = {0};
    if (!rc) rc = fc_conn_call(&c, &req, "jobs", &reply, NULL, NULL);
    struct proto_job_status *jobs = NULL;
    size_t n = 0;
    struct proto_error perr;
    if (!rc && proto_decode_jobs(&reply.in, &jobs, &n, &perr))
        rc = fc_conn_bad_reply(&c, "jobs reply");
    int job_width = 3;
    for (size_t i = 0; !rc && i < n; i++)
        if ((int)strlen(jobs[i].job) > job_width) job_width = (int)strlen(jobs[i].job);
    if (!rc && !ctx->json && n > 0)
        printf("%-*s %-9s %-8s %-10s %-19s %s\n", job_width, "JOB", "STATE", "STEP", "SIZE",
               "CREATED", "PROMPT");
    for (size_t i = 0; !rc && i < n; i++) {
        if (ctx->json)
            fc_out_json(fc_json_status(&jobs[i]));
        else
            print_job_row(&jobs[i], job_width);
    }
    fc_msg_free(&reply);
    fc_conn_close(&c);
    return rc;
}

static int run_cancel(struct fc_ctx *ctx, const struct fc_args *a)
{
    const char *job;
    int rc = fc_arg_job(ctx, a, &job);
    if (rc) return rc;
    struct fc_conn c;
    rc = fc_conn_open(&c, ctx);
    struct proto_job_status st;
    if (!rc) rc = fc_job_op(&c, PROTO_OP_CANCEL, job, &st, NULL, NULL);
    if (!rc) {
        if (ctx->json)
            fc_out_json(fc_json_status(&st));
        else if (st.state == PROTO_STATE_RUNNING)
            printf("%s: running; stops at the next step\n", st.job);
        else
            printf("%s: %s\n", st.job, proto_state_name(st.state));
    }
    fc_conn_close(&c);
    return rc;
}

static int run_models(struct fc_ctx *ctx, const struct fc_args *a)
{
    (void)a;
    struct fc_conn c;
    int rc = fc_conn_open(&c, ctx);
    struct fc_msg reply = {0};
    if (!rc) rc = simple_call(&c, PROTO_OP_MODELS, &reply);
    struct proto_model_info *m = NULL;
    size_t n = 0;
    struct proto_error perr;
    if (!rc && proto_decode_models(&reply.in, &m, &n, &perr))
        rc = fc_conn_bad_reply(&c, "models reply");
    if (!rc && !ctx->json)
        printf("%-20s %-7s %-8s %-5s %-9s %s\n", "NAME", "LOADED", "DEVICE", "DTYPE", "MEMORY",
               "PATH");
    for (size_t i = 0; !rc && i < n; i++) {
        bool is_default = strcmp(m[i].name, c.hello.default_model) == 0;
        if (ctx->json) {
            fc_out_json(json_pack("{s:s,s:s,s:s,s:s,s:I,s:b,s:b}", "name", m[i].name, "path",
                                  m[i].path, "device", m[i].device, "dtype", m[i].dtype, "memory",
                                  (json_int_t)m[i].memory, "loaded", m[i].loaded, "default",
                                  is_default));
            continue;
        }
        char name[PROTO_MAX_NAME + 4], mem[24];
        snprintf(name, sizeof name, "%s%s", m[i].name, is_default ? " *" : "");
        fc_format_bytes(m[i].memory, mem, sizeof mem);
        printf("%-20s %-7s %-8s %-5s %-9s %s\n", name, m[i].loaded ? "yes" : "no", m[i].device,
               m[i].dtype, mem, m[i].path);
    }
    fc_msg_free(&reply);
    fc_conn_close(&c);
    return rc;
}

static int run_stats(struct fc_ctx *ctx, const struct fc_args *a)
{
    (void)a;
    struct fc_conn c;
    int rc = fc_conn_open(&c, ctx);
    struct proto_stats st;
    if (!rc) rc = get_stats(&c, &st);
    if (!rc) {
        if (ctx->json)
            fc_out_json(json_stats(&st));
        else
            print_counts(&st);
    }
    fc_conn_close(&c);
    return rc;
}

static int run_ping(struct fc_ctx *ctx, const struct fc_args *a)
{
    (void)a;
    struct fc_conn c;
    int rc = fc_conn_open(&c, ctx);
    double t0 = fc_now();
    struct fc_msg reply = {0};
    if (!rc) rc = simple_call(&c, PROTO_OP_PING, &reply);
    double ms = (fc_now() - t0) * 1000.0;
    if (!rc) {
        if (ctx->json)
            fc_out_json(json_pack("{s:s,s:s,s:s,s:f}", "endpoint", ctx->endpoint, "server",
                                  c.hello.server, "version", c.hello.version, "rtt_ms",
                                  round(ms * 1000.0) / 1000.0));
        else
            printf("pong from %s (%s %s): time=%.3f ms\n", ctx->endpoint, c.hello.server,
                   c.hello.version, ms);
    }
    fc_msg_free(&reply);
    fc_conn_close(&c);
    return rc;
}

static const struct fc_opt jobs_opts[] = {
    {"state", 0, "S", "only jobs in state S: queued, running, done, failed or canceled"},
    {"limit", 0, "N", "at most N jobs, newest first, 1..1000 (default 100)"},
    {NULL, 0, NULL, NULL},
};

const struct fc_cmd fc_cmd_status = {
    .name = "status",
    .usage = "[JOB]",
    .summary = "Show one job's status, or without JOB the daemon's summary.",
    .details = "With --json one object: the job's status, or the daemon's identity and job counts.",
    .max_pos = 1,
    .run = run_status,
};

const struct fc_cmd fc_cmd_jobs = {
    .name = "jobs",
    .usage = "[OPTIONS]",
    .summary = "List your jobs (this user's, or this CURVE key's).",
    .details = "With --json one status object per job.",
    .opts = jobs_opts,
    .run = run_jobs,
};

const struct fc_cmd fc_cmd_cancel = {
    .name = "cancel",
    .usage = "JOB",
    .summary = "Cancel a job; a running job stops at its next step.",
    .details = "Prints the job's state after the request; with --json its status object.",
    .min_pos = 1,
    .max_pos = 1,
    .run = run_cancel,
};

const struct fc_cmd fc_cmd_models = {
    .name = "models",
    .usage = "",
    .summary = "List the daemon's models (* marks the default).",
    .run = run_models,
};

const struct fc_cmd fc_cmd_stats = {
    .name = "stats",
    .usage = "",
    .summary = "Show the daemon's job counts, sessions and uptime.",
    .run = run_stats,
};

const struct fc_cmd fc_cmd_ping = {
    .name = "ping",
    .usage = "",
    .summary = "Check that the daemon answers and print the round-trip time.",
    .details = "The time is that of one ping request after the hello handshake.",
    .run = run_ping,
};
