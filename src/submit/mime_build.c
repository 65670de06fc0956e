#include "submit/mime_build.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/mem.h"
#include "submit/address.h"

#include <ctype.h>
#include <gmime/gmime.h>
#include <magic.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TAG_MAX 128          /* longest tag, bytes */
#define HEADER_VALUE_MAX 998 /* RFC 5322 line limit for one custom header value */

/* One context serves the loop thread (batch) and the workers (single
   sends): libmagic's handle is not safe for concurrent use, so it is
   locked; everything else mime_build touches is per call. */
struct mime_ctx {
    magic_t magic;
    pthread_mutex_t lock;
    atomic_int refs; /* a job on a worker keeps the context alive past api_stop */
};

mime_ctx *mime_ctx_new(err *e)
{
    g_mime_init(); /* reference-counted: safe to call again */
    mime_ctx *c = xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    atomic_init(&c->refs, 1);
    c->magic = magic_open(MAGIC_MIME_TYPE | MAGIC_NO_CHECK_COMPRESS);
    if (!c->magic || magic_load(c->magic, NULL) != 0) {
        err_set(e, ERR_IO, "libmagic: cannot load its database: %s",
                c->magic ? magic_error(c->magic) : "magic_open failed");
        mime_ctx_free(c);
        return NULL;
    }
    return c;
}

mime_ctx *mime_ctx_ref(mime_ctx *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

void mime_ctx_free(mime_ctx *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) > 1)
        return;
    if (c->magic)
        magic_close(c->magic);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void mime_result_free(mime_result *r)
{
    free(r->data);
    free(r->mail_from);
    for (size_t i = 0; i < r->nrcpts; i++)
        free(r->rcpts[i]);
    free(r->rcpts);
    free(r->meta);
    memset(r, 0, sizeof *r);
}

/* ---- small checks --------------------------------------------------------- */

/* JSON paths are cut at MIME_FIELD_MAX; a cut path still points the way. */
static void pathf(char out[MIME_FIELD_MAX], const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pathf(char out[MIME_FIELD_MAX], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, MIME_FIELD_MAX, fmt, ap);
    va_end(ap);
}

/* Fill the JSON path of the offending field and the error in one step. */
static int fail(char field[MIME_FIELD_MAX], const char *path, err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(char field[MIME_FIELD_MAX], const char *path, err *e, int code, const char *fmt, ...)
{
    pathf(field, "%s", path);
    va_list ap;
    va_start(ap, fmt);
    char msg[ERR_MSG_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    err_set(e, code, "%s: %s", path, msg);
    return -1;
}

int mime_check_header_value(const char *v, size_t len, const char *field, err *e)
{
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0') {
            err_set(e, ERR_INVALID, "%s: contains %s at byte %zu (header injection is refused)", field,
                    v[i] == '\r' ? "CR" : v[i] == '\n' ? "LF" : "NUL", i);
            return -1;
        }
    }
    return 0;
}

/* A header-bound string: CR, LF and NUL refused. */
static int header_string(const json_t *v, const char *path, char field[MIME_FIELD_MAX], err *e,
                         const char **out)
{
    if (!json_is_string(v))
        return fail(field, path, e, ERR_INVALID, "must be a string");
    if (mime_check_header_value(json_string_value(v), json_string_length(v), path, e)) {
        pathf(field, "%s", path);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

/* Whether item is one of the comma-separated entries of list (case and
   surrounding blanks ignored). */
static int in_list(const char *item, const char *list)
{
    size_t ilen = strlen(item);
    for (const char *p = list ? list : ""; *p;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        while (n && isspace((unsigned char)*p))
            p++, n--;
        while (n && isspace((unsigned char)p[n - 1]))
            n--;
        if (n == ilen && strncasecmp(p, item, n) == 0)
            return 1;
        if (!comma)
            break;
        p = comma + 1;
    }
    return 0;
}

int mime_ext_blocked(const char *name, const char *list)
{
    const char *dot = strrchr(name, '.');
    if (!dot || !dot[1] || !list)
        return 0;
    return in_list(dot + 1, list);
}

/* ---- addresses ---------------------------------------------------------------- */

typedef struct mailbox {
    char name[HEADER_VALUE_MAX + 1]; /* display name, "" for none */
    addr a;
} mailbox;

static int set_name(mailbox *mb, const char *s, size_t n, const char *path, char field[MIME_FIELD_MAX],
                    err *e)
{
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"')
        s++, n -= 2; /* "Name" <addr> */
    if (n > HEADER_VALUE_MAX)
        return fail(field, path, e, ERR_LIMIT, "display name longer than %d bytes", HEADER_VALUE_MAX);
    memcpy(mb->name, s, n);
    mb->name[n] = '\0';
    return 0;
}

/* A string "Name <user@example.com>": split into name and address. */
static int split_angle(mailbox *mb, const char *s, const char *path, char **email,
                       char field[MIME_FIELD_MAX], err *e)
{
    const char *lt = strchr(s, '<');
    const char *gt = lt ? strchr(lt, '>') : NULL;
    if (!gt || gt[1])
        return fail(field, path, e, ERR_INVALID, "'%s' is not \"Name <address>\"", s);
    size_t nlen = (size_t)(lt - s);
    while (nlen && isspace((unsigned char)s[nlen - 1]))
        nlen--;
    if (set_name(mb, s, nlen, path, field, e))
        return -1;
    *email = xstrndup(lt + 1, (size_t)(gt - lt - 1));
    return 0;
}

/* "user@example.com", "Name <user@example.com>" or {"email":…, "name":…}. */
static int parse_mailbox(const json_t *v, const char *path, mailbox *mb, char field[MIME_FIELD_MAX],
                         err *e)
{
    const char *email = NULL, *name = NULL;
    char pathbuf[MIME_FIELD_MAX];
    char *owned = NULL;
    mb->name[0] = '\0';
    if (json_is_object(v)) {
        const char *k;
        json_t *ignored;
        json_object_foreach((json_t *)v, k, ignored)
            if (strcmp(k, "email") && strcmp(k, "name")) {
                pathf(pathbuf, "%s.%s", path, k);
                return fail(field, pathbuf, e, ERR_INVALID, "unknown field");
            }
        const json_t *jn = json_object_get(v, "name");
        pathf(pathbuf, "%s.name", path);
        if (jn && !json_is_null(jn) &&
            (header_string(jn, pathbuf, field, e, &name) || set_name(mb, name, strlen(name), pathbuf, field, e)))
            return -1;
        pathf(pathbuf, "%s.email", path);
        const json_t *je = json_object_get(v, "email");
        if (!je)
            return fail(field, pathbuf, e, ERR_INVALID, "is required");
        if (header_string(je, pathbuf, field, e, &email))
            return -1;
    } else {
        pathf(pathbuf, "%s", path);
        if (header_string(v, path, field, e, &email))
            return -1;
        if (strchr(email, '<')) {
            if (split_angle(mb, email, path, &owned, field, e))
                return -1;
            email = owned;
        }
    }
    int rc = addr_parse(email, strlen(email), 0, &mb->a, e);
    free(owned);
    if (rc) {
        pathf(field, "%s", pathbuf);
        err_wrap(e, "%s", pathbuf);
        e->code = ERR_INVALID;
        return -1;
    }
    return 0;
}

#define MB_NAME(mb) ((mb)->name[0] ? (mb)->name : NULL)

typedef struct envelope {
    char **rcpts;
    size_t n, cap, max;
} envelope;

static int env_add(envelope *env, const char *a, const char *path, char field[MIME_FIELD_MAX], err *e)
{
    for (size_t i = 0; i < env->n; i++)
        if (strcasecmp(env->rcpts[i], a) == 0)
            return 0; /* the same mailbox gets one copy */
    if (env->n >= env->max)
        return fail(field, path, e, ERR_LIMIT, "more than %zu recipients (to + cc + bcc; [api] max_recipients)",
                    env->max);
    if (env->n == env->cap) {
        env->cap = env->cap ? env->cap * 2 : 8;
        env->rcpts = xrealloc(env->rcpts, env->cap * sizeof *env->rcpts);
    }
    env->rcpts[env->n++] = xstrdup(a);
    return 0;
}

/* to / cc / bcc: a string, an object or an array of them. */
static int add_recipients(GMimeMessage *msg, const json_t *req, const char *key, GMimeAddressType type,
                          envelope *env, char field[MIME_FIELD_MAX], err *e)
{
    const json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v))
        return 0;
    char path[MIME_FIELD_MAX];
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_is_array(v) ? json_array_get(v, i) : v;
        if (json_is_array(v))
            pathf(path, "%s[%zu]", key, i);
        else
            pathf(path, "%s", key);
        mailbox mb;
        if (parse_mailbox(item, path, &mb, field, e) || env_add(env, mb.a.full, path, field, e))
            return -1;
        if (type != GMIME_ADDRESS_TYPE_BCC)
            g_mime_message_add_mailbox(msg, type, MB_NAME(&mb), mb.a.full);
    }
    return 0;
}

/* ---- bodies ------------------------------------------------------------------- */

static GMimeObject *text_part(const char *subtype, const char *text)
{
    /* The bytes stay UTF-8 as given (g_mime_text_part_set_text would
       recode to the "best" charset, e.g. ISO-8859-1). */
    GMimeTextPart *tp = g_mime_text_part_new_with_subtype(subtype);
    GMimeStream *stream = g_mime_stream_mem_new_with_buffer(text, strlen(text));
    GMimeDataWrapper *w = g_mime_data_wrapper_new_with_stream(stream, GMIME_CONTENT_ENCODING_DEFAULT);
    g_mime_part_set_content(GMIME_PART(tp), w);
    g_object_unref(w);
    g_object_unref(stream);
    g_mime_text_part_set_charset(tp, "utf-8");
    /* 7bit when it fits, else quoted-printable for mostly-ASCII, base64 otherwise. */
    GMimeContentEncoding enc =
        g_mime_part_get_best_content_encoding(GMIME_PART(tp), GMIME_ENCODING_CONSTRAINT_7BIT);
    g_mime_part_set_content_encoding(GMIME_PART(tp), enc);
    return GMIME_OBJECT(tp);
}

static void entity(buf *out, const char *name, size_t n)
{
    static const struct {
        const char *n, *v;
    } table[] = {{"amp", "&"}, {"lt", "<"}, {"gt", ">"}, {"quot", "\""}, {"apos", "'"}, {"nbsp", " "},
                 {"copy", "\xc2\xa9"}, {"reg", "\xc2\xae"}, {"mdash", "\xe2\x80\x94"},
                 {"ndash", "\xe2\x80\x93"}, {"hellip", "\xe2\x80\xa6"}};
    if (n > 1 && name[0] == '#') {
        long cp = name[1] == 'x' || name[1] == 'X' ? strtol(name + 2, NULL, 16) : strtol(name + 1, NULL, 10);
        gchar utf8[8];
        if (cp > 0 && cp < 0x110000 && !(cp >= 0xD800 && cp <= 0xDFFF)) {
            int len = g_unichar_to_utf8((gunichar)cp, utf8);
            buf_append(out, utf8, (size_t)len);
        }
        return;
    }
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strlen(table[i].n) == n && strncmp(table[i].n, name, n) == 0) {
            buf_appends(out, table[i].v);
            return;
        }
    buf_appendc(out, '&');
    buf_append(out, name, n);
    buf_appendc(out, ';');
}

static int tag_is(const char *tag, size_t n, const char *name)
{
    size_t l = strlen(name);
    return n == l && strncasecmp(tag, name, l) == 0;
}

/* Block-level elements end a line; the text generator needs no full HTML
   parser because the result is a readable fallback, not a rendering. */
static int tag_breaks(const char *t, size_t n)
{
    static const char *const blocks[] = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4",
                                         "h5", "h6", "table", "ul", "ol", "blockquote", "hr", "pre"};
    for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++)
        if (tag_is(t, n, blocks[i]))
            return 1;
    return 0;
}

/* Copy the href="…" value of an <a> tag. */
static void tag_href(const char *p, const char *end, buf *href)
{
    const char *h = p;
    while (h + 5 < end && strncasecmp(h, "href=", 5) != 0)
        h++;
    if (h + 5 >= end)
        return;
    h += 5;
    char q = (*h == '"' || *h == '\'') ? *h++ : ' ';
    const char *s = h;
    while (h < end && *h != q && *h != '>')
        h++;
    buf_append(href, s, (size_t)(h - s));
}

static void append_space(buf *out)
{
    if (out->len && out->data[out->len - 1] != ' ' && out->data[out->len - 1] != '\n')
        buf_appendc(out, ' ');
}

char *mime_html_to_text(const char *html, size_t len)
{
    buf out, href;
    buf_init(&out, len * 2 + 64);
    buf_init(&href, 4096);
    const char *p = html, *end = html + len;
    const char *skip_until = NULL; /* inside <script>/<style> */
    while (p < end) {
        if (*p == '<') {
            const char *gt = memchr(p, '>', (size_t)(end - p));
            if (!gt)
                break;
            const char *t = p + 1;
            int closing = *t == '/';
            if (closing)
                t++;
            size_t n = 0;
            while (t + n < gt && isalnum((unsigned char)t[n]))
                n++;
            if (skip_until) {
                if (closing && tag_is(t, n, skip_until))
                    skip_until = NULL;
            } else if (!closing && (tag_is(t, n, "script") || tag_is(t, n, "style") || tag_is(t, n, "head"))) {
                skip_until = tag_is(t, n, "script") ? "script" : tag_is(t, n, "style") ? "style" : "head";
            } else if (closing && tag_is(t, n, "li")) {
                /* the next <li> or the list's end breaks the line */
            } else if (tag_breaks(t, n)) {
                while (out.len && out.data[out.len - 1] == ' ')
                    out.len--, out.data[out.len] = '\0';
                buf_appendc(&out, '\n');
                if (!closing && tag_is(t, n, "li"))
                    buf_appends(&out, "- ");
            } else if (tag_is(t, n, "a")) {
                if (!closing) {
                    buf_reset(&href);
                    tag_href(t, gt, &href);
                } else if (href.len) {
                    buf_appendf(&out, " (%s)", buf_cstr(&href));
                    buf_reset(&href);
                }
            }
            p = gt + 1;
            continue;
        }
        if (skip_until) {
            p++;
            continue;
        }
        if (*p == '&') {
            const char *semi = memchr(p, ';', (size_t)(end - p) < 12 ? (size_t)(end - p) : 12);
            if (semi) {
                entity(&out, p + 1, (size_t)(semi - p - 1));
                p = semi + 1;
                continue;
            }
        }
        if (isspace((unsigned char)*p))
            append_space(&out);
        else
            buf_appendc(&out, *p);
        p++;
    }
    buf_free(&href);
    /* Collapse runs of blank lines to one. */
    buf clean;
    buf_init(&clean, out.len + 2);
    int newlines = 0;
    for (size_t i = 0; i < out.len; i++) {
        char c = out.data[i];
        if (c == '\n') {
            if (clean.len == 0 || ++newlines > 2)
                continue;
        } else if (c == ' ' && (clean.len == 0 || clean.data[clean.len - 1] == '\n')) {
            continue; /* no leading spaces on a line */
        } else {
            newlines = 0;
        }
        buf_appendc(&clean, c);
    }
    buf_free(&out);
    while (clean.len && (clean.data[clean.len - 1] == '\n' || clean.data[clean.len - 1] == ' '))
        clean.data[--clean.len] = '\0';
    buf_appendc(&clean, '\n');
    return buf_steal(&clean, NULL);
}

/* ---- attachments ----------------------------------------------------------------- */

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict standard base64 (padding optional, whitespace ignored). Returns
   the decoded length, or -1 at the first bad character (*bad = offset). */
static long b64_decode(const char *in, size_t len, unsigned char *out, size_t *bad)
{
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0, pad = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\r' || c == '\n' || c == '\t')
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64val(c);
        if (v < 0 || pad) {
            *bad = i;
            return -1;
        }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (pad > 2 || bits >= 6) {
        *bad = len;
        return -1;
    }
    return (long)o;
}

static int valid_content_type(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || !slash[1])
        return 0;
    for (const char *p = s; *p; p++)
        if (p != slash && !(isalnum((unsigned char)*p) || strchr("!#$&-^_.+", *p)))
            return 0;
    return 1;
}

typedef struct attachment {
    GMimeObject *part;
    int is_inline;
} attachment;

static int attach_meta(const json_t *a, const char *path, char field[MIME_FIELD_MAX], err *e,
                       const char **filename, const char **ctype, const char **cid)
{
    char p[MIME_FIELD_MAX];
    const char *k;
    json_t *ignored;
    json_object_foreach((json_t *)a, k, ignored)
        if (strcmp(k, "filename") && strcmp(k, "content_type") && strcmp(k, "content") &&
            strcmp(k, "content_id")) {
            pathf(p, "%s.%s", path, k);
            return fail(field, p, e, ERR_INVALID, "unknown field");
        }
    pathf(p, "%s.filename", path);
    const json_t *fn = json_object_get(a, "filename");
    if (!fn)
        return fail(field, p, e, ERR_INVALID, "is required");
    if (header_string(fn, p, field, e, filename))
        return -1;
    if (!**filename || strchr(*filename, '/') || strchr(*filename, '\\'))
        return fail(field, p, e, ERR_INVALID, "must be a plain, non-empty file name");
    *ctype = NULL;
    *cid = NULL;
    const json_t *ct = json_object_get(a, "content_type");
    pathf(p, "%s.content_type", path);
    if (ct && !json_is_null(ct)) {
        if (header_string(ct, p, field, e, ctype))
            return -1;
        if (!valid_content_type(*ctype))
            return fail(field, p, e, ERR_INVALID, "'%s' is not a MIME type (type/subtype)", *ctype);
    }
    const json_t *ci = json_object_get(a, "content_id");
    pathf(p, "%s.content_id", path);
    if (ci && !json_is_null(ci)) {
        if (header_string(ci, p, field, e, cid))
            return -1;
        for (const char *c = *cid; *c; c++)
            if (!isgraph((unsigned char)*c) || *c == '<' || *c == '>')
                return fail(field, p, e, ERR_INVALID, "must be printable ASCII without <>");
        if (!**cid)
            return fail(field, p, e, ERR_INVALID, "must not be empty");
    }
    return 0;
}

static int build_attachment(mime_ctx *c, const json_t *a, size_t idx, const mime_limits *lim,
                            attachment *out, char field[MIME_FIELD_MAX], err *e)
{
    char path[MIME_FIELD_MAX], p[MIME_FIELD_MAX];
    pathf(path, "attachments[%zu]", idx);
    if (!json_is_object(a))
        return fail(field, path, e, ERR_INVALID, "must be an object");
    const char *filename, *ctype, *cid;
    if (attach_meta(a, path, field, e, &filename, &ctype, &cid))
        return -1;
    pathf(p, "%s.filename", path);
    if (mime_ext_blocked(filename, lim->blocked_extensions))
        return fail(field, p, e, ERR_INVALID, "attachment '%s' has a blocked file extension", filename);
    pathf(p, "%s.content", path);
    const json_t *jc = json_object_get(a, "content");
    if (!json_is_string(jc))
        return fail(field, p, e, ERR_INVALID, "is required (base64 string)");
    size_t enclen = json_string_length(jc);
    if (enclen / 4 * 3 > lim->max_attachment_size + 3)
        return fail(field, p, e, ERR_LIMIT, "attachment '%s' is larger than %zu bytes ([api] max_attachment_size)",
                    filename, lim->max_attachment_size);
    unsigned char *data = xmalloc(enclen / 4 * 3 + 4);
    size_t bad = 0;
    long n = b64_decode(json_string_value(jc), enclen, data, &bad);
    if (n < 0) {
        free(data);
        return fail(field, p, e, ERR_INVALID, "is not valid base64 (at character %zu)", bad);
    }
    if ((size_t)n > lim->max_attachment_size) {
        free(data);
        return fail(field, p, e, ERR_LIMIT, "attachment '%s' is larger than %zu bytes ([api] max_attachment_size)",
                    filename, lim->max_attachment_size);
    }
    /* Content decides, not the name: an ELF or a script named report.pdf is caught here. */
    char sniffed_buf[128];
    pthread_mutex_lock(&c->lock);
    const char *got = magic_buffer(c->magic, data, (size_t)n);
    if (got)
        snprintf(sniffed_buf, sizeof sniffed_buf, "%s", got); /* the handle's buffer is reused by the next call */
    pthread_mutex_unlock(&c->lock);
    const char *sniffed = got ? sniffed_buf : NULL;
    if (sniffed && in_list(sniffed, lim->blocked_types)) {
        free(data);
        return fail(field, p, e, ERR_INVALID, "attachment '%s' is %s content, which is blocked", filename,
                    sniffed);
    }
    const char *type = ctype ? ctype : (sniffed ? sniffed : "application/octet-stream");
    GMimeContentType *gct = g_mime_content_type_parse(NULL, type);
    GMimePart *part = g_mime_part_new_with_type(g_mime_content_type_get_media_type(gct),
                                                g_mime_content_type_get_media_subtype(gct));
    g_object_unref(gct);
    GMimeStream *stream = g_mime_stream_mem_new_with_buffer((const char *)data, (size_t)n);
    free(data);
    GMimeDataWrapper *w = g_mime_data_wrapper_new_with_stream(stream, GMIME_CONTENT_ENCODING_DEFAULT);
    g_object_unref(stream);
    g_mime_part_set_content(part, w);
    g_object_unref(w);
    g_mime_part_set_content_encoding(part, GMIME_CONTENT_ENCODING_BASE64);
    g_mime_object_set_disposition(GMIME_OBJECT(part), cid ? "inline" : "attachment");
    g_mime_part_set_filename(part, filename);
    if (cid)
        g_mime_part_set_content_id(part, cid);
    out->part = GMIME_OBJECT(part);
    out->is_inline = cid != NULL;
    return 0;
}

/* ---- headers, tags, metadata ------------------------------------------------------- */

static const char *const reserved_headers[] = {
    "From", "To", "Cc", "Bcc", "Reply-To", "Subject", "Sender", "Date", "MIME-Version",
    "Received", "Return-Path", "DKIM-Signature", "Content-Type", "Content-Transfer-Encoding",
    "Content-Disposition", "Content-ID",
};

static int custom_headers(GMimeMessage *msg, const json_t *req, char field[MIME_FIELD_MAX], err *e)
{
    const json_t *h = json_object_get(req, "headers");
    if (!h || json_is_null(h))
        return 0;
    if (!json_is_object(h))
        return fail(field, "headers", e, ERR_INVALID, "must be an object of name: value strings");
    const char *name;
    json_t *v;
    char path[MIME_FIELD_MAX];
    json_object_foreach((json_t *)h, name, v) {
        pathf(path, "headers.%.100s", name);
        size_t nlen = strlen(name);
        if (nlen == 0 || nlen > 76)
            return fail(field, path, e, ERR_INVALID, "header name must be 1 to 76 characters");
        for (const char *c = name; *c; c++)
            if (*c <= ' ' || *c > '~' || *c == ':')
                return fail(field, path, e, ERR_INVALID, "header name may hold printable ASCII only, no ':'");
        for (size_t i = 0; i < sizeof reserved_headers / sizeof reserved_headers[0]; i++)
            if (strcasecmp(name, reserved_headers[i]) == 0 || strncasecmp(name, "Resent-", 7) == 0)
                return fail(field, path, e, ERR_INVALID, "'%s' is set by its own field or by the server", name);
        const char *value;
        if (header_string(v, path, field, e, &value))
            return -1;
        if (json_string_length(v) > HEADER_VALUE_MAX)
            return fail(field, path, e, ERR_LIMIT, "value longer than %d bytes", HEADER_VALUE_MAX);
        g_mime_object_append_header(GMIME_OBJECT(msg), name, value, "utf-8");
    }
    return 0;
}

static int build_meta(const json_t *req, char **out, char field[MIME_FIELD_MAX], err *e)
{
    json_t *meta = json_object();
    const json_t *tags = json_object_get(req, "tags");
    int rc = -1;
    char path[MIME_FIELD_MAX];
    if (tags && !json_is_null(tags)) {
        if (!json_is_array(tags)) {
            fail(field, "tags", e, ERR_INVALID, "must be an array of strings");
            goto out;
        }
        for (size_t i = 0; i < json_array_size(tags); i++) {
            const json_t *t = json_array_get(tags, i);
            pathf(path, "tags[%zu]", i);
            if (!json_is_string(t) || json_string_length(t) == 0 || json_string_length(t) > TAG_MAX) {
                fail(field, path, e, ERR_INVALID, "must be a string of 1 to %d bytes", TAG_MAX);
                goto out;
            }
        }
        json_object_set(meta, "tags", (json_t *)tags);
    }
    const json_t *md = json_object_get(req, "metadata");
    if (md && !json_is_null(md)) {
        if (!json_is_object(md)) {
            fail(field, "metadata", e, ERR_INVALID, "must be an object of string values");
            goto out;
        }
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)md, k, v) {
            if (!json_is_string(v)) {
                pathf(path, "metadata.%.100s", k);
                fail(field, path, e, ERR_INVALID, "must be a string");
                goto out;
            }
        }
        json_object_set(meta, "metadata", (json_t *)md);
    }
    *out = json_dumps(meta, JSON_COMPACT);
    rc = 0;
out:
    json_decref(meta);
    return rc;
}

/* ---- the tree ---------------------------------------------------------------------- */

static const char *const known_fields[] = {
    "from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "headers",
    "attachments", "tags", "metadata", "send_at", "unsubscribe",
};

static int check_known(const json_t *req, char field[MIME_FIELD_MAX], err *e)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)req, k, v) {
        size_t i = 0;
        while (i < sizeof known_fields / sizeof known_fields[0] && strcmp(k, known_fields[i]))
            i++;
        if (i == sizeof known_fields / sizeof known_fields[0])
            return fail(field, k, e, ERR_INVALID, "unknown field");
    }
    return 0;
}

static int body_strings(const json_t *req, const char **text, const char **html, char field[MIME_FIELD_MAX],
                        err *e)
{
    const json_t *t = json_object_get(req, "text"), *h = json_object_get(req, "html");
    *text = *html = NULL;
    if (t && !json_is_null(t)) {
        if (!json_is_string(t))
            return fail(field, "text", e, ERR_INVALID, "must be a string");
        *text = json_string_value(t);
    }
    if (h && !json_is_null(h)) {
        if (!json_is_string(h))
            return fail(field, "html", e, ERR_INVALID, "must be a string");
        *html = json_string_value(h);
    }
    if (!*text && !*html)
        return fail(field, "text", e, ERR_INVALID, "one of text or html is required");
    return 0;
}

/* text, html or both as multipart/alternative (text generated from html). */
static GMimeObject *body_part(const char *text, const char *html)
{
    if (!html)
        return text_part("plain", text);
    char *generated = NULL;
    if (!text)
        text = generated = mime_html_to_text(html, strlen(html));
    GMimeMultipart *alt = g_mime_multipart_new_with_subtype("alternative");
    GMimeObject *tp = text_part("plain", text), *hp = text_part("html", html);
    g_mime_multipart_add(alt, tp);
    g_mime_multipart_add(alt, hp);
    g_object_unref(tp);
    g_object_unref(hp);
    free(generated);
    return GMIME_OBJECT(alt);
}

static int attachments(mime_ctx *c, const json_t *req, const mime_limits *lim, GMimeObject **root,
                       char field[MIME_FIELD_MAX], err *e)
{
    const json_t *list = json_object_get(req, "attachments");
    if (!list || json_is_null(list))
        return 0;
    if (!json_is_array(list))
        return fail(field, "attachments", e, ERR_INVALID, "must be an array");
    size_t n = json_array_size(list);
    if (n > lim->max_attachments)
        return fail(field, "attachments", e, ERR_LIMIT, "%zu attachments, more than %zu ([api] max_attachments)",
                    n, lim->max_attachments);
    GMimeMultipart *related = NULL, *mixed = NULL;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        attachment a = {0};
        if ((rc = build_attachment(c, json_array_get(list, i), i, lim, &a, field, e)))
            break;
        GMimeMultipart **into = a.is_inline ? &related : &mixed;
        if (!*into)
            *into = g_mime_multipart_new_with_subtype(a.is_inline ? "related" : "mixed");
        g_mime_multipart_add(*into, a.part);
        g_object_unref(a.part);
    }
    if (rc) {
        if (related)
            g_object_unref(related);
        if (mixed)
            g_object_unref(mixed);
        return -1;
    }
    /* related = [body, inline images…]; mixed = [related-or-body, attachments…] */
    if (related) {
        g_mime_multipart_insert(related, 0, *root);
        g_object_unref(*root);
        *root = GMIME_OBJECT(related);
    }
    if (mixed) {
        g_mime_multipart_insert(mixed, 0, *root);
        g_object_unref(*root);
        *root = GMIME_OBJECT(mixed);
    }
    return 0;
}

static int send_at(const json_t *req, int64_t *out, char field[MIME_FIELD_MAX], err *e)
{
    const json_t *v = json_object_get(req, "send_at");
    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || clock_parse_rfc3339(json_string_value(v), out))
        return fail(field, "send_at", e, ERR_INVALID, "must be an RFC 3339 date-time (2026-01-02T15:04:05Z)");
    return 0;
}

static int headers_part(GMimeMessage *msg, const json_t *req, mailbox *from, envelope *env,
                        char field[MIME_FIELD_MAX], err *e)
{
    const json_t *jf = json_object_get(req, "from");
    if (!jf)
        return fail(field, "from", e, ERR_INVALID, "is required");
    if (parse_mailbox(jf, "from", from, field, e))
        return -1;
    g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_FROM, MB_NAME(from), from->a.full);
    if (add_recipients(msg, req, "to", GMIME_ADDRESS_TYPE_TO, env, field, e) ||
        add_recipients(msg, req, "cc", GMIME_ADDRESS_TYPE_CC, env, field, e) ||
        add_recipients(msg, req, "bcc", GMIME_ADDRESS_TYPE_BCC, env, field, e))
        return -1;
    if (env->n == 0)
        return fail(field, "to", e, ERR_INVALID, "at least one recipient (to, cc or bcc) is required");
    const json_t *rt = json_object_get(req, "reply_to");
    if (rt && !json_is_null(rt)) {
        mailbox mb;
        if (parse_mailbox(rt, "reply_to", &mb, field, e))
            return -1;
        g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_REPLY_TO, MB_NAME(&mb), mb.a.full);
    }
    const json_t *js = json_object_get(req, "subject");
    const char *subject = "";
    if (js && !json_is_null(js) && header_string(js, "subject", field, e, &subject))
        return -1;
    if (strlen(subject) > HEADER_VALUE_MAX)
        return fail(field, "subject", e, ERR_LIMIT, "longer than %d bytes", HEADER_VALUE_MAX);
    g_mime_message_set_subject(msg, subject, "utf-8");
    return custom_headers(msg, req, field, e);
}

static void serialise(GMimeMessage *msg, mime_result *out)
{
    GMimeFormatOptions *opts = g_mime_format_options_new();
    g_mime_format_options_set_newline_format(opts, GMIME_NEWLINE_FORMAT_DOS);
    GMimeStream *mem = g_mime_stream_mem_new();
    g_mime_object_write_to_stream(GMIME_OBJECT(msg), opts, mem);
    GByteArray *ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
    out->data = xmalloc(ba->len + 1);
    memcpy(out->data, ba->data, ba->len);
    out->data[ba->len] = '\0';
    out->len = ba->len;
    g_object_unref(mem);
    g_mime_format_options_free(opts);
}

int mime_build(mime_ctx *c, const json_t *req, const mime_limits *lim, mime_result *out,
               char field[MIME_FIELD_MAX], err *e)
{
    memset(out, 0, sizeof *out);
    field[0] = '\0';
    if (!json_is_object(req))
        return fail(field, "", e, ERR_INVALID, "the request must be a JSON object");
    const char *text, *html;
    if (check_known(req, field, e) || body_strings(req, &text, &html, field, e))
        return -1;
    const json_t *unsub = json_object_get(req, "unsubscribe");
    if (unsub && !json_is_boolean(unsub) && !json_is_null(unsub))
        return fail(field, "unsubscribe", e, ERR_INVALID, "must be true or false");
    out->unsubscribe = json_is_true(unsub);
    envelope env = {.max = lim->max_recipients};
    mailbox from;
    GMimeMessage *msg = g_mime_message_new(TRUE);
    GMimeObject *root = NULL;
    int rc = -1;
    if (headers_part(msg, req, &from, &env, field, e) || send_at(req, &out->not_before_ms, field, e) ||
        build_meta(req, &out->meta, field, e))
        goto done;
    root = body_part(text, html);
    if (attachments(c, req, lim, &root, field, e))
        goto done;
    g_mime_message_set_mime_part(msg, root);
    serialise(msg, out);
    out->mail_from = xstrdup(from.a.full);
    out->rcpts = env.rcpts;
    out->nrcpts = env.n;
    env.rcpts = NULL;
    env.n = 0;
    rc = 0;
done:
    if (root)
        g_object_unref(root);
    g_object_unref(msg);
    for (size_t i = 0; i < env.n; i++)
        free(env.rcpts[i]);
    free(env.rcpts);
    if (rc) {
        free(out->meta);
        out->meta = NULL;
    }
    return rc;
}
