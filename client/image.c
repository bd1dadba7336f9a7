/* Image fetch and PNG file output of `focus` (see image.h). */
#include "client/image.h"

#include "client/output.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fc_image_path(struct fc_ctx *ctx, const char *file, const char *job, uint32_t index, char *out,
                  size_t n)
{
    char def[PROTO_MAX_NAME + 8];
    if (!file) {
        /* A job name is the daemon's word; keep it from naming a directory. */
        size_t j = 0;
        for (const char *s = job; *s && j < PROTO_MAX_NAME; s++)
            def[j++] = *s == '/' ? '_' : *s;
        snprintf(def + j, sizeof def - j, ".png");
        file = def[0] == '.' ? "image.png" : def;
    }
    int len;
    if (index == 0) {
        len = snprintf(out, n, "%s", file);
    } else {
        if (strcmp(file, "-") == 0)
            return fc_fail(ctx, FC_EXIT_USAGE, "only one image can go to standard output");
        /* "-index" goes before the extension of the file's own name, as focus-run names a
         * batch: out.png, out-1.png, out-2.png. */
        const char *slash = strrchr(file, '/'), *name = slash ? slash + 1 : file;
        const char *dot = strrchr(name, '.');
        if (!dot || dot == name) dot = name + strlen(name);
        len = snprintf(out, n, "%.*s-%" PRIu32 "%s", (int)(dot - file), file, index, dot);
    }
    if (len < 0 || (size_t)len >= n)
        return fc_fail(ctx, FC_EXIT_USAGE, "output file name too long: %s", file);
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes all n bytes to fd and closes it: 0, or the errno of the first failure. */
static int write_close(int fd, const uint8_t *data, size_t n)
{
    int e = write_all(fd, data, n) != 0 ? errno : 0;
    if (close(fd) != 0 && !e) e = errno;
    return e;
}

/* Writes the bytes to path through a temporary file beside it, so that a reader never sees
 * half an image and an old file is replaced only by a whole new one. Something that is not a
 * regular file (/dev/stdout, a FIFO) is written in place: a rename would replace it. */
static int write_file(struct fc_ctx *ctx, const char *path, const uint8_t *data, size_t n)
{
    if (strcmp(path, "-") == 0) {
        if (write_all(STDOUT_FILENO, data, n) != 0)
            return fc_fail(ctx, FC_EXIT_FAILED, "writing the image to standard output: %s",
                           strerror(errno));
        return 0;
    }
    struct stat st;
    bool special = stat(path, &st) == 0 && !S_ISREG(st.st_mode);
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.%ld.part", path, (long)getpid()) >= (int)sizeof tmp)
        return fc_fail(ctx, FC_EXIT_USAGE, "output file name too long: %s", path);
    const char *target = special ? path : tmp;
    int fd = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    int e = fd < 0 ? errno : write_close(fd, data, n);
    if (!special && !e && rename(tmp, path) != 0) e = errno;
    if (!special && e && fd >= 0) unlink(tmp);
    return e ? fc_fail(ctx, FC_EXIT_FAILED, "cannot write %s: %s", path, strerror(e)) : 0;
}

int fc_image_fetch(struct fc_conn *c, const char *job, uint32_t index, const char *path)
{
    struct fc_ctx *ctx = c->ctx;
    struct proto_request req;
    proto_request_init(&req, PROTO_OP_FETCH);
    snprintf(req.u.fetch.job, sizeof req.u.fetch.job, "%s", job);
    req.u.fetch.index = index;
    char what[PROTO_MAX_NAME + 40];
    snprintf(what, sizeof what, "fetch %s image %" PRIu32, job, index);
    struct fc_msg reply;
    int rc = fc_conn_call(c, &req, what, &reply, NULL, NULL);
    if (rc) return rc;
    struct proto_image img;
    struct proto_error perr;
    if (proto_decode_fetch(&reply.in, &img, &perr)) {
        rc = fc_conn_bad_reply(c, what);
    } else if (strcmp(img.job, job) != 0 || img.index != index) {
        rc = fc_fail(ctx, FC_EXIT_PROTOCOL, "%s: the daemon sent image %" PRIu32 " of job %s", what,
                     img.index, img.job);
    } else {
        rc = write_file(ctx, path, img.png, img.png_len);
    }
    if (rc == 0) {
        char hex[65];
        fc_format_hex(img.sha256, 32, hex);
        if (ctx->json)
            fc_out_json(json_pack("{s:s,s:I,s:s,s:I,s:s,s:I,s:I,s:o}", "job", job, "index",
                                  (json_int_t)index, "file", path, "bytes", (json_int_t)img.png_len,
                                  "sha256", hex, "width", (json_int_t)img.width, "height",
                                  (json_int_t)img.height, "seed", fc_json_u64(img.seed)));
        else if (strcmp(path, "-") != 0)
            printf("%s\n", path);
    }
    fc_msg_free(&reply);
    return rc;
}
