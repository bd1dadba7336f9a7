/* Fetching a finished job's images and writing them as PNG files, for `focus fetch` and
 * `focus generate`. Naming, as focus-run generate names a batch: image 0 goes to FILE itself,
 * image i >= 1 to FILE with "-i" before its extension (out.png, out-1.png, out-2.png); FILE
 * "-" is standard output. Without a FILE the name is JOB.png. */
#ifndef FOCUS_CLIENT_IMAGE_H
#define FOCUS_CLIENT_IMAGE_H

#include "client/conn.h"

#include <stddef.h>

/* The file name of image index under the naming above; out has room for n bytes. */
int fc_image_path(struct fc_ctx *ctx, const char *file, const char *job, uint32_t index, char *out,
                  size_t n);

/* Fetches image index of job (the daemon's sha256 is checked against the bytes), writes it to
 * path atomically (a temporary file renamed into place) and reports it: the path on stdout,
 * or with --json {"job","index","file","bytes","sha256","width","height","seed"}. */
int fc_image_fetch(struct fc_conn *c, const char *job, uint32_t index, const char *path);

#endif
