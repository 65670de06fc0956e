#include "proto/smtp_cmd.h"

#include <string.h>
#include <strings.h>

/* ---- command lines ---------------------------------------------------- */

static const struct {
    const char *name;
    enum smtp_verb verb;
} verbs[] = {
    {"HELO", SMTP_HELO}, {"EHLO", SMTP_EHLO}, {"MAIL", SMTP_MAIL},
    {"RCPT", SMTP_RCPT}, {"DATA", SMTP_DATA}, {"BDAT", SMTP_BDAT},
    {"RSET", SMTP_RSET}, {"NOOP", SMTP_NOOP}, {"QUIT", SMTP_QUIT},
    {"VRFY", SMTP_VRFY}, {"EXPN", SMTP_EXPN}, {"HELP", SMTP_HELP},
    {"STARTTLS", SMTP_STARTTLS}, {"AUTH", SMTP_AUTH},
};

#define NVERBS (sizeof verbs / sizeof verbs[0])

const char *smtp_verb_name(enum smtp_verb v)
{
    for (size_t i = 0; i < NVERBS; i++)
        if (verbs[i].verb == v)
            return verbs[i].name;
    return "UNKNOWN";
}

static int prefix_ci(const char *s, size_t len, const char *p)
{
    size_t n = strlen(p);
    return len >= n && strncasecmp(s, p, n) == 0;
}

void smtp_cmd_parse(const char *line, size_t len, smtp_cmd *out)
{
    size_t vlen = 0;
    while (vlen < len && line[vlen] != ' ')
        vlen++;
    out->verb = SMTP_UNKNOWN;
    out->arg = line + len;
    out->arg_len = 0;
    for (size_t i = 0; i < NVERBS; i++)
        if (strlen(verbs[i].name) == vlen && strncasecmp(line, verbs[i].name, vlen) == 0)
            out->verb = verbs[i].verb;
    if (out->verb == SMTP_UNKNOWN)
        return;
    size_t at = vlen < len ? vlen + 1 : len;
    out->arg = line + at;
    out->arg_len = len - at;
    /* MAIL FROM: / RCPT TO: — the argument starts after the colon; NULL
       marks the missing keyword so the caller can answer with the syntax. */
    const char *kw = out->verb == SMTP_MAIL ? "FROM:" : out->verb == SMTP_RCPT ? "TO:" : NULL;
    if (!kw)
        return;
    if (!prefix_ci(out->arg, out->arg_len, kw)) {
        out->arg = NULL;
        out->arg_len = 0;
        return;
    }
    out->arg += strlen(kw);
    out->arg_len -= strlen(kw);
}

/* ---- paths and parameters --------------------------------------------- */

/* Index just past the '>' closing the path that starts at s[0] == '<',
   honouring quoted strings in the local part; 0 when there is none. */
static size_t path_end(const char *s, size_t len)
{
    int quoted = 0;
    for (size_t i = 1; i < len; i++) {
        char c = s[i];
        if (quoted && c == '\\' && i + 1 < len) {
            i++;
            continue;
        }
        if (c == '"')
            quoted = !quoted;
        else if (c == '>' && !quoted)
            return i + 1;
    }
    return 0;
}

static int is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
static int valid_keyword(const char *s, size_t n)
{
    if (n == 0 || !is_alnum(s[0]))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!is_alnum(s[i]) && s[i] != '-')
            return 0;
    return 1;
}

/* esmtp-value = 1*(%d33-60 / %d62-126) */
static int valid_value(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 33 || (unsigned char)s[i] > 126 || s[i] == '=')
            return 0;
    return 1;
}

static int parse_size_value(const char *v, size_t n, int64_t *out)
{
    if (n == 0 || n > 18)
        return -1;
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return 0;
}

static int kw_is(const char *k, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(k, name, n) == 0;
}

static int mail_param(smtp_path *p, const char *k, size_t kn, const char *v, size_t vn, int has_v,
                      err *e)
{
    if (kw_is(k, kn, "SIZE")) {
        if (p->size >= 0 || !has_v || parse_size_value(v, vn, &p->size)) {
            err_set(e, SMTP_EPARAM, "SIZE parameter needs one decimal value of at most 18 digits");
            return -1;
        }
        return 0;
    }
    if (kw_is(k, kn, "BODY")) {
        if (has_v && kw_is(v, vn, "7BIT")) {
            p->body_8bit = 0;
            return 0;
        }
        if (has_v && kw_is(v, vn, "8BITMIME")) {
            p->body_8bit = 1;
            return 0;
        }
        err_set(e, SMTP_EPARAM, "BODY parameter must be 7BIT or 8BITMIME");
        return -1;
    }
    if (kw_is(k, kn, "SMTPUTF8")) {
        if (has_v) {
            err_set(e, SMTP_EPARAM, "SMTPUTF8 parameter takes no value");
            return -1;
        }
        p->smtputf8 = 1;
        return 0;
    }
    if (kw_is(k, kn, "AUTH") && has_v)
        return 0; /* RFC 4954 5: the submitter's identity; we use the AUTH one */
    err_set(e, SMTP_EPARAM, "MAIL parameter '%.*s' is not supported", (int)(kn > 64 ? 64 : kn), k);
    return -1;
}

static int parse_params(smtp_path *p, const char *s, size_t len, int is_mail, err *e)
{
    size_t i = 0;
    while (i < len) {
        if (s[i] == ' ') {
            i++;
            continue;
        }
        size_t start = i;
        while (i < len && s[i] != ' ')
            i++;
        const char *param = s + start;
        size_t plen = i - start;
        const char *eq = memchr(param, '=', plen);
        size_t kn = eq ? (size_t)(eq - param) : plen;
        const char *v = eq ? eq + 1 : NULL;
        size_t vn = eq ? plen - kn - 1 : 0;
        if (!valid_keyword(param, kn) || (eq && !valid_value(v, vn))) {
            err_set(e, SMTP_EPARAM, "malformed parameter '%.*s'", (int)(plen > 64 ? 64 : plen), param);
            return -1;
        }
        if (!is_mail) {
            err_set(e, SMTP_EPARAM, "RCPT parameter '%.*s' is not supported", (int)(kn > 64 ? 64 : kn),
                    param);
            return -1;
        }
        if (mail_param(p, param, kn, v, vn, eq != NULL, e))
            return -1;
    }
    return 0;
}

int smtp_path_parse(const char *arg, size_t len, int is_mail, smtp_path *out, err *e)
{
    memset(out, 0, sizeof *out);
    out->size = -1;
    const char *what = is_mail ? "MAIL FROM" : "RCPT TO";
    if (len > 0 && arg[0] == ' ') {
        arg++;
        len--;
    }
    size_t end = len > 0 && arg[0] == '<' ? path_end(arg, len) : 0;
    if (end == 0) {
        err_set(e, SMTP_EPATH, "%s needs an address in angle brackets, e.g. <user@example.com>", what);
        return -1;
    }
    const char *a = arg + 1;
    size_t alen = end - 2;
    /* A source route <@relay1,@relay2:user@domain> is obsolete; RFC 5321
       4.1.1.3 says to accept it and ignore the route. */
    if (alen > 0 && a[0] == '@') {
        const char *colon = memchr(a, ':', alen);
        if (!colon) {
            err_set(e, SMTP_EPATH, "%s: source route without ':'", what);
            return -1;
        }
        alen -= (size_t)(colon + 1 - a);
        a = colon + 1;
    }
    if (alen == 0 && !is_mail) {
        err_set(e, SMTP_EPATH, "RCPT TO:<> is not a valid recipient");
        return -1;
    }
    out->addr = a;
    out->addr_len = alen;
    if (end < len && arg[end] != ' ') {
        err_set(e, SMTP_EPATH, "%s: unexpected text after the closing '>'", what);
        return -1;
    }
    return parse_params(out, arg + end, len - end, is_mail, e);
}

/* ---- envelope bytes --------------------------------------------------- */

/* Length of the UTF-8 sequence at s (valid, shortest form, no surrogates),
   or 0 when it is invalid. */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
    unsigned c = s[0];
    size_t n;
    unsigned min;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4, min = 0x10000;
    else
        return 0;
    if (len < n)
        return 0;
    unsigned cp = c & (0xff >> (n + 1));
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

int smtp_envelope_check(const char *s, size_t len, int utf8, err *e)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len; i++) {
        if (u[i] == 0) {
            err_set(e, ERR_INVALID, "NUL byte at offset %zu", i);
            return -1;
        }
        if (u[i] < 0x20 || u[i] == 0x7f) {
            err_set(e, ERR_INVALID, "control character 0x%02x at offset %zu", u[i], i);
            return -1;
        }
        if (u[i] < 0x80)
            continue;
        if (!utf8) {
            err_set(e, ERR_DENIED, "8-bit byte 0x%02x at offset %zu without SMTPUTF8", u[i], i);
            return -1;
        }
        size_t n = utf8_seq(u + i, len - i);
        if (n == 0) {
            err_set(e, ERR_INVALID, "invalid UTF-8 at offset %zu", i);
            return -1;
        }
        i += n - 1;
    }
    return 0;
}

/* ---- base64 ------------------------------------------------------------- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_val(char c)
{
    const char *p = c ? strchr(b64_alphabet, c) : NULL;
    return p ? (int)(p - b64_alphabet) : -1;
}

int smtp_b64_decode(const char *in, size_t len, buf *out)
{
    if (len == 1 && in[0] == '=')
        return 0;
    if (len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = in[i + (size_t)j];
            if (c == '=' && last && j >= 2) {
                pad++;
                v[j] = 0;
                continue;
            }
            if (pad || (v[j] = b64_val(c)) < 0)
                return -1; /* a character after '=' or outside the alphabet */
        }
        /* Canonical (RFC 4648 3.5): the bits that padding drops must be 0,
           or two texts ("QQ==", "QR==") would decode to the same bytes. */
        if ((pad == 2 && (v[1] & 15)) || (pad == 1 && (v[2] & 3)))
            return -1;
        unsigned char o[3] = {(unsigned char)(v[0] << 2 | v[1] >> 4),
                              (unsigned char)((v[1] & 15) << 4 | v[2] >> 2),
                              (unsigned char)((v[2] & 3) << 6 | v[3])};
        if (buf_append(out, o, (size_t)(3 - pad)))
            return -1;
    }
    return 0;
}

int smtp_b64_encode(const unsigned char *in, size_t len, buf *out)
{
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        size_t rest = len - i;
        if (rest > 1)
            v |= (unsigned)in[i + 1] << 8;
        if (rest > 2)
            v |= in[i + 2];
        char o[4] = {b64_alphabet[v >> 18], b64_alphabet[(v >> 12) & 63],
                     rest > 1 ? b64_alphabet[(v >> 6) & 63] : '=', rest > 2 ? b64_alphabet[v & 63] : '='};
        if (buf_append(out, o, 4))
            return -1;
    }
    return 0;
}

/* ---- DATA / BDAT decoder ------------------------------------------------ */

enum { ST_BOL, ST_DOT, ST_DOTCR, ST_MID, ST_CR };

void smtp_data_init(smtp_data *d, int raw, size_t max_line)
{
    memset(d, 0, sizeof *d);
    d->raw = raw;
    d->state = ST_BOL;
    d->max_line = max_line;
}

static void fail(smtp_data *d, enum smtp_data_err e)
{
    if (d->error == SMTP_DATA_OK)
        d->error = e;
}

static void emit(smtp_data *d, buf *out, const char *p, size_t n)
{
    if (d->error == SMTP_DATA_OK && buf_append(out, p, n))
        fail(d, SMTP_DATA_TOO_BIG);
}

static void count(smtp_data *d, size_t n)
{
    d->line_len += n;
    if (d->line_len > d->max_line)
        fail(d, SMTP_DATA_LINE_TOO_LONG);
}

/* A run of ordinary bytes (neither CR nor LF) starting at in[i]. */
static size_t run_len(const char *in, size_t i, size_t len)
{
    size_t j = i;
    while (j < len && in[j] != '\r' && in[j] != '\n')
        j++;
    return j - i;
}

/* One step of the state machine on the byte at in[i]; returns bytes used. */
static size_t step(smtp_data *d, const char *in, size_t i, size_t len, buf *out)
{
    char c = in[i];
    switch (d->state) {
    case ST_CR:
        if (c == '\n') {
            count(d, 1);
            emit(d, out, "\r\n", 2);
            d->state = ST_BOL;
            d->line_len = 0;
            return 1;
        }
        fail(d, SMTP_DATA_BARE_CR);
        d->state = ST_MID;
        return 0; /* re-read c in the middle of a line */
    case ST_DOTCR:
        if (c == '\n') {
            d->done = 1;
            return 1;
        }
        fail(d, SMTP_DATA_BARE_CR);
        d->state = ST_MID;
        return 0;
    case ST_BOL:
        if (c == '.' && !d->raw) {
            count(d, 1);
            d->state = ST_DOT;
            return 1;
        }
        d->state = ST_MID;
        return 0;
    case ST_DOT:
        if (c == '\r') {
            count(d, 1);
            d->state = ST_DOTCR;
            return 1;
        }
        d->state = ST_MID; /* the stuffed dot is dropped; c starts the text */
        return 0;
    default: /* ST_MID */
        if (c == '\r') {
            count(d, 1);
            d->state = ST_CR;
            return 1;
        }
        if (c == '\n') {
            count(d, 1);
            fail(d, SMTP_DATA_BARE_LF);
            return 1;
        }
        size_t n = run_len(in, i, len);
        count(d, n);
        emit(d, out, in + i, n);
        return n;
    }
}

size_t smtp_data_feed(smtp_data *d, const char *in, size_t len, buf *out)
{
    size_t i = 0;
    while (i < len && !d->done)
        i += step(d, in, i, len, out);
    return i;
}

void smtp_data_finish(smtp_data *d)
{
    if (d->state == ST_CR)
        fail(d, SMTP_DATA_BARE_CR);
}

const char *smtp_data_strerror(enum smtp_data_err e)
{
    switch (e) {
    case SMTP_DATA_OK: return "ok";
    case SMTP_DATA_BARE_LF: return "bare LF (line feed without carriage return) in message data";
    case SMTP_DATA_BARE_CR: return "bare CR (carriage return without line feed) in message data";
    case SMTP_DATA_LINE_TOO_LONG: return "message line too long";
    case SMTP_DATA_TOO_BIG: return "message too big";
    }
    return "error";
}
