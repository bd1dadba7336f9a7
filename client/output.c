/* JSON and human renderings of the daemon's answers for `focus` (see output.h). The JSON keys
 * are the wire protocol's field names, so that a script reading `focus --json` and one
 * reading focusd-protocol(7) see the same vocabulary. */
#include "client/output.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void fc_out_json(json_t *obj)
{
    if (!obj) return;
    char *s = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER |
                                  JSON_REAL_PRECISION(15));
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(s);
    }
    json_decref(obj);
}

void fc_out_error(const struct fc_ctx *ctx, const char *message)
{
    fc_out_json(
        json_pack("{s:{s:i,s:s}}", "error", "status", ctx->exit_status, "message", message));
}

json_t *fc_json_seconds(double s)
{
    return json_real(round(s * 1000.0) / 1000.0);
}

json_t *fc_json_u64(uint64_t v)
{
    if (v <= INT64_MAX) return json_integer((json_int_t)v);
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return json_string(buf);
}

json_t *fc_json_params(const struct proto_submit *p)
{
    return json_pack("{s:s,s:s,s:s,s:o,s:I,s:f,s:I,s:I,s:I,s:I,s:I}", "model", p->model, "prompt",
                     p->prompt, "negative_prompt", p->negative_prompt, "seed", fc_json_u64(p->seed),
                     "steps", (json_int_t)p->steps, "guidance", p->guidance, "width",
                     (json_int_t)p->width, "height", (json_int_t)p->height, "max_seq",
                     (json_int_t)p->max_seq, "count", (json_int_t)p->count, "priority",
                     (json_int_t)p->priority);
}

static json_t *json_error(const struct proto_error *e)
{
    return json_pack("{s:s,s:s,s:s}", "code", proto_errcode_name(e->code), "field", e->field,
                     "message", e->message);
}

/* Times travel as Unix seconds; 0 means "not yet" and becomes null. */
static json_t *json_time(double t)
{
    return t > 0 ? fc_json_seconds(t) : json_null();
}

json_t *fc_json_status(const struct proto_job_status *st)
{
    json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:o,s:o,s:o,s:o}", "job", st->job, "state",
                          proto_state_name(st->state), "position", (json_int_t)st->position, "step",
                          (json_int_t)st->step, "steps", (json_int_t)st->steps, "images",
                          (json_int_t)st->images, "created", json_time(st->created), "started",
                          json_time(st->started), "finished", json_time(st->finished), "params",
                          fc_json_params(&st->params));
    if (o && (st->state == PROTO_STATE_FAILED || st->state == PROTO_STATE_CANCELED) &&
        st->error.code != PROTO_E_NONE)
        json_object_set_new(o, "error", json_error(&st->error));
    return o;
}

json_t *fc_json_event(const struct proto_event *ev)
{
    json_t *o = json_pack("{s:s,s:s}", "event", proto_event_name(ev->kind), "job", ev->job);
    if (!o) return NULL;
    switch (ev->kind) {
    case PROTO_EV_QUEUED:
        json_object_set_new(o, "position", json_integer(ev->position));
        break;
    case PROTO_EV_STARTED:
        json_object_set_new(o, "steps", json_integer(ev->steps));
        break;
    case PROTO_EV_PROGRESS:
        json_object_set_new(o, "step", json_integer(ev->step));
        json_object_set_new(o, "steps", json_integer(ev->steps));
        json_object_set_new(o, "elapsed", fc_json_seconds(ev->elapsed));
        json_object_set_new(o, "eta", fc_json_seconds(ev->eta));
        break;
    case PROTO_EV_DONE:
        json_object_set_new(o, "images", json_integer(ev->images));
        json_object_set_new(o, "elapsed", fc_json_seconds(ev->elapsed));
        break;
    case PROTO_EV_FAILED:
        json_object_set_new(o, "error", json_error(&ev->error));
        break;
    case PROTO_EV_CANCELED:
    case PROTO_EV_COUNT:
        break;
    }
    return o;
}

void fc_format_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = 0;
}

void fc_format_time(double unix_time, char *buf, size_t n)
{
    if (!(unix_time > 0)) {
        snprintf(buf, n, "-");
        return;
    }
    time_t t = (time_t)unix_time;
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(buf, n, "%.0f", unix_time);
}

void fc_format_duration(double seconds, char *buf, size_t n)
{
    if (!(seconds >= 0) || seconds > 1e9) {
        snprintf(buf, n, "?");
        return;
    }
    if (seconds < 60) {
        snprintf(buf, n, "%.1f s", seconds);
        return;
    }
    unsigned long s = (unsigned long)lround(seconds);
    if (s >= 3600)
        snprintf(buf, n, "%lu:%02lu:%02lu", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, n, "%lu:%02lu", s / 60, s % 60);
}

void fc_format_bytes(uint64_t bytes, char *buf, size_t n)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof units / sizeof *units) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, n, "%" PRIu64 " B", bytes);
    else
        snprintf(buf, n, v < 10 ? "%.1f %s" : "%.0f %s", v, units[u]);
}

void fc_print_status(FILE *f, const struct proto_job_status *st)
{
    const struct proto_submit *p = &st->params;
    char created[32], started[32], finished[32];
    fc_format_time(st->created, created, sizeof created);
    fc_format_time(st->started, started, sizeof started);
    fc_format_time(st->finished, finished, sizeof finished);
    fprintf(f, "job:       %s\nstate:     %s", st->job, proto_state_name(st->state));
    if (st->state == PROTO_STATE_QUEUED)
        fprintf(f, " (%u ahead)", st->position);
    else if (st->state == PROTO_STATE_RUNNING)
        fprintf(f, " (step %u/%u)", st->step, st->steps);
    fprintf(f, "\nmodel:     %s\nprompt:    %s\n", p->model, p->prompt);
    if (p->negative_prompt[0]) fprintf(f, "negative:  %s\n", p->negative_prompt);
    fprintf(f,
            "seed:      %" PRIu64 "\nsize:      %ux%u\nsteps:     %u\ncfg:       %g\n"
            "max-seq:   %u\ncount:     %u\npriority:  %d\nimages:    %u\ncreated:   %s\n"
            "started:   %s\nfinished:  %s\n",
            p->seed, p->width, p->height, p->steps, p->guidance, p->max_seq, p->count, p->priority,
            st->images, created, started, finished);
    if (st->error.code != PROTO_E_NONE)
        fprintf(f, "error:     %s%s%s [%s]\n", st->error.field, st->error.field[0] ? ": " : "",
                st->error.message, proto_errcode_name(st->error.code));
}
