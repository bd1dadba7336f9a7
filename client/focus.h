/* What every part of the `focus` command shares: its exit statuses, the invocation context
 * (global options and the exit status a failure chose), the command table entry and the
 * commands themselves. Option parsing is in cli_args.h, the daemon connection in conn.h. */
#ifndef FOCUS_CLIENT_FOCUS_H
#define FOCUS_CLIENT_FOCUS_H

#include "protocol/proto.h"

#include <stdbool.h>

#define FC_DEFAULT_SOCKET "ipc:///run/focusd/focusd.sock"
#define FC_DEFAULT_TIMEOUT 5.0

/* Exit statuses a script can rely on; focus(1) and `focus --help` list them. */
enum fc_exit {
    FC_EXIT_OK = 0,
    FC_EXIT_FAILED = 1,      /* the job failed, or local work (writing a file) did */
    FC_EXIT_USAGE = 2,       /* bad command line, or a parameter the daemon refused as bad */
    FC_EXIT_UNREACHABLE = 3, /* the daemon is not there or did not answer in time */
    FC_EXIT_CANCELED = 4,    /* the job was canceled */
    FC_EXIT_NOT_FOUND = 5,   /* no such job, image or model */
    FC_EXIT_REFUSED = 6,     /* busy, too large, forbidden, unavailable */
    FC_EXIT_PROTOCOL = 7,    /* the daemon's answer broke focusd-protocol(7) */
};

/* One invocation: the global options and the outcome. A failing function records the exit
 * status in exit_status through fc_fail() and returns a negative err.h code. */
struct fc_ctx {
    const char *cmd;      /* the command's name, for messages */
    const char *endpoint; /* -s/--socket, FOCUS_SOCKET or FC_DEFAULT_SOCKET */
    double timeout;       /* seconds the daemon has to answer */
    bool json;            /* one JSON object per line on stdout */
    bool quiet;           /* no progress display */
    int exit_status;
};

/* Records status (an fc_exit) and the message; returns a negative err.h code. */
int fc_fail(struct fc_ctx *ctx, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same with err_msg() appended after what and ": ". */
int fc_fail_err(struct fc_ctx *ctx, int status, const char *what);
/* An error reply of the daemon: the status follows its code (not_found: 5, busy: 6, ...). */
int fc_fail_daemon(struct fc_ctx *ctx, const struct proto_error *e, const char *what);
/* The exit status that a job's or reply's error code stands for. */
int fc_exit_for_code(enum proto_errcode code);

struct fc_args;

struct fc_cmd {
    const char *name;
    const char *usage;         /* after "focus NAME " */
    const char *summary;       /* one line for the command list */
    const char *details;       /* paragraph after the options in --help; may be NULL */
    const struct fc_opt *opts; /* the command's own options, ended by a NULL name */
    /* The names of the options whose every value counts (fc_arg_all), ended by NULL; NULL:
     * none. Of the others the last value given counts. */
    const char *const *repeat;
    int min_pos, max_pos;
    int (*run)(struct fc_ctx *ctx, const struct fc_args *a); /* 0 or a negative err.h code */
};

extern const struct fc_cmd fc_cmd_generate, fc_cmd_submit, fc_cmd_watch, fc_cmd_fetch,
    fc_cmd_status, fc_cmd_jobs, fc_cmd_cancel, fc_cmd_models, fc_cmd_stats, fc_cmd_ping;

#endif
