#include "submit/hygiene.h"

#include "core/ids.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

int hyg_message_id(const char *hostname, char *out, size_t n)
{
    uint8_t raw[16];
    char hex[33];
    if (ids_random(raw, sizeof raw))
        return -1;
    ids_hex(raw, sizeof raw, hex);
    int w = snprintf(out, n, "<%s@%s>", hex, hostname);
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

int hyg_return_path(const char *id, const char *bounce_domain, char *out, size_t n)
{
    int w = snprintf(out, n, "bounces+%s@%s", id, bounce_domain);
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

int hyg_has_8bit(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 1;
    return 0;
}

static int is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* Where to break line[0..len): the last white space at or before
   HYG_FOLD_AT that has non-white text before it (on this line) and after
   it, else the first such white space after HYG_FOLD_AT. 0 = nowhere. */
static size_t fold_point(const char *line, size_t len)
{
    size_t first_text = 0;
    while (first_text < len && is_wsp(line[first_text]))
        first_text++;
    size_t last_text = len;
    while (last_text > 0 && is_wsp(line[last_text - 1]))
        last_text--;
    size_t best = 0;
    for (size_t i = first_text + 1; i < last_text; i++) {
        if (!is_wsp(line[i]) || is_wsp(line[i - 1]))
            continue;
        if (i <= HYG_FOLD_AT)
            best = i;
        else
            return best ? best : i;
    }
    return best;
}

static int field_name_len(const char *field, size_t len)
{
    const char *colon = memchr(field, ':', len);
    return colon ? (int)(colon - field) : (int)(len < 40 ? len : 40);
}

/* Append one physical line (no CRLF), folded. */
static int fold_line(const char *field, size_t flen, const char *line, size_t len, buf *out, err *e)
{
    while (len > HYG_FOLD_AT) {
        size_t at = fold_point(line, len);
        if (at == 0 || at > HYG_LINE_MAX) {
            if (len <= HYG_LINE_MAX)
                break; /* long but legal: nowhere better to fold */
            err_set(e, ERR_INVALID,
                    "header %.*s: a line of %zu octets cannot be folded to %d (RFC 5322 2.1.1)",
                    field_name_len(field, flen), field, len, HYG_LINE_MAX);
            return -1;
        }
        if (buf_append(out, line, at) || buf_appends(out, "\r\n"))
            goto full;
        line += at;
        len -= at;
    }
    if (buf_append(out, line, len) || buf_appends(out, "\r\n"))
        goto full;
    return 0;
full:
    err_set(e, ERR_LIMIT, "message larger than %zu bytes after folding its header", out->max);
    return -1;
}

int hyg_fold(const char *field, size_t len, buf *out, err *e)
{
    const char *p = field, *end = field + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        size_t n = (size_t)(eol - p);
        if (n > 0 && p[n - 1] == '\r')
            n--;
        if (n > 0 || nl) /* keep no empty trailing piece */
            if (fold_line(field, len, p, n, out, e))
                return -1;
        p = nl ? nl + 1 : end;
    }
    return 0;
}
