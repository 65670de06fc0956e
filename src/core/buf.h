/*
 * buf — a bounded, binary-safe dynamic buffer.
 *
 * The maximum is fixed when the buffer is created and an append that would
 * cross it fails and leaves the buffer unchanged (curl's dynbuf idea): a
 * line, header or body read off the network can never grow past its limit,
 * by construction. The data is always NUL-terminated (the NUL is not
 * counted in len) so text can be handed to C string functions.
 */
#ifndef PH_CORE_BUF_H
#define PH_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct buf {
    char *data;  /* NULL until the first append */
    size_t len;  /* bytes used, excluding the trailing NUL */
    size_t cap;  /* bytes allocated */
    size_t max;  /* hard limit on len */
} buf;

void buf_init(buf *b, size_t max);
void buf_free(buf *b);
void buf_reset(buf *b);
/* Return 0, or -1 when the result would exceed max (buffer unchanged). */
int buf_append(buf *b, const void *p, size_t n);
int buf_appends(buf *b, const char *s);
int buf_appendc(buf *b, char c);
int buf_appendf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vappendf(buf *b, const char *fmt, va_list ap);
/* The contents as a C string ("" when empty); valid until the next change. */
const char *buf_cstr(const buf *b);
/* Hand the allocation to the caller (NUL-terminated) and reset the buffer. */
char *buf_steal(buf *b, size_t *len);
/* Drop the first n bytes. */
void buf_consume(buf *b, size_t n);

#endif
