/* Command-line parsing and --help for `focus` (see cli_args.h). getopt_long does the parsing,
 * so options and operands mix freely, "--opt=value", short options and "--" work as usual. */
#include "client/cli_args.h"

#include "common/err.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const struct fc_opt global_opts[] = {
    {"socket", 's', "ENDPOINT",
     "the daemon's endpoint (default $FOCUS_SOCKET, else\n"
     "                             " FC_DEFAULT_SOCKET ")"},
    {"timeout", 0, "SECONDS", "how long the daemon has to answer (default 5)"},
    {"json", 0, NULL, "one JSON object per line on stdout"},
    {"quiet", 'q', NULL, "no progress display"},
    {"help", 'h', NULL, "print this help and exit"},
    {NULL, 0, NULL, NULL},
};
enum { G_SOCKET, G_TIMEOUT, G_JSON, G_QUIET, G_HELP, N_GLOBAL };

static const char exit_statuses[] =
    "exit status:\n"
    "  0  success\n"
    "  1  the job failed (or writing an output file did)\n"
    "  2  bad command line, or a parameter the daemon refused as invalid\n"
    "  3  the daemon is not reachable or did not answer within the timeout\n"
    "  4  the job was canceled\n"
    "  5  no such job, image or model\n"
    "  6  the daemon refused the request: queue full, job too large, forbidden, unavailable\n"
    "  7  protocol error: the daemon's answer could not be understood\n";

static int count_opts(const struct fc_opt *o)
{
    int n = 0;
    while (o && o[n].name)
        n++;
    return n;
}

void fc_ctx_init(struct fc_ctx *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    const char *env = getenv("FOCUS_SOCKET");
    ctx->endpoint = env && *env ? env : FC_DEFAULT_SOCKET;
    ctx->timeout = FC_DEFAULT_TIMEOUT;
}

int fc_find_command(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--") == 0) return i + 1 < argc ? i + 1 : 0;
        if (s[0] != '-' || s[1] == 0) return i;
        for (const struct fc_opt *o = global_opts; o->name; o++) {
            if (!o->arg) continue;
            bool takes_next = (s[1] == '-' && strcmp(s + 2, o->name) == 0) ||
                              (o->short_name && s[1] == o->short_name && s[2] == 0);
            if (takes_next) {
                i++;
                break;
            }
        }
    }
    return 0;
}

static void print_opts(FILE *f, const struct fc_opt *opts)
{
    for (const struct fc_opt *o = opts; o->name; o++) {
        char shrt[8] = "    ", left[48];
        if (o->short_name) snprintf(shrt, sizeof shrt, "-%c, ", o->short_name);
        snprintf(left, sizeof left, "%s--%s%s%s", shrt, o->name, o->arg ? " " : "",
                 o->arg ? o->arg : "");
        fprintf(f, "  %-26s %s\n", left, o->help);
    }
}

void fc_print_usage(FILE *f, const struct fc_cmd *const *cmds, size_t n)
{
    fprintf(f, "usage: focus [GLOBAL OPTIONS] COMMAND [OPTIONS] [ARGS]\n\n"
               "The client of focusd, the Stable Diffusion 3.5 image daemon.\n\ncommands:\n");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "  %-10s %s\n", cmds[i]->name, cmds[i]->summary);
    fprintf(f, "\nglobal options (before or after the command):\n");
    print_opts(f, global_opts);
    fprintf(f, "  %-26s %s\n", "    --version", "print the version and exit");
    fprintf(f, "\n'focus COMMAND --help' describes a command's options and defaults.\n\n%s",
            exit_statuses);
}

void fc_print_help(FILE *f, const struct fc_cmd *cmd)
{
    fprintf(f, "usage: focus %s %s\n\n%s\n", cmd->name, cmd->usage, cmd->summary);
    if (count_opts(cmd->opts) > 0) {
        fprintf(f, "\noptions:\n");
        print_opts(f, cmd->opts);
    }
    fprintf(f, "\nglobal options:\n");
    print_opts(f, global_opts);
    if (cmd->details) fprintf(f, "\n%s\n", cmd->details);
    fprintf(f, "\n%s", exit_statuses);
}

static int set_global(struct fc_ctx *ctx, int g, const char *val)
{
    switch (g) {
    case G_SOCKET:
        if (!*val) return fc_fail(ctx, FC_EXIT_USAGE, "--socket: empty endpoint");
        ctx->endpoint = val;
        return 0;
    case G_TIMEOUT: {
        char *end;
        errno = 0;
        double t = strtod(val, &end);
        if (end == val || *end || errno || !isfinite(t) || t <= 0 || t > 86400)
            return fc_fail(ctx, FC_EXIT_USAGE,
                           "--timeout: '%s' is not a number of seconds in (0, 86400]", val);
        ctx->timeout = t;
        return 0;
    }
    case G_JSON:
        ctx->json = true;
        return 0;
    case G_QUIET:
        ctx->quiet = true;
        return 0;
    }
    return 0;
}

static bool repeatable(const struct fc_cmd *cmd, const char *name)
{
    for (const char *const *r = cmd->repeat; r && *r; r++)
        if (strcmp(*r, name) == 0) return true;
    return false;
}

int fc_parse(struct fc_ctx *ctx, const struct fc_cmd *cmd, int argc, char **argv,
             struct fc_args *out)
{
    memset(out, 0, sizeof *out);
    out->cmd = cmd;
    int n_cmd = count_opts(cmd->opts);
    if (n_cmd > FC_MAX_OPTS) {
        fprintf(stderr, "focus %s: internal error: too many options\n", cmd->name);
        abort();
    }

    /* One table for getopt_long: the globals, then the command's own; val is the index
     * plus 256 so that it never collides with a short option's character. */
    struct option longs[N_GLOBAL + FC_MAX_OPTS + 1];
    char shorts[2 * (N_GLOBAL + FC_MAX_OPTS) + 2];
    size_t ns = 0;
    shorts[ns++] = ':';
    int n = 0;
    for (int pass = 0; pass < 2; pass++) {
        const struct fc_opt *tab = pass == 0 ? global_opts : cmd->opts;
        for (int i = 0; tab && tab[i].name; i++, n++) {
            longs[n] = (struct option){tab[i].name, tab[i].arg ? required_argument : no_argument,
                                       NULL, 256 + n};
            if (tab[i].short_name) {
                shorts[ns++] = tab[i].short_name;
                if (tab[i].arg) shorts[ns++] = ':';
            }
        }
    }
    longs[n] = (struct option){NULL, 0, NULL, 0};
    shorts[ns] = 0;

    optind = 0; /* glibc: start afresh */
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, shorts, longs, NULL);
        if (c == -1) break;
        if (c == '?' || c == ':') {
            /* getopt_long has stepped past the offending argument. */
            const char *bad = optind > 0 && optind <= argc ? argv[optind - 1] : "";
            if (c == ':') return fc_fail(ctx, FC_EXIT_USAGE, "option '%s' needs a value", bad);
            if (optopt && optopt < 256)
                return fc_fail(ctx, FC_EXIT_USAGE, "unknown option '-%c'", optopt);
            return fc_fail(ctx, FC_EXIT_USAGE, "unknown or ambiguous option '%s'", bad);
        }
        int k = c >= 256 ? c - 256 : -1;
        for (int i = 0; k < 0 && i < n; i++)
            if (i < N_GLOBAL ? global_opts[i].short_name == c
                             : cmd->opts[i - N_GLOBAL].short_name == c)
                k = i;
        if (k < 0) return fc_fail(ctx, FC_EXIT_USAGE, "unknown option '-%c'", c);
        if (k == G_HELP) {
            fc_print_help(stdout, cmd);
            return FC_HELP_SHOWN;
        }
        if (k < N_GLOBAL) {
            int rc = set_global(ctx, k, optarg ? optarg : "");
            if (rc) return rc;
        } else if (!repeatable(cmd, cmd->opts[k - N_GLOBAL].name)) {
            out->val[k - N_GLOBAL] = optarg ? optarg : "";
        } else if (out->nrep == FC_MAX_REPEATS) {
            return fc_fail(ctx, FC_EXIT_USAGE, "more than %d repeated options", FC_MAX_REPEATS);
        } else {
            out->rep_opt[out->nrep] = k - N_GLOBAL;
            out->rep[out->nrep++] = optarg;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (out->npos == cmd->max_pos || out->npos == FC_MAX_POS)
            return fc_fail(ctx, FC_EXIT_USAGE, "unexpected argument '%s'", argv[i]);
        out->pos[out->npos++] = argv[i];
    }
    if (out->npos < cmd->min_pos)
        return fc_fail(ctx, FC_EXIT_USAGE, "missing argument; usage: focus %s %s", cmd->name,
                       cmd->usage);
    return 0;
}

/* A name a command asks for must be in its own table: anything else is a bug in the
 * command, caught the first time it runs. */
static int opt_index(const struct fc_args *a, const char *name)
{
    for (int i = 0; a->cmd->opts && a->cmd->opts[i].name; i++)
        if (strcmp(a->cmd->opts[i].name, name) == 0) return i;
    fprintf(stderr, "focus %s: internal error: no option --%s\n", a->cmd->name, name);
    abort();
}

const char *fc_arg_str(const struct fc_args *a, const char *name)
{
    return a->val[opt_index(a, name)];
}

bool fc_arg_flag(const struct fc_args *a, const char *name)
{
    return fc_arg_str(a, name) != NULL;
}

int fc_arg_all(const struct fc_args *a, const char *name, const char **out)
{
    int k = opt_index(a, name), n = 0;
    for (int i = 0; i < a->nrep; i++)
        if (a->rep_opt[i] == k) out[n++] = a->rep[i];
    return n;
}

/* Parses a decimal integer into *v; false unless the whole string is one. */
static bool parse_int(const char *s, bool is_signed, long long *sv, unsigned long long *uv)
{
    char *end;
    errno = 0;
    if (is_signed) {
        *sv = strtoll(s, &end, 10);
    } else {
        if (strchr(s, '-')) return false;
        *uv = strtoull(s, &end, 10);
    }
    return end != s && *end == 0 && errno == 0;
}

static int range_error(struct fc_ctx *ctx, const char *name, const char *val, long long lo,
                       long long hi)
{
    return fc_fail(ctx, FC_EXIT_USAGE, "--%s: '%s' is not an integer in %lld..%lld", name, val, lo,
                   hi);
}

int fc_arg_u32(struct fc_ctx *ctx, const struct fc_args *a, const char *name, uint32_t lo,
               uint32_t hi, uint32_t *out)
{
    const char *s = fc_arg_str(a, name);
    if (!s) return 0;
    long long sv;
    unsigned long long v;
    if (!parse_int(s, false, &sv, &v) || v < lo || v > hi) return range_error(ctx, name, s, lo, hi);
    *out = (uint32_t)v;
    return 1;
}

int fc_arg_i32(struct fc_ctx *ctx, const struct fc_args *a, const char *name, int32_t lo,
               int32_t hi, int32_t *out)
{
    const char *s = fc_arg_str(a, name);
    if (!s) return 0;
    long long v;
    unsigned long long uv;
    if (!parse_int(s, true, &v, &uv) || v < lo || v > hi) return range_error(ctx, name, s, lo, hi);
    *out = (int32_t)v;
    return 1;
}

int fc_arg_u64(struct fc_ctx *ctx, const struct fc_args *a, const char *name, uint64_t *out)
{
    const char *s = fc_arg_str(a, name);
    if (!s) return 0;
    long long sv;
    unsigned long long v;
    if (!parse_int(s, false, &sv, &v))
        return fc_fail(ctx, FC_EXIT_USAGE, "--%s: '%s' is not an integer in 0..%llu", name, s,
                       (unsigned long long)UINT64_MAX);
    *out = v;
    return 1;
}

int fc_arg_double(struct fc_ctx *ctx, const struct fc_args *a, const char *name, double lo,
                  double hi, double *out)
{
    const char *s = fc_arg_str(a, name);
    if (!s) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi))
        return fc_fail(ctx, FC_EXIT_USAGE, "--%s: '%s' is not a number in %g..%g", name, s, lo, hi);
    *out = v;
    return 1;
}

int fc_arg_job(struct fc_ctx *ctx, const struct fc_args *a, const char **job)
{
    *job = a->pos[0];
    if (!*job || strlen(*job) > PROTO_MAX_NAME || !**job)
        return fc_fail(ctx, FC_EXIT_NOT_FOUND, "no job '%.64s%s'", *job ? *job : "",
                       *job && strlen(*job) > PROTO_MAX_NAME ? "..." : "");
    return 0;
}
