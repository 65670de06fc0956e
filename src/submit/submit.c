#include "submit/submit.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/server.h"
#include "submit/address.h"
#include "submit/headers.h"
#include "submit/keys.h"

#include <gmime/gmime.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#define MAX_HEADER_FIELDS 1000

typedef struct bucket {
    char key_id[32];
    double tokens;
    int64_t last_ms;
    LIST_ENTRY(bucket) link;
} bucket;

struct submit {
    spool *spool;
    char *hostname;
    size_t max_header;
    size_t max_size;
    size_t in_flight;
    LIST_HEAD(, bucket) buckets;
};

static pthread_once_t gmime_once = PTHREAD_ONCE_INIT;

static void gmime_start(void)
{
    g_mime_init();
}

submit *submit_new(spool *s, const config *cfg)
{
    pthread_once(&gmime_once, gmime_start);
    submit *sb = xcalloc(1, sizeof *sb);
    sb->spool = s;
    sb->hostname = xstrdup(cfg->hostname);
    LIST_INIT(&sb->buckets);
    submit_reload(sb, cfg);
    return sb;
}

void submit_reload(submit *sb, const config *cfg)
{
    sb->max_header = (size_t)cfg->smtp_max_header_size;
    sb->max_size = (size_t)cfg->smtp_max_message_size;
}

void submit_free(submit *sb)
{
    if (!sb)
        return;
    while (!LIST_EMPTY(&sb->buckets)) {
        bucket *b = LIST_FIRST(&sb->buckets);
        LIST_REMOVE(b, link);
        free(b);
    }
    free(sb->hostname);
    free(sb);
}

size_t submit_in_flight(submit *sb)
{
    return sb->in_flight;
}

/* ---- rate limits ----------------------------------------------------- */

static bucket *bucket_for(submit *sb, const spool_key *k)
{
    bucket *b;
    LIST_FOREACH(b, &sb->buckets, link)
        if (strcmp(b->key_id, k->id) == 0)
            return b;
    b = xcalloc(1, sizeof *b);
    snprintf(b->key_id, sizeof b->key_id, "%s", k->id);
    /* A burst of one second's worth (at least one message) is allowed. */
    b->tokens = k->rate > 1 ? k->rate : 1;
    b->last_ms = clock_mono_ms();
    LIST_INSERT_HEAD(&sb->buckets, b, link);
    return b;
}

int64_t submit_rate_take(submit *sb, const spool_key *k, double n)
{
    if (!k || k->rate <= 0)
        return 0;
    bucket *b = bucket_for(sb, k);
    int64_t now = clock_mono_ms();
    double burst = k->rate > 1 ? k->rate : 1;
    b->tokens += (double)(now - b->last_ms) * k->rate / 1000.0;
    if (b->tokens > burst)
        b->tokens = burst;
    b->last_ms = now;
    if (b->tokens >= n) {
        b->tokens -= n;
        return 0;
    }
    int64_t wait = (int64_t)((n - b->tokens) * 1000.0 / k->rate) + 1;
    return wait > 0 ? wait : 1;
}

/* ---- header checks ----------------------------------------------------- */

static const char *domain_of(const char *address)
{
    const char *at = strrchr(address, '@');
    return at ? at + 1 : "";
}

static int check_sender_domain(const spool_key *k, const char *address, const char *what, err *e)
{
    if (!k)
        return 0;
    if (!keys_domain_allowed(k, domain_of(address))) {
        err_set(e, ERR_DENIED, "%s <%s>: key %s may not send for domain %s", what, address, k->id,
                domain_of(address));
        return -1;
    }
    return 0;
}

/* Exactly one From:, every mailbox valid and allowed. The first mailbox's
   domain is copied to from_domain (suppression scope). */
static int check_from(const submit_req *r, const hdr_section *h, char from_domain[256], err *e)
{
    size_t n = hdr_count(h, r->data, "From");
    if (n != 1) {
        err_set(e, ERR_INVALID, n == 0 ? "message has no From: header" : "message has %zu From: headers", n);
        return -1;
    }
    buf v;
    buf_init(&v, 64 * 1024);
    if (hdr_value(h, r->data, (size_t)hdr_find(h, r->data, "From"), &v)) {
        buf_free(&v);
        err_set(e, ERR_LIMIT, "From: header is too long");
        return -1;
    }
    InternetAddressList *list = internet_address_list_parse(NULL, buf_cstr(&v));
    buf_free(&v);
    int count = list ? internet_address_list_length(list) : 0;
    int rc = count > 0 ? 0 : -1;
    if (rc)
        err_set(e, ERR_INVALID, "From: header has no parseable address");
    for (int i = 0; rc == 0 && i < count; i++) {
        InternetAddress *ia = internet_address_list_get_address(list, i);
        if (!INTERNET_ADDRESS_IS_MAILBOX(ia)) {
            err_set(e, ERR_INVALID, "From: header holds a group, not a mailbox");
            rc = -1;
            break;
        }
        const char *a = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
        addr parsed;
        if (!a || addr_parse(a, strlen(a), 1, &parsed, e)) {
            err_wrap(e, "From: address '%s'", a ? a : "");
            rc = -1;
            break;
        }
        if (i == 0)
            memcpy(from_domain, parsed.domain, strlen(parsed.domain) + 1);
        rc = check_sender_domain(r->key, parsed.full, "From:", e);
    }
    if (list)
        g_object_unref(list);
    return rc;
}

/* ---- rewriting ----------------------------------------------------------- */

static int add_received(buf *out, const submit *sb, const submit_req *r, const char *id)
{
    char date[64];
    clock_rfc5322(clock_now_ms(), date, sizeof date);
    const char *helo = r->client_helo && *r->client_helo ? r->client_helo : "localhost";
    /* Received: from HELO ([IP]) by HOST (Posthaste) with PROTO id ID; DATE */
    int rc = buf_appendf(out, "Received: from %.255s (%s%s%s)\r\n\tby %s (Posthaste) with %s id %s;\r\n\t%s\r\n",
                         helo, r->client_ip ? "[" : "", r->client_ip ? r->client_ip : "local",
                         r->client_ip ? "]" : "", sb->hostname, r->protocol ? r->protocol : "LOCAL", id,
                         date);
    return rc;
}

static int add_missing(buf *out, const submit *sb, const submit_req *r, const hdr_section *h,
                       char msgid[300])
{
    if (hdr_find(h, r->data, "Message-ID") < 0) {
        uint8_t raw[16];
        char hex[33];
        if (ids_random(raw, sizeof raw))
            return -1;
        ids_hex(raw, sizeof raw, hex);
        snprintf(msgid, 300, "<%s@%s>", hex, sb->hostname);
        if (buf_appendf(out, "Message-ID: %s\r\n", msgid))
            return -1;
    } else {
        buf v;
        buf_init(&v, 1024);
        if (hdr_value(h, r->data, (size_t)hdr_find(h, r->data, "Message-ID"), &v) == 0)
            snprintf(msgid, 300, "%s", buf_cstr(&v));
        buf_free(&v);
    }
    if (hdr_find(h, r->data, "Date") < 0) {
        char date[64];
        clock_rfc5322(clock_now_ms(), date, sizeof date);
        if (buf_appendf(out, "Date: %s\r\n", date))
            return -1;
    }
    return 0;
}

static int rebuild(const submit *sb, const submit_req *r, const hdr_section *h, const char *id,
                   buf *out, char msgid[300], err *e)
{
    if (add_received(out, sb, r, id) || add_missing(out, sb, r, h, msgid))
        goto too_big;
    for (size_t i = 0; i < h->count; i++) {
        const hdr_field *f = &h->fields[i];
        if (f->name_len == 3 && strncasecmp(r->data + f->off, "Bcc", 3) == 0)
            continue; /* Bcc never leaves */
        if (buf_append(out, r->data + f->off, f->len))
            goto too_big;
        if (f->off + f->len == h->header_len && h->body_off == h->header_len &&
            (f->len < 2 || r->data[f->off + f->len - 1] != '\n'))
            if (buf_appends(out, "\r\n"))
                goto too_big;
    }
    if (buf_appends(out, "\r\n") ||
        buf_append(out, r->data + h->body_off, r->len - h->body_off))
        goto too_big;
    return 0;
too_big:
    err_set(e, ERR_LIMIT, "message larger than %zu bytes after adding trace headers", (size_t)out->max);
    return -1;
}

static char *build_meta(const submit_req *r, const char *msgid, err *e)
{
    json_t *meta = NULL;
    if (r->meta && *r->meta) {
        json_error_t jerr;
        meta = json_loads(r->meta, 0, &jerr);
        if (!json_is_object(meta)) {
            json_decref(meta);
            err_set(e, ERR_INVALID, "message metadata is not a JSON object");
            return NULL;
        }
    } else {
        meta = json_object();
    }
    if (*msgid)
        json_object_set_new(meta, "message_id", json_string(msgid));
    char *text = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    return text;
}

/* ---- commit ---------------------------------------------------------------- */

typedef struct pending {
    submit *sb;
    submit_cb cb;
    void *arg;
    unsigned char *suppressed;
    size_t nrcpts;
    int64_t started_ms;
} pending;

static void on_committed(void *arg, const char *id, const err *e)
{
    pending *p = arg;
    p->sb->in_flight--;
    submit_result res = {.id = id, .nrcpts = p->nrcpts, .suppressed = p->suppressed};
    p->cb(p->arg, e ? NULL : &res, e);
    free(p->suppressed);
    free(p);
}

static int mark_suppressed(submit *sb, const submit_req *r, const char *scope, unsigned char *out,
                           err *e)
{
    for (size_t i = 0; i < r->nrcpts; i++) {
        int s = spool_is_suppressed(sb->spool, r->rcpts[i], scope, NULL, 0, e);
        if (s < 0)
            return -1;
        out[i] = (unsigned char)s;
    }
    return 0;
}

int submit_message(submit *sb, const submit_req *r, submit_cb cb, void *arg, err *e)
{
    if (r->nrcpts == 0) {
        err_set(e, ERR_INVALID, "no recipients");
        return -1;
    }
    if (r->mail_from && *r->mail_from && check_sender_domain(r->key, r->mail_from, "MAIL FROM", e))
        return -1;
    if (memchr(r->data, '\0', r->len)) {
        err_set(e, ERR_INVALID, "message contains a NUL byte");
        return -1;
    }
    hdr_section h;
    if (hdr_parse(r->data, r->len, sb->max_header, MAX_HEADER_FIELDS, r->smtputf8, &h, e))
        return -1;
    char from_domain[256] = "", msgid[300] = "", id[ID_MSG_LEN + 1];
    buf out;
    buf_init(&out, sb->max_size + 64 * 1024);
    unsigned char *suppressed = xcalloc(r->nrcpts, 1);
    char *meta = NULL;
    int rc = -1;
    if (check_from(r, &h, from_domain, e))
        goto done;
    if (ids_message(id)) {
        err_set(e, ERR_IO, "no randomness for a message id");
        goto done;
    }
    if (rebuild(sb, r, &h, id, &out, msgid, e) || !(meta = build_meta(r, msgid, e)) ||
        mark_suppressed(sb, r, from_domain, suppressed, e))
        goto done;

    pending *p = xcalloc(1, sizeof *p);
    *p = (pending){.sb = sb, .cb = cb, .arg = arg, .suppressed = suppressed, .nrcpts = r->nrcpts,
                   .started_ms = clock_mono_ms()};
    spool_submission m = {
        .id = id,
        .mail_from = r->mail_from ? r->mail_from : "",
        .rcpts = r->rcpts,
        .suppressed = suppressed,
        .nrcpts = r->nrcpts,
        .data = out.data,
        .len = out.len,
        .ingress = r->ingress,
        .key_id = r->key ? r->key->id : NULL,
        .meta = meta,
        .not_before_ms = r->not_before_ms,
    };
    if (spool_submit(sb->spool, &m, on_committed, p)) {
        free(p);
        err_set(e, ERR_BUSY, "server is shutting down");
        goto done;
    }
    suppressed = NULL; /* owned by p now */
    sb->in_flight++;
    rc = 0;
done:
    free(suppressed);
    free(meta);
    buf_free(&out);
    hdr_free(&h);
    return rc;
}

/* ---- serve component ----------------------------------------------------- */

static int component_start(server *srv, err *e)
{
    (void)e;
    srv->submit = submit_new(srv->spool, srv->cfg);
    return 0;
}

static size_t component_busy(server *srv)
{
    return srv->submit ? submit_in_flight(srv->submit) : 0;
}

static void component_reload(server *srv, const config *cfg)
{
    submit_reload(srv->submit, cfg);
}

static void component_stop(server *srv)
{
    submit_free(srv->submit);
    srv->submit = NULL;
}

const server_component submit_component = {
    .name = "submit",
    .start = component_start,
    .busy = component_busy,
    .reload = component_reload,
    .stop = component_stop,
};
