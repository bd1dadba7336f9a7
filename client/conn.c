/* The DEALER connection to focusd (see conn.h). A daemon that is down must never hang the
 * client: the socket has no linger, queues nothing before a connection exists (ZMQ_IMMEDIATE),
 * sends under a timeout, and every wait for an answer runs against a monotonic deadline. */
#include "client/conn.h"

#include "common/err.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

volatile sig_atomic_t fc_interrupted;

double fc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void fc_msg_free(struct fc_msg *m)
{
    if (!m->live) return;
    proto_incoming_free(&m->in);
    zmq_msg_close(&m->frame);
    m->live = false;
}

static int timeout_ms(double seconds)
{
    double ms = ceil(seconds * 1000.0);
    return ms < 0 ? 0 : ms > 2e9 ? 2000000000 : (int)ms;
}

static int unreachable(struct fc_conn *c, const char *why)
{
    return fc_fail(c->ctx, FC_EXIT_UNREACHABLE, "daemon not reachable at %s: %s", c->ctx->endpoint,
                   why);
}

static int timed_out(struct fc_conn *c, const char *what)
{
    if (!c->hello.server[0])
        return fc_fail(c->ctx, FC_EXIT_UNREACHABLE,
                       "daemon not reachable at %s: timed out after %g s", c->ctx->endpoint,
                       c->ctx->timeout);
    return fc_fail(c->ctx, FC_EXIT_UNREACHABLE, "daemon at %s did not answer '%s' within %g s",
                   c->ctx->endpoint, what, c->ctx->timeout);
}

int fc_conn_bad_reply(struct fc_conn *c, const char *what)
{
    return fc_fail_err(c->ctx, FC_EXIT_PROTOCOL, what);
}

/* Receives one message without waiting: *got false when none is queued. The protocol sends
 * every message as a single frame. */
static int recv_one(struct fc_conn *c, struct fc_msg *m, bool *got)
{
    *got = false;
    memset(m, 0, sizeof *m);
    zmq_msg_init(&m->frame);
    for (;;) {
        if (zmq_msg_recv(&m->frame, c->sock, ZMQ_DONTWAIT) >= 0) break;
        int e = errno;
        if (e == EINTR) continue;
        zmq_msg_close(&m->frame);
        return e == EAGAIN ? 0 : unreachable(c, zmq_strerror(e));
    }
    if (zmq_msg_more(&m->frame)) {
        zmq_msg_close(&m->frame);
        while (zmq_msg_init(&m->frame) == 0 && zmq_msg_recv(&m->frame, c->sock, 0) >= 0 &&
               zmq_msg_more(&m->frame))
            zmq_msg_close(&m->frame);
        zmq_msg_close(&m->frame);
        return fc_fail(c->ctx, FC_EXIT_PROTOCOL, "the daemon sent a multipart message");
    }
    struct proto_error perr;
    if (proto_parse_incoming(zmq_msg_data(&m->frame), zmq_msg_size(&m->frame), &m->in, &perr)) {
        zmq_msg_close(&m->frame);
        return fc_fail_err(c->ctx, FC_EXIT_PROTOCOL, "malformed message from the daemon");
    }
    m->live = true;
    *got = true;
    return 0;
}

/* Waits until a message is readable or the deadline passes; *ready tells which. */
static int wait_readable(struct fc_conn *c, double deadline, bool *ready)
{
    for (;;) {
        zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&item, 1, timeout_ms(deadline - fc_now()));
        if (n < 0 && errno == EINTR) {
            if (fc_interrupted) return fc_fail(c->ctx, FC_EXIT_CANCELED, "interrupted");
            continue;
        }
        if (n < 0) return unreachable(c, zmq_strerror(errno));
        *ready = n > 0;
        if (*ready || fc_now() >= deadline) return 0;
    }
}

int fc_conn_next_event(struct fc_conn *c, int wait_ms, struct fc_msg *ev, bool *got)
{
    double deadline = fc_now() + wait_ms / 1000.0;
    for (;;) {
        bool ready;
        int rc = wait_readable(c, deadline, &ready);
        if (rc) return rc;
        if (!ready) {
            *got = false;
            return 0;
        }
        rc = recv_one(c, ev, got);
        if (rc) return rc;
        if (*got && ev->in.is_event) return 0;
        fc_msg_free(ev);
    }
}

static int send_request(struct fc_conn *c, struct proto_request *req, const char *what)
{
    req->id.kind = PROTO_ID_UINT;
    req->id.u = ++c->next_id;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = proto_encode_request(&sb, req);
    if (rc) {
        msgpack_sbuffer_destroy(&sb);
        return fc_fail_err(c->ctx, FC_EXIT_USAGE, what);
    }
    int n = zmq_send(c->sock, sb.data, sb.size, 0);
    int e = errno;
    msgpack_sbuffer_destroy(&sb);
    if (n >= 0) return 0;
    if (e == EAGAIN) return timed_out(c, what);
    if (e == EINTR && fc_interrupted) return fc_fail(c->ctx, FC_EXIT_CANCELED, "interrupted");
    return unreachable(c, zmq_strerror(e));
}

/* Is m the reply to the request with this id? A reply without a usable id can only answer
 * the one request in flight: the daemon could not read its id. */
static bool answers(const struct fc_msg *m, uint64_t id)
{
    const struct proto_id *rid = &m->in.id;
    return (rid->kind == PROTO_ID_UINT && rid->u == id) ||
           (rid->kind == PROTO_ID_NONE && !m->in.ok);
}

int fc_conn_call(struct fc_conn *c, struct proto_request *req, const char *what,
                 struct fc_msg *reply, fc_event_fn on_event, void *arg)
{
    double deadline = fc_now() + c->ctx->timeout;
    int rc = send_request(c, req, what);
    if (rc) return rc;
    for (;;) {
        bool ready, got;
        rc = wait_readable(c, deadline, &ready);
        if (rc) return rc;
        if (!ready) return timed_out(c, what);
        rc = recv_one(c, reply, &got);
        if (rc) return rc;
        if (!got) continue;
        if (reply->in.is_event) {
            if (on_event) on_event(&reply->in.event, arg);
        } else if (answers(reply, req->id.u)) {
            if (reply->in.ok) return 0;
            rc = fc_fail_daemon(c->ctx, &reply->in.error, what);
            fc_msg_free(reply);
            return rc;
        }
        fc_msg_free(reply);
    }
}

/* A missing ipc socket file means no daemon: say so at once rather than after the timeout.
 * Abstract-namespace endpoints (ipc://@name) have no file to look at. */
static int check_ipc_path(struct fc_conn *c)
{
    const char *ep = c->ctx->endpoint;
    if (strncmp(ep, "ipc://", 6) != 0 || ep[6] == '@') return 0;
    struct stat st;
    if (stat(ep + 6, &st) == 0) return 0;
    char why[PROTO_MAX_TEXT];
    snprintf(why, sizeof why, "%s: %s", ep + 6, strerror(errno));
    return unreachable(c, why);
}

int fc_conn_open(struct fc_conn *c, struct fc_ctx *ctx)
{
    memset(c, 0, sizeof *c);
    c->ctx = ctx;
    int rc = check_ipc_path(c);
    if (rc) return rc;
    c->zctx = zmq_ctx_new();
    if (!c->zctx) return unreachable(c, zmq_strerror(errno));
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    if (!c->sock) return unreachable(c, zmq_strerror(errno));
    int zero = 0, one = 1, send_ms = timeout_ms(ctx->timeout);
    int64_t max_msg = PROTO_MAX_SERVER;
    if (zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &one, sizeof one) ||
        zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &send_ms, sizeof send_ms) ||
        zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg))
        return unreachable(c, zmq_strerror(errno));
    if (zmq_connect(c->sock, ctx->endpoint) != 0) {
        int e = errno;
        if (e == EINVAL || e == EPROTONOSUPPORT || e == ENOCOMPATPROTO)
            return fc_fail(ctx, FC_EXIT_USAGE, "invalid endpoint '%s': %s", ctx->endpoint,
                           zmq_strerror(e));
        return unreachable(c, zmq_strerror(e));
    }

    struct proto_request req;
    proto_request_init(&req, PROTO_OP_HELLO);
    snprintf(req.u.hello.client, sizeof req.u.hello.client, "focus/" FOCUS_VERSION);
    rc = fc_conn_call(c, &req, "hello", &c->hello_msg, NULL, NULL);
    if (rc) return rc;
    struct proto_error perr;
    if (proto_decode_hello(&c->hello_msg.in, &c->hello, &perr)) {
        memset(&c->hello, 0, sizeof c->hello);
        return fc_conn_bad_reply(c, "hello reply");
    }
    if (c->hello.protocol != PROTO_VERSION)
        return fc_fail(ctx, FC_EXIT_PROTOCOL, "the daemon speaks protocol %u, focus speaks %d",
                       c->hello.protocol, PROTO_VERSION);
    return 0;
}

void fc_conn_close(struct fc_conn *c)
{
    fc_msg_free(&c->hello_msg);
    if (c->sock) zmq_close(c->sock);
    if (c->zctx) zmq_ctx_term(c->zctx);
    c->sock = c->zctx = NULL;
}
