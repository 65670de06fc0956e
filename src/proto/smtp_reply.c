#include "proto/smtp_reply.h"

#include <string.h>

void smtp_reply_init(smtp_reply *r, size_t max_line, size_t max_total)
{
    memset(r, 0, sizeof *r);
    buf_init(&r->text, max_total);
    buf_init(&r->line, max_line);
    r->max_line = max_line;
}

void smtp_reply_free(smtp_reply *r)
{
    buf_free(&r->text);
    buf_free(&r->line);
}

void smtp_reply_reset(smtp_reply *r)
{
    buf_reset(&r->text);
    buf_reset(&r->line);
    r->code = 0;
    r->status[0] = '\0';
    r->lines = 0;
    r->total = 0;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* 1-3 digits; returns how many, 0 if none. */
static size_t digits(const char *s, size_t len, size_t max)
{
    size_t n = 0;
    while (n < len && n < max + 1 && is_digit(s[n]))
        n++;
    return n >= 1 && n <= max ? n : 0;
}

size_t smtp_reply_status(const char *text, size_t len, int code, char out[16])
{
    out[0] = '\0';
    if (len < 5 || text[0] != '0' + code / 100 || text[1] != '.')
        return 0;
    size_t a = digits(text + 2, len - 2, 3);
    if (!a || 2 + a >= len || text[2 + a] != '.')
        return 0;
    size_t b = digits(text + 3 + a, len - 3 - a, 3);
    size_t n = 3 + a + b;
    if (!b || (n < len && text[n] != ' '))
        return 0;
    memcpy(out, text, n);
    out[n] = '\0';
    return n;
}

static int fail(smtp_reply *r, err *e, const char *why)
{
    r->failed = 1;
    err_set(e, ERR_INVALID, "malformed SMTP reply: %s", why);
    return SMTP_REPLY_ERROR;
}

/* One complete line (CRLF included) is in r->line: check and record it.
   Returns SMTP_REPLY_DONE on the last line of a reply. */
static int take_line(smtp_reply *r, err *e)
{
    const char *s = r->line.data;
    size_t n = r->line.len;
    if (n < 2 || s[n - 2] != '\r')
        return fail(r, e, "line does not end in CRLF");
    n -= 2;
    if (memchr(s, '\r', n) || memchr(s, '\0', n))
        return fail(r, e, "CR or NUL inside a line");
    if (n < 3 || !is_digit(s[0]) || !is_digit(s[1]) || !is_digit(s[2]) || s[0] < '2' || s[0] > '5' ||
        s[1] > '5')
        return fail(r, e, "line does not start with a reply code");
    if (n > 3 && s[3] != ' ' && s[3] != '-')
        return fail(r, e, "reply code not followed by ' ' or '-'");
    int code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    if (r->lines > 0 && code != r->code)
        return fail(r, e, "lines of one reply carry different codes");
    if (r->lines == 0 && n > 4) {
        r->code = code;
        smtp_reply_status(s + 4, n - 4, code, r->status);
    }
    r->code = code;
    if ((r->lines > 0 && buf_appendc(&r->text, '\n')) || buf_append(&r->text, s, n)) {
        r->failed = 1;
        err_set(e, ERR_LIMIT, "SMTP reply longer than %zu bytes", r->text.max);
        return SMTP_REPLY_ERROR;
    }
    r->lines++;
    int last = n == 3 || s[3] == ' ';
    buf_reset(&r->line);
    return last ? SMTP_REPLY_DONE : SMTP_REPLY_MORE;
}

int smtp_reply_feed(smtp_reply *r, const char *data, size_t len, size_t *used, err *e)
{
    *used = 0;
    if (r->failed)
        return fail(r, e, "parser already failed");
    size_t off = 0;
    while (off < len) {
        const char *nl = memchr(data + off, '\n', len - off);
        size_t take = nl ? (size_t)(nl - (data + off)) + 1 : len - off;
        if (buf_append(&r->line, data + off, take)) {
            r->failed = 1;
            err_set(e, ERR_LIMIT, "SMTP reply line longer than %zu bytes", r->max_line);
            return SMTP_REPLY_ERROR;
        }
        off += take;
        r->total += take;
        if (r->total > r->text.max + 2 * (size_t)(r->lines + 1)) {
            r->failed = 1;
            err_set(e, ERR_LIMIT, "SMTP reply longer than %zu bytes", r->text.max);
            return SMTP_REPLY_ERROR;
        }
        if (!nl)
            break;
        int rc = take_line(r, e);
        if (rc != SMTP_REPLY_MORE) {
            *used = off;
            return rc;
        }
    }
    *used = off;
    return SMTP_REPLY_MORE;
}
