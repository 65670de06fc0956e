/*
 * smtp_reply — the client half of the SMTP protocol engine: a strict,
 * bounded, incremental parser for (multi-line) SMTP replies (RFC 5321 4.2).
 *
 * What it does: takes bytes as they arrive (any split), and returns one
 * complete reply at a time: the three-digit code, the enhanced status code
 * of RFC 3463 when the first line carries one, and the full text (every
 * line without its CRLF, joined by '\n'). A pure function over explicit
 * lengths, so it is a fuzz target and never touches the network.
 *
 * Strict: every line ends in CRLF (a bare LF or a CR elsewhere is an
 * error), no NUL bytes, the code is [2-5][0-5][0-9], every line of one
 * reply carries the same code, the separator is ' ', '-' or nothing.
 *
 * What it owns: the text buffer of the reply being parsed.
 * Limits: max_line (bytes of one line, CRLF included) and max_total (bytes
 * of one whole reply); past either the parser fails and stays failed.
 */
#ifndef PH_PROTO_SMTP_REPLY_H
#define PH_PROTO_SMTP_REPLY_H

#include "core/buf.h"
#include "core/err.h"

#include <stddef.h>

enum { SMTP_REPLY_ERROR = -1, SMTP_REPLY_MORE = 0, SMTP_REPLY_DONE = 1 };

typedef struct smtp_reply {
    int code;          /* 220, 250, 421 … (0 while parsing) */
    char status[16];   /* enhanced status "5.1.1", or "" */
    buf text;          /* lines (CRLF stripped) joined by '\n' */
    int lines;         /* lines in this reply */
    /* parser state */
    buf line;          /* the partial line being read */
    size_t total;      /* bytes of this reply so far */
    size_t max_line;
    int failed;
} smtp_reply;

void smtp_reply_init(smtp_reply *r, size_t max_line, size_t max_total);
void smtp_reply_free(smtp_reply *r);
/* Forget the finished reply and get ready for the next one. */
void smtp_reply_reset(smtp_reply *r);

/* Feed len bytes. *used is set to the bytes consumed: all of them for
   SMTP_REPLY_MORE, up to the end of the reply for SMTP_REPLY_DONE (the rest
   belongs to the next reply: call smtp_reply_reset() and feed it again).
   SMTP_REPLY_ERROR fills e naming the limit or the malformed byte. */
int smtp_reply_feed(smtp_reply *r, const char *data, size_t len, size_t *used, err *e);

/* Parse an RFC 3463 enhanced status code at the start of text that must
   agree with the reply's class (2/4/5). Returns its length (0 if none)
   and copies it to out. */
size_t smtp_reply_status(const char *text, size_t len, int code, char out[16]);

#endif
