#include "submit/address.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <idn2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int addr_valid_utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned c = *p;
        size_t n;
        unsigned min;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        if ((size_t)(end - p) <= n)
            return 0;
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            c = (c << 6) | (p[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
        p += n + 1;
    }
    return 1;
}

/* atext of RFC 5322 3.2.3 (ASCII part). */
static int is_atext(unsigned char c)
{
    return isalnum(c) || strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static int check_local(const char *p, size_t n, int allow_utf8, int *utf8, err *e)
{
    if (n == 0 || n > 64) {
        err_set(e, ERR_INVALID, "local part must be 1 to 64 octets");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            *utf8 = 1;
    if (*utf8 && (!allow_utf8 || !addr_valid_utf8(p, n))) {
        err_set(e, ERR_INVALID, allow_utf8 ? "local part is not valid UTF-8"
                                           : "non-ASCII local part needs SMTPUTF8");
        return -1;
    }
    if (p[0] == '"') { /* quoted-string */
        if (n < 2 || p[n - 1] != '"') {
            err_set(e, ERR_INVALID, "unterminated quoted local part");
            return -1;
        }
        for (size_t i = 1; i < n - 1; i++) {
            unsigned char c = (unsigned char)p[i];
            if (c == '\\') {
                if (++i >= n - 1 || (unsigned char)p[i] < 32 || (unsigned char)p[i] == 127) {
                    err_set(e, ERR_INVALID, "bad escape in quoted local part");
                    return -1;
                }
            } else if (c == '"' || (c < 32) || c == 127) {
                err_set(e, ERR_INVALID, "bad character in quoted local part");
                return -1;
            }
        }
        return 0;
    }
    /* dot-atom: no leading, trailing or double dots */
    if (p[0] == '.' || p[n - 1] == '.') {
        err_set(e, ERR_INVALID, "local part starts or ends with a dot");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '.' && p[i + 1] == '.') {
            err_set(e, ERR_INVALID, "local part has two dots in a row");
            return -1;
        }
        if (c != '.' && c < 0x80 && !is_atext(c)) {
            err_set(e, ERR_INVALID, "local part contains '%c' (quote it or remove it)", c);
            return -1;
        }
    }
    return 0;
}

static int check_literal(const char *p, size_t n, char out[256], err *e)
{
    char text[64];
    if (n < 3 || n - 2 >= sizeof text || p[n - 1] != ']') {
        err_set(e, ERR_INVALID, "bad address literal");
        return -1;
    }
    memcpy(text, p + 1, n - 2);
    text[n - 2] = '\0';
    unsigned char bin[16];
    int ok = strncasecmp(text, "IPv6:", 5) == 0 ? inet_pton(AF_INET6, text + 5, bin) == 1
                                                 : inet_pton(AF_INET, text, bin) == 1;
    if (!ok) {
        err_set(e, ERR_INVALID, "address literal [%s] is not an IP address", text);
        return -1;
    }
    memcpy(out, p, n);
    out[n] = '\0';
    return 0;
}

static int check_ldh(const char *d, err *e)
{
    size_t n = strlen(d);
    if (n == 0 || n > 253) {
        err_set(e, ERR_INVALID, "domain must be 1 to 253 octets");
        return -1;
    }
    size_t label = 0;
    for (size_t i = 0; i <= n; i++) {
        char c = d[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || label > 63) {
                err_set(e, ERR_INVALID, "domain '%s' has an empty or over-long label", d);
                return -1;
            }
            if (d[i - 1] == '-' || d[i - label] == '-') {
                err_set(e, ERR_INVALID, "domain label may not start or end with '-'");
                return -1;
            }
            label = 0;
            continue;
        }
        if (!isalnum((unsigned char)c) && c != '-') {
            err_set(e, ERR_INVALID, "domain contains '%c'", c);
            return -1;
        }
        label++;
    }
    if (!strchr(d, '.')) {
        err_set(e, ERR_INVALID, "domain '%s' is not fully qualified", d);
        return -1;
    }
    return 0;
}

int addr_parse_domain(const char *in, size_t len, char out[256], err *e)
{
    if (len == 0 || len > 255) {
        err_set(e, ERR_INVALID, "domain must be 1 to 255 octets");
        return -1;
    }
    if (in[0] == '[')
        return check_literal(in, len, out, e);
    char raw[256];
    memcpy(raw, in, len);
    raw[len] = '\0';
    if (memchr(raw, '\0', len)) {
        err_set(e, ERR_INVALID, "domain contains a NUL byte");
        return -1;
    }
    int ascii = 1;
    for (size_t i = 0; i < len; i++)
        ascii &= (unsigned char)raw[i] < 0x80;
    if (!ascii) {
        if (!addr_valid_utf8(raw, len)) {
            err_set(e, ERR_INVALID, "domain is not valid UTF-8");
            return -1;
        }
        char *alabel = NULL;
        int rc = idn2_to_ascii_8z(raw, &alabel, IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT);
        if (rc != IDN2_OK || strlen(alabel) > 253) {
            err_set(e, ERR_INVALID, "domain is not a valid IDN: %s", idn2_strerror(rc));
            idn2_free(alabel);
            return -1;
        }
        snprintf(raw, sizeof raw, "%s", alabel);
        idn2_free(alabel);
    }
    for (char *p = raw; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (check_ldh(raw, e))
        return -1;
    memcpy(out, raw, strlen(raw) + 1);
    return 0;
}

int addr_parse(const char *in, size_t len, int allow_utf8, addr *out, err *e)
{
    memset(out, 0, sizeof *out);
    if (len == 0) {
        err_set(e, ERR_INVALID, "empty address");
        return -1;
    }
    if (memchr(in, '\0', len) || memchr(in, '\r', len) || memchr(in, '\n', len)) {
        err_set(e, ERR_INVALID, "address contains a control character");
        return -1;
    }
    /* The domain follows the last '@' outside a quoted local part. */
    const char *at = NULL;
    for (const char *p = in + len; p > in; p--)
        if (p[-1] == '@') {
            at = p - 1;
            break;
        }
    if (!at) {
        err_set(e, ERR_INVALID, "address has no '@'");
        return -1;
    }
    size_t local_len = (size_t)(at - in);
    if (check_local(in, local_len, allow_utf8, &out->utf8, e))
        return -1;
    if (addr_parse_domain(at + 1, len - local_len - 1, out->domain, e))
        return -1;
    size_t dlen = strlen(out->domain);
    if (local_len + 1 + dlen > 254) {
        err_set(e, ERR_INVALID, "address longer than 254 octets");
        return -1;
    }
    memcpy(out->full, in, local_len);
    out->full[local_len] = '@';
    memcpy(out->full + local_len + 1, out->domain, dlen + 1);
    out->local_len = local_len;
    return 0;
}
