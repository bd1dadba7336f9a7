/* Following one job to its end, as `focus generate` and `focus watch` do: progress events
 * drive the display (and, with --json, are printed as they come); when the daemon is quiet for
 * a while the client asks for the job's status, which both proves the daemon is still there
 * and catches an end whose event was lost (a daemon restart). */
#ifndef FOCUS_CLIENT_FOLLOW_H
#define FOCUS_CLIENT_FOLLOW_H

#include "client/conn.h"

/* Follows job, whose events the daemon already sends to this connection, until it ends; st,
 * when not NULL, is a status already known (the watch reply). Returns 0 when the job is done,
 * with *images set; otherwise fails with FC_EXIT_FAILED or FC_EXIT_CANCELED saying why. */
int fc_follow(struct fc_conn *c, const char *job, const struct proto_job_status *st,
              uint32_t *images);

/* A request about one job whose reply is the job's status (op PROTO_OP_JOB, PROTO_OP_WATCH
 * or PROTO_OP_CANCEL), decoded into *st. */
int fc_job_op(struct fc_conn *c, enum proto_op op, const char *job, struct proto_job_status *st,
              fc_event_fn on_event, void *arg);

#endif
