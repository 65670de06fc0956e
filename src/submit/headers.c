#include "submit/headers.h"

#include "core/mem.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Length of the line starting at p (through its CRLF), or an error. */
static int line_end(const char *data, size_t len, size_t p, size_t *next, size_t line_no, err *e)
{
    for (size_t i = p; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        if (c == '\0') {
            err_set(e, ERR_INVALID, "header line %zu contains a NUL byte", line_no);
            return -1;
        }
        if (c == '\n') {
            err_set(e, ERR_INVALID, "header line %zu ends with a bare LF (CRLF required)", line_no);
            return -1;
        }
        if (c == '\r') {
            if (i + 1 < len && data[i + 1] == '\n') {
                *next = i + 2;
                return 0;
            }
            err_set(e, ERR_INVALID, "header line %zu contains a bare CR", line_no);
            return -1;
        }
    }
    *next = len; /* last line without CRLF: accepted, treated as ending the header */
    return 0;
}

static size_t name_length(const char *data, size_t p, size_t end)
{
    size_t i = p;
    while (i < end) {
        unsigned char c = (unsigned char)data[i];
        if (c == ':')
            return i - p;
        if (c < 33 || c > 126)
            return 0;
        i++;
    }
    return 0;
}

static int check_8bit(const char *data, size_t p, size_t end, int allow, size_t line_no,
                      int *seen, err *e)
{
    for (size_t i = p; i < end; i++) {
        if ((unsigned char)data[i] >= 0x80) {
            *seen = 1;
            if (!allow) {
                err_set(e, ERR_INVALID,
                        "header line %zu contains 8-bit characters but SMTPUTF8 was not used",
                        line_no);
                return -1;
            }
            return 0;
        }
    }
    return 0;
}

int hdr_parse(const char *data, size_t len, size_t max_bytes, size_t max_fields, int allow_8bit,
              hdr_section *out, err *e)
{
    memset(out, 0, sizeof *out);
    size_t cap = 0, p = 0, line_no = 0;
    while (p < len) {
        line_no++;
        size_t next;
        if (line_end(data, len, p, &next, line_no, e))
            goto fail;
        size_t content_end = next >= p + 2 && data[next - 1] == '\n' ? next - 2 : next;
        if (content_end == p) { /* the empty line: end of header */
            out->header_len = p;
            out->body_off = next;
            return 0;
        }
        if (next > max_bytes) {
            err_set(e, ERR_LIMIT, "header section larger than %zu bytes", max_bytes);
            goto fail;
        }
        if (check_8bit(data, p, content_end, allow_8bit, line_no, &out->has_8bit, e))
            goto fail;
        if (data[p] == ' ' || data[p] == '\t') {
            if (out->count == 0) {
                err_set(e, ERR_INVALID, "header line 1 starts with white space (continuation of nothing)");
                goto fail;
            }
            out->fields[out->count - 1].len = next - out->fields[out->count - 1].off;
        } else {
            size_t nl = name_length(data, p, content_end);
            if (nl == 0 || nl > 76) {
                err_set(e, ERR_INVALID, "header line %zu is not a valid 'Name: value' field", line_no);
                goto fail;
            }
            if (out->count == max_fields) {
                err_set(e, ERR_LIMIT, "more than %zu header fields", max_fields);
                goto fail;
            }
            if (out->count == cap) {
                cap = cap ? cap * 2 : 32;
                out->fields = xrealloc(out->fields, cap * sizeof *out->fields);
            }
            out->fields[out->count++] = (hdr_field){.off = p, .name_len = nl, .len = next - p};
        }
        p = next;
    }
    out->header_len = len;
    out->body_off = len;
    return 0;
fail:
    hdr_free(out);
    return -1;
}

void hdr_free(hdr_section *h)
{
    free(h->fields);
    h->fields = NULL;
    h->count = 0;
}

static int name_is(const hdr_field *f, const char *data, const char *name)
{
    size_t n = strlen(name);
    return f->name_len == n && strncasecmp(data + f->off, name, n) == 0;
}

long hdr_find(const hdr_section *h, const char *data, const char *name)
{
    for (size_t i = 0; i < h->count; i++)
        if (name_is(&h->fields[i], data, name))
            return (long)i;
    return -1;
}

size_t hdr_count(const hdr_section *h, const char *data, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < h->count; i++)
        n += name_is(&h->fields[i], data, name);
    return n;
}

int hdr_value(const hdr_section *h, const char *data, size_t i, buf *out)
{
    const hdr_field *f = &h->fields[i];
    const char *p = data + f->off + f->name_len + 1; /* after ':' */
    const char *end = data + f->off + f->len;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    size_t start_len = out->len;
    for (; p < end; p++) {
        if (*p == '\r' || *p == '\n')
            continue; /* unfold: drop CRLF, keep the WSP that follows */
        if (buf_appendc(out, *p))
            return -1;
    }
    while (out->len > start_len && (out->data[out->len - 1] == ' ' || out->data[out->len - 1] == '\t'))
        out->data[--out->len] = '\0';
    return 0;
}
