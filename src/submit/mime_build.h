/*
 * mime_build — a JSON send request (POST /v1/messages) into an RFC 5322
 * message and its envelope, built with GMime.
 *
 * What it does: validates every field of the request (addresses through
 * address.h, so IDN domains become A-labels; header values free of CR, LF
 * and NUL; custom header names; tags, metadata, send_at) and builds the
 * MIME tree: text/plain, text/html, multipart/alternative when both are
 * present (a text part is generated from the html when only html is
 * given), multipart/related for inline images (content_id) and
 * multipart/mixed for attachments. Non-ASCII display names, subjects and
 * header values are RFC 2047 encoded; bodies get quoted-printable or
 * base64, whichever GMime finds fits; line endings are CRLF.
 *
 * Attachments are checked by extension (blocked_extensions) and by content
 * (libmagic MIME type against blocked_types), so an ELF binary or a shell
 * script named report.pdf is refused.
 *
 * What it owns: nothing between calls except the libmagic handle in a
 * mime_ctx. It never stores or sends anything: the caller hands the result
 * to submit_message().
 *
 * Errors: ERR_INVALID (HTTP 422) or ERR_LIMIT (413) with a message naming
 * the field and the limit, and the field's JSON path ("to[2]",
 * "attachments[0].content") in `field`.
 */
#ifndef PH_SUBMIT_MIME_BUILD_H
#define PH_SUBMIT_MIME_BUILD_H

#include "core/err.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define MIME_FIELD_MAX 128

typedef struct mime_limits {
    size_t max_recipients;      /* to + cc + bcc */
    size_t max_attachments;
    size_t max_attachment_size; /* decoded bytes */
    const char *blocked_extensions; /* "exe,bat,…" (case-insensitive) */
    const char *blocked_types;      /* "application/x-executable,…" */
} mime_limits;

typedef struct mime_ctx mime_ctx;

/* Returns NULL and fills e when libmagic cannot load its database. */
mime_ctx *mime_ctx_new(err *e);
/* Another reference (thread-safe); mime_ctx_free drops one and frees with the last. */
mime_ctx *mime_ctx_ref(mime_ctx *c);
void mime_ctx_free(mime_ctx *c);

typedef struct mime_result {
    char *data;           /* the message, CRLF line endings */
    size_t len;
    char *mail_from;      /* envelope sender: the From address */
    char **rcpts;         /* envelope recipients (to, cc, bcc; duplicates removed) */
    size_t nrcpts;
    char *meta;           /* {"tags":[…],"metadata":{…}} */
    int64_t not_before_ms; /* send_at, 0 = now */
    int unsubscribe;       /* "unsubscribe": true — add one-click List-Unsubscribe */
} mime_result;

int mime_build(mime_ctx *c, const json_t *req, const mime_limits *lim, mime_result *out,
               char field[MIME_FIELD_MAX], err *e);
void mime_result_free(mime_result *r);

/* Plain text from HTML: tags dropped, block elements become line breaks,
   links keep their URL, entities decoded, script/style skipped. Returns a
   new string. */
char *mime_html_to_text(const char *html, size_t len);

/* Is `name`'s extension in the comma-separated list? */
int mime_ext_blocked(const char *name, const char *list);

/* Raise ERR_INVALID when a value holds CR, LF or NUL (header injection). */
int mime_check_header_value(const char *v, size_t len, const char *field, err *e);

#endif
