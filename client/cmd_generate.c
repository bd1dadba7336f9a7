/* The commands that start and follow jobs: `focus generate` (submit, follow with a progress
 * display, fetch the images), `focus submit` (print the job id and return at once) and
 * `focus watch` (follow a job submitted before). */
#include "client/cli_args.h"
#include "client/follow.h"
#include "client/image.h"
#include "client/output.h"

#include "common/err.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_size(struct fc_ctx *ctx, const char *s, uint32_t *w, uint32_t *h)
{
    char *end;
    unsigned long a = strtoul(s, &end, 10), b = a;
    if (end != s && (*end == 'x' || *end == 'X')) {
        const char *t = end + 1;
        b = strtoul(t, &end, 10);
        if (end == t) end = (char *)s;
    }
    bool ok = end != s && *end == 0 && s[0] >= '0' && s[0] <= '9';
    for (int i = 0; ok && i < 2; i++) {
        unsigned long v = i ? b : a;
        ok = v >= PROTO_SIZE_MIN && v <= PROTO_SIZE_MAX && v % PROTO_SIZE_STEP == 0;
    }
    if (!ok)
        return fc_fail(ctx, FC_EXIT_USAGE, "--size: '%s' is not WxH with multiples of %d in %d..%d",
                       s, PROTO_SIZE_STEP, PROTO_SIZE_MIN, PROTO_SIZE_MAX);
    *w = (uint32_t)a;
    *h = (uint32_t)b;
    return 0;
}

static int copy_text(struct fc_ctx *ctx, const char *what, const char *src, char *dst, size_t cap)
{
    size_t n = strlen(src);
    if (n > cap)
        return fc_fail(ctx, FC_EXIT_USAGE, "%s: %zu bytes exceed the limit of %zu", what, n, cap);
    memcpy(dst, src, n + 1);
    return 0;
}

/* One position list of --subject-tokens, "1,2,3" (spaces allowed), into pos[]. */
static int parse_list(struct fc_ctx *ctx, const char *text, const char *what, long max,
                      const char *s, int *n, long *pos)
{
    *n = 0;
    do {
        char *end;
        while (*s == ' ')
            s++;
        bool digit = *s >= '0' && *s <= '9';
        long v = digit ? strtol(s, &end, 10) : -1;
        if (!digit || v > max || *n == PROTO_SUBJECT_POSITIONS_MAX)
            return fc_fail(ctx, FC_EXIT_USAGE,
                           "--subject-tokens '%s': %s takes 1 to %d positions in 0..%ld, "
                           "separated by commas",
                           text, what, PROTO_SUBJECT_POSITIONS_MAX, max);
        pos[(*n)++] = v;
        s = end + strspn(end, " ");
    } while (*s == ',' && *++s);
    if (*s && *s != ';')
        return fc_fail(ctx, FC_EXIT_USAGE, "--subject-tokens '%s': unexpected '%s'", text, s);
    return 0;
}

/* --subject-tokens 't5=1,2;clip=2' (either part may be absent, not both) into e. */
static int parse_tokens(struct fc_ctx *ctx, const char *text, struct proto_subject *e)
{
    const char *s = text;
    while (*s) {
        while (*s == ' ' || *s == ';')
            s++;
        if (!*s) break;
        bool t5 = strncmp(s, "t5=", 3) == 0;
        if (!t5 && strncmp(s, "clip=", 5) != 0)
            return fc_fail(ctx, FC_EXIT_USAGE, "--subject-tokens '%s': expected 't5=1,2;clip=2'",
                           text);
        s += t5 ? 3 : 5;
        long pos[PROTO_SUBJECT_POSITIONS_MAX];
        int n, rc = parse_list(ctx, text, t5 ? "t5" : "clip",
                               t5 ? PROTO_T5_POSITION_MAX : PROTO_CLIP_POSITION_MAX, s, &n, pos);
        if (rc) return rc;
        for (int i = 0; i < n; i++)
            if (t5)
                e->t5[i] = (uint16_t)pos[i];
            else
                e->clip[i] = (uint8_t)pos[i];
        if (t5)
            e->n_t5 = (uint8_t)n;
        else
            e->n_clip = (uint8_t)n;
        s += strcspn(s, ";");
    }
    if (!e->n_t5 && !e->n_clip)
        return fc_fail(ctx, FC_EXIT_USAGE, "--subject-tokens '%s': no t5= or clip= positions",
                       text);
    return 0;
}

/* --subject and --subject-tokens into s->subjects, as focus-run's --focus-subject and
 * --focus-tokens: the phrases name the subjects; positions, when given, say which tokens they
 * are (then one per subject, the phrases their labels). */
static int focus_params(struct fc_ctx *ctx, const struct fc_args *a, struct proto_submit *s)
{
    const char *phrases[FC_MAX_REPEATS], *tokens[FC_MAX_REPEATS];
    int n_phrases = fc_arg_all(a, "subject", phrases),
        n_tokens = fc_arg_all(a, "subject-tokens", tokens);
    if (n_phrases && n_tokens && n_phrases != n_tokens)
        return fc_fail(ctx, FC_EXIT_USAGE,
                       "%d --subject and %d --subject-tokens: give one --subject-tokens per "
                       "subject",
                       n_phrases, n_tokens);
    int n = n_tokens ? n_tokens : n_phrases;
    if (n > PROTO_SUBJECTS_MAX)
        return fc_fail(ctx, FC_EXIT_USAGE, "%d subjects; the FOCUS control takes 1 to %d", n,
                       PROTO_SUBJECTS_MAX);
    int rc = 0;
    for (int k = 0; !rc && k < n; k++) {
        struct proto_subject *e = &s->subjects.s[k];
        if (k < n_phrases) {
            rc = copy_text(ctx, "--subject", phrases[k], e->phrase, PROTO_MAX_PHRASE);
            if (!rc && !*e->phrase) rc = fc_fail(ctx, FC_EXIT_USAGE, "--subject: empty phrase");
        }
        if (!rc && k < n_tokens) rc = parse_tokens(ctx, tokens[k], e);
    }
    if (rc) return rc;
    s->subjects.n = (uint32_t)n;
    if (n) s->set |= PROTO_SUBMIT_SUBJECTS;
    int got = fc_arg_double(ctx, a, "focus-lambda", PROTO_FOCUS_LAMBDA_MIN, PROTO_FOCUS_LAMBDA_MAX,
                            &s->focus_lambda);
    if (got < 0) return got;
    if (got) s->set |= PROTO_SUBMIT_FOCUS_LAMBDA;
    const char *h = fc_arg_str(a, "focus-heuristic");
    if (!h) return 0;
    for (int i = 0; i < PROTO_HEURISTIC_COUNT; i++)
        if (strcmp(h, proto_heuristic_name((enum proto_heuristic)i)) == 0) {
            s->focus_heuristic = (enum proto_heuristic)i;
            s->set |= PROTO_SUBMIT_FOCUS_HEURISTIC;
            return 0;
        }
    return fc_fail(ctx, FC_EXIT_USAGE,
                   "--focus-heuristic: '%s' is not focus, attend_and_excite or divide_and_bind", h);
}

/* Range errors are caught here, before any connection, so that a bad command line is exit
 * status 2 whether or not a daemon is running. */
static int submit_params(struct fc_ctx *ctx, const struct fc_args *a, struct proto_submit *s)
{
    proto_submit_init(s);
    int rc = copy_text(ctx, "prompt", a->pos[0], s->prompt, PROTO_MAX_PROMPT);
    const char *v;
    if (!rc && (v = fc_arg_str(a, "negative"))) {
        rc = copy_text(ctx, "--negative", v, s->negative_prompt, PROTO_MAX_PROMPT);
        s->set |= PROTO_SUBMIT_NEGATIVE;
    }
    if (!rc && (v = fc_arg_str(a, "model"))) {
        rc = copy_text(ctx, "--model", v, s->model, PROTO_MAX_NAME);
        s->set |= PROTO_SUBMIT_MODEL;
    }
    if (!rc && (v = fc_arg_str(a, "size"))) {
        rc = parse_size(ctx, v, &s->width, &s->height);
        s->set |= PROTO_SUBMIT_WIDTH | PROTO_SUBMIT_HEIGHT;
    }
    /* Each typed option: 1 when given (its bit is set), 0 when absent, negative when bad. */
    int got[6] = {0};
    if (!rc) {
        got[0] = fc_arg_u64(ctx, a, "seed", &s->seed);
        got[1] = fc_arg_u32(ctx, a, "steps", PROTO_STEPS_MIN, PROTO_STEPS_MAX, &s->steps);
        got[2] = fc_arg_double(ctx, a, "cfg", PROTO_GUIDANCE_MIN, PROTO_GUIDANCE_MAX, &s->guidance);
        got[3] = fc_arg_u32(ctx, a, "count", PROTO_COUNT_MIN, PROTO_COUNT_MAX, &s->count);
        got[4] =
            fc_arg_i32(ctx, a, "priority", PROTO_PRIORITY_MIN, PROTO_PRIORITY_MAX, &s->priority);
        got[5] = fc_arg_u32(ctx, a, "max-seq", PROTO_MAX_SEQ_MIN, PROTO_MAX_SEQ_MAX, &s->max_seq);
    }
    static const uint32_t bits[6] = {PROTO_SUBMIT_SEED,     PROTO_SUBMIT_STEPS,
                                     PROTO_SUBMIT_GUIDANCE, PROTO_SUBMIT_COUNT,
                                     PROTO_SUBMIT_PRIORITY, PROTO_SUBMIT_MAX_SEQ};
    for (int i = 0; i < 6; i++) {
        if (got[i] < 0 && !rc) rc = got[i];
        if (got[i] > 0) s->set |= bits[i];
    }
    return rc ? rc : focus_params(ctx, a, s);
}

static int submit_job(struct fc_conn *c, const struct proto_submit *s, bool watch,
                      char job[PROTO_MAX_NAME + 1])
{
    struct proto_request req;
    proto_request_init(&req, PROTO_OP_SUBMIT);
    req.u.submit = *s;
    req.u.submit.watch = watch;
    req.u.submit.set |= PROTO_SUBMIT_WATCH;
    struct fc_msg reply;
    int rc = fc_conn_call(c, &req, "submit", &reply, NULL, NULL);
    if (rc) return rc;
    struct proto_error perr;
    rc = proto_decode_submit(&reply.in, job, &perr);
    fc_msg_free(&reply);
    return rc ? fc_conn_bad_reply(c, "submit reply") : 0;
}

static void on_sigint(int sig)
{
    (void)sig;
    fc_interrupted = 1;
}

/* Ctrl-C during generate cancels the job rather than leaving it to run unwatched; a second
 * Ctrl-C (the handler resets itself) ends the client at once. A SIGINT ignored by whoever
 * started the client (a background job of a script) stays ignored. */
static bool catch_sigint(struct sigaction *old)
{
    if (sigaction(SIGINT, NULL, old) != 0 || old->sa_handler == SIG_IGN) return false;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGINT, &sa, NULL) == 0;
}

static int cancel_after_interrupt(struct fc_conn *c, const char *job)
{
    fc_interrupted = 0;
    struct proto_job_status st;
    if (fc_job_op(c, PROTO_OP_CANCEL, job, &st, NULL, NULL) != 0)
        return fc_fail_err(c->ctx, FC_EXIT_CANCELED, "interrupted; canceling the job failed");
    return fc_fail(c->ctx, FC_EXIT_CANCELED, "interrupted: canceled job %s", job);
}

static int run_generate(struct fc_ctx *ctx, const struct fc_args *a)
{
    struct proto_submit s;
    int rc = submit_params(ctx, a, &s);
    if (rc) return rc;
    const char *out = fc_arg_str(a, "output");
    if (out && strcmp(out, "-") == 0 && (s.count > 1 || ctx->json))
        return fc_fail(ctx, FC_EXIT_USAGE,
                       "-o -: standard output takes one image and no --json output");
    struct fc_conn c;
    rc = fc_conn_open(&c, ctx);
    char job[PROTO_MAX_NAME + 1];
    if (!rc) rc = submit_job(&c, &s, true, job);
    uint32_t images = 0;
    if (!rc) {
        if (ctx->json) fc_out_json(json_pack("{s:s,s:s}", "event", "submitted", "job", job));
        struct sigaction old;
        bool caught = catch_sigint(&old);
        rc = fc_follow(&c, job, NULL, &images);
        if (rc && fc_interrupted) rc = cancel_after_interrupt(&c, job);
        if (caught) sigaction(SIGINT, &old, NULL);
    }
    for (uint32_t i = 0; !rc && i < images; i++) {
        char path[4096];
        rc = fc_image_path(ctx, out, job, i, path, sizeof path);
        if (!rc) rc = fc_image_fetch(&c, job, i, path);
    }
    fc_conn_close(&c);
    return rc;
}

static int run_submit(struct fc_ctx *ctx, const struct fc_args *a)
{
    struct proto_submit s;
    int rc = submit_params(ctx, a, &s);
    if (rc) return rc;
    struct fc_conn c;
    rc = fc_conn_open(&c, ctx);
    char job[PROTO_MAX_NAME + 1];
    if (!rc) rc = submit_job(&c, &s, false, job);
    if (!rc) {
        if (ctx->json)
            fc_out_json(json_pack("{s:s}", "job", job));
        else
            printf("%s\n", job);
    }
    fc_conn_close(&c);
    return rc;
}

static int run_watch(struct fc_ctx *ctx, const struct fc_args *a)
{
    const char *job;
    int rc = fc_arg_job(ctx, a, &job);
    if (rc) return rc;
    struct fc_conn c;
    rc = fc_conn_open(&c, ctx);
    struct proto_job_status st;
    if (!rc) rc = fc_job_op(&c, PROTO_OP_WATCH, job, &st, NULL, NULL);
    uint32_t images;
    if (!rc) rc = fc_follow(&c, job, &st, &images);
    /* The end as a status object, whether or not events told of it; a failure to get it
     * leaves the outcome (and its message) as the job's end made it. */
    if (ctx->json &&
        (rc == 0 || ctx->exit_status == FC_EXIT_FAILED || ctx->exit_status == FC_EXIT_CANCELED)) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", err_msg());
        int status = ctx->exit_status;
        struct proto_job_status end;
        if (fc_job_op(&c, PROTO_OP_JOB, job, &end, NULL, NULL) == 0)
            fc_out_json(fc_json_status(&end));
        ctx->exit_status = status;
        err_set(rc, "%s", msg);
    }
    fc_conn_close(&c);
    return rc;
}

/* Submit's options are generate's but the first: the generation parameters that
 * submit_params() reads. */
static const struct fc_opt generate_opts[] = {
    {"output", 'o', "FILE", "write the image to FILE, '-' for stdout (default JOB.png)"},
    {"seed", 0, "N", "seed of the initial noise (default: the daemon picks one)"},
    {"steps", 0, "N", "denoising steps, 1..200 (default: the daemon's, 28)"},
    {"cfg", 0, "G", "classifier-free guidance scale, 0..30 (default: the daemon's, 4.5)"},
    {"size", 0, "WxH", "multiples of 16 in 64..2048; N means NxN (default 512x512)"},
    {"negative", 0, "TEXT", "negative prompt (default empty)"},
    {"model", 0, "NAME", "model to use (default: the daemon's default model)"},
    {"count", 0, "N", "images of the one prompt, 1..8 (default 1)"},
    {"priority", 0, "N", "priority among this client's jobs, -10..10 (default 0)"},
    {"max-seq", 0, "N", "T5 sequence length, 1..512 (default: the daemon's, 77)"},
    {"subject", 0, "PHRASE",
     "a subject for the FOCUS control, a phrase of the prompt (repeatable)"},
    {"subject-tokens", 0, "POS",
     "a subject's positions, 't5=1,2;clip=2' (repeatable, one per subject)"},
    {"focus-lambda", 0, "L", "strength of the FOCUS control, 0..100; 0 turns it off (default 1)"},
    {"focus-heuristic", 0, "NAME", "focus, attend_and_excite or divide_and_bind (default focus)"},
    {NULL, 0, NULL, NULL},
};
static const char *const generate_repeat[] = {"subject", "subject-tokens", NULL};

const struct fc_cmd fc_cmd_generate = {
    .name = "generate",
    .usage = "PROMPT [OPTIONS]",
    .summary = "Generate an image: submit the job, show its progress and write the PNG.",
    .details =
        "Progress goes to stderr: a bar redrawn in place on a terminal, plain lines (at most\n"
        "one a second) otherwise, none with --quiet. With --count N the first image goes to FILE,\n"
        "the others to FILE with -1, -2, ... before its extension (out.png, out-1.png, "
        "out-2.png).\n"
        "Each image's SHA-256 is checked against the daemon's. The file names go to stdout.\n"
        "Ctrl-C cancels the job.\n"
        "With --json: the events as they come, then one object per image written.\n"
        "With --subject (one per subject of the prompt, up to 8), the FOCUS control steers the\n"
        "subjects apart; --subject-tokens gives a subject's positions as the FOCUS datasets list\n"
        "them instead (T5 from 0 without BOS, CLIP with BOS at 0). A controlled step costs about\n"
        "2.5 plain ones, and it takes --count 1.",
    .opts = generate_opts,
    .repeat = generate_repeat,
    .min_pos = 1,
    .max_pos = 1,
    .run = run_generate,
};

const struct fc_cmd fc_cmd_submit = {
    .name = "submit",
    .usage = "PROMPT [OPTIONS]",
    .summary = "Submit a job and print its id without waiting for it.",
    .details = "Follow it with 'focus watch JOB' and get the images with 'focus fetch JOB'.",
    .opts = generate_opts + 1,
    .repeat = generate_repeat,
    .min_pos = 1,
    .max_pos = 1,
    .run = run_submit,
};

const struct fc_cmd fc_cmd_watch = {
    .name = "watch",
    .usage = "JOB",
    .summary = "Show a job's progress until it ends; the exit status says how it ended.",
    .details = "Exit status 0 when the job is done, 1 when it failed, 4 when it was canceled.\n"
               "With --json: the events as they come, then the job's final status.",
    .min_pos = 1,
    .max_pos = 1,
    .run = run_watch,
};
