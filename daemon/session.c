/* Client sessions and their non-blocking outbound queues; see session.h. */
#include "daemon/session.h"

#include "common/xalloc.h"
#include "daemon/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <zmq.h>

struct outmsg {
    struct outmsg *next;
    char job[PROTO_MAX_NAME + 1]; /* "" unless a progress event */
    size_t len;
    uint8_t data[];
};

static struct session *sessions;
static uint32_t session_serial;
static uint32_t boot_tag;

/* 0 sent, 1 the peer cannot take it now, -1 the peer is gone. */
static int try_send(struct session *s, const void *buf, size_t len)
{
    if (s->gone) return -1;
    if (zmq_send(s->sock, s->rid, s->rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return errno == EAGAIN ? 1 : -1;
    /* With ZMQ_ROUTER_MANDATORY the routing frame is where a full pipe is reported; once it
     * is accepted, the body goes in the same message. */
    if (zmq_send(s->sock, buf, len, ZMQ_DONTWAIT) < 0) return errno == EAGAIN ? 1 : -1;
    return 0;
}

static void drop_queue(struct session *s)
{
    while (s->out_head) {
        struct outmsg *m = s->out_head;
        s->out_head = m->next;
        free(m);
    }
    s->out_tail = NULL;
    s->out_bytes = s->out_count = 0;
}

static void mark_gone(struct session *s)
{
    if (!s->gone)
        log_debug("session %s: peer gone; %zu message(s) discarded", s->name, s->out_count);
    s->gone = true;
    drop_queue(s);
}

struct session *session_get(void *sock, const void *rid, size_t rid_len, double now)
{
    for (struct session *s = sessions; s; s = s->next)
        if (s->sock == sock && s->rid_len == rid_len && memcmp(s->rid, rid, rid_len) == 0) {
            s->last_seen = now;
            return s;
        }
    if (!boot_tag && getrandom(&boot_tag, sizeof boot_tag, 0) != sizeof boot_tag)
        boot_tag = (uint32_t)now;
    struct session *s = xcalloc(1, sizeof *s);
    memcpy(s->rid, rid, rid_len < sizeof s->rid ? rid_len : sizeof s->rid);
    s->rid_len = rid_len < sizeof s->rid ? rid_len : sizeof s->rid;
    s->sock = sock;
    s->last_seen = now;
    /* Unique across restarts too, as stored jobs keep their session's name. */
    snprintf(s->name, sizeof s->name, "s%08x-%u", boot_tag, ++session_serial);
    s->next = sessions;
    sessions = s;
    return s;
}

struct session *session_by_name(const char *name)
{
    for (struct session *s = sessions; s; s = s->next)
        if (strcmp(s->name, name) == 0) return s;
    return NULL;
}

static void enqueue(struct session *s, const void *buf, size_t len, const char *job)
{
    struct outmsg *m = xmalloc(sizeof *m + len);
    m->next = NULL;
    snprintf(m->job, sizeof m->job, "%s", job ? job : "");
    m->len = len;
    memcpy(m->data, buf, len);
    if (s->out_tail)
        s->out_tail->next = m;
    else
        s->out_head = m;
    s->out_tail = m;
    s->out_bytes += len;
    s->out_count++;
}

void session_send(struct session *s, const void *buf, size_t len, const char *progress_job,
                  size_t limit)
{
    if (s->gone) return;
    if (progress_job) {
        for (struct outmsg **p = &s->out_head; *p; p = &(*p)->next) {
            struct outmsg *m = *p;
            if (strcmp(m->job, progress_job) != 0) continue;
            /* Replace the stale value in place, keeping its turn in the queue. */
            struct outmsg *n = xrealloc(m, sizeof *m + len);
            s->out_bytes = s->out_bytes - n->len + len;
            n->len = len;
            memcpy(n->data, buf, len);
            if (s->out_tail == m) s->out_tail = n;
            *p = n;
            return;
        }
        if (s->out_bytes + len > limit) return;
    }
    enqueue(s, buf, len, progress_job);
}

bool session_flush_all(void)
{
    bool waiting = false;
    for (struct session *s = sessions; s; s = s->next) {
        while (s->out_head) {
            struct outmsg *m = s->out_head;
            int r = try_send(s, m->data, m->len);
            if (r > 0) break;
            if (r < 0) {
                mark_gone(s);
                break;
            }
            s->out_head = m->next;
            if (!s->out_head) s->out_tail = NULL;
            s->out_bytes -= m->len;
            s->out_count--;
            free(m);
        }
        waiting |= s->out_head != NULL;
    }
    return waiting;
}

bool session_congested(const struct session *s, size_t limit)
{
    return s->out_bytes > limit;
}

static void expire(double now, double timeout, bool all)
{
    for (struct session **p = &sessions; *p;) {
        struct session *s = *p;
        if (all || (now - s->last_seen > timeout && s->watching == 0)) {
            *p = s->next;
            drop_queue(s);
            free(s);
        } else {
            p = &s->next;
        }
    }
}

void session_expire(double now, double timeout)
{
    expire(now, timeout, false);
}

size_t session_count(double now, double timeout)
{
    size_t n = 0;
    for (struct session *s = sessions; s; s = s->next)
        n += !s->gone && now - s->last_seen <= timeout;
    return n;
}

void session_free_all(void)
{
    expire(0, 0, true);
}
