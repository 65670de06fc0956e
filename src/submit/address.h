/*
 * address — RFC 5321 mailbox validation and normalisation.
 *
 * addr_parse() accepts exactly `local-part@domain` (no brackets, no display
 * name): a dot-atom or quoted-string local part of at most 64 octets, and a
 * domain that is either LDH labels (1..63 octets each, 253 in all), or an
 * address literal [IPv4] / [IPv6:…]. A domain with non-ASCII characters is
 * an IDN: it is converted with libidn2 (IDNA 2008, UTS#46 transitional off)
 * to its A-label form, so the spool, the route lookup and the suppression
 * list all see one spelling. A non-ASCII local part is allowed only with
 * allow_utf8 (SMTPUTF8, RFC 6531) and must be valid UTF-8. The result's
 * domain is lower-cased; the local part is kept as given.
 */
#ifndef PH_SUBMIT_ADDRESS_H
#define PH_SUBMIT_ADDRESS_H

#include "core/err.h"

#include <stddef.h>

#define ADDR_MAX 320 /* 64 + 1 + 255 */

typedef struct addr {
    char full[ADDR_MAX + 1];    /* normalised local@domain */
    char domain[256];           /* normalised (A-label, lower case) */
    size_t local_len;
    int utf8;                   /* needs SMTPUTF8 (non-ASCII local part) */
} addr;

int addr_parse(const char *in, size_t len, int allow_utf8, addr *out, err *e);
/* Domain only (e.g. a key's sender domain): normalised into out. */
int addr_parse_domain(const char *in, size_t len, char out[256], err *e);
/* Is s[0..len) valid UTF-8 (no overlongs, no surrogates)? */
int addr_valid_utf8(const char *s, size_t len);

#endif
