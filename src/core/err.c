#include "core/err.h"

#include <stdio.h>
#include <string.h>

void err_set(err *e, int code, const char *fmt, ...)
{
    if (!e)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->code = code;
}

void err_clear(err *e)
{
    if (!e)
        return;
    e->code = ERR_NONE;
    e->msg[0] = '\0';
}

void err_wrap(err *e, const char *fmt, ...)
{
    if (!e)
        return;
    char prefix[ERR_MSG_MAX], old[ERR_MSG_MAX], joined[2 * ERR_MSG_MAX + 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(joined, sizeof joined, "%s: %s", prefix, old);
    memcpy(e->msg, joined, sizeof e->msg - 1);
    e->msg[sizeof e->msg - 1] = '\0';
}
