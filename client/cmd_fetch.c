/* `focus fetch`: the images of a finished job, written as PNG files (named as image.h says). */
#include "client/cli_args.h"
#include "client/follow.h"
#include "client/image.h"

#include <inttypes.h>
#include <string.h>

/* Why a job has no images to fetch, as the failure its state stands for. */
static int not_done(struct fc_ctx *ctx, const struct proto_job_status *st)
{
    switch (st->state) {
    case PROTO_STATE_FAILED:
        return fc_fail(ctx, FC_EXIT_FAILED, "job %s failed: %s [%s]", st->job, st->error.message,
                       proto_errcode_name(st->error.code));
    case PROTO_STATE_CANCELED:
        return fc_fail(ctx, FC_EXIT_CANCELED, "job %s was canceled", st->job);
    default:
        return fc_fail(ctx, FC_EXIT_NOT_FOUND,
                       "job %s has no images yet: %s (step %" PRIu32 "/%" PRIu32
                       "); 'focus watch %s' waits for it",
                       st->job, proto_state_name(st->state), st->step, st->steps, st->job);
    }
}

static int run_fetch(struct fc_ctx *ctx, const struct fc_args *a)
{
    const char *job;
    int rc = fc_arg_job(ctx, a, &job);
    if (rc) return rc;
    const char *out = fc_arg_str(a, "output");
    uint32_t index = 0;
    int has_index = fc_arg_u32(ctx, a, "index", 0, PROTO_COUNT_MAX - 1, &index);
    if (has_index < 0) return has_index;
    if (out && strcmp(out, "-") == 0 && ctx->json)
        return fc_fail(ctx, FC_EXIT_USAGE, "-o -: standard output cannot take --json output too");

    struct fc_conn c;
    rc = fc_conn_open(&c, ctx);
    char path[4096];
    if (!rc && has_index) {
        if (out)
            snprintf(path, sizeof path, "%s", out);
        else
            rc = fc_image_path(ctx, NULL, job, index, path, sizeof path);
        if (!rc) rc = fc_image_fetch(&c, job, index, path);
    } else if (!rc) {
        struct proto_job_status st;
        rc = fc_job_op(&c, PROTO_OP_JOB, job, &st, NULL, NULL);
        if (!rc && st.state != PROTO_STATE_DONE) rc = not_done(ctx, &st);
        if (!rc && st.images > 1 && out && strcmp(out, "-") == 0)
            rc = fc_fail(ctx, FC_EXIT_USAGE,
                         "-o -: job %s has %" PRIu32 " images; choose one with --index", job,
                         st.images);
        for (uint32_t i = 0; !rc && i < st.images; i++) {
            rc = fc_image_path(ctx, out, job, i, path, sizeof path);
            if (!rc) rc = fc_image_fetch(&c, job, i, path);
        }
    }
    fc_conn_close(&c);
    return rc;
}

static const struct fc_opt fetch_opts[] = {
    {"output", 'o', "FILE", "output file, '-' for stdout (default JOB.png)"},
    {"index", 0, "N", "fetch only image N (0-based) of the job, to FILE (default: all images)"},
    {NULL, 0, NULL, NULL},
};

const struct fc_cmd fc_cmd_fetch = {
    .name = "fetch",
    .usage = "JOB [OPTIONS]",
    .summary = "Write the images of a finished job as PNG files, checking their SHA-256.",
    .details =
        "Without --index every image is written, named as generate names them: FILE for the\n"
        "first, then -1, -2, ... before its extension (out.png, out-1.png, out-2.png).\n"
        "With --index N only image N, to FILE (default JOB.png for image 0, JOB-N.png\n"
        "otherwise). The file names are printed on stdout;\n"
        "with --json one object per image: job, index, file, bytes, sha256, width, height, seed.",
    .opts = fetch_opts,
    .min_pos = 1,
    .max_pos = 1,
    .run = run_fetch,
};
