/* The reactor: the one thread that owns every ZeroMQ socket (the ipc ROUTER, the optional
 * CURVE tcp ROUTER, the ZAP handler), the signalfd, the workers' eventfd and the job store.
 * Each turn it reads what is ready, commits the store once, then flushes the sessions'
 * queues, so that no reply announces anything not yet on disk. It never computes: loading
 * and denoising run on the workers. It also speaks to systemd: READY once the models are
 * resident, STATUS, WATCHDOG from this loop, STOPPING, and socket activation. */
#include "daemon/daemon.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/fetch.h"
#include "daemon/log.h"
#include "daemon/zap.h"

#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

/* Past this libzmq drops the connection; up to it a frame is read and, over the request limit,
 * answered bad_message by the validator, the session kept. */
#define MAX_FRAME DAEMON_MAX_FRAME
#define TURN_MESSAGES 512    /* requests read per turn before other work gets its turn */

struct daemon D;

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double now_wall(void)
{
    return clock_s(CLOCK_REALTIME);
}

double now_mono(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

/* ---- Sockets ---- */

static int router_new(void **out)
{
    void *r = zmq_socket(D.zctx, ZMQ_ROUTER);
    int one = 1, linger = 200;
    int64_t max = MAX_FRAME;
    if (!r || zmq_setsockopt(r, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
        zmq_setsockopt(r, ZMQ_MAXMSGSIZE, &max, sizeof max) ||
        zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(r, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN))) {
        if (r) zmq_close(r);
        return err_set(ERR_IO, "ROUTER socket: %s", zmq_strerror(errno));
    }
    *out = r;
    return 0;
}

static void socket_access(const char *path)
{
    if (D.cfg->socket_mode >= 0 && chmod(path, (mode_t)D.cfg->socket_mode) != 0)
        log_warn("%s: chmod: %s", path, strerror(errno));
    if (D.cfg->socket_group) {
        struct group *g = getgrnam(D.cfg->socket_group);
        if (!g)
            log_warn("%s: socket_group: no group \"%s\"", path, D.cfg->socket_group);
        else if (chown(path, (uid_t)-1, g->gr_gid) != 0)
            log_warn("%s: chown to group %s: %s", path, D.cfg->socket_group, strerror(errno));
    }
}

/* libzmq replaces whatever is at an ipc path: refuse when a live daemon answers there. */
static int check_not_in_use(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path)
        return err_set(ERR_RANGE, "listen: socket path %s is too long", path);
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int in_use = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    if (in_use) return err_set(ERR_IO, "listen: %s is in use by another process", path);
    return 0;
}

static int bind_ipc(void)
{
    const char *path = D.cfg->listen + strlen("ipc://");
    int rc = check_not_in_use(path);
    if (rc) return rc;
    /* The socket file is born with the configured mode: no window with looser access. */
    mode_t old = umask(D.cfg->socket_mode >= 0 ? (mode_t)(0777 & ~D.cfg->socket_mode) : 0117);
    rc = zmq_bind(D.router_ipc, D.cfg->listen);
    umask(old);
    if (rc != 0) return err_set(ERR_IO, "listen %s: %s", D.cfg->listen, zmq_strerror(errno));
    D.socket_path = xstrdup(path);
    socket_access(path);
    return 0;
}

static int bind_tcp_curve(void *r, const char *endpoint, int fd)
{
    char key[41];
    int one = 1;
    int rc = zap_read_key_file(D.cfg->curve_secret_key_file, key);
    if (rc) return err_prefix(rc, "curve_secret_key_file: ");
    if (zmq_setsockopt(r, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(r, ZMQ_CURVE_SECRETKEY, key, 40) ||
        (fd >= 0 && zmq_setsockopt(r, ZMQ_USE_FD, &fd, sizeof fd)) || zmq_bind(r, endpoint))
        return err_set(ERR_IO, "tcp %s: %s", endpoint, zmq_strerror(errno));
    return 0;
}

/* Adopts sockets passed by systemd (focusd.socket): a unix stream socket serves as the ipc
 * endpoint, a TCP one as the CURVE endpoint. Returns 1 when the ipc one was adopted. */
static int adopt_activated(void)
{
    int n = sd_listen_fds(1), got_ipc = 0;
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        char endpoint[160];
        if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
            return err_set(ERR_IO, "inherited socket %d: %s", fd, strerror(errno));
        if (ss.ss_family == AF_UNIX && sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) > 0) {
            snprintf(endpoint, sizeof endpoint, "ipc://%.108s",
                     ((struct sockaddr_un *)&ss)->sun_path);
            if (zmq_setsockopt(D.router_ipc, ZMQ_USE_FD, &fd, sizeof fd) ||
                zmq_bind(D.router_ipc, endpoint))
                return err_set(ERR_IO, "inherited %s: %s", endpoint, zmq_strerror(errno));
            log_info("listening on %s (socket activation)", endpoint);
            got_ipc = 1;
        } else if (sd_is_socket_inet(fd, 0, SOCK_STREAM, 1, 0) > 0) {
            if (!D.cfg->curve_secret_key_file || !D.cfg->curve_authorized_keys)
                return err_set(ERR_MISSING,
                               "inherited TCP socket %d: tcp is served with CURVE "
                               "only; set curve_secret_key_file and curve_authorized_keys",
                               fd);
            int rc = D.router_tcp ? 0 : router_new(&D.router_tcp);
            if (!rc) rc = bind_tcp_curve(D.router_tcp, "tcp://0.0.0.0:0", fd);
            if (rc) return rc;
            log_info("listening on inherited TCP socket %d with CURVE", fd);
        } else {
            return err_set(ERR_INVALID,
                           "inherited socket %d is neither a unix nor a TCP stream "
                           "listener",
                           fd);
        }
    }
    return got_ipc;
}

static int open_sockets(void)
{
    int rc = zap_configure(D.cfg);
    if (!rc) rc = zap_open(D.zctx, &D.zap);
    if (!rc) rc = router_new(&D.router_ipc);
    int adopted = rc ? 0 : adopt_activated();
    if (adopted < 0) return adopted;
    if (!rc && !adopted) {
        rc = bind_ipc();
        if (!rc) log_info("listening on %s", D.cfg->listen);
    }
    if (!rc && D.cfg->tcp && !D.router_tcp) {
        rc = router_new(&D.router_tcp);
        if (!rc) rc = bind_tcp_curve(D.router_tcp, D.cfg->tcp, -1);
        if (!rc) log_info("listening on %s with CURVE", D.cfg->tcp);
    }
    return rc;
}

/* ---- Requests ---- */

static void read_requests(void *sock)
{
    for (int n = 0; n < TURN_MESSAGES; n++) {
        zmq_msg_t rid, body;
        zmq_msg_init(&rid);
        if (zmq_msg_recv(&rid, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&rid);
            return;
        }
        zmq_msg_init(&body);
        bool have_body = zmq_msg_more(&rid) && zmq_msg_recv(&body, sock, 0) >= 0;
        bool extra = have_body && zmq_msg_more(&body);
        while (extra) { /* requests are one frame; the rest of a multi-part one is dropped */
            zmq_msg_t x;
            zmq_msg_init(&x);
            bool more = zmq_msg_recv(&x, sock, 0) >= 0 && zmq_msg_more(&x);
            zmq_msg_close(&x);
            if (!more) break;
        }
        double now = now_mono();
        const char *peer = have_body ? zmq_msg_gets(&body, "User-Id") : NULL;
        struct session_limits lim = {D.cfg->max_sessions, D.cfg->max_sessions_per_peer,
                                     D.cfg->session_timeout};
        struct proto_error refusal;
        struct session *s =
            session_get(sock, zmq_msg_data(&rid), zmq_msg_size(&rid), peer, now, &lim, &refusal);
        struct proto_id none = {.kind = PROTO_ID_NONE};
        if (s) s->gone = false;
        if (!s) {
            log_debug("frame refused: %s", refusal.message);
            session_refuse(sock, zmq_msg_data(&rid), zmq_msg_size(&rid),
                           have_body && !extra ? ops_request_id(zmq_msg_data(&body),
                                                                zmq_msg_size(&body))
                                               : &none,
                           &refusal);
        } else if (session_congested(s, D.cfg->client_buffer))
            session_busy(s, have_body && !extra ? ops_request_id(zmq_msg_data(&body),
                                                                 zmq_msg_size(&body))
                                                : &none,
                         D.cfg->client_backlog);
        else if (!have_body || extra)
            ops_reply_error(s, &none, PROTO_E_BAD_MESSAGE, "",
                            "a request is exactly one frame after the routing id");
        else
            ops_dispatch(s, zmq_msg_data(&body), zmq_msg_size(&body));
        zmq_msg_close(&body);
        zmq_msg_close(&rid);
    }
}

/* ---- Workers ---- */

static int start_worker(const struct config_model *cm, bool recover)
{
    struct worker *w;
    struct worker_placement place = {config_model_device(D.cfg, cm), D.cfg->precision,
                                     D.cfg->text_on_cpu};
    int rc =
        worker_start(cm->name, cm->path, &place, D.cfg->batch_max, store_images_dir(D.store), &w);
    if (rc) return rc;
    w->next = D.workers;
    D.workers = w;
    log_info("model %s: loading %s", cm->name, cm->path);
    return recover ? jobs_recover(w, false) : 0;
}

/* Frees workers that have left: retired ones, or all when stopping. A worker whose model
 * failed to load stays listed, its queue kept, until a reload retries it. */
static void reap_workers(void)
{
    for (struct worker **p = &D.workers; *p;) {
        struct worker *w = *p;
        if (!w->exited || (!D.stopping && !w->sm.retire)) {
            p = &w->next;
            continue;
        }
        *p = w->next;
        jobs_release_worker(w);
        if (w->engine) log_info("model %s: unloaded", w->sm.name);
        worker_free(w);
    }
}

/* ---- systemd ---- */

static uint64_t watchdog_usec;
static double last_watchdog, last_status, last_extend;
static char status_text[160];

static void notify_status(double now)
{
    if (now - last_status < 1.0) return;
    last_status = now;
    uint32_t queued, running;
    jobs_counts(&queued, &running);
    char text[160];
    snprintf(text, sizeof text, "%s%u queued, %u running, %zu client(s)",
             D.stopping ? "stopping: "
             : D.ready  ? ""
                        : "loading models: ",
             queued, running, session_count(now, D.cfg->session_timeout));
    if (strcmp(text, status_text) != 0) {
        snprintf(status_text, sizeof status_text, "%s", text);
        sd_notifyf(0, "STATUS=%s", text);
    }
}

/* READY once every model is resident (or has failed to load; at least one must serve). */
static int check_ready(double now)
{
    if (D.ready) return 0;
    bool pending = false, any = false;
    for (struct worker *w = D.workers; w; w = w->next) {
        any |= atomic_load(&w->loaded);
        pending |= !atomic_load(&w->loaded) && !w->exited;
    }
    if (pending) {
        if (now - last_extend >= 10.0) {
            last_extend = now;
            sd_notify(0, "EXTEND_TIMEOUT_USEC=30000000");
        }
        return 0;
    }
    if (!any) return err_set(ERR_IO, "no model could be loaded");
    D.ready = true;
    last_status = 0;
    status_text[0] = 0;
    sd_notify(0, "READY=1");
    log_info("ready");
    return 0;
}

static void watchdog(double now)
{
    if (watchdog_usec && (now - last_watchdog) * 1e6 >= (double)watchdog_usec / 2) {
        last_watchdog = now;
        sd_notify(0, "WATCHDOG=1");
    }
}

/* ---- Signals and reload ---- */

static void begin_stop(const char *why)
{
    if (D.stopping) return;
    log_info("%s: finishing the current steps, then stopping", why);
    D.stopping = true;
    sd_notify(0, "STOPPING=1");
    for (struct worker *w = D.workers; w; w = w->next)
        worker_stop(w);
}

void reactor_fail(const char *model, const char *why)
{
    if (!D.failure[0])
        snprintf(D.failure, sizeof D.failure, "model %s: %s; stopping for a restart", model, why);
    begin_stop("the device is lost");
}

static void reload(void)
{
    struct config *c = NULL;
    if (config_load(D.ov, &c) < 0 || zap_configure(c) < 0) {
        log_err("reload: %s; the running configuration stays", err_msg());
        config_free(c); /* NULL when it did not load */
        return;
    }
    sd_notify(0, "RELOADING=1");
    struct config *old = D.cfg;
    D.cfg = c;
    log_set_level(c->log_level);
    if (strcmp(old->listen, c->listen) || strcmp(old->state_dir, c->state_dir) ||
        strcmp(old->store, c->store) || old->lease_time != c->lease_time ||
        (old->tcp == NULL) != (c->tcp == NULL) || (old->tcp && strcmp(old->tcp, c->tcp)))
        log_warn("reload: listen, tcp, state_dir, store and lease_time take effect at the next "
                 "start");
    if (D.socket_path) socket_access(D.socket_path);
    for (struct worker **p = &D.workers; *p;) {
        struct worker *w = *p;
        const struct config_model *cm = config_find_model(c, w->sm.name);
        if (w->exited && !atomic_load(&w->loaded)) {
            /* Failed to load before: drop it; a fresh worker below tries again. */
            *p = w->next;
            jobs_release_worker(w);
            worker_free(w);
            continue;
        }
        if (!cm && !w->sm.retire) {
            log_info("model %s: removed from the configuration; unloading once idle", w->sm.name);
            worker_retire(w);
        } else if (cm && strcmp(cm->path, w->path) != 0) {
            log_warn("model %s: a new path takes effect at the next start", w->sm.name);
        }
        pthread_mutex_lock(&w->sm.lock);
        w->sm.max_active = c->batch_max < SCHED_MAX_ACTIVE ? c->batch_max : SCHED_MAX_ACTIVE;
        pthread_mutex_unlock(&w->sm.lock);
        p = &w->next;
    }
    for (size_t i = 0; i < c->n_models; i++)
        if (!daemon_worker(c->models[i].name) && start_worker(&c->models[i], true) < 0)
            log_err("reload: %s", err_msg());
    config_free(old);
    D.ready = false; /* READY=1 again once the new models are resident */
    log_info("configuration reloaded");
}

static pid_t reactor_tid;

/* Threads that a library started before main (OpenBLAS's pool) do not block the signals, and
 * the kernel may deliver a process-directed signal to one of them: pass it on to the reactor
 * thread, where it stays pending for the signalfd. */
static void forward_signal(int sig)
{
    int saved = errno;
    syscall(SYS_tgkill, getpid(), reactor_tid, sig);
    errno = saved;
}

static int signals_open(void)
{
    reactor_tid = (pid_t)syscall(SYS_gettid);
    struct sigaction sa = {.sa_handler = forward_signal};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    /* Blocked before any thread exists (zmq's and the workers inherit the mask). */
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0 ||
        (D.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
        return err_set(ERR_IO, "signalfd: %s", strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static void read_signals(void)
{
    struct signalfd_siginfo si;
    while (read(D.sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP)
            reload();
        else
            begin_stop(si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
    }
}

/* ---- The loop ---- */

/* Returns true when retention left work for its next turn. */
static bool retention(void)
{
    uint64_t removed;
    bool more = false;
    if (store_retention(D.store, now_wall(), D.cfg->retention_age, D.cfg->retention_bytes,
                        &removed, &more) < 0)
        log_err("retention: %s", err_msg());
    else if (removed)
        log_info("retention: %llu finished job(s) removed%s", (unsigned long long)removed,
                 more ? "; more next turn" : "");
    return more;
}

static int loop(bool retention_at_start)
{
    double last_retention = now_mono(), last_expire = now_mono();
    bool waiting = false, retention_more = retention_at_start;
    double due = 1e9; /* seconds to the next wait's deadline */
    for (;;) {
        /* The store's descriptor (a shared store's events) last, when it has one now. */
        int store_sock = store_fd(D.store);
        zmq_pollitem_t items[7] = {
            {D.zap, 0, ZMQ_POLLIN, 0},
            {NULL, D.sigfd, ZMQ_POLLIN, 0},
            {NULL, worker_events_fd(), ZMQ_POLLIN, 0},
            {NULL, fetch_fd(), ZMQ_POLLIN, 0},
            {D.router_ipc, 0, ZMQ_POLLIN, 0},
            {D.router_tcp, 0, ZMQ_POLLIN, 0},
            {NULL, store_sock, ZMQ_POLLIN, 0},
        };
        int n_items = D.router_tcp ? 6 : 5;
        if (store_sock >= 0) items[n_items++] = items[6];
        long timeout = waiting || retention_more ? 10 : due < 0.25 ? (long)(due * 1000) + 1 : 250;
        if (zmq_poll(items, n_items, timeout) < 0 && errno != EINTR)
            return err_set(ERR_IO, "zmq_poll: %s", zmq_strerror(errno));
        if (items[0].revents) zap_handle(D.zap);
        if (items[1].revents) read_signals();
        if (items[2].revents)
            for (struct wevent *e = worker_events_take(), *next; e; e = next) {
                next = e->next;
                jobs_worker_event(e);
                free(e);
            }
        if (items[3].revents)
            for (struct fetch_task *t = fetch_take(), *next; t; t = next) {
                next = t->next;
                ops_fetched(t);
                fetch_task_free(t);
            }
        if (items[4].revents) read_requests(D.router_ipc);
        if (D.router_tcp && items[5].revents) read_requests(D.router_tcp);
        store_poll(D.store, now_mono(), share_event, NULL);
        share_turn(now_mono());
        if (store_commit(D.store) < 0)
            log_err("%s", err_msg()); /* the replies still go: their rows may be lost */
        due = jobs_waits_due(now_mono());
        waiting = session_flush_all();
        double now = now_mono();
        watchdog(now);
        int rc = check_ready(now);
        if (rc) return rc;
        notify_status(now);
        reap_workers();
        if (D.stopping && !D.workers) {
            rc = store_commit(D.store);
            return rc ? rc : D.failure[0] ? err_set(ERR_DEVICE_LOST, "%s", D.failure) : 0;
        }
        if ((now - last_retention >= D.cfg->retention_interval && D.cfg->retention_interval > 0) ||
            retention_more) {
            last_retention = now;
            retention_more = retention();
        }
        if (now - last_expire >= 5.0) {
            last_expire = now;
            session_expire(now, D.cfg->session_timeout);
        }
    }
}

static void cleanup(void)
{
    while (D.workers) {
        struct worker *w = D.workers;
        D.workers = w->next;
        worker_stop(w);
        worker_join(w);
        jobs_release_worker(w);
        worker_free(w);
    }
    fetch_stop();
    jobs_waits_free();
    share_free();
    if (D.store) store_close(D.store);
    session_free_all();
    if (D.router_ipc) zmq_close(D.router_ipc);
    if (D.router_tcp) zmq_close(D.router_tcp);
    if (D.zap) zmq_close(D.zap);
    if (D.zctx) zmq_ctx_term(D.zctx);
    if (D.socket_path) unlink(D.socket_path);
    free(D.socket_path);
    zap_free();
    msgpack_sbuffer_destroy(&D.sb);
    if (D.sigfd >= 0) close(D.sigfd);
}

/* A shared store knows this daemon by its host and socket, the same across restarts: a
 * daemon started again takes back at once the jobs its previous life held. */
static int open_store(void)
{
    char host[256] = "localhost", owner[512];
    gethostname(host, sizeof host - 1);
    snprintf(owner, sizeof owner, "%s:%s", host, D.cfg->listen + strlen("ipc://"));
    struct store_settings set = {D.cfg->state_dir, D.cfg->store, owner, D.cfg->lease_time};
    return store_open(&set, &D.store);
}

int reactor_run(struct config *cfg, const struct config_overrides *ov)
{
    memset(&D, 0, sizeof D);
    D.cfg = cfg;
    D.ov = ov;
    D.sigfd = -1;
    D.t_start = now_mono();
    msgpack_sbuffer_init(&D.sb);
    log_set_level(cfg->log_level);
    if (sd_watchdog_enabled(0, &watchdog_usec) <= 0) watchdog_usec = 0;
    sd_notify(0, "EXTEND_TIMEOUT_USEC=30000000");
    last_extend = now_mono();
    int rc = signals_open();
    if (!rc) rc = worker_events_init();
    if (!rc) rc = fetch_start();
    if (!rc) rc = open_store();
    bool more = false;
    if (!rc) {
        more = retention();
        D.zctx = zmq_ctx_new();
        rc = D.zctx ? open_sockets() : err_set(ERR_IO, "zmq_ctx_new: %s", zmq_strerror(errno));
    }
    for (size_t i = 0; !rc && i < D.cfg->n_models; i++)
        rc = start_worker(&D.cfg->models[i], false);
    if (!rc) rc = jobs_recover(NULL, true);
    if (!rc) rc = loop(more);
    if (rc)
        log_err("%s", err_msg());
    else
        log_info("stopped");
    cleanup();
    return rc;
}
