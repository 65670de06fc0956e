/*
 * headers — the RFC 5322 header section of a raw message, parsed in place.
 *
 * hdr_parse() splits data[0..len) (CRLF line endings) into fields without
 * copying: each field records where its name and its whole raw text
 * (continuation lines and the final CRLF included) are. It is bounded:
 * at most max_fields fields and max_bytes of header section, and strict:
 * a field name is 1..76 printable ASCII characters other than ':'; a line
 * that is neither a field nor a continuation, a NUL, or a bare CR or LF is
 * an error naming the line. Bytes >= 0x80 in the header are allowed only
 * when allow_8bit is set (SMTPUTF8 / RFC 6532).
 *
 * The body starts after the empty line (body_off); a message with no
 * empty line has an empty body (body_off == len).
 */
#ifndef PH_SUBMIT_HEADERS_H
#define PH_SUBMIT_HEADERS_H

#include "core/buf.h"
#include "core/err.h"

#include <stddef.h>

typedef struct hdr_field {
    size_t off;      /* start of the field (its name) */
    size_t name_len; /* length of the name */
    size_t len;      /* whole field, including continuation lines and CRLF */
} hdr_field;

typedef struct hdr_section {
    hdr_field *fields;
    size_t count;
    size_t header_len; /* bytes of fields (not counting the empty line) */
    size_t body_off;   /* first body byte */
    int has_8bit;
} hdr_section;

int hdr_parse(const char *data, size_t len, size_t max_bytes, size_t max_fields, int allow_8bit,
              hdr_section *out, err *e);
void hdr_free(hdr_section *h);
/* Index of the first field named `name` (case-insensitive), or -1. */
long hdr_find(const hdr_section *h, const char *data, const char *name);
/* How many fields are named `name`. */
size_t hdr_count(const hdr_section *h, const char *data, const char *name);
/* The unfolded value of field i (leading/trailing white space trimmed,
   CRLF + WSP folded to the WSP) appended to out. -1 if out is too small. */
int hdr_value(const hdr_section *h, const char *data, size_t i, buf *out);

#endif
