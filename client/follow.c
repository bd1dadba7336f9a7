/* The event loop that follows one job (see follow.h). */
#include "client/follow.h"

#include "client/output.h"
#include "client/progress.h"

#include <string.h>

/* Longest quiet period before the client asks for the status itself. */
#define FOLLOW_POLL_S 2.0

struct follow {
    struct fc_conn *c;
    const char *job;
    struct fc_progress progress;
    bool ended;
    enum proto_state state; /* once ended */
    uint32_t images;
    struct proto_error error;
};

static void on_event(const struct proto_event *ev, void *arg)
{
    struct follow *f = arg;
    if (f->ended || strcmp(ev->job, f->job) != 0) return;
    if (f->c->ctx->json) fc_out_json(fc_json_event(ev));
    fc_progress_event(&f->progress, ev);
    switch (ev->kind) {
    case PROTO_EV_DONE:
        f->ended = true;
        f->state = PROTO_STATE_DONE;
        f->images = ev->images;
        break;
    case PROTO_EV_FAILED:
        f->ended = true;
        f->state = PROTO_STATE_FAILED;
        f->error = ev->error;
        break;
    case PROTO_EV_CANCELED:
        f->ended = true;
        f->state = PROTO_STATE_CANCELED;
        break;
    default:
        break;
    }
}

static void on_status(struct follow *f, const struct proto_job_status *st)
{
    if (f->ended) return;
    fc_progress_status(&f->progress, st);
    if (st->state == PROTO_STATE_DONE || st->state == PROTO_STATE_FAILED ||
        st->state == PROTO_STATE_CANCELED) {
        f->ended = true;
        f->state = st->state;
        f->images = st->images;
        f->error = st->error;
    }
}

int fc_job_op(struct fc_conn *c, enum proto_op op, const char *job, struct proto_job_status *st,
              fc_event_fn on_ev, void *arg)
{
    struct proto_request req;
    proto_request_init(&req, op);
    snprintf(req.u.job.job, sizeof req.u.job.job, "%s", job);
    char what[PROTO_MAX_NAME + 16];
    snprintf(what, sizeof what, "%s %s", proto_op_name(op), job);
    struct fc_msg reply;
    int rc = fc_conn_call(c, &req, what, &reply, on_ev, arg);
    if (rc) return rc;
    struct proto_error perr;
    rc = proto_decode_job(&reply.in, st, &perr);
    fc_msg_free(&reply);
    snprintf(what, sizeof what, "%s reply", proto_op_name(op));
    return rc ? fc_conn_bad_reply(c, what) : 0;
}

static int outcome(struct follow *f, uint32_t *images)
{
    struct fc_ctx *ctx = f->c->ctx;
    switch (f->state) {
    case PROTO_STATE_DONE:
        *images = f->images;
        return 0;
    case PROTO_STATE_CANCELED:
        return fc_fail(ctx, FC_EXIT_CANCELED, "job %s was canceled", f->job);
    default:
        return fc_fail(ctx, FC_EXIT_FAILED, "job %s failed: %s%s%s [%s]", f->job, f->error.field,
                       f->error.field[0] ? ": " : "",
                       f->error.message[0] ? f->error.message : "(no message)",
                       proto_errcode_name(f->error.code));
    }
}

int fc_follow(struct fc_conn *c, const char *job, const struct proto_job_status *st,
              uint32_t *images)
{
    struct follow f = {.c = c, .job = job};
    fc_progress_init(&f.progress, c->ctx, job);
    if (st) on_status(&f, st);
    double poll_s = c->ctx->timeout < FOLLOW_POLL_S ? c->ctx->timeout : FOLLOW_POLL_S;
    int rc = 0;
    while (!f.ended && rc == 0) {
        struct fc_msg m;
        bool got;
        rc = fc_conn_next_event(c, (int)(poll_s * 1000), &m, &got);
        if (rc) break;
        if (got) {
            on_event(&m.in.event, &f);
            fc_msg_free(&m);
            continue;
        }
        struct proto_job_status now;
        rc = fc_job_op(c, PROTO_OP_JOB, job, &now, on_event, &f);
        if (rc == 0) on_status(&f, &now);
    }
    fc_progress_end(&f.progress);
    return rc ? rc : outcome(&f, images);
}
