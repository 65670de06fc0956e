#include "submit/submit.h"

#include "outcome/outcome.h"
#include "outcome/unsubscribe.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/server.h"
#include "submit/address.h"
#include "submit/dkim.h"
#include "submit/headers.h"
#include "submit/hygiene.h"
#include "submit/keys.h"
#include "submit/sign_pool.h"

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

/* The return-path rule of one [sender] section (copied: the config that
   submit_new() saw need not outlive the pipeline). */
typedef struct return_path {
    char *domain;
    char *bounce_domain;
    int subdomains;
    struct return_path *next;
} return_path;

struct submit {
    spool *spool;
    char *hostname;
    size_t max_header;
    size_t max_size;
    size_t in_flight;
    LIST_HEAD(, bucket) buckets;
    dkimsig_keyset *dkim;  /* NULL when the keys failed to load (setup_err) */
    signpool *pool;        /* NULL: sign on the caller's thread */
    return_path *return_paths;
    err setup_err;
    /* One-click unsubscribe (outcome/unsubscribe.h). */
    unsigned char unsub_secret[UNSUB_SECRET_LEN];
    int unsub_ok;
    char *public_url, *unsub_mailto;
    metrics *metrics; /* the server's registry, or NULL (CLI, tests) */
    void (*on_queued)(void *arg);
    void *on_queued_arg;
};

static pthread_once_t gmime_once = PTHREAD_ONCE_INIT;

static void gmime_start(void)
{
    g_mime_init();
}

static void load_return_paths(submit *sb, const config *cfg)
{
    for (const cfg_sender *snd = cfg->senders; snd; snd = snd->next) {
        if (!*snd->bounce_domain)
            continue;
        return_path *rp = xcalloc(1, sizeof *rp);
        *rp = (return_path){.domain = xstrdup(snd->name), .bounce_domain = xstrdup(snd->bounce_domain),
                            .subdomains = snd->sign_subdomains, .next = sb->return_paths};
        sb->return_paths = rp;
    }
}

/* The bounce domain for mail from `domain` (same matching as [sender]). */
static const char *bounce_domain_for(const submit *sb, const char *domain)
{
    const return_path *best = NULL;
    for (const return_path *rp = sb->return_paths; rp; rp = rp->next) {
        size_t dl = strlen(rp->domain), fl = strlen(domain);
        int exact = strcasecmp(rp->domain, domain) == 0;
        int sub = rp->subdomains && fl > dl + 1 && domain[fl - dl - 1] == '.' &&
                  strcasecmp(domain + fl - dl, rp->domain) == 0;
        if ((exact || sub) && (!best || strlen(rp->domain) > strlen(best->domain)))
            best = rp;
    }
    return best ? best->bounce_domain : NULL;
}

submit *submit_new(spool *s, const config *cfg)
{
    pthread_once(&gmime_once, gmime_start);
    submit *sb = xcalloc(1, sizeof *sb);
    sb->spool = s;
    sb->hostname = xstrdup(cfg->hostname);
    LIST_INIT(&sb->buckets);
    submit_reload(sb, cfg);
    /* A key that fails to load (loose mode, too short, unreadable) must not
       let mail go out unsigned: the error is kept, serve refuses to start,
       and every submission fails with it (submit_ready). */
    sb->dkim = dkimsig_load(cfg, &sb->setup_err);
    load_return_paths(sb, cfg);
    err ue;
    sb->unsub_ok = unsub_secret(cfg, sb->unsub_secret, &ue) == 0;
    if (!sb->unsub_ok)
        log_ev(LOG_WARN, "unsubscribe_unavailable", "{s:s}", "error", ue.msg);
    sb->public_url = xstrdup(cfg->public_url);
    sb->unsub_mailto = xstrdup(cfg->unsubscribe_mailto);
    return sb;
}

int submit_ready(const submit *sb, err *e)
{
    if (sb->dkim)
        return 0;
    *e = sb->setup_err;
    return -1;
}

int submit_start_signing(submit *sb, struct event_base *base, int threads, err *e)
{
    if (threads <= 0)
        return 0;
    sb->pool = signpool_new(base, threads, e);
    return sb->pool ? 0 : -1;
}

int submit_offload(submit *sb, void (*work)(void *), void (*done)(void *), void *arg)
{
    if (sb->pool)
        return signpool_run(sb->pool, work, done, arg);
    work(arg);
    done(arg);
    return 0;
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
    signpool_free(sb->pool);
    dkimsig_free(sb->dkim);
    free(sb->public_url);
    free(sb->unsub_mailto);
    while (sb->return_paths) {
        return_path *rp = sb->return_paths;
        sb->return_paths = rp->next;
        free(rp->domain);
        free(rp->bounce_domain);
        free(rp);
    }
    free(sb->hostname);
    free(sb);
}

void submit_on_queued(submit *sb, void (*fn)(void *arg), void *arg)
{
    sb->on_queued = fn;
    sb->on_queued_arg = arg;
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
        if (hyg_message_id(sb->hostname, msgid, HYG_MSGID_MAX))
            return -1;
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
    /* MIME-Version is needed once the message uses MIME: a Content-* field,
       or 8-bit body text that only a Content-Type can label. */
    if (hdr_find(h, r->data, "MIME-Version") < 0 &&
        (hdr_find(h, r->data, "Content-Type") >= 0 ||
         hdr_find(h, r->data, "Content-Transfer-Encoding") >= 0 ||
         hyg_has_8bit(r->data + h->body_off, r->len - h->body_off)))
        if (buf_appends(out, "MIME-Version: 1.0\r\n"))
            return -1;
    /* Unlabelled 8-bit text would be read as US-ASCII; say what it is. */
    size_t body_len = r->len - h->body_off;
    if (hdr_find(h, r->data, "Content-Type") < 0 && hyg_has_8bit(r->data + h->body_off, body_len) &&
        addr_valid_utf8(r->data + h->body_off, body_len) &&
        hdr_find(h, r->data, "Content-Transfer-Encoding") < 0)
        if (buf_appends(out, "Content-Type: text/plain; charset=utf-8\r\n"
                             "Content-Transfer-Encoding: 8bit\r\n"))
            return -1;
    return 0;
}

/* One field of the client's header into out: folded at 78 and refused
   past 998 (hygiene.h), ending in CRLF. Signatures the client already
   added are kept byte for byte: refolding would break any made with
   "simple" header canonicalization. */
static int copy_field(const char *f, size_t len, size_t name_len, buf *out, err *e)
{
    int verbatim = (name_len == 14 && strncasecmp(f, "DKIM-Signature", 14) == 0) ||
                   (name_len > 4 && strncasecmp(f, "ARC-", 4) == 0);
    if (!verbatim)
        return hyg_fold(f, len, out, e);
    if (buf_append(out, f, len) || (f[len - 1] != '\n' && buf_appends(out, "\r\n"))) {
        err_set(e, ERR_LIMIT, "message larger than %zu bytes after adding trace headers", out->max);
        return -1;
    }
    return 0;
}

/* "X-Posthaste-Unsubscribe: yes" lets SMTP and sendmail clients ask for the
   same List-Unsubscribe headers as the API's "unsubscribe": true. */
static int wants_unsubscribe(const submit_req *r, const hdr_section *h)
{
    if (r->unsubscribe || (r->key && r->key->bulk))
        return 1;
    long i = hdr_find(h, r->data, "X-Posthaste-Unsubscribe");
    if (i < 0)
        return 0;
    buf v;
    buf_init(&v, 64);
    int yes = hdr_value(h, r->data, (size_t)i, &v) == 0 &&
              (strcasecmp(buf_cstr(&v), "yes") == 0 || strcasecmp(buf_cstr(&v), "true") == 0);
    buf_free(&v);
    return yes;
}

static int is_named(const char *data, const hdr_field *f, const char *name)
{
    size_t n = strlen(name);
    return f->name_len == n && strncasecmp(data + f->off, name, n) == 0;
}

/* RFC 2369 List-Unsubscribe + RFC 8058 List-Unsubscribe-Post, with a token
   bound to (recipient, sender domain, message id). One recipient only: the
   link unsubscribes exactly the person who received it. */
static int add_unsubscribe(const submit *sb, const submit_req *r, const char *from_domain, const char *id,
                           buf *out, err *e)
{
    if (r->nrcpts != 1) {
        err_set(e, ERR_INVALID, "unsubscribe links need exactly one recipient per message "
                                "(send one message per recipient, e.g. with /v1/messages/batch)");
        return -1;
    }
    if (!sb->unsub_ok) {
        err_set(e, ERR_IO, "unsubscribe secret unavailable (see the unsubscribe_unavailable log line)");
        return -1;
    }
    unsub_claims c;
    snprintf(c.recipient, sizeof c.recipient, "%s", r->rcpts[0]);
    snprintf(c.domain, sizeof c.domain, "%s", from_domain);
    snprintf(c.message_id, sizeof c.message_id, "%s", id);
    char token[UNSUB_TOKEN_MAX];
    if (unsub_token(sb->unsub_secret, &c, token, sizeof token)) {
        err_set(e, ERR_INVALID, "recipient too long for an unsubscribe link");
        return -1;
    }
    size_t base = strlen(sb->public_url);
    while (base && sb->public_url[base - 1] == '/')
        base--;
    int rc = buf_appendf(out, "List-Unsubscribe: <%.*s/u/%s>", (int)base, sb->public_url, token);
    if (!rc && *sb->unsub_mailto)
        rc = buf_appendf(out, ",\r\n <mailto:unsubscribe+%s@%s>", token, sb->unsub_mailto);
    if (!rc)
        rc = buf_appends(out, "\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    if (rc)
        err_set(e, ERR_LIMIT, "message too large for its unsubscribe headers");
    return rc;
}

static int rebuild(const submit *sb, const submit_req *r, const hdr_section *h, const char *id,
                   const char *from_domain, buf *out, char msgid[300], err *e)
{
    int unsub = wants_unsubscribe(r, h);
    if (add_received(out, sb, r, id) || add_missing(out, sb, r, h, msgid))
        goto too_big;
    if (unsub && add_unsubscribe(sb, r, from_domain, id, out, e))
        return -1;
    for (size_t i = 0; i < h->count; i++) {
        const hdr_field *f = &h->fields[i];
        if (is_named(r->data, f, "Bcc") || is_named(r->data, f, "X-Posthaste-Unsubscribe"))
            continue; /* Bcc never leaves; our own request header neither */
        if (unsub && (is_named(r->data, f, "List-Unsubscribe") || is_named(r->data, f, "List-Unsubscribe-Post")))
            continue; /* ours replace any the client wrote */
        if (copy_field(r->data + f->off, f->len, f->name_len, out, e))
            return -1;
    }
    size_t body_len = r->len - h->body_off;
    if (buf_appends(out, "\r\n") || buf_append(out, r->data + h->body_off, body_len))
        goto too_big;
    /* SMTP can only carry a body that ends in CRLF, and DKIM hashes it so. */
    if (body_len && (body_len < 2 || memcmp(r->data + r->len - 2, "\r\n", 2) != 0) &&
        buf_appends(out, "\r\n"))
        goto too_big;
    return 0;
too_big:
    err_set(e, ERR_LIMIT, "message larger than %zu bytes after adding trace headers", (size_t)out->max);
    return -1;
}

static char *build_meta(const submit_req *r, const char *msgid, const char *original_sender, err *e)
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
    if (original_sender)
        json_object_set_new(meta, "original_sender", json_string(original_sender));
    char *text = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    return text;
}

/* ---- commit ---------------------------------------------------------------- */

/* Everything a submission needs after submit_message() has returned (the
   caller's buffers are gone by then), from signing to the commit's callback. */
typedef struct job {
    submit *sb;
    submit_cb cb;
    void *arg;
    char id[ID_MSG_LEN + 1];
    char from_domain[256];
    char *mail_from;
    char **rcpts;
    unsigned char *suppressed;
    size_t nrcpts;
    buf data;           /* the rebuilt message; signed in place */
    char *ingress, *key_id, *meta;
    int64_t not_before_ms;
    int64_t started_ms; /* monotonic: acceptance latency */
    err e;              /* signing failure, set on the worker */
    int failed;
} job;

static void job_free(job *j)
{
    for (size_t i = 0; i < j->nrcpts; i++)
        free(j->rcpts[i]);
    free(j->rcpts);
    free(j->suppressed);
    free(j->mail_from);
    free(j->ingress);
    free(j->key_id);
    free(j->meta);
    buf_free(&j->data);
    free(j);
}

static void on_committed(void *arg, const char *id, const err *e)
{
    job *j = arg;
    j->sb->in_flight--;
    if (!e && j->sb->on_queued && j->not_before_ms <= clock_now_ms())
        j->sb->on_queued(j->sb->on_queued_arg);
    if (!e) {
        outcome_count(j->sb->metrics, M_ACCEPTED, j->ingress, 1);
        outcome_observe(j->sb->metrics, M_ACCEPT_LATENCY, (double)(clock_mono_ms() - j->started_ms) / 1000.0);
    }
    submit_result res = {.id = id, .nrcpts = j->nrcpts, .suppressed = j->suppressed};
    j->cb(j->arg, e ? NULL : &res, e);
    job_free(j);
}

/* Hand the (signed) message to the spool's group commit. spool_submit
   copies the submission, so the job only waits for the callback. */
static int commit_job(job *j)
{
    spool_submission m = {
        .id = j->id,
        .mail_from = j->mail_from,
        .rcpts = (const char *const *)j->rcpts,
        .suppressed = j->suppressed,
        .nrcpts = j->nrcpts,
        .data = j->data.data,
        .len = j->data.len,
        .ingress = j->ingress,
        .key_id = j->key_id,
        .meta = j->meta,
        .not_before_ms = j->not_before_ms,
    };
    return spool_submit(j->sb->spool, &m, on_committed, j);
}

/* Worker thread (or caller): prepend the DKIM-Signature fields. Touches
   only the job and the read-only key set. */
static void sign_work(void *arg)
{
    job *j = arg;
    buf sigs;
    buf_init(&sigs, j->data.max);
    int n = dkimsig_sign(j->sb->dkim, j->from_domain, j->data.data, j->data.len, &sigs, &j->e);
    if (n < 0) {
        j->failed = 1;
    } else if (n > 0) {
        if (buf_append(&sigs, j->data.data, j->data.len)) {
            err_set(&j->e, ERR_LIMIT, "message larger than %zu bytes after signing", j->data.max);
            j->failed = 1;
        } else {
            buf_free(&j->data);
            j->data = sigs;
            return;
        }
    }
    buf_free(&sigs);
}

/* Event loop: the worker is done; commit, or report the failure. */
static void sign_done(void *arg)
{
    job *j = arg;
    if (!j->failed && commit_job(j) == 0)
        return;
    if (!j->failed)
        err_set(&j->e, ERR_BUSY, "server is shutting down");
    log_ev(LOG_ERROR, "submit_failed", "{s:s,s:s}", "id", j->id, "error", j->e.msg);
    on_committed(j, NULL, &j->e);
}

static job *new_job(submit *sb, const submit_req *r, const char *id, const char *from_domain,
                    const char *mail_from, buf *data, char *meta, unsigned char *suppressed,
                    submit_cb cb, void *arg)
{
    job *j = xcalloc(1, sizeof *j);
    *j = (job){.sb = sb, .cb = cb, .arg = arg, .suppressed = suppressed, .nrcpts = r->nrcpts,
               .mail_from = xstrdup(mail_from), .ingress = xstrdup(r->ingress ? r->ingress : ""),
               .key_id = r->key ? xstrdup(r->key->id) : NULL, .meta = meta,
               .not_before_ms = r->not_before_ms, .data = *data, .started_ms = clock_mono_ms()};
    memcpy(j->id, id, sizeof j->id);
    snprintf(j->from_domain, sizeof j->from_domain, "%s", from_domain);
    j->rcpts = xcalloc(r->nrcpts, sizeof *j->rcpts);
    for (size_t i = 0; i < r->nrcpts; i++)
        j->rcpts[i] = xstrdup(r->rcpts[i]);
    buf_init(data, data->max); /* moved into the job */
    return j;
}

/* Sign (on a worker when there is a pool and a key) and queue the commit.
   Returns -1 + e only when nothing was queued and cb will not run. */
static int dispatch(submit *sb, job *j, err *e)
{
    if (sb->pool && dkimsig_count_for(sb->dkim, j->from_domain) > 0) {
        sb->in_flight++;
        if (signpool_run(sb->pool, sign_work, sign_done, j) == 0)
            return 0;
        sb->in_flight--;
        err_set(e, ERR_BUSY, "server is shutting down");
        return -1;
    }
    sign_work(j);
    if (j->failed) {
        *e = j->e;
        return -1;
    }
    if (commit_job(j)) {
        err_set(e, ERR_BUSY, "server is shutting down");
        return -1;
    }
    sb->in_flight++;
    return 0;
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
    if (submit_ready(sb, e))
        goto done;
    if (ids_message(id)) {
        err_set(e, ERR_IO, "no randomness for a message id");
        goto done;
    }
    /* VERP-ready return path: bounces come back to bounce_domain tagged
       with the message id; the original sender is kept in meta. */
    const char *mail_from = r->mail_from ? r->mail_from : "";
    const char *bounce = *mail_from ? bounce_domain_for(sb, from_domain) : NULL;
    char rpath[ADDR_MAX + 1];
    if (bounce && hyg_return_path(id, bounce, rpath, sizeof rpath)) {
        err_set(e, ERR_INVALID, "bounce_domain %s is too long for a return path", bounce);
        goto done;
    }
    if (rebuild(sb, r, &h, id, from_domain, &out, msgid, e) ||
        !(meta = build_meta(r, msgid, bounce ? mail_from : NULL, e)) ||
        mark_suppressed(sb, r, from_domain, suppressed, e))
        goto done;

    job *j = new_job(sb, r, id, from_domain, bounce ? rpath : mail_from, &out, meta,
                     suppressed, cb, arg);
    meta = NULL;
    suppressed = NULL; /* owned by the job now */
    rc = dispatch(sb, j, e);
    if (rc)
        job_free(j);
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
    srv->submit = submit_new(srv->spool, srv->cfg);
    srv->submit->metrics = srv->metrics;
    /* Refuse to start rather than send unsigned mail (e.g. a key in loose mode). */
    if (submit_ready(srv->submit, e) ||
        submit_start_signing(srv->submit, srv->base, (int)srv->cfg->dkim_sign_threads, e))
        return -1;
    log_ev(LOG_INFO, "dkim_ready", "{s:i,s:i}", "keys", dkimsig_count_keys(srv->submit->dkim),
           "sign_threads", (int)srv->cfg->dkim_sign_threads);
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
