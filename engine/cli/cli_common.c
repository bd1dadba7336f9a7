/* Option parsing, help text and device selection shared by the focus-run subcommands (see
 * cli_common.h). */
#include "engine/cli/cli_common.h"

#include "common/err.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int opt_count(const cli_cmd *cmd)
{
    int n = 0;
    while (cmd->opts[n].name)
        n++;
    return n;
}

static int opt_index(const cli_cmd *cmd, const char *name, size_t len)
{
    for (int i = 0; cmd->opts[i].name; i++)
        if (strlen(cmd->opts[i].name) == len && strncmp(cmd->opts[i].name, name, len) == 0)
            return i;
    return -1;
}

/* An option name a command asks for must be in its own table: anything else is a bug in the
 * command, caught the first time it runs. */
static int known_opt(const cli_args *a, const char *name)
{
    int i = opt_index(a->cmd, name, strlen(name));
    if (i < 0) {
        fprintf(stderr, "focus-run %s: internal error: no option --%s\n", a->cmd->name, name);
        abort();
    }
    return i;
}

void cli_print_help(const cli_cmd *cmd, FILE *f)
{
    fprintf(f, "usage: focus-run %s %s\n\n%s\n\noptions:\n", cmd->name, cmd->usage, cmd->summary);
    for (int i = 0; cmd->opts[i].name; i++) {
        char left[64], short_name[8] = "";
        if (cmd->opts[i].short_name)
            snprintf(short_name, sizeof short_name, "-%c, ", cmd->opts[i].short_name);
        snprintf(left, sizeof left, "%s--%s%s%s", short_name, cmd->opts[i].name,
                 cmd->opts[i].arg ? " " : "", cmd->opts[i].arg ? cmd->opts[i].arg : "");
        fprintf(f, "  %-22s %s\n", left, cmd->opts[i].help);
    }
    fprintf(f, "  %-22s %s\n", "--help", "print this help and exit");
    if (cmd->details) fprintf(f, "\n%s\n", cmd->details);
    fprintf(f, "\nexit status: 0 on success, 1 when the work fails, 2 for a bad command line.\n");
}

int cli_usage_error(const cli_args *a, const char *fmt, ...)
{
    fprintf(stderr, "focus-run %s: ", a->cmd->name);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see focus-run %s --help)\n", a->cmd->name);
    return CLI_EXIT_USAGE;
}

int cli_fail(const cli_args *a, const char *what)
{
    fprintf(stderr, "focus-run %s: %s: %s\n", a->cmd->name, what, err_msg());
    return CLI_EXIT_FAIL;
}

int cli_parse(const cli_cmd *cmd, int argc, char **argv, cli_args *out)
{
    memset(out, 0, sizeof *out);
    out->cmd = cmd;
    if (opt_count(cmd) > CLI_MAX_OPTS) {
        fprintf(stderr, "focus-run %s: internal error: too many options\n", cmd->name);
        abort();
    }
    bool only_pos = false;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (only_pos || s[0] != '-' || s[1] == 0) {
            if (out->npos == CLI_MAX_POS || out->npos == cmd->max_pos)
                return cli_usage_error(out, "unexpected argument '%s'", s);
            out->pos[out->npos++] = s;
            continue;
        }
        if (strcmp(s, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            cli_print_help(cmd, stdout);
            return CLI_DONE;
        }
        const char *name, *eq = NULL;
        int k = -1;
        if (s[1] != '-') { /* -x: a short name, its value in the next argument */
            for (int j = 0; s[2] == 0 && cmd->opts[j].name; j++)
                if (cmd->opts[j].short_name == s[1]) k = j;
            if (k < 0) return cli_usage_error(out, "unknown option '%s'", s);
            name = cmd->opts[k].name;
        } else {
            name = s + 2;
            eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            k = opt_index(cmd, name, len);
            if (k < 0) return cli_usage_error(out, "unknown option '--%.*s'", (int)len, name);
        }
        const cli_opt *o = &cmd->opts[k];
        if (o->repeat && out->val[k] && out->nall[k] == CLI_MAX_REPEAT)
            return cli_usage_error(out, "option --%s given more than %d times", o->name,
                                   CLI_MAX_REPEAT);
        if (!o->arg) {
            if (eq) return cli_usage_error(out, "option --%s takes no value", o->name);
            out->val[k] = "";
        } else if (eq) {
            out->val[k] = eq + 1;
        } else if (i + 1 < argc) {
            out->val[k] = argv[++i];
        } else {
            return cli_usage_error(out, "option --%s needs a value (%s)", o->name, o->arg);
        }
        if (o->repeat) out->all[k][out->nall[k]++] = out->val[k];
    }
    if (out->npos < cmd->min_pos) return cli_usage_error(out, "missing argument: %s", cmd->usage);
    return 0;
}

const char *cli_str(const cli_args *a, const char *name, const char *def)
{
    const char *v = a->val[known_opt(a, name)];
    return v ? v : def;
}

bool cli_flag(const cli_args *a, const char *name)
{
    return a->val[known_opt(a, name)] != NULL;
}

int cli_all(const cli_args *a, const char *name, const char *const **values)
{
    const int k = known_opt(a, name);
    *values = a->all[k];
    return a->nall[k];
}

const char *cli_required(const cli_args *a, const char *name)
{
    const char *v = a->val[known_opt(a, name)];
    if (!v || !*v) {
        cli_usage_error(a, "--%s is required", name);
        return NULL;
    }
    return v;
}

const char *cli_model(const cli_args *a)
{
    const char *v = cli_required(a, "model");
    if (!v) return NULL;
    /* NAME=MODEL as focusd takes it: the name (letters, digits, '_', '-', '.') is dropped. */
    size_t n = strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.");
    return n > 0 && v[n] == '=' && v[n + 1] ? v + n + 1 : v;
}

int cli_int(const cli_args *a, const char *name, int def, int min, int max, int *out)
{
    const char *v = a->val[known_opt(a, name)];
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || *end || errno)
        return cli_usage_error(a, "--%s: '%s' is not an integer", name, v);
    if (n < min || n > max)
        return cli_usage_error(a, "--%s: %ld is outside %d..%d", name, n, min, max);
    *out = (int)n;
    return 0;
}

int cli_open_device(const cli_args *a, kn_ctx **ctx)
{
    const char *d = cli_str(a, "device", "cpu");
    kn_device dev;
    int index = 0;
    if (strcmp(d, "cpu") == 0) {
        dev = KN_CPU;
    } else if (strncmp(d, "cuda", 4) == 0) {
        dev = KN_CUDA;
        if (d[4] == ':') {
            char *end;
            errno = 0;
            long n = strtol(d + 5, &end, 10);
            if (end == d + 5 || *end || errno || n < 0 || n > INT_MAX)
                return cli_usage_error(a, "--device: bad CUDA device index in '%s'", d);
            index = (int)n;
        } else if (d[4]) {
            return cli_usage_error(a, "--device: '%s' is not cpu, cuda or cuda:N", d);
        }
    } else {
        return cli_usage_error(a, "--device: '%s' is not cpu, cuda or cuda:N", d);
    }
    if (kn_ctx_create(dev, index, ctx) < 0) return cli_fail(a, "opening the device");
    return 0;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
