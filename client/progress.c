/* The progress display of `focus generate` and `focus watch` (see progress.h). The rate is
 * the daemon's: steps done over seconds since the job started, so that it means the same
 * whether the client has watched from the start or joined late. Plain step lines come at most
 * once a second (and at the last step), so that a log of a long job stays readable. */
#include "client/progress.h"

#include "client/conn.h"
#include "client/output.h"

#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define PLAIN_INTERVAL_S 1.0

void fc_progress_init(struct fc_progress *p, const struct fc_ctx *ctx, const char *job)
{
    memset(p, 0, sizeof *p);
    p->f = stderr;
    p->on = !ctx->quiet && !ctx->json;
    p->tty = isatty(fileno(stderr));
    snprintf(p->job, sizeof p->job, "%s", job);
}

static int term_columns(void)
{
    struct winsize ws;
    if (ioctl(fileno(stderr), TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20) return ws.ws_col;
    return 80;
}

/* Shows text: on a terminal it replaces the line drawn before (padding over what was longer);
 * elsewhere it is printed as a line of its own unless it repeats the last one. */
static void show(struct fc_progress *p, const char *text)
{
    if (!p->on) return;
    if (!p->tty) {
        if (strcmp(text, p->last) == 0) return;
        snprintf(p->last, sizeof p->last, "%s", text);
        fprintf(p->f, "%s\n", text);
        fflush(p->f);
        return;
    }
    size_t len = strlen(text);
    fprintf(p->f, "\r%s", text);
    if (p->drawn > len) fprintf(p->f, "%*s\r%s", (int)(p->drawn - len), "", text);
    fflush(p->f);
    p->drawn = len;
}

static void show_steps(struct fc_progress *p, uint32_t step, uint32_t steps, double elapsed,
                       double eta)
{
    char rate[32] = "", left[48] = "";
    if (step > 0 && elapsed > 0) snprintf(rate, sizeof rate, "%.2f it/s", step / elapsed);
    if (step < steps && eta > 0) {
        char d[24];
        fc_format_duration(eta, d, sizeof d);
        snprintf(left, sizeof left, "ETA %s", d);
    }
    char text[256];
    if (!p->tty) {
        double now = fc_now();
        if (step < steps && step > 0 && now - p->last_step_line < PLAIN_INTERVAL_S) return;
        p->last_step_line = now;
        snprintf(text, sizeof text, "%s: step %u/%u%s%s%s%s", p->job, step, steps,
                 rate[0] ? ", " : "", rate, left[0] ? ", " : "", left);
        show(p, text);
        return;
    }
    /* The bar's width depends on the terminal alone, so that it does not jump as the
     * figures after it change length. */
    char tail[128];
    snprintf(tail, sizeof tail, " %u/%u%s%s%s%s", step, steps, rate[0] ? "  " : "", rate,
             left[0] ? "  " : "", left);
    int width = term_columns() - (int)strlen(p->job) - 45;
    width = width < 10 ? 10 : width > 50 ? 50 : width;
    char bar[51];
    int full = steps ? (int)((uint64_t)step * (uint64_t)width / steps) : 0;
    for (int i = 0; i < width; i++)
        bar[i] = i < full ? '#' : '-';
    bar[width] = 0;
    snprintf(text, sizeof text, "%s [%s]%s", p->job, bar, tail);
    show(p, text);
}

void fc_progress_event(struct fc_progress *p, const struct proto_event *ev)
{
    char text[256];
    switch (ev->kind) {
    case PROTO_EV_QUEUED:
        snprintf(text, sizeof text, "%s: queued, %u ahead", p->job, ev->position);
        show(p, text);
        break;
    case PROTO_EV_STARTED:
        if (p->tty) {
            show_steps(p, 0, ev->steps, 0, 0);
        } else {
            snprintf(text, sizeof text, "%s: started, %u steps", p->job, ev->steps);
            show(p, text);
        }
        break;
    case PROTO_EV_PROGRESS:
        show_steps(p, ev->step, ev->steps, ev->elapsed, ev->eta);
        break;
    case PROTO_EV_DONE: {
        char d[24];
        fc_format_duration(ev->elapsed, d, sizeof d);
        fc_progress_end(p);
        snprintf(text, sizeof text, "%s: done, %u image%s in %s", p->job, ev->images,
                 ev->images == 1 ? "" : "s", d);
        show(p, text);
        fc_progress_end(p);
        break;
    }
    case PROTO_EV_FAILED:
    case PROTO_EV_CANCELED:
    case PROTO_EV_COUNT:
        fc_progress_end(p);
        break;
    }
}

void fc_progress_status(struct fc_progress *p, const struct proto_job_status *st)
{
    char text[256];
    switch (st->state) {
    case PROTO_STATE_QUEUED:
        snprintf(text, sizeof text, "%s: queued, %u ahead", p->job, st->position);
        show(p, text);
        break;
    case PROTO_STATE_RUNNING: {
        double elapsed = st->started > 0 ? (double)time(NULL) - st->started : 0;
        double eta = st->step > 0 && elapsed > 0 ? elapsed / st->step * (st->steps - st->step) : 0;
        show_steps(p, st->step, st->steps, elapsed, eta);
        break;
    }
    case PROTO_STATE_DONE:
    case PROTO_STATE_FAILED:
    case PROTO_STATE_CANCELED:
    case PROTO_STATE_COUNT:
        fc_progress_end(p);
        break;
    }
}

void fc_progress_end(struct fc_progress *p)
{
    if (p->on && p->tty && p->drawn) {
        fputc('\n', p->f);
        fflush(p->f);
    }
    p->drawn = 0;
}
