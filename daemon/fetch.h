/* Image reads off the reactor thread: a fetch request's PNG file is read and its reply
 * encoded by one thread of its own, so that a slow or large file never holds up the other
 * sessions; the reactor polls fetch_fd() and queues each finished reply to its session (by
 * name: the session may have gone meanwhile). Not for deciding what may be fetched (ops.c
 * does, from the store) nor for sending (session.c). */
#ifndef FOCUS_DAEMON_FETCH_H
#define FOCUS_DAEMON_FETCH_H

#include "protocol/proto.h"

#include <stddef.h>
#include <stdint.h>

struct fetch_task {
    char session[PROTO_MAX_NAME + 1];
    struct proto_id id;
    struct proto_image img;        /* all but png */
    char path[PROTO_MAX_TEXT + 1]; /* the PNG file, img.png_len bytes long */
    /* Filled by the fetch thread: the encoded reply, an image or an error. */
    uint8_t *reply;
    size_t reply_len;
    struct fetch_task *next;
};

int fetch_start(void);
/* Readable while finished tasks wait. */
int fetch_fd(void);
/* Hands t (allocated with malloc) to the thread. */
void fetch_submit(struct fetch_task *t);
/* The finished tasks, oldest first; the caller frees each (fetch_task_free). */
struct fetch_task *fetch_take(void);
void fetch_task_free(struct fetch_task *t);
/* Stops the thread; tasks not yet read are freed. */
void fetch_stop(void);

#endif
