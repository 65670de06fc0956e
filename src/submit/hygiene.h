/*
 * hygiene — the header rewrites every outgoing message gets, whatever its
 * ingress: a Message-ID when missing, header lines folded, and the VERP
 * return path. submit.c decides when each applies; this module does the
 * byte work so it can be unit-tested on its own.
 *
 * Folding (RFC 5322 2.1.1, 2.2.3): a physical header line longer than
 * HYG_FOLD_AT octets is folded by inserting CRLF before a white-space
 * character (never producing a line of white space only), so unfolding
 * gives back the same value. A line that cannot be folded to at most
 * HYG_LINE_MAX octets (one word longer than that) is an error naming the
 * field: such a message cannot be sent as is.
 *
 * What it never does: change a header's meaning, or allocate without a
 * bound (every output goes to a caller's bounded buf).
 */
#ifndef PH_SUBMIT_HYGIENE_H
#define PH_SUBMIT_HYGIENE_H

#include "core/buf.h"
#include "core/err.h"

#include <stddef.h>

#define HYG_FOLD_AT 78   /* RFC 5322 "SHOULD" limit, CRLF excluded */
#define HYG_LINE_MAX 998 /* RFC 5322 "MUST" limit, CRLF excluded */
#define HYG_MSGID_MAX 300

/* "<32 hex digits of 128 random bits@hostname>". Returns 0, or -1 when the
   CSPRNG fails or the result does not fit n. */
int hyg_message_id(const char *hostname, char *out, size_t n);
/* Append one header field (its raw bytes, continuation lines included;
   the final CRLF may be missing) to out, folded as described above and
   ending in CRLF. -1 + e (ERR_INVALID naming the field, or ERR_LIMIT when
   out is full). */
int hyg_fold(const char *field, size_t len, buf *out, err *e);
/* VERP return path "bounces+<id>@<bounce_domain>" into out. */
int hyg_return_path(const char *id, const char *bounce_domain, char *out, size_t n);
/* Does any byte of s[0..n) have the high bit set? */
int hyg_has_8bit(const char *s, size_t n);

#endif
