/* The ZAP handler; see zap.h. */
#include "daemon/zap.h"

#include "common/err.h"
#include "common/xalloc.h"
#include "daemon/log.h"
#include "protocol/proto.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <zmq.h>

static uid_t *allow_uids;
static size_t n_uids;
static gid_t *allow_gids;
static size_t n_gids;
static uint8_t (*keys)[32];
static size_t n_keys;

void zap_free(void)
{
    free(allow_uids);
    free(allow_gids);
    free(keys);
    allow_uids = NULL;
    allow_gids = NULL;
    keys = NULL;
    n_uids = n_gids = n_keys = 0;
}

static bool all_digits(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return false;
    return true;
}

/* The first 40-character Z85 word of a line: bare, or quoted as in a zcert file. */
static bool key_in_line(char *line, char out[41])
{
    char *p = line;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '#' || !*p) return false;
    char *q = strchr(p, '"');
    if (q) p = q + 1;
    size_t n = 0;
    while (p[n] && !isspace((unsigned char)p[n]) && p[n] != '"')
        n++;
    if (n != 40) return false;
    memcpy(out, p, 40);
    out[40] = 0;
    return true;
}

int zap_read_key_file(const char *path, char key[41])
{
    FILE *f = fopen(path, "r");
    if (!f) return err_set(ERR_IO, "%s: %s", path, strerror(errno));
    char line[512];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = key_in_line(line, key);
    fclose(f);
    uint8_t bin[32];
    if (!found || !zmq_z85_decode(bin, key))
        return err_set(ERR_FORMAT, "%s: no 40-character Z85 key", path);
    return 0;
}

static int read_authorized(const char *path, uint8_t (**out)[32], size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f) return err_set(ERR_IO, "%s: %s", path, strerror(errno));
    char line[512], z[41];
    int rc = 0;
    for (unsigned lineno = 1; fgets(line, sizeof line, f); lineno++) {
        char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        if (!*s || *s == '#') continue;
        *out = xrealloc(*out, (*n + 1) * sizeof **out);
        if (!key_in_line(line, z) || !zmq_z85_decode((*out)[*n], z)) {
            rc = err_set(ERR_FORMAT, "%s:%u: not a 40-character Z85 public key", path, lineno);
            break;
        }
        (*n)++;
    }
    fclose(f);
    return rc;
}

int zap_configure(const struct config *c)
{
    uid_t *uids = xcalloc(c->n_allow_users + 1, sizeof *uids);
    gid_t *gids = xcalloc(c->n_allow_groups + 1, sizeof *gids);
    uint8_t(*k)[32] = NULL;
    size_t nk = 0;
    int rc = 0;
    for (size_t i = 0; !rc && i < c->n_allow_users; i++) {
        const char *u = c->allow_users[i];
        struct passwd *pw = all_digits(u) ? NULL : getpwnam(u);
        if (all_digits(u))
            uids[i] = (uid_t)strtoul(u, NULL, 10);
        else if (pw)
            uids[i] = pw->pw_uid;
        else
            rc = err_set(ERR_MISSING, "allow_users: no user \"%s\"", u);
    }
    for (size_t i = 0; !rc && i < c->n_allow_groups; i++) {
        const char *g = c->allow_groups[i];
        struct group *gr = all_digits(g) ? NULL : getgrnam(g);
        if (all_digits(g))
            gids[i] = (gid_t)strtoul(g, NULL, 10);
        else if (gr)
            gids[i] = gr->gr_gid;
        else
            rc = err_set(ERR_MISSING, "allow_groups: no group \"%s\"", g);
    }
    if (!rc && c->tcp) rc = read_authorized(c->curve_authorized_keys, &k, &nk);
    if (rc) {
        free(uids);
        free(gids);
        free(k);
        return rc;
    }
    zap_free();
    allow_uids = uids;
    n_uids = c->n_allow_users;
    allow_gids = gids;
    n_gids = c->n_allow_groups;
    keys = k;
    n_keys = nk;
    return 0;
}

int zap_open(void *zctx, void **sock)
{
    void *s = zmq_socket(zctx, ZMQ_REP);
    if (!s || zmq_bind(s, "inproc://zeromq.zap.01") != 0) {
        if (s) zmq_close(s);
        return err_set(ERR_IO, "ZAP handler: %s", zmq_strerror(errno));
    }
    *sock = s;
    return 0;
}

static bool gid_allowed(gid_t g)
{
    for (size_t i = 0; i < n_gids; i++)
        if (allow_gids[i] == g) return true;
    return false;
}

/* address: "...:uid:gid:pid" as libzmq writes it for a unix-domain peer. */
static bool peer_allowed(const char *address, char *user, size_t cap)
{
    unsigned long uid, gid, pid;
    const char *p = address + strlen(address);
    int colons = 0;
    while (p > address && colons < 3)
        if (*--p == ':') colons++;
    if (colons < 3 || sscanf(p, ":%lu:%lu:%lu", &uid, &gid, &pid) != 3)
        return n_uids == 0 && n_gids == 0;
    snprintf(user, cap, "%lu", uid);
    if (n_uids == 0 && n_gids == 0) return true;
    for (size_t i = 0; i < n_uids; i++)
        if (allow_uids[i] == (uid_t)uid) return true;
    if (gid_allowed((gid_t)gid)) return true;
    /* The peer's supplementary groups are those of its user in the group database. */
    struct passwd *pw = n_gids ? getpwuid((uid_t)uid) : NULL;
    if (!pw) return false;
    gid_t groups[256];
    int ng = 256;
    if (getgrouplist(pw->pw_name, (gid_t)gid, groups, &ng) < 0) ng = 256;
    for (int i = 0; i < ng; i++)
        if (gid_allowed(groups[i])) return true;
    return false;
}

static bool key_allowed(const uint8_t *key, size_t len, char *user, size_t cap)
{
    if (len != 32) return false;
    char z[41];
    zmq_z85_encode(z, key, 32);
    snprintf(user, cap, "%s", z);
    for (size_t i = 0; i < n_keys; i++)
        if (memcmp(keys[i], key, 32) == 0) return true;
    return false;
}

/* Reads the request's frames: version, request id, domain, address, routing id, mechanism,
 * credentials... Returns the number read (at most max). */
static int read_frames(void *sock, zmq_msg_t *f, int max)
{
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&m);
            return n;
        }
        more = zmq_msg_more(&m);
        if (n < max)
            f[n++] = m;
        else
            zmq_msg_close(&m);
    }
    return n;
}

static void frame_str(zmq_msg_t *m, char *out, size_t cap)
{
    size_t n = zmq_msg_size(m) < cap - 1 ? zmq_msg_size(m) : cap - 1;
    memcpy(out, zmq_msg_data(m), n);
    out[n] = 0;
}

void zap_handle(void *sock)
{
    for (;;) {
        zmq_msg_t f[8];
        int n = read_frames(sock, f, 8);
        if (n == 0) return;
        char version[8] = "", mech[16] = "", address[256] = "", user[PROTO_MAX_NAME + 1] = "";
        bool ok = false;
        if (n >= 6) {
            frame_str(&f[0], version, sizeof version);
            frame_str(&f[3], address, sizeof address);
            frame_str(&f[5], mech, sizeof mech);
            if (strcmp(version, "1.0") == 0 && strcmp(mech, "NULL") == 0)
                ok = peer_allowed(address, user, sizeof user);
            else if (strcmp(version, "1.0") == 0 && strcmp(mech, "CURVE") == 0 && n >= 7)
                ok = key_allowed(zmq_msg_data(&f[6]), zmq_msg_size(&f[6]), user, sizeof user);
        }
        if (!ok)
            log_warn("access refused: %s peer %s%s%s", *mech ? mech : "unknown",
                     *address ? address : "?", *user ? " user " : "", user);
        const char *status = ok ? "200" : "400", *text = ok ? "OK" : "not allowed";
        zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
        if (n >= 2)
            zmq_send(sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
        else
            zmq_send(sock, "", 0, ZMQ_SNDMORE);
        zmq_send(sock, status, 3, ZMQ_SNDMORE);
        zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(sock, ok ? user : "", ok ? strlen(user) : 0, ZMQ_SNDMORE);
        zmq_send(sock, "", 0, 0);
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
    }
}
