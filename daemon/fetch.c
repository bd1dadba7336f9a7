/* The fetch thread; see fetch.h. */
#include "daemon/fetch.h"

#include "common/err.h"
#include "daemon/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

struct queue {
    struct fetch_task *head, *tail;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static struct queue waiting, done;
static bool stopping, started;
static pthread_t thread;
static int done_fd = -1;

static void push(struct queue *q, struct fetch_task *t)
{
    t->next = NULL;
    if (q->tail)
        q->tail->next = t;
    else
        q->head = t;
    q->tail = t;
}

void fetch_task_free(struct fetch_task *t)
{
    if (!t) return;
    free(t->reply);
    free(t);
}

static void free_all(struct fetch_task *t)
{
    while (t) {
        struct fetch_task *next = t->next;
        fetch_task_free(t);
        t = next;
    }
}

/* The whole file, which must be expect bytes long. */
static int read_file(const char *path, size_t expect, uint8_t **out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || (uint64_t)st.st_size != expect) {
        int e = errno;
        if (fd >= 0) close(fd);
        return err_set(ERR_IO, "%s: %s", path, fd < 0 ? strerror(e) : "size changed");
    }
    uint8_t *buf = malloc(expect ? expect : 1);
    if (!buf) {
        close(fd);
        return err_set(ERR_NOMEM, "%s: out of memory for %zu bytes", path, expect);
    }
    size_t got = 0;
    while (got < expect) {
        ssize_t n = read(fd, buf + got, expect - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd);
    if (got != expect) {
        free(buf);
        return err_set(ERR_IO, "%s: short read", path);
    }
    *out = buf;
    return 0;
}

static void run_task(struct fetch_task *t, msgpack_sbuffer *sb)
{
    uint8_t *png = NULL;
    msgpack_sbuffer_clear(sb);
    int rc = read_file(t->path, t->img.png_len, &png);
    if (rc == 0) {
        t->img.png = png;
        rc = proto_reply_fetch(sb, &t->id, &t->img);
        t->img.png = NULL;
        free(png);
    } else {
        log_err("fetch: %s", err_msg());
    }
    if (rc) {
        bool gone = rc == ERR_IO;
        msgpack_sbuffer_clear(sb);
        proto_reply_error(sb, &t->id, gone ? PROTO_E_NOT_FOUND : PROTO_E_OUT_OF_MEMORY,
                          gone ? "index" : "",
                          gone ? "the image file is gone" : "no memory to read the image now");
    }
    /* The buffer goes with the task; a fresh one serves the next. */
    t->reply = (uint8_t *)sb->data;
    t->reply_len = sb->size;
    msgpack_sbuffer_init(sb);
}

static void *fetch_main(void *arg)
{
    (void)arg;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!waiting.head && !stopping)
            pthread_cond_wait(&wake, &lock);
        if (stopping) break;
        struct fetch_task *t = waiting.head;
        waiting.head = t->next;
        if (!waiting.head) waiting.tail = NULL;
        pthread_mutex_unlock(&lock);
        run_task(t, &sb);
        pthread_mutex_lock(&lock);
        push(&done, t);
        uint64_t one = 1;
        ssize_t w = write(done_fd, &one, sizeof one);
        (void)w; /* EAGAIN only when the counter is saturated: the reactor is woken anyway */
    }
    pthread_mutex_unlock(&lock);
    msgpack_sbuffer_destroy(&sb);
    return NULL;
}

int fetch_start(void)
{
    done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (done_fd < 0) return err_set(ERR_IO, "eventfd: %s", strerror(errno));
    int e = pthread_create(&thread, NULL, fetch_main, NULL);
    if (e) return err_set(ERR_IO, "starting the fetch thread: %s", strerror(e));
    started = true;
    return 0;
}

int fetch_fd(void)
{
    return done_fd;
}

void fetch_submit(struct fetch_task *t)
{
    pthread_mutex_lock(&lock);
    push(&waiting, t);
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&lock);
}

struct fetch_task *fetch_take(void)
{
    uint64_t n;
    ssize_t r = read(done_fd, &n, sizeof n);
    (void)r;
    pthread_mutex_lock(&lock);
    struct fetch_task *t = done.head;
    done.head = done.tail = NULL;
    pthread_mutex_unlock(&lock);
    return t;
}

void fetch_stop(void)
{
    if (started) {
        pthread_mutex_lock(&lock);
        stopping = true;
        pthread_cond_signal(&wake);
        pthread_mutex_unlock(&lock);
        pthread_join(thread, NULL);
        started = false;
    }
    free_all(waiting.head);
    free_all(done.head);
    waiting.head = waiting.tail = done.head = done.tail = NULL;
    if (done_fd >= 0) close(done_fd);
    done_fd = -1;
}
