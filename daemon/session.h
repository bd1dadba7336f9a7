/* Client sessions: one per ROUTER connection (routing id) of one authenticated peer (the
 * ZAP User-Id: the uid on ipc, the CURVE key in Z85 on tcp), with the daemon's name for it,
 * the last time it spoke, and its outbound queue. A frame whose peer is not its session's is
 * refused (a routing id a client chose, reused by another peer, inherits nothing), and new
 * sessions are refused past max_sessions in all or max_sessions_per_peer of one peer. Sends never block: a message the peer cannot take
 * now stays in its queue and is retried each reactor turn; progress events for a job replace
 * an older one still waiting (a slow client sees the latest value); progress past the
 * client_buffer limit is dropped, replies and terminal events never are unless the peer is
 * gone (EHOSTUNREACH), which also discards its queue. A session whose queue is over
 * client_buffer has its further requests answered busy: the ids of those requests wait in a
 * compact backlog, sent as busy replies once the queue has gone; a backlog that reaches
 * client_backlog requests is discarded with the queue (the one case where replies are lost,
 * for a peer that sends without ever reading). Each session numbers the events meant for it.
 * Reactor thread only. Not for job ownership or watching (the jobs keep session names). */
#ifndef FOCUS_DAEMON_SESSION_H
#define FOCUS_DAEMON_SESSION_H

#include "protocol/proto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct outmsg;

struct session {
    uint8_t rid[256];
    size_t rid_len;
    void *sock; /* the ROUTER it came in on */
    char name[PROTO_MAX_NAME + 1];
    char client[PROTO_MAX_NAME + 1]; /* from hello */
    char peer[PROTO_MAX_NAME + 1];   /* the ZAP User-Id: uid, or the CURVE key */
    double last_seen;                /* monotonic seconds */
    bool gone;
    unsigned watching; /* live jobs it watches: kept while non-zero */
    unsigned fetching; /* fetch replies being read for it: kept while non-zero */
    unsigned waits;    /* its wait requests not yet answered: kept while non-zero */
    size_t pending_bytes; /* their images' bytes, counted against client_buffer */
    struct outmsg *out_head, *out_tail;
    size_t out_bytes, out_count;
    uint64_t event_seq;      /* the seq of the last event meant for it */
    uint8_t *busy;           /* backlog: request ids to answer busy, each a tag byte + value */
    size_t busy_len, busy_cap, busy_count;
    struct session *next;
};

/* How many sessions may exist, and for how long a silent one is kept. */
struct session_limits {
    uint32_t max_sessions, max_sessions_per_peer;
    double timeout;
};

/* Finds or creates the session of a frame from peer (NULL: whichever the routing id has).
 * NULL when it may have none, with the refusal in *e: forbidden when the routing id is another
 * peer's session's, busy (limit max_sessions or max_sessions_per_peer) when no new one fits. */
struct session *session_get(void *sock, const void *rid, size_t rid_len, const char *peer,
                            double now, const struct session_limits *lim, struct proto_error *e);
/* Answers a frame that has no session, if the peer can take it now. */
void session_refuse(void *sock, const void *rid, size_t rid_len, const struct proto_id *id,
                    const struct proto_error *e);
struct session *session_by_name(const char *name);

/* Queues one message; session_flush_all() sends it, which the reactor calls only after the
 * turn's store commit, so that no reply runs ahead of what it announces. progress_job:
 * non-NULL for a progress event of that job (coalesced, droppable). */
int session_send(struct session *s, const void *buf, size_t len, const char *progress_job,
                 size_t limit); /* ERR_NOMEM: no memory to queue it, nothing queued */
/* Retries every waiting queue; returns true when something is still waiting. */
bool session_flush_all(void);
/* True when the peer has more unsent output than limit, or busy answers still waiting: its
 * requests are answered busy. */
bool session_congested(const struct session *s, size_t limit);
/* Answers request id with busy (limit client_buffer) once the queue has gone; at backlog
 * requests waiting, discards the queue and the backlog instead. */
void session_busy(struct session *s, const struct proto_id *id, size_t backlog);
/* Forgets sessions silent for timeout seconds that watch no live job (their queues too). */
void session_expire(double now, double timeout);
size_t session_count(double now, double timeout);
void session_free_all(void);

#endif
