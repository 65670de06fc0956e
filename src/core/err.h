/*
 * err — error values that carry a message.
 *
 * A failing function returns -1 (or NULL) and fills a caller-owned `err`
 * with a sentence naming the input and the limit that was hit. Callers
 * either add context and propagate, or report it. Never holds secrets.
 */
#ifndef PH_CORE_ERR_H
#define PH_CORE_ERR_H

#include <stdarg.h>

#define ERR_MSG_MAX 512

typedef struct err {
    int code;              /* subsystem-specific class, 0 when unset */
    char msg[ERR_MSG_MAX]; /* human-readable, NUL-terminated */
} err;

/* Error classes shared across subsystems; ingress maps them to replies. */
enum {
    ERR_NONE = 0,
    ERR_INVALID,   /* bad input from the caller */
    ERR_NOTFOUND,  /* the named object does not exist */
    ERR_FULL,      /* storage full: SMTP 452 4.3.1, HTTP 507 */
    ERR_IO,        /* I/O or database failure */
    ERR_BUSY,      /* temporarily unavailable: retry */
    ERR_DENIED,    /* not allowed */
    ERR_LIMIT,     /* a configured limit was exceeded */
};

void err_set(err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void err_clear(err *e);
/* Prepend context: "context: previous message". */
void err_wrap(err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
