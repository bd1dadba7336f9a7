/* Shared plumbing of the focus-run subcommands: a table-driven option parser that also prints
 * each command's --help from the same table (so the help always lists every option and its
 * default), value parsing with range checks, device selection, and the exit codes.
 *
 * A subcommand is a cli_cmd: its name, usage line, summary, option table and run function.
 * focus_run.c holds the list of subcommands; adding one means writing a cmd_*.c that defines
 * a cli_cmd, declaring it below and listing it there. */
#ifndef FOCUS_ENGINE_CLI_CLI_COMMON_H
#define FOCUS_ENGINE_CLI_CLI_COMMON_H

#include "kernels/kn.h"

#include <stdbool.h>
#include <stdio.h>

/* Exit statuses of focus-run. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAIL = 1,  /* the work failed: a bad model directory, an I/O error, ... */
    CLI_EXIT_USAGE = 2, /* bad command line */
};

#define CLI_MAX_OPTS 40
#define CLI_MAX_POS 8
#define CLI_MAX_REPEAT 8 /* values of one repeatable option */

typedef struct cli_opt {
    const char *name; /* long name without the dashes */
    const char *arg;  /* placeholder of the value ("DIR", "N"); NULL for a flag */
    const char *help; /* one line, stating the default */
    char short_name;  /* 'o' for -o; 0 for none */
    bool repeat;      /* may be given up to CLI_MAX_REPEAT times; cli_all reads every value */
} cli_opt;

typedef struct cli_args cli_args;

typedef struct cli_cmd {
    const char *name;
    const char *usage;   /* after "focus-run NAME " */
    const char *summary; /* one line for the command list */
    const char *details; /* paragraph printed after the options in --help; may be NULL */
    const cli_opt *opts; /* terminated by an entry with name NULL; --help is implicit */
    int min_pos, max_pos;
    int (*run)(const cli_args *args);
} cli_cmd;

struct cli_args {
    const cli_cmd *cmd;
    const char *val[CLI_MAX_OPTS]; /* by option index; NULL when absent, "" for a given flag */
    const char *all[CLI_MAX_OPTS][CLI_MAX_REPEAT]; /* a repeatable option's values, in order */
    int nall[CLI_MAX_OPTS];
    const char *pos[CLI_MAX_POS];
    int npos;
};

extern const cli_cmd cli_cmd_tokenize;
extern const cli_cmd cli_cmd_encode;
extern const cli_cmd cli_cmd_generate;

/* Parses argv (argv[0] is the subcommand name). "--opt value", "--opt=value", "-o value" (for
 * options with a short name) and "--" are understood. Returns 0 to run the command, CLI_DONE after printing --help to stdout, or
 * CLI_EXIT_USAGE after printing a usage error to stderr. */
#define CLI_DONE (-1)
int cli_parse(const cli_cmd *cmd, int argc, char **argv, cli_args *out);
void cli_print_help(const cli_cmd *cmd, FILE *f);

/* The value of option `name` (which must be in the command's table), or def when absent. */
const char *cli_str(const cli_args *a, const char *name, const char *def);
bool cli_flag(const cli_args *a, const char *name);
/* The values of a repeatable option in command-line order; returns their count. */
int cli_all(const cli_args *a, const char *name, const char *const **values);
/* A required option: returns NULL after printing a usage error when absent. */
const char *cli_required(const cli_args *a, const char *name);
/* --model (required): a directory or ORG/NAME, optionally as NAME=MODEL the way focusd's
 * --model takes it (the name is then dropped). NULL after a usage error. */
const char *cli_model(const cli_args *a);
/* An integer option in [min, max]; prints a usage error and returns CLI_EXIT_USAGE when the
 * value is malformed or out of range. */
int cli_int(const cli_args *a, const char *name, int def, int min, int max, int *out);

/* Opens the compute context named by --device ("cpu", "cuda" or "cuda:N"). Returns a status. */
int cli_open_device(const cli_args *a, kn_ctx **ctx);

/* Prints "focus-run CMD: " + message to stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const cli_args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "focus-run CMD: " + what + ": " + err_msg() to stderr; returns CLI_EXIT_FAIL. */
int cli_fail(const cli_args *a, const char *what);

/* Seconds on a monotonic clock, for the timings the commands report. */
double cli_now(void);

#endif
