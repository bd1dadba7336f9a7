/* The progress display of a watched job on stderr: on a terminal one line redrawn in place
 * with \r (a bar, steps, it/s, ETA); otherwise one plain line per change, for logs. Silent
 * with --quiet or --json (--json prints the events themselves). Fed from events and from
 * status replies alike. */
#ifndef FOCUS_CLIENT_PROGRESS_H
#define FOCUS_CLIENT_PROGRESS_H

#include "client/focus.h"

#include <stdio.h>

struct fc_progress {
    FILE *f;
    bool on;      /* show anything at all */
    bool tty;     /* redraw in place */
    size_t drawn; /* characters of the line now on the terminal */
    char job[PROTO_MAX_NAME + 1];
    char last[256];        /* the last plain line, so that repeats are not printed */
    double last_step_line; /* when the last plain step line was printed (fc_now()) */
};

void fc_progress_init(struct fc_progress *p, const struct fc_ctx *ctx, const char *job);
void fc_progress_event(struct fc_progress *p, const struct proto_event *ev);
void fc_progress_status(struct fc_progress *p, const struct proto_job_status *st);
/* Ends the redrawn line, so that what follows starts on a fresh one. */
void fc_progress_end(struct fc_progress *p);

#endif
