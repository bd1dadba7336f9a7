/* The client's connection to focusd: one ZeroMQ DEALER socket, the hello handshake that proves
 * the daemon is there, request/reply matched by request id under a deadline, and the wait for
 * pushed events. Every failure is recorded in the fc_ctx with its exit status (unreachable,
 * protocol error, the daemon's own error code). Knows nothing of commands or output. */
#ifndef FOCUS_CLIENT_CONN_H
#define FOCUS_CLIENT_CONN_H

#include "client/focus.h"

#include <signal.h>
#include <zmq.h>

/* Set by a SIGINT handler that wants waits to end with FC_EXIT_CANCELED, "interrupted". */
extern volatile sig_atomic_t fc_interrupted;

/* One received frame and what was decoded from it; the decoded objects point into both. */
struct fc_msg {
    zmq_msg_t frame;
    struct proto_incoming in;
    bool live;
};

void fc_msg_free(struct fc_msg *m);

/* Called for each event that arrives while fc_conn_call() waits for its reply. */
typedef void (*fc_event_fn)(const struct proto_event *ev, void *arg);

struct fc_conn {
    struct fc_ctx *ctx;
    void *zctx, *sock;
    uint64_t next_id;
    struct fc_msg hello_msg;        /* keeps hello's strings alive */
    struct proto_hello_reply hello; /* the daemon's answer to hello */
};

/* Connects to ctx->endpoint and says hello; fails with FC_EXIT_UNREACHABLE when the daemon
 * does not answer within ctx->timeout. */
int fc_conn_open(struct fc_conn *c, struct fc_ctx *ctx);
void fc_conn_close(struct fc_conn *c);

/* Sends req under a fresh request id and waits up to ctx->timeout for the reply with that id;
 * events arriving meanwhile go to on_event (NULL: dropped), replies to other ids are dropped.
 * A reply with ok false fails with the exit status of its error code, what naming the
 * request in the message. On success *reply holds the reply; free it with fc_msg_free(). */
int fc_conn_call(struct fc_conn *c, struct proto_request *req, const char *what,
                 struct fc_msg *reply, fc_event_fn on_event, void *arg);

/* Waits up to timeout_ms for the next event; *got false when none came. Replies arriving here
 * (to requests no longer waited for) are dropped. */
int fc_conn_next_event(struct fc_conn *c, int timeout_ms, struct fc_msg *ev, bool *got);

/* Decoding failures of a reply body, as a protocol error naming what was decoded. */
int fc_conn_bad_reply(struct fc_conn *c, const char *what);

/* Seconds on a monotonic clock. */
double fc_now(void);

#endif
