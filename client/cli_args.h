/* The command line of `focus`: each command's option table, parsed with getopt_long together
 * with the global options (which may stand before or after the command name), the --help text
 * printed from the same tables, and typed, range-checked access to the values. A bad command
 * line is reported through fc_fail() with FC_EXIT_USAGE. Nothing here talks to the daemon. */
#ifndef FOCUS_CLIENT_CLI_ARGS_H
#define FOCUS_CLIENT_CLI_ARGS_H

#include "client/focus.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define FC_MAX_OPTS 24
#define FC_MAX_POS 4
#define FC_MAX_REPEATS 16 /* values of all repeatable options together */

struct fc_opt {
    const char *name; /* long name without the dashes */
    char short_name;  /* 0: none */
    const char *arg;  /* placeholder of the value ("FILE", "N"); NULL for a flag */
    const char *help; /* one line, stating the default */
};

struct fc_args {
    const struct fc_cmd *cmd;
    const char *val[FC_MAX_OPTS]; /* by index in cmd->opts; NULL when absent, "" for a flag */
    const char *rep[FC_MAX_REPEATS]; /* the repeatable options' values in command-line order */
    int rep_opt[FC_MAX_REPEATS];     /* and the index of the option of each */
    int nrep;
    const char *pos[FC_MAX_POS];
    int npos;
};

/* Parses argv (argv[0] is the command's name) into ctx's global options and *out. Returns 0
 * to run the command, FC_HELP_SHOWN after printing --help to stdout, or a negative code with
 * FC_EXIT_USAGE recorded. */
#define FC_HELP_SHOWN 1
int fc_parse(struct fc_ctx *ctx, const struct fc_cmd *cmd, int argc, char **argv,
             struct fc_args *out);

/* Where the command name is in argv: the first argument that is neither a global option nor
 * the value of one; 0 when there is none. */
int fc_find_command(int argc, char **argv);

/* Fills ctx from the environment (FOCUS_SOCKET) and the built-in defaults. */
void fc_ctx_init(struct fc_ctx *ctx);

void fc_print_usage(FILE *f, const struct fc_cmd *const *cmds, size_t n);
void fc_print_help(FILE *f, const struct fc_cmd *cmd);

/* The value of option name (which must be in the command's table) or NULL when absent. */
const char *fc_arg_str(const struct fc_args *a, const char *name);
bool fc_arg_flag(const struct fc_args *a, const char *name);
/* The values of repeatable option name, in order, into out (room for FC_MAX_REPEATS); their
 * number. */
int fc_arg_all(const struct fc_args *a, const char *name, const char **out);
/* The JOB operand (the first): no job has a name longer than PROTO_MAX_NAME, so a longer one
 * fails at once with FC_EXIT_NOT_FOUND. */
int fc_arg_job(struct fc_ctx *ctx, const struct fc_args *a, const char **job);
/* Typed values in lo..hi: 0 when absent (*out untouched), 1 when set, or a negative code with
 * FC_EXIT_USAGE recorded when malformed or out of range. */
int fc_arg_u32(struct fc_ctx *ctx, const struct fc_args *a, const char *name, uint32_t lo,
               uint32_t hi, uint32_t *out);
int fc_arg_i32(struct fc_ctx *ctx, const struct fc_args *a, const char *name, int32_t lo,
               int32_t hi, int32_t *out);
int fc_arg_u64(struct fc_ctx *ctx, const struct fc_args *a, const char *name, uint64_t *out);
int fc_arg_double(struct fc_ctx *ctx, const struct fc_args *a, const char *name, double lo,
                  double hi, double *out);

#endif
