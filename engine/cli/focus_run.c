/* focus-run: runs pieces of the engine directly from a model directory, without the daemon,
 * for debugging, for comparing against the reference and for scripted checks. Each piece is a
 * subcommand (cmd_*.c) listed in the table below; this file only dispatches. */
#include "engine/cli/cli_common.h"

#include <stdio.h>
#include <string.h>

static const cli_cmd *const commands[] = {
    &cli_cmd_tokenize,
    &cli_cmd_encode,
    &cli_cmd_generate,
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: focus-run COMMAND [OPTIONS] [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
    fprintf(f, "\n'focus-run COMMAND --help' describes a command's options and defaults.\n"
               "exit status: 0 on success, 1 when the work fails, 2 for a bad command line.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], commands[i]->name) != 0) continue;
        cli_args args;
        int rc = cli_parse(commands[i], argc - 1, argv + 1, &args);
        if (rc == CLI_DONE) return CLI_EXIT_OK;
        if (rc != 0) return rc;
        return commands[i]->run(&args);
    }
    fprintf(stderr, "focus-run: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return CLI_EXIT_USAGE;
}
