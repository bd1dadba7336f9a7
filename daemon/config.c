/* focusd.conf and the command line; see config.h. One table lists every top-level key with
 * its kind, so that the file, the command line and the documentation agree on one set. */
#include "daemon/config.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/log.h"
#include "daemon/store.h"
#include "engine/pipeline.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum key_kind {
    K_STR,
    K_STR_OFF,
    K_MODE,
    K_LIST,
    K_U32,
    K_SIZE,
    K_DURATION,
    K_DEVICE,
    K_PRECISION,
    K_TEXT_DEVICE,
    K_LEVEL,
    K_STORE
};

struct key_def {
    const char *name;
    enum key_kind kind;
    size_t off;
    size_t count_off; /* K_LIST: the size_t count beside the array */
    uint64_t lo, hi;  /* K_U32 */
};

#define OFF(f) offsetof(struct config, f)
static const struct key_def keys[] = {
    {"listen", K_STR, OFF(listen), 0, 0, 0},
    {"tcp", K_STR_OFF, OFF(tcp), 0, 0, 0},
    {"curve_secret_key_file", K_STR_OFF, OFF(curve_secret_key_file), 0, 0, 0},
    {"curve_authorized_keys", K_STR_OFF, OFF(curve_authorized_keys), 0, 0, 0},
    {"socket_mode", K_MODE, OFF(socket_mode), 0, 0, 0},
    {"socket_group", K_STR_OFF, OFF(socket_group), 0, 0, 0},
    {"allow_users", K_LIST, OFF(allow_users), OFF(n_allow_users), 0, 0},
    {"allow_groups", K_LIST, OFF(allow_groups), OFF(n_allow_groups), 0, 0},
    {"state_dir", K_STR, OFF(state_dir), 0, 0, 0},
    {"store", K_STORE, OFF(store), 0, 0, 0},
    {"lease_time", K_DURATION, OFF(lease_time), 0, 0, 0},
    {"device", K_DEVICE, OFF(device), 0, 0, 0},
    {"precision", K_PRECISION, OFF(precision), 0, 0, 0},
    {"text_device", K_TEXT_DEVICE, OFF(text_on_cpu), 0, 0, 0},
    {"default_model", K_STR_OFF, OFF(default_model), 0, 0, 0},
    {"max_queue", K_U32, OFF(max_queue), 0, 1, 1000000},
    {"max_jobs_per_peer", K_U32, OFF(max_jobs_per_peer), 0, 1, 1000000},
    {"max_sessions", K_U32, OFF(max_sessions), 0, 1, 1000000},
    {"max_sessions_per_peer", K_U32, OFF(max_sessions_per_peer), 0, 1, 1000000},
    {"batch_max", K_U32, OFF(batch_max), 0, 1, 64},
    {"max_job_pixels", K_SIZE, OFF(max_job_pixels), 0, 0, 0},
    {"memory_limit", K_SIZE, OFF(memory_limit), 0, 0, 0},
    {"retention_age", K_DURATION, OFF(retention_age), 0, 0, 0},
    {"retention_bytes", K_SIZE, OFF(retention_bytes), 0, 0, 0},
    {"retention_interval", K_DURATION, OFF(retention_interval), 0, 0, 0},
    {"client_buffer", K_SIZE, OFF(client_buffer), 0, 0, 0},
    {"client_backlog", K_U32, OFF(client_backlog), 0, 1, 10000000},
    {"session_timeout", K_DURATION, OFF(session_timeout), 0, 0, 0},
    {"log_level", K_LEVEL, OFF(log_level), 0, 0, 0},
};
#undef OFF

static void config_defaults(struct config *c)
{
    memset(c, 0, sizeof *c);
    c->listen = xstrdup("ipc:///run/focusd/focusd.sock");
    c->socket_mode = 0660;
    c->state_dir = xstrdup("/var/lib/focusd");
    c->store = xstrdup("sqlite");
    c->lease_time = 30.0;
    c->device = xstrdup("auto");
    c->precision = xstrdup("auto");
    c->max_queue = 1000;
    c->max_jobs_per_peer = 200;
    c->max_sessions = 4096;
    c->max_sessions_per_peer = 256;
    c->batch_max = 4;
    c->max_job_pixels = 4u * 1024u * 1024u;
    c->retention_age = 7 * 86400.0;
    c->retention_bytes = 10ull << 30;
    c->retention_interval = 300.0;
    c->client_buffer = 16u << 20;
    c->client_backlog = 100000;
    c->session_timeout = 600.0;
    c->log_level = LOG_INFO;
}

static void free_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void config_free(struct config *c)
{
    if (!c) return;
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        char *base = (char *)c + keys[i].off;
        if (keys[i].kind == K_STR || keys[i].kind == K_STR_OFF || keys[i].kind == K_DEVICE ||
            keys[i].kind == K_PRECISION || keys[i].kind == K_STORE)
            free(*(char **)base);
        else if (keys[i].kind == K_LIST)
            free_list(*(char ***)base, *(size_t *)((char *)c + keys[i].count_off));
    }
    for (size_t i = 0; i < c->n_models; i++) {
        free(c->models[i].path);
        free(c->models[i].device);
    }
    free(c->models);
    free(c);
}

/* ---- Value parsers: 0 or ERR_RANGE with the reason in *why ---- */

static int parse_u64(const char *v, uint64_t *out, const char **end)
{
    if (!isdigit((unsigned char)*v)) return ERR_RANGE;
    errno = 0;
    char *e;
    unsigned long long x = strtoull(v, &e, 10);
    if (errno) return ERR_RANGE;
    *out = x;
    *end = e;
    return 0;
}

/* "3600", "30s", "10m", "2h", "7d"; "0" and "off" mean none. */
static int parse_duration(const char *v, double *out)
{
    if (strcmp(v, "off") == 0) {
        *out = 0;
        return 0;
    }
    uint64_t x;
    const char *e;
    if (parse_u64(v, &x, &e)) return ERR_RANGE;
    double mul = 1;
    if (*e == 's')
        e++;
    else if (*e == 'm')
        mul = 60, e++;
    else if (*e == 'h')
        mul = 3600, e++;
    else if (*e == 'd')
        mul = 86400, e++;
    if (*e) return ERR_RANGE;
    *out = (double)x * mul;
    return 0;
}

/* "1048576", "512K", "16M", "10G", "1T" (powers of 1024); "0" and "off" mean none. */
static int parse_size(const char *v, uint64_t *out)
{
    if (strcmp(v, "off") == 0) {
        *out = 0;
        return 0;
    }
    uint64_t x;
    const char *e;
    if (parse_u64(v, &x, &e)) return ERR_RANGE;
    unsigned shift = 0;
    switch (*e) {
    case 'K':
        shift = 10;
        e++;
        break;
    case 'M':
        shift = 20;
        e++;
        break;
    case 'G':
        shift = 30;
        e++;
        break;
    case 'T':
        shift = 40;
        e++;
        break;
    default:
        break;
    }
    if (*e || (shift && x > (UINT64_MAX >> shift))) return ERR_RANGE;
    *out = x << shift;
    return 0;
}

static bool device_ok(const char *v)
{
    if (strcmp(v, "auto") == 0 || strcmp(v, "cpu") == 0 || strcmp(v, "cuda") == 0) return true;
    if (strncmp(v, "cuda:", 5) != 0 || !isdigit((unsigned char)v[5])) return false;
    for (const char *p = v + 5; *p; p++)
        if (!isdigit((unsigned char)*p)) return false;
    return strlen(v) < 9;
}

static bool precision_ok(const char *v)
{
    kn_dtype dt;
    return engine_precision_parse(v, KN_CPU, &dt) == 0;
}

static bool name_ok(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > CONFIG_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)v[i]) && !strchr("._-", v[i])) return false;
    return true;
}

/* Comma- or blank-separated words. */
static void parse_list(const char *v, char ***out, size_t *n)
{
    char *copy = xstrdup(v), *save = NULL;
    for (char *w = strtok_r(copy, ", \t", &save); w; w = strtok_r(NULL, ", \t", &save)) {
        *out = xrealloc(*out, (*n + 1) * sizeof **out);
        (*out)[(*n)++] = xstrdup(w);
    }
    free(copy);
}

/* where: "FILE:LINE" or "command line". */
static int set_key(struct config *c, const char *key, const char *v, const char *where)
{
    const struct key_def *k = NULL;
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (strcmp(keys[i].name, key) == 0) k = &keys[i];
    if (!k) return err_set(ERR_INVALID, "%s: unknown key \"%s\"", where, key);
    char *base = (char *)c + k->off;
    const char *why = NULL;
    switch (k->kind) {
    case K_STR:
    case K_STR_OFF:
    case K_DEVICE:
    case K_PRECISION:
    case K_STORE:
        if (!*v && k->kind != K_STR_OFF)
            why = "an empty value";
        else if (k->kind == K_STORE && store_check_uri(v) < 0) {
            /* Not echoed: a URI may hold a password. */
            char reason[512];
            snprintf(reason, sizeof reason, "%s", err_msg());
            return err_set(ERR_RANGE, "%s: key \"store\": %s", where, reason);
        } else if (k->kind == K_DEVICE && !device_ok(v))
            why = "not auto, cpu, cuda or cuda:N";
        else if (k->kind == K_PRECISION && !precision_ok(v))
            why = "not auto, fp32, bf16 or fp16";
        else {
            free(*(char **)base);
            bool off = k->kind == K_STR_OFF && (!*v || strcmp(v, "off") == 0);
            *(char **)base = off ? NULL : xstrdup(v);
        }
        break;
    case K_MODE: {
        char *e;
        errno = 0;
        long m = strtol(v, &e, 8);
        if (!*v || *e || errno || m < 0 || m > 0777)
            why = "not an octal mode 0..0777";
        else
            *(int *)base = (int)m;
        break;
    }
    case K_LIST: {
        size_t *n = (size_t *)((char *)c + k->count_off);
        free_list(*(char ***)base, *n);
        *(char ***)base = NULL;
        *n = 0;
        parse_list(v, (char ***)base, n);
        break;
    }
    case K_U32: {
        uint64_t x;
        const char *e;
        if (parse_u64(v, &x, &e) || *e || x < k->lo || x > k->hi)
            why = "not an integer in range";
        else
            *(uint32_t *)base = (uint32_t)x;
        break;
    }
    case K_SIZE:
        if (parse_size(v, (uint64_t *)base))
            why = "not a size (a number with an optional K, M, G or T suffix)";
        break;
    case K_DURATION:
        if (parse_duration(v, (double *)base))
            why = "not a duration (a number with an optional s, m, h or d suffix)";
        break;
    case K_TEXT_DEVICE:
        if (strcmp(v, "same") != 0 && strcmp(v, "cpu") != 0)
            why = "not same or cpu";
        else
            *(bool *)base = strcmp(v, "cpu") == 0;
        break;
    case K_LEVEL: {
        int l = log_level_parse(v);
        if (l < 0)
            why = "not err, warning, notice, info or debug";
        else
            *(int *)base = l;
        break;
    }
    }
    if (why) return err_set(ERR_RANGE, "%s: key \"%s\": \"%s\" is %s", where, key, v, why);
    return 0;
}

static struct config_model *model_section(struct config *c, const char *name)
{
    for (size_t i = 0; i < c->n_models; i++)
        if (strcmp(c->models[i].name, name) == 0) return &c->models[i];
    c->models = xrealloc(c->models, (c->n_models + 1) * sizeof *c->models);
    struct config_model *m = &c->models[c->n_models++];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    return m;
}

static int set_model_key(struct config_model *m, const char *key, const char *v, const char *where)
{
    char **dst;
    if (strcmp(key, "path") == 0)
        dst = &m->path;
    else if (strcmp(key, "device") == 0)
        dst = &m->device;
    else
        return err_set(ERR_INVALID, "%s: [model %s]: unknown key \"%s\" (path, device)", where,
                       m->name, key);
    if (!*v)
        return err_set(ERR_RANGE, "%s: [model %s]: key \"%s\": an empty value", where, m->name,
                       key);
    if (dst == &m->device && !device_ok(v))
        return err_set(ERR_RANGE,
                       "%s: [model %s]: key \"device\": \"%s\" is not auto, cpu, "
                       "cuda or cuda:N",
                       where, m->name, v);
    free(*dst);
    *dst = xstrdup(v);
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

static int parse_file(struct config *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return err_set(ERR_IO, "%s: %s", path, strerror(errno));
    char line[4096], where[1200];
    struct config_model *section = NULL;
    int rc = 0;
    for (unsigned lineno = 1; fgets(line, sizeof line, f); lineno++) {
        snprintf(where, sizeof where, "%s:%u", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            rc = err_set(ERR_FORMAT, "%s: line longer than %zu bytes", where, sizeof line - 2);
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#' || *s == ';') continue;
        if (*s == '[') {
            char *close = strchr(s, ']');
            char name[256];
            if (!close || close[1] || sscanf(s, "[model %255[^]]]", name) != 1 ||
                !name_ok(trim(name))) {
                rc = err_set(ERR_FORMAT,
                             "%s: expected a section \"[model NAME]\" (NAME: 1-%d "
                             "of A-Z a-z 0-9 . _ -), got \"%s\"",
                             where, CONFIG_NAME_MAX, s);
                break;
            }
            section = model_section(c, trim(name));
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = err_set(ERR_FORMAT, "%s: expected \"key = value\", got \"%s\"", where, s);
            break;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        rc = section ? set_model_key(section, key, val, where) : set_key(c, key, val, where);
        if (rc) break;
    }
    fclose(f);
    return rc;
}

static int apply_override(struct config *c, const char *key, const char *value)
{
    if (strcmp(key, "model") != 0) return set_key(c, key, value, "command line");
    const char *eq = strchr(value, '=');
    char name[CONFIG_NAME_MAX + 1];
    if (!eq || (size_t)(eq - value) > CONFIG_NAME_MAX ||
        (snprintf(name, sizeof name, "%.*s", (int)(eq - value), value), !name_ok(name)))
        return err_set(ERR_RANGE,
                       "command line: --model \"%s\": expected NAME=DIR or NAME=ORG/REPO", value);
    return set_model_key(model_section(c, name), "path", eq + 1, "command line");
}

int config_load(const struct config_overrides *ov, struct config **out)
{
    struct config *c = xmalloc(sizeof *c);
    config_defaults(c);
    int rc = ov->config_file ? parse_file(c, ov->config_file) : 0;
    for (size_t i = 0; !rc && i < ov->n; i++)
        rc = apply_override(c, ov->keys[i], ov->values[i]);
    const char *src = ov->config_file ? ov->config_file : "command line";
    for (size_t i = 0; !rc && i < c->n_models; i++)
        if (!c->models[i].path)
            rc = err_set(ERR_MISSING, "%s: [model %s]: key \"path\" is missing", src,
                         c->models[i].name);
    if (!rc && c->n_models == 0)
        rc = err_set(ERR_MISSING,
                     "%s: no model configured: add a [model NAME] section with a "
                     "path, or --model NAME=DIR",
                     src);
    if (!rc && c->default_model && !config_find_model(c, c->default_model))
        rc = err_set(ERR_MISSING, "%s: key \"default_model\": no model named \"%s\"", src,
                     c->default_model);
    if (!rc && strncmp(c->listen, "ipc://", 6) != 0)
        rc = err_set(ERR_RANGE, "%s: key \"listen\": \"%s\" is not an ipc:// endpoint", src,
                     c->listen);
    if (!rc && c->tcp && strncmp(c->tcp, "tcp://", 6) != 0)
        rc = err_set(ERR_RANGE, "%s: key \"tcp\": \"%s\" is not a tcp:// endpoint", src, c->tcp);
    if (!rc && c->tcp && (!c->curve_secret_key_file || !c->curve_authorized_keys))
        rc = err_set(ERR_MISSING,
                     "%s: key \"tcp\" needs curve_secret_key_file and "
                     "curve_authorized_keys: tcp is served with CURVE only",
                     src);
    if (!rc && c->lease_time < 2)
        rc = err_set(ERR_RANGE, "%s: key \"lease_time\": at least 2 seconds", src);
    if (!rc && !c->default_model) c->default_model = xstrdup(c->models[0].name);
    if (rc) {
        config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

const struct config_model *config_find_model(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->n_models; i++)
        if (strcmp(c->models[i].name, name) == 0) return &c->models[i];
    return NULL;
}

const char *config_model_device(const struct config *c, const struct config_model *m)
{
    return m->device ? m->device : c->device;
}

/* ---- Command line ---- */

static void usage(FILE *f)
{
    fprintf(f, "usage: focusd [options]\n"
               "  -c, --config FILE       read FILE (focusd.conf(5)); without it, defaults only\n"
               "  -m, --model NAME=DIR    serve the diffusers model directory DIR (or ORG/REPO in\n"
               "                          the Hugging Face cache) as NAME\n"
               "  -l, --listen ENDPOINT   ipc:// endpoint (default ipc:///run/focusd/focusd.sock)\n"
               "  -s, --state-dir DIR     job store and images (default /var/lib/focusd)\n"
               "  -d, --device DEV        auto, cpu, cuda or cuda:N\n"
               "      --store STORE       sqlite (default) or a postgresql:// URI shared by\n"
               "                          several daemons\n"
               "  -o, --set KEY=VALUE     any configuration key, as in the file\n"
               "  -h, --help              this text\n"
               "  -V, --version           the version\n"
               "Command-line settings win over the file and survive a reload (SIGHUP).\n");
}

static void add_override(struct config_overrides *ov, const char *key, const char *value)
{
    ov->keys = xrealloc(ov->keys, (ov->n + 1) * sizeof *ov->keys);
    ov->values = xrealloc(ov->values, (ov->n + 1) * sizeof *ov->values);
    ov->keys[ov->n] = xstrdup(key);
    ov->values[ov->n] = xstrdup(value);
    ov->n++;
}

int config_parse_args(int argc, char **argv, struct config_overrides *ov)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"model", required_argument, NULL, 'm'},
        {"listen", required_argument, NULL, 'l'},
        {"state-dir", required_argument, NULL, 's'},
        {"device", required_argument, NULL, 'd'},
        {"store", required_argument, NULL, 'S'},
        {"set", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    memset(ov, 0, sizeof *ov);
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":c:m:l:s:d:o:hV", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            free(ov->config_file);
            ov->config_file = xstrdup(optarg);
            break;
        case 'm':
            add_override(ov, "model", optarg);
            break;
        case 'l':
            add_override(ov, "listen", optarg);
            break;
        case 's':
            add_override(ov, "state_dir", optarg);
            break;
        case 'd':
            add_override(ov, "device", optarg);
            break;
        case 'S':
            add_override(ov, "store", optarg);
            break;
        case 'o': {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg)
                return err_set(ERR_INVALID, "command line: --set \"%s\": expected KEY=VALUE",
                               optarg);
            char key[64];
            snprintf(key, sizeof key, "%.*s", (int)(eq - optarg), optarg);
            add_override(ov, key, eq + 1);
            break;
        }
        case 'h':
            usage(stdout);
            return 1;
        case 'V':
            printf("focusd %s (protocol 1)\n", FOCUS_VERSION);
            return 1;
        case ':':
            return err_set(ERR_INVALID, "command line: %s needs an argument", argv[optind - 1]);
        default:
            usage(stderr);
            return err_set(ERR_INVALID, "command line: unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return err_set(ERR_INVALID, "command line: unexpected argument \"%s\"", argv[optind]);
    return 0;
}

void config_overrides_free(struct config_overrides *ov)
{
    free(ov->config_file);
    free_list(ov->keys, ov->n);
    free_list(ov->values, ov->n);
    memset(ov, 0, sizeof *ov);
}
