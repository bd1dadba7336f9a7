/* focus: the command-line client of focusd. This file holds main (finding the command, running
 * it, reporting its failure and choosing the exit status) and the failure helpers of focus.h;
 * each command lives in a cmd_*.c file and is listed in the table below. */
#include "client/cli_args.h"
#include "client/output.h"

#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct fc_cmd *const commands[] = {
    &fc_cmd_generate, &fc_cmd_submit, &fc_cmd_watch,  &fc_cmd_fetch, &fc_cmd_status,
    &fc_cmd_jobs,     &fc_cmd_cancel, &fc_cmd_models, &fc_cmd_stats, &fc_cmd_ping,
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

int fc_exit_for_code(enum proto_errcode code)
{
    switch (code) {
    case PROTO_E_NONE:
        return FC_EXIT_OK;
    case PROTO_E_BAD_MESSAGE:
    case PROTO_E_UNSUPPORTED_VERSION:
    case PROTO_E_UNKNOWN_OP:
        return FC_EXIT_PROTOCOL;
    case PROTO_E_BAD_FIELD:
        return FC_EXIT_USAGE;
    case PROTO_E_NOT_FOUND:
    case PROTO_E_EXPIRED:
        return FC_EXIT_NOT_FOUND;
    case PROTO_E_BUSY:
    case PROTO_E_TOO_LARGE:
    case PROTO_E_FORBIDDEN:
    case PROTO_E_UNAVAILABLE:
        return FC_EXIT_REFUSED;
    case PROTO_E_CANCELED:
        return FC_EXIT_CANCELED;
    case PROTO_E_FAILED:
    case PROTO_E_INTERNAL:
    case PROTO_E_OUT_OF_MEMORY:
    case PROTO_E_COUNT:
        break;
    }
    return FC_EXIT_FAILED;
}

/* The err.h code that goes with an exit status, so that callers can still tell failures
 * apart by the return value alone. */
static int err_for_exit(int status)
{
    switch (status) {
    case FC_EXIT_USAGE:
        return ERR_INVALID;
    case FC_EXIT_UNREACHABLE:
        return ERR_IO;
    case FC_EXIT_CANCELED:
        return ERR_CANCELED;
    case FC_EXIT_NOT_FOUND:
        return ERR_MISSING;
    case FC_EXIT_REFUSED:
        return ERR_RANGE;
    case FC_EXIT_PROTOCOL:
        return ERR_FORMAT;
    }
    return ERR_IO;
}

int fc_fail(struct fc_ctx *ctx, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ctx->exit_status = status;
    return err_set(err_for_exit(status), "%s", msg);
}

int fc_fail_err(struct fc_ctx *ctx, int status, const char *what)
{
    ctx->exit_status = status;
    return err_prefix(err_for_exit(status), "%s: ", what);
}

int fc_fail_daemon(struct fc_ctx *ctx, const struct proto_error *e, const char *what)
{
    return fc_fail(ctx, fc_exit_for_code(e->code), "%s: %s%s%s [%s]", what, e->field,
                   e->field[0] ? ": " : "", e->message[0] ? e->message : "(no message)",
                   proto_errcode_name(e->code));
}

static const struct fc_cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i]->name, name) == 0) return commands[i];
    return NULL;
}

/* Only global options and no command: --help, --version, or a usage error. */
static int no_command(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("focus %s (focusd protocol %d)\n", FOCUS_VERSION, PROTO_VERSION);
            return FC_EXIT_OK;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fc_print_usage(stdout, commands, N_COMMANDS);
            return FC_EXIT_OK;
        }
    }
    fprintf(stderr, "focus: missing command (see 'focus --help')\n");
    return FC_EXIT_USAGE;
}

/* `focus help [COMMAND]`. */
static int help_command(int argc, char **argv, int k)
{
    const struct fc_cmd *cmd = k + 1 < argc ? find_cmd(argv[k + 1]) : NULL;
    if (cmd)
        fc_print_help(stdout, cmd);
    else
        fc_print_usage(stdout, commands, N_COMMANDS);
    return FC_EXIT_OK;
}

static int report(struct fc_ctx *ctx)
{
    if (ctx->exit_status == FC_EXIT_OK) ctx->exit_status = FC_EXIT_FAILED;
    fprintf(stderr, "focus %s: %s\n", ctx->cmd, err_msg());
    if (ctx->json) fc_out_error(ctx, err_msg());
    return ctx->exit_status;
}

int main(int argc, char **argv)
{
    struct fc_ctx ctx;
    fc_ctx_init(&ctx);
    int k = fc_find_command(argc, argv);
    if (k == 0) return no_command(argc, argv);
    if (strcmp(argv[k], "help") == 0) return help_command(argc, argv, k);
    const struct fc_cmd *cmd = find_cmd(argv[k]);
    if (!cmd) {
        fprintf(stderr, "focus: unknown command '%s' (see 'focus --help')\n", argv[k]);
        return FC_EXIT_USAGE;
    }
    ctx.cmd = cmd->name;

    /* The command's name first, then every other argument in order: global options may
     * stand on either side of it. */
    char *args[argc + 1];
    int n = 0;
    args[n++] = argv[k];
    for (int i = 1; i < argc; i++)
        if (i != k) args[n++] = argv[i];
    args[n] = NULL;

    struct fc_args a;
    int rc = fc_parse(&ctx, cmd, n, args, &a);
    if (rc == FC_HELP_SHOWN) return FC_EXIT_OK;
    if (rc == 0) rc = cmd->run(&ctx, &a);
    if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout)))
        rc = fc_fail(&ctx, FC_EXIT_FAILED, "error writing to standard output");
    if (rc < 0) {
        int status = report(&ctx);
        if (status == FC_EXIT_USAGE && !ctx.json)
            fprintf(stderr, "(see 'focus %s --help')\n", cmd->name);
        return status;
    }
    return ctx.exit_status;
}
