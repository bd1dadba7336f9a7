/* focusd's log: one line per message on stderr, each prefixed with its syslog priority in the
 * "<N>" form that journald reads from a service's stderr (sd-daemon(3)), so that `journalctl -p`
 * filters focusd's messages without a syslog connection. Thread-safe: a line is written with a
 * single write(2). Not for protocol replies or anything a client sees. */
#ifndef FOCUS_DAEMON_LOG_H
#define FOCUS_DAEMON_LOG_H

#include <syslog.h>

/* Messages of a priority numerically above level (LOG_ERR .. LOG_DEBUG) are dropped. */
void log_set_level(int level);
int log_level_parse(const char *name); /* "err", "warning", "info", "debug"; -1 if unknown */
void log_msg(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
