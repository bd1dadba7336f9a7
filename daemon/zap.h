/* Access control through ZAP (ZeroMQ RFC 27), served by the reactor on
 * inproc://zeromq.zap.01. ipc peers arrive with the NULL mechanism; libzmq appends the peer's
 * SO_PEERCRED credentials to the ZAP request's address as ":uid:gid:pid" (stream_engine_base),
 * and the handler admits the configured users and groups (all peers when none are
 * configured), checking a user's supplementary groups too. tcp peers arrive with CURVE and are
 * admitted when their public key is in the authorised keys file. The reply's User-Id (the uid,
 * or the key in Z85) travels on every message of the connection. Not for the socket file's own
 * mode and group (reactor.c sets those). */
#ifndef FOCUS_DAEMON_ZAP_H
#define FOCUS_DAEMON_ZAP_H

#include "daemon/config.h"

#define ZAP_DOMAIN "focusd"

/* Resolves the allow lists and reads the authorised keys from c; a reload calls it again.
 * Unknown user or group names are errors naming them. */
int zap_configure(const struct config *c);
/* Binds the handler's socket; before any ROUTER binds. */
int zap_open(void *zctx, void **sock);
/* Answers every pending request on sock without blocking. */
void zap_handle(void *sock);
/* Reads a Z85 secret key (40 characters; a zcert file's quoted secret-key works too). */
int zap_read_key_file(const char *path, char key[41]);
void zap_free(void);

#endif
