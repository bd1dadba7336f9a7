/* Client sessions and their non-blocking outbound queues; see session.h. */
#include "daemon/session.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/log.h"

#include <errno.h>
#include <msgpack.h>
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

static void drop_busy(struct session *s)
{
    free(s->busy);
    s->busy = NULL;
    s->busy_len = s->busy_cap = s->busy_count = 0;
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
    drop_busy(s);
}

static void mark_gone(struct session *s)
{
    if (!s->gone)
        log_debug("session %s: peer gone; %zu message(s) discarded", s->name, s->out_count);
    s->gone = true;
    drop_queue(s);
}

static void expire(double now, double timeout, bool all);

static size_t n_sessions;

static size_t peer_sessions(const char *peer)
{
    size_t n = 0;
    for (struct session *s = sessions; s; s = s->next)
        n += strcmp(s->peer, peer) == 0;
    return n;
}

static struct session *refuse(struct proto_error *e, enum proto_errcode code, const char *limit,
                              const char *msg)
{
    memset(e, 0, sizeof *e);
    e->code = code;
    snprintf(e->limit, sizeof e->limit, "%s", limit);
    snprintf(e->message, sizeof e->message, "%s", msg);
    return NULL;
}

struct session *session_get(void *sock, const void *rid, size_t rid_len, const char *peer,
                            double now, const struct session_limits *lim, struct proto_error *e)
{
    for (struct session *s = sessions; s; s = s->next)
        if (s->sock == sock && s->rid_len == rid_len && memcmp(s->rid, rid, rid_len) == 0) {
            if (peer && strcmp(peer, s->peer) != 0) {
                /* The routing id is on another connection now: nothing of the session's may
                 * go there. */
                mark_gone(s);
                return refuse(e, PROTO_E_FORBIDDEN, "",
                              "this routing id is another peer's session; use another one");
            }
            s->last_seen = now;
            return s;
        }
    if (!peer) peer = "";
    if (n_sessions >= lim->max_sessions) expire(now, lim->timeout, false);
    if (n_sessions >= lim->max_sessions)
        return refuse(e, PROTO_E_BUSY, "max_sessions", "the daemon has as many sessions as "
                                                       "max_sessions allows");
    if (peer_sessions(peer) >= lim->max_sessions_per_peer)
        return refuse(e, PROTO_E_BUSY, "max_sessions_per_peer",
                      "this peer has as many sessions as max_sessions_per_peer allows; close "
                      "one, or let it time out");
    if (!boot_tag && getrandom(&boot_tag, sizeof boot_tag, 0) != sizeof boot_tag)
        boot_tag = (uint32_t)now;
    struct session *s = xcalloc(1, sizeof *s);
    memcpy(s->rid, rid, rid_len < sizeof s->rid ? rid_len : sizeof s->rid);
    s->rid_len = rid_len < sizeof s->rid ? rid_len : sizeof s->rid;
    s->sock = sock;
    s->last_seen = now;
    snprintf(s->peer, sizeof s->peer, "%s", peer);
    /* Unique across restarts too, as stored jobs keep their session's name. */
    snprintf(s->name, sizeof s->name, "s%08x-%u", boot_tag, ++session_serial);
    s->next = sessions;
    sessions = s;
    n_sessions++;
    return s;
}

void session_refuse(void *sock, const void *rid, size_t rid_len, const struct proto_id *id,
                    const struct proto_error *e)
{
    static msgpack_sbuffer sb;
    msgpack_sbuffer_clear(&sb);
    struct session tmp = {.sock = sock, .rid_len = rid_len < sizeof tmp.rid ? rid_len : 255};
    memcpy(tmp.rid, rid, tmp.rid_len);
    /* No queue to wait in: a peer that cannot take it now does not get it. */
    if (proto_reply_refusal(&sb, id, e) == 0) try_send(&tmp, sb.data, sb.size);
}

struct session *session_by_name(const char *name)
{
    for (struct session *s = sessions; s; s = s->next)
        if (strcmp(s->name, name) == 0) return s;
    return NULL;
}

/* A message may be an image of megabytes: its copy is allowed to fail. */
static int enqueue(struct session *s, const void *buf, size_t len, const char *job)
{
    struct outmsg *m = malloc(sizeof *m + len);
    if (!m) return err_set(ERR_NOMEM, "session %s: no memory to queue %zu bytes", s->name, len);
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
    return 0;
}

int session_send(struct session *s, const void *buf, size_t len, const char *progress_job,
                 size_t limit)
{
    if (s->gone) return 0;
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
            return 0;
        }
        if (s->out_bytes + len > limit) return 0;
    }
    return enqueue(s, buf, len, progress_job);
}

/* Sends the busy answers of the backlog, in order, while the peer takes them. */
static void flush_busy(struct session *s)
{
    static msgpack_sbuffer sb; /* the reactor's own: one thread */
    size_t at = 0;
    while (at < s->busy_len) {
        struct proto_id id = {.kind = s->busy[at]};
        size_t n = 1;
        if (id.kind == PROTO_ID_UINT) {
            memcpy(&id.u, s->busy + at + 1, sizeof id.u);
            n += sizeof id.u;
        } else if (id.kind == PROTO_ID_STR) {
            size_t len = s->busy[at + 1];
            memcpy(id.s, s->busy + at + 2, len);
            id.s[len] = 0;
            n += 1 + len;
        }
        struct proto_error e = {.code = PROTO_E_BUSY};
        snprintf(e.message, sizeof e.message,
                 "this session's unread replies exceed client_buffer; read them, then retry");
        snprintf(e.limit, sizeof e.limit, "client_buffer");
        msgpack_sbuffer_clear(&sb);
        if (proto_reply_refusal(&sb, &id, &e) == 0) {
            int r = try_send(s, sb.data, sb.size);
            if (r > 0) break;
            if (r < 0) {
                mark_gone(s);
                return;
            }
        }
        at += n;
        s->busy_count--;
    }
    memmove(s->busy, s->busy + at, s->busy_len - at);
    s->busy_len -= at;
    if (!s->busy_len) drop_busy(s);
}

void session_busy(struct session *s, const struct proto_id *id, size_t backlog)
{
    if (s->gone) return;
    if (s->busy_count >= backlog) {
        log_warn("session %s: %zu requests sent without reading any reply; its %zu queued "
                 "message(s) and %zu busy answer(s) are discarded",
                 s->name, s->busy_count, s->out_count, s->busy_count);
        drop_queue(s);
        return;
    }
    size_t need = 2 + PROTO_MAX_ID;
    if (s->busy_len + need > s->busy_cap) {
        s->busy_cap = s->busy_cap ? 2 * s->busy_cap : 1024;
        s->busy = xrealloc(s->busy, s->busy_cap);
    }
    uint8_t *p = s->busy + s->busy_len;
    p[0] = (uint8_t)id->kind;
    if (id->kind == PROTO_ID_UINT) {
        memcpy(p + 1, &id->u, sizeof id->u);
        s->busy_len += 1 + sizeof id->u;
    } else if (id->kind == PROTO_ID_STR) {
        size_t len = strlen(id->s);
        p[1] = (uint8_t)len;
        memcpy(p + 2, id->s, len);
        s->busy_len += 2 + len;
    } else {
        s->busy_len += 1;
    }
    s->busy_count++;
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
        if (!s->out_head && s->busy_len) flush_busy(s);
        waiting |= s->out_head != NULL || s->busy_len;
    }
    return waiting;
}

bool session_congested(const struct session *s, size_t limit)
{
    return s->out_bytes + s->pending_bytes > limit || s->busy_count;
}

static void expire(double now, double timeout, bool all)
{
    for (struct session **p = &sessions; *p;) {
        struct session *s = *p;
        if (all || (now - s->last_seen > timeout && s->watching == 0 && s->fetching == 0 &&
                    s->waits == 0)) {
            *p = s->next;
            drop_queue(s);
            free(s);
            n_sessions--;
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
