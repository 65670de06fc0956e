/*
 * smtp_cmd — the server-side half of the SMTP protocol engine: command
 * lines, MAIL/RCPT paths with their ESMTP parameters, AUTH base64, and the
 * DATA / BDAT byte-stream decoder.
 *
 * Everything here is a pure function over (pointer, length): no I/O, no
 * allocation except into a caller's bounded buf, no globals. That keeps
 * the parsers testable byte by byte and makes each one a fuzz target.
 * (The client-side reply parser lives in smtp_reply.h, same folder.)
 *
 * What it never does: decide policy (who may send, limits on recipients)
 * or talk to the network; the session in ingress/smtp_server.c does.
 *
 * Limits: the caller bounds the command line before calling; the data
 * decoder enforces the text-line limit (CRLF included, RFC 5321 4.5.3.1.6)
 * and, through the output buf's maximum, the message size.
 */
#ifndef PH_PROTO_SMTP_CMD_H
#define PH_PROTO_SMTP_CMD_H

#include "core/buf.h"
#include "core/err.h"

#include <stddef.h>
#include <stdint.h>

enum smtp_verb {
    SMTP_UNKNOWN = 0,
    SMTP_HELO,
    SMTP_EHLO,
    SMTP_MAIL,
    SMTP_RCPT,
    SMTP_DATA,
    SMTP_BDAT,
    SMTP_RSET,
    SMTP_NOOP,
    SMTP_QUIT,
    SMTP_VRFY,
    SMTP_EXPN,
    SMTP_HELP,
    SMTP_STARTTLS,
    SMTP_AUTH,
};

typedef struct smtp_cmd {
    enum smtp_verb verb;
    const char *arg;  /* after the verb and one space ("" when none); points into the line */
    size_t arg_len;
} smtp_cmd;

/* Split a command line (CRLF already removed) into verb and argument.
   Verbs are case-insensitive. MAIL and RCPT are recognised by "MAIL FROM:"
   and "RCPT TO:" (arg then starts after the colon). Always succeeds;
   unknown verbs give SMTP_UNKNOWN. */
void smtp_cmd_parse(const char *line, size_t len, smtp_cmd *out);
/* Name of a verb for logs ("MAIL"). */
const char *smtp_verb_name(enum smtp_verb v);

/* A reverse-path or forward-path with its ESMTP parameters. */
typedef struct smtp_path {
    const char *addr;   /* mailbox inside <>, source route dropped; points into arg */
    size_t addr_len;    /* 0 = null reverse-path <> */
    int64_t size;       /* SIZE=, -1 when absent */
    int body_8bit;      /* BODY=8BITMIME */
    int smtputf8;       /* SMTPUTF8 */
} smtp_path;

/* Error classes of smtp_path_parse (in e->code): */
enum {
    SMTP_EPATH = 1,  /* syntax of the <path>: 501 5.1.7 / 5.1.3 */
    SMTP_EPARAM = 2, /* unknown or malformed parameter: 555 5.5.4 */
};

/* Parse the argument of MAIL FROM: (is_mail = 1) or RCPT TO: (is_mail = 0).
   One optional space after the colon is tolerated. The null path <> is
   only valid for MAIL. RCPT accepts no parameters (no DSN). Returns 0, or
   -1 with e->code one of the SMTP_E* values and a message naming the part. */
int smtp_path_parse(const char *arg, size_t len, int is_mail, smtp_path *out, err *e);

/* Envelope bytes check: 0 ok; -1 with a reason when s holds a NUL, a
   control character, or (with utf8) invalid UTF-8 (e->code ERR_INVALID),
   or, without utf8, any byte >= 0x80 (ERR_DENIED: 553 5.6.7). */
int smtp_envelope_check(const char *s, size_t len, int utf8, err *e);

/* Strict base64 (RFC 4648, padding required, no white space) into out.
   Returns 0, or -1 when the text is not canonical base64 or the result
   would not fit. "=" alone decodes to the empty string (RFC 4954 4). */
int smtp_b64_decode(const char *in, size_t len, buf *out);
/* Base64 of in appended to out; -1 when it does not fit. */
int smtp_b64_encode(const unsigned char *in, size_t len, buf *out);

/*
 * The DATA decoder. RFC 5321 ends DATA only with <CRLF>.<CRLF> and a line
 * is ended only by CRLF. A bare LF or bare CR is what SMTP smuggling
 * exploits: a receiver that accepts "\n.\n" as the end while the next hop
 * does not sees a different message boundary than that hop. So any bare
 * CR or LF is an error that rejects the message, the decoder keeps
 * scanning for the one true terminator (so the session stays in step with
 * the client), and nothing after the error is kept.
 *
 * The DATA form also removes dot-stuffing (a leading '.' on a line is
 * dropped). The raw form (BDAT chunks, RFC 3030) has no terminator and no
 * stuffing but the same line checks, carried across chunk boundaries.
 */
enum smtp_data_err {
    SMTP_DATA_OK = 0,
    SMTP_DATA_BARE_LF,
    SMTP_DATA_BARE_CR,
    SMTP_DATA_LINE_TOO_LONG,
    SMTP_DATA_TOO_BIG, /* the output buf reached its maximum */
};

typedef struct smtp_data {
    int raw;             /* 1: BDAT (no dot handling, no terminator) */
    int state;           /* private */
    size_t line_len;     /* octets of the current line so far */
    size_t max_line;     /* limit, CRLF included */
    enum smtp_data_err error; /* first error seen */
    int done;            /* DATA: terminator seen */
} smtp_data;

void smtp_data_init(smtp_data *d, int raw, size_t max_line);
/* Feed bytes; the decoded message is appended to out until the first
   error. Returns the bytes consumed: all of len, or (DATA form) up to and
   including the terminator, after which d->done is set and the rest
   belongs to the next command. */
size_t smtp_data_feed(smtp_data *d, const char *in, size_t len, buf *out);
/* End of a raw (BDAT LAST) stream: a pending CR is a bare CR. */
void smtp_data_finish(smtp_data *d);
/* "bare LF" etc. for replies. */
const char *smtp_data_strerror(enum smtp_data_err e);

#endif
