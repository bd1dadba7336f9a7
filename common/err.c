/* Thread-local error messages (see err.h). */
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char err_buf[1024];
static _Thread_local int err_last = ERR_OK;

int err_set(int code, const char *fmt, ...)
{
    err_last = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return code;
}

int err_prefix(int code, const char *fmt, ...)
{
    char old[sizeof err_buf];
    memcpy(old, err_buf, sizeof old);
    err_last = code;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof err_buf)
        snprintf(err_buf + n, sizeof err_buf - (size_t)n, "%s", old);
    return code;
}

const char *err_msg(void)
{
    return err_buf;
}

int err_code(void)
{
    return err_last;
}

const char *err_code_name(int code)
{
    switch (code) {
    case ERR_OK:
        return "ok";
    case ERR_IO:
        return "io";
    case ERR_FORMAT:
        return "format";
    case ERR_SHAPE:
        return "shape";
    case ERR_MISSING:
        return "missing";
    case ERR_RANGE:
        return "range";
    case ERR_NOMEM:
        return "nomem";
    case ERR_INVALID:
        return "invalid";
    case ERR_DEVICE:
        return "device";
    case ERR_CANCELED:
        return "canceled";
    case ERR_DEVICE_LOST:
        return "device_lost";
    }
    return "unknown";
}
