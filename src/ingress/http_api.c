#include "ingress/http_api.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/tls.h"
#include "outcome/outcome.h"
#include "core/mem.h"
#include "submit/address.h"
#include "submit/keys.h"
#include "submit/mime_build.h"
#include "submit/submit.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#define REPLAY_BUCKETS 1024
#define IDEM_KEY_MAX 255

/* A signature seen recently: a second use within the skew window is a replay. */
typedef struct seen_sig {
    char hex[65];
    int64_t expires_ms;
    LIST_ENTRY(seen_sig) bucket;
    TAILQ_ENTRY(seen_sig) age;
} seen_sig;

LIST_HEAD(sig_bucket, seen_sig);

/* Recipients accepted for a key but not yet committed (recipients_per_day
   counts the spool plus these, so concurrent requests cannot overshoot). */
typedef struct key_inflight {
    char key_id[32];
    size_t rcpts;
    LIST_ENTRY(key_inflight) link;
} key_inflight;

/* Idempotency keys whose first request has not answered yet. */
typedef struct idem_busy {
    char *key; /* key_id + "\n" + Idempotency-Key */
    LIST_ENTRY(idem_busy) link;
} idem_busy;

/* A reply handed to evhttp whose bytes are not all written yet. Shutdown
   waits for these too: a 202 counted as answered but still in the output
   buffer was lost when the loop stopped right after it (found by the
   SIGTERM test on a slow machine). An entry ends when evhttp reports the
   write complete, or when its connection closes first. */
typedef struct unflushed {
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    LIST_ENTRY(unflushed) link;
} unflushed;

struct api {
    server *srv;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    struct mime_ctx *mime;
    SSL_CTX *tls; /* [api] tls = yes: the server context shared with SMTP */
    size_t in_flight;
    struct sig_bucket replay[REPLAY_BUCKETS];
    TAILQ_HEAD(sig_age, seen_sig) replay_age;
    LIST_HEAD(key_list, key_inflight) inflight;
    LIST_HEAD(idem_list, idem_busy) idem;
    LIST_HEAD(unflushed_list, unflushed) unflushed;
    struct event *sweep;
};

/* R_JSON_LATE: Content-Type is checked here, the route decodes the body
   itself (off the loop, with api_json_decode). */
enum { R_NOAUTH = 1, R_JSON = 2, R_IDEM = 4, R_RAW = 8, R_PARAM = 16, R_JSON_LATE = 32 };

typedef struct api_route {
    int method;
    const char *path; /* exact, or the prefix before {param} with R_PARAM */
    int scope;
    int flags;
    void (*fn)(api_req *r);
} api_route;

/* Exact paths before parameterised ones: /v1/messages/batch is not an id. */
static const api_route routes[] = {
    {EVHTTP_REQ_GET, "/healthz", 0, R_NOAUTH, api_healthz},
    {EVHTTP_REQ_GET, "/readyz", 0, R_NOAUTH, api_readyz},
    {EVHTTP_REQ_POST, "/v1/messages", KEY_SCOPE_SEND, R_JSON_LATE | R_IDEM, api_messages_send},
    {EVHTTP_REQ_GET, "/v1/messages", KEY_SCOPE_READ, 0, api_messages_list},
    {EVHTTP_REQ_POST, "/v1/messages/batch", KEY_SCOPE_SEND, R_JSON | R_IDEM, api_messages_batch},
    {EVHTTP_REQ_POST, "/v1/messages/raw", KEY_SCOPE_SEND, R_RAW | R_IDEM, api_messages_raw},
    {EVHTTP_REQ_GET, "/v1/events", KEY_SCOPE_READ, 0, api_events_list},
    {EVHTTP_REQ_GET, "/v1/suppressions", KEY_SCOPE_READ, 0, api_suppressions_list},
    {EVHTTP_REQ_POST, "/v1/suppressions", KEY_SCOPE_ADMIN, R_JSON, api_suppressions_add},
    {EVHTTP_REQ_GET, "/metrics", KEY_SCOPE_READ, 0, api_metrics},
    {EVHTTP_REQ_POST, "/v1/webhooks", KEY_SCOPE_ADMIN, R_JSON, api_webhooks_create},
    {EVHTTP_REQ_GET, "/v1/webhooks", KEY_SCOPE_ADMIN, 0, api_webhooks_list},
    {EVHTTP_REQ_DELETE, "/v1/webhooks/", KEY_SCOPE_ADMIN, R_PARAM, api_webhooks_delete},
    {EVHTTP_REQ_GET, "/u/", 0, R_NOAUTH | R_PARAM, api_unsubscribe_page},
    {EVHTTP_REQ_POST, "/u/", 0, R_NOAUTH | R_PARAM, api_unsubscribe_post},
    {EVHTTP_REQ_GET, "/v1/messages/", KEY_SCOPE_READ, R_PARAM, api_messages_get},
    {EVHTTP_REQ_DELETE, "/v1/messages/", KEY_SCOPE_SEND, R_PARAM, api_messages_cancel},
    {EVHTTP_REQ_GET, "/v1/suppressions/", KEY_SCOPE_READ, R_PARAM, api_suppressions_get},
    {EVHTTP_REQ_DELETE, "/v1/suppressions/", KEY_SCOPE_ADMIN, R_PARAM, api_suppressions_delete},
};
#define NROUTES (sizeof routes / sizeof routes[0])

/* ---- replies --------------------------------------------------------------- */

static void req_free(api_req *r)
{
    r->api->in_flight--;
    evhttp_clear_headers(&r->query);
    json_decref(r->json);
    spool_key_free(&r->key);
    free(r->path);
    free(r->param);
    free(r->body);
    free(r->idem_key);
    free(r);
}

/* The in-progress marker of an Idempotency-Key: "<key id>\n<header value>". */
static void idem_busy_key(const api_req *r, const char *idem, char *out, size_t n)
{
    snprintf(out, n, "%s\n%s", r->key.id, idem);
}

static void idem_release(api *a, const api_req *r)
{
    if (!r->idem_key)
        return;
    char want[300];
    idem_busy_key(r, r->idem_key, want, sizeof want);
    for (idem_busy *b = LIST_FIRST(&a->idem); b; b = LIST_NEXT(b, link)) {
        if (strcmp(b->key, want) == 0) {
            LIST_REMOVE(b, link);
            free(b->key);
            free(b);
            return;
        }
    }
}

static void send_typed(api_req *r, int status, const char *type, const char *text, size_t len);

static void send_text(api_req *r, int status, const char *text, size_t len)
{
    send_typed(r, status, "application/json; charset=utf-8", text, len);
}

void api_reply_text(api_req *r, int status, const char *content_type, const char *text, size_t len)
{
    send_typed(r, status, content_type, text, len);
    req_free(r);
}

static void unflushed_remove(api *a, unflushed *u)
{
    LIST_REMOVE(u, link);
    free(u);
}

static void on_flushed(struct evhttp_request *req, void *arg)
{
    api *a = arg;
    unflushed *u;
    LIST_FOREACH(u, &a->unflushed, link) {
        if (u->req == req) {
            unflushed_remove(a, u);
            return;
        }
    }
}

static void on_conn_closed(struct evhttp_connection *evcon, void *arg)
{
    api *a = arg;
    unflushed *u, *next;
    for (u = LIST_FIRST(&a->unflushed); u; u = next) {
        next = LIST_NEXT(u, link);
        if (u->evcon == evcon)
            unflushed_remove(a, u);
    }
}

/* Before evhttp_send_reply: the write may complete at once. A request whose
   client is already gone has no connection, and evhttp frees it unsent. */
static void track_flush(api *a, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!evcon)
        return;
    unflushed *u = xcalloc(1, sizeof *u);
    u->req = req;
    u->evcon = evcon;
    LIST_INSERT_HEAD(&a->unflushed, u, link);
    evhttp_request_set_on_complete_cb(req, on_flushed, a);
    evhttp_connection_set_closecb(evcon, on_conn_closed, a);
}

static void send_typed(api_req *r, int status, const char *type, const char *text, size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    struct evbuffer *out = evbuffer_new();
    if (text)
        evbuffer_add(out, text, len);
    track_flush(r->api, r->req);
    evhttp_send_reply(r->req, status, NULL, out);
    evbuffer_free(out);
    log_ev(status >= 500 ? LOG_WARN : LOG_DEBUG, "api_request", "{s:s,s:s,s:i,s:I,s:s}", "path", r->path ? r->path : "",
           "client", r->client_ip, "status", status, "ms", (json_int_t)(clock_mono_ms() - r->started_ms),
           "key", r->authed ? r->key.id : "");
}

typedef struct idem_store {
    api_req *r;
    int status;
    char *text;
} idem_store;

static int idem_store_fn(spool_tx *tx, void *arg, err *e)
{
    idem_store *st = arg;
    return spool_tx_idem_put(tx, st->r->key.id, st->r->idem_key, st->r->idem_hash, st->status, st->text, e);
}

/* The answer goes out after its idempotency record is durable, so a client
   that retries after a lost response gets the same answer back. */
static void idem_stored(void *arg, const err *e)
{
    idem_store *st = arg;
    if (e)
        log_ev(LOG_WARN, "api_idempotency_store_failed", "{s:s}", "error", e->msg);
    send_text(st->r, st->status, st->text, strlen(st->text));
    idem_release(st->r->api, st->r);
    req_free(st->r);
    free(st->text);
    free(st);
}

void api_reply(api_req *r, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(body);
    if (r->idem_key && status >= 200 && status < 300 && text) {
        idem_store *st = xcalloc(1, sizeof *st);
        *st = (idem_store){.r = r, .status = status, .text = text};
        if (spool_write(r->srv->spool, idem_store_fn, idem_stored, st) == 0)
            return;
        free(st);
    }
    send_text(r, status, text, text ? strlen(text) : 0);
    free(text);
    idem_release(r->api, r);
    req_free(r);
}

static json_t *error_body(const char *code, const char *field, const char *msg)
{
    json_t *o = json_pack("{s:s,s:s}", "code", code, "message", msg);
    if (field && *field)
        json_object_set_new(o, "field", json_string(field));
    return json_pack("{s:o}", "error", o);
}

static void verror(api_req *r, int status, const char *code, const char *field, const char *fmt, va_list ap)
{
    char msg[ERR_MSG_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    /* Refused submissions are counted by reason (a fixed set of codes). */
    if (r->method == EVHTTP_REQ_POST && r->path && strncmp(r->path, "/v1/messages", 12) == 0)
        outcome_count(r->srv->metrics, M_REJECTED, code, 1);
    api_reply(r, status, error_body(code, field, msg));
}

void api_error(api_req *r, int status, const char *code, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(r, status, code, field, fmt, ap);
    va_end(ap);
}

void api_error_rate(api_req *r, int64_t retry_ms, const char *fmt, ...)
{
    char secs[32];
    snprintf(secs, sizeof secs, "%lld", (long long)((retry_ms + 999) / 1000));
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", secs);
    va_list ap;
    va_start(ap, fmt);
    verror(r, 429, "rate_limited", NULL, fmt, ap);
    va_end(ap);
}

int api_err_status(const err *e, const char **code)
{
    switch (e->code) {
    case ERR_INVALID:
        *code = "invalid_field";
        return 422;
    case ERR_DENIED:
        *code = "forbidden";
        return 403;
    case ERR_LIMIT:
        *code = "too_large";
        return 413;
    case ERR_FULL:
        *code = "storage_full";
        return 507;
    case ERR_NOTFOUND:
        *code = "not_found";
        return 404;
    default:
        *code = "unavailable";
        return 503;
    }
}

void api_error_err(api_req *r, const err *e, const char *field)
{
    const char *code;
    int status = api_err_status(e, &code);
    api_error(r, status, code, field, "%s", e->msg);
}

json_t *api_time(int64_t ms)
{
    char t[40];
    clock_rfc3339(ms, t, sizeof t);
    return json_string(t);
}

struct mime_ctx *api_mime(api *a)
{
    return a->mime;
}

/* ---- query helpers ------------------------------------------------------------ */

const char *api_query(api_req *r, const char *name)
{
    return evhttp_find_header(&r->query, name);
}

int api_query_limit(api_req *r, int def)
{
    const char *v = api_query(r, "limit");
    int64_t max = r->srv->cfg->api_max_page_size;
    if (!v)
        return def < max ? def : (int)max;
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < 1 || n > max) {
        api_error(r, 400, "invalid_parameter", "limit", "limit must be an integer from 1 to %lld ([api] max_page_size)",
                  (long long)max);
        return -1;
    }
    return (int)n;
}

int api_query_since(api_req *r, int64_t *ms)
{
    const char *v = api_query(r, "since");
    *ms = 0;
    if (v && clock_parse_rfc3339(v, ms)) {
        api_error(r, 400, "invalid_parameter", "since", "since must be an RFC 3339 date-time");
        return -1;
    }
    return 0;
}

/* ---- budgets ---------------------------------------------------------------------- */

static key_inflight *inflight_for(api *a, const char *key_id, int create)
{
    key_inflight *k;
    LIST_FOREACH(k, &a->inflight, link)
        if (strcmp(k->key_id, key_id) == 0)
            return k;
    if (!create)
        return NULL;
    k = xcalloc(1, sizeof *k);
    snprintf(k->key_id, sizeof k->key_id, "%s", key_id);
    LIST_INSERT_HEAD(&a->inflight, k, link);
    return k;
}

void api_rcpts_done(api *a, const char *key_id, size_t nrcpts)
{
    key_inflight *k = inflight_for(a, key_id, 0);
    if (!k)
        return;
    k->rcpts = k->rcpts > nrcpts ? k->rcpts - nrcpts : 0;
    if (k->rcpts == 0) {
        LIST_REMOVE(k, link);
        free(k);
    }
}

#define DAY_MS (86400 * 1000LL)

static int check_daily(api_req *r, size_t nrcpts)
{
    int64_t cap = r->srv->cfg->api_recipients_per_day;
    if (cap <= 0)
        return 0;
    err e;
    err_clear(&e);
    int64_t now = clock_now_ms(), oldest = 0;
    int64_t used = spool_key_rcpts_since(r->srv->spool, r->key.id, now - DAY_MS, &oldest, &e);
    if (used < 0) {
        api_error_err(r, &e, NULL);
        return -1;
    }
    key_inflight *k = inflight_for(r->api, r->key.id, 0);
    used += k ? (int64_t)k->rcpts : 0;
    if (used + (int64_t)nrcpts <= cap)
        return 0;
    /* The window frees up when the oldest counted message turns 24 h old. */
    int64_t retry = oldest ? oldest + DAY_MS - now : 1000;
    api_error_rate(r, retry > 0 ? retry : 1000,
                   "key %s has used %lld of its %lld recipients per day ([api] recipients_per_day); this request has %zu",
                   r->key.id, (long long)used, (long long)cap, nrcpts);
    return -1;
}

int api_take_budget(api_req *r, size_t nmsgs, size_t nrcpts)
{
    if (!r->authed)
        return 0;
    if (check_daily(r, nrcpts))
        return -1;
    int64_t wait = submit_rate_take(r->srv->submit, &r->key, (double)nmsgs);
    if (wait > 0) {
        api_error_rate(r, wait, "key %s is limited to %g messages per second", r->key.id, r->key.rate);
        return -1;
    }
    inflight_for(r->api, r->key.id, 1)->rcpts += nrcpts;
    return 0;
}

/* ---- request signing ------------------------------------------------------------- */

static unsigned replay_hash(const char *hex)
{
    unsigned h = 2166136261u;
    for (const char *p = hex; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % REPLAY_BUCKETS;
}

static void replay_expire(api *a, int64_t now)
{
    seen_sig *s;
    while ((s = TAILQ_FIRST(&a->replay_age)) && s->expires_ms <= now) {
        TAILQ_REMOVE(&a->replay_age, s, age);
        LIST_REMOVE(s, bucket);
        free(s);
    }
}

/* 1 when hex was seen before (a replay); else remember it and return 0. */
static int replay_check(api *a, const char *hex, int64_t keep_ms)
{
    int64_t now = clock_mono_ms();
    replay_expire(a, now);
    unsigned b = replay_hash(hex);
    seen_sig *s;
    LIST_FOREACH(s, &a->replay[b], bucket)
        if (strcmp(s->hex, hex) == 0)
            return 1;
    s = xcalloc(1, sizeof *s);
    snprintf(s->hex, sizeof s->hex, "%s", hex);
    s->expires_ms = now + keep_ms;
    LIST_INSERT_HEAD(&a->replay[b], s, bucket);
    TAILQ_INSERT_TAIL(&a->replay_age, s, age);
    return 0;
}

/*
 * X-Posthaste-Signature: v1=<hex HMAC-SHA256(signing_key, timestamp "." body)>
 * where signing_key = HMAC-SHA256(API key, "posthaste-signing") (keys.h).
 * The timestamp is Unix seconds; outside +-signature_skew it is refused, and
 * a signature is remembered for twice the skew so it cannot be replayed.
 */
static int check_signature(api_req *r, const char *token, size_t tlen)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(r->req);
    const char *ts = evhttp_find_header(h, "X-Posthaste-Timestamp");
    const char *sig = evhttp_find_header(h, "X-Posthaste-Signature");
    if (!ts && !sig && !r->key.require_signing)
        return 0;
    if (!ts || !sig) {
        api_error(r, 401, "signature_required", ts ? "X-Posthaste-Signature" : "X-Posthaste-Timestamp",
                  "key %s requires signed requests: send X-Posthaste-Timestamp and X-Posthaste-Signature", r->key.id);
        return -1;
    }
    char *end;
    long long t = strtoll(ts, &end, 10);
    int64_t skew = r->srv->cfg->api_signature_skew;
    int64_t diff = clock_now_ms() - t * 1000LL;
    if (!*ts || *end || diff > skew || diff < -skew) {
        api_error(r, 401, "signature_expired", "X-Posthaste-Timestamp",
                  "timestamp '%.40s' is not Unix seconds within %lld s of the server clock ([api] signature_skew)", ts,
                  (long long)(skew / 1000));
        return -1;
    }
    unsigned char skey[32], mac[32];
    unsigned int maclen = sizeof mac;
    keys_signing_secret(token, tlen, skey);
    buf msg;
    buf_init(&msg, r->len + 64);
    buf_appendf(&msg, "%s.", ts);
    buf_append(&msg, r->body, r->len);
    HMAC(EVP_sha256(), skey, sizeof skey, (const unsigned char *)msg.data, msg.len, mac, &maclen);
    buf_free(&msg);
    char hex[65];
    ids_hex(mac, sizeof mac, hex);
    if (strncmp(sig, "v1=", 3) != 0 || strlen(sig + 3) != 64 || !ids_equal_ct(sig + 3, hex, 64)) {
        api_error(r, 401, "signature_invalid", "X-Posthaste-Signature",
                  "signature does not match: expected v1=<hex HMAC-SHA256(signing key, timestamp \".\" body)>");
        return -1;
    }
    if (replay_check(r->api, hex, 2 * skew)) {
        api_error(r, 401, "signature_replayed", "X-Posthaste-Signature", "this signature was already used");
        return -1;
    }
    return 0;
}

/* ---- authentication -------------------------------------------------------------- */

static int authenticate(api_req *r, int scope)
{
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) {
        outcome_count(r->srv->metrics, M_AUTH_FAILURES, "api", 1);
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "WWW-Authenticate", "Bearer");
        api_error(r, 401, "unauthorized", "Authorization", "missing 'Authorization: Bearer <API key>'");
        return -1;
    }
    const char *token = auth + 7;
    size_t tlen = strlen(token);
    err e;
    err_clear(&e);
    int ok = tlen <= KEYS_TOKEN_MAX ? keys_verify(r->srv->spool, token, tlen, &r->key, &e) : 0;
    if (ok < 0) {
        api_error_err(r, &e, NULL);
        return -1;
    }
    if (!ok) {
        outcome_count(r->srv->metrics, M_AUTH_FAILURES, "api", 1);
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        api_error(r, 401, "unauthorized", "Authorization", "the API key is not valid or was revoked");
        return -1;
    }
    r->authed = 1;
    const struct sockaddr *sa = evhttp_connection_get_addr(evhttp_request_get_connection(r->req));
    if (sa && !keys_ip_allowed(&r->key, sa)) {
        api_error(r, 403, "ip_not_allowed", NULL, "key %s may not be used from %s", r->key.id, r->client_ip);
        return -1;
    }
    if (scope && !(r->key.scopes & scope)) {
        char need[32];
        keys_scopes_str(scope, need, sizeof need);
        api_error(r, 403, "insufficient_scope", NULL, "key %s lacks the '%s' scope this route needs", r->key.id, need);
        return -1;
    }
    return check_signature(r, token, tlen);
}

/* ---- body checks ------------------------------------------------------------------- */

/* Deepest nesting of [ and { outside strings; jansson has no depth limit of
   its own below 2048, so this bounds it before parsing. */
static size_t json_depth(const char *s, size_t len, size_t max, size_t *at)
{
    size_t depth = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > max) {
                *at = i;
                return depth;
            }
        } else if (c == ']' || c == '}') {
            if (depth)
                depth--;
        }
    }
    return 0;
}

static const char *content_type(api_req *r)
{
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Content-Type");
    return ct ? ct : "";
}

static int media_is(const char *ct, const char *want)
{
    size_t n = strlen(want);
    return strncasecmp(ct, want, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

int api_json_decode(const char *body, size_t len, size_t max_depth, json_t **out, api_json_err *je)
{
    *out = NULL;
    size_t at = 0;
    if (!addr_valid_utf8(body, len)) {
        je->code = "invalid_utf8";
        snprintf(je->msg, sizeof je->msg, "the request body is not valid UTF-8");
        return -1;
    }
    if (json_depth(body, len, max_depth, &at)) {
        je->code = "json_too_deep";
        snprintf(je->msg, sizeof je->msg, "JSON nesting deeper than %zu levels at byte %zu ([api] max_json_depth)",
                 max_depth, at);
        return -1;
    }
    json_error_t jerr;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        je->code = "invalid_json";
        snprintf(je->msg, sizeof je->msg, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        return -1;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        je->code = "invalid_json";
        snprintf(je->msg, sizeof je->msg, "the request body must be a JSON object");
        return -1;
    }
    *out = j;
    return 0;
}

static int check_json_type(api_req *r)
{
    if (media_is(content_type(r), "application/json"))
        return 0;
    api_error(r, 415, "unsupported_media_type", "Content-Type", "Content-Type must be application/json (got '%.80s')",
              content_type(r));
    return -1;
}

static int parse_json_body(api_req *r)
{
    if (check_json_type(r))
        return -1;
    api_json_err je;
    if (api_json_decode(r->body, r->len, (size_t)r->srv->cfg->api_max_json_depth, &r->json, &je)) {
        api_error(r, 400, je.code, NULL, "%s", je.msg);
        return -1;
    }
    return 0;
}

/* ---- idempotency ------------------------------------------------------------------- */

static void request_hash(api_req *r)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char h[32];
    unsigned int n = sizeof h;
    const char *uri = evhttp_request_get_uri(r->req);
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, uri, strlen(uri) + 1);
    EVP_DigestUpdate(md, r->body, r->len);
    EVP_DigestFinal_ex(md, h, &n);
    EVP_MD_CTX_free(md);
    ids_hex(h, sizeof h, r->idem_hash);
}

/* 1 when the request was answered from the record (or refused), 0 to run it. */
static int idempotency(api_req *r)
{
    const char *k = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Idempotency-Key");
    if (!k)
        return 0;
    size_t n = strlen(k);
    int ok = n > 0 && n <= IDEM_KEY_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = k[i] > ' ' && k[i] < 0x7f;
    if (!ok) {
        api_error(r, 400, "invalid_header", "Idempotency-Key", "Idempotency-Key must be 1 to %d printable ASCII characters",
                  IDEM_KEY_MAX);
        return 1;
    }
    request_hash(r);
    char busy_key[300];
    idem_busy_key(r, k, busy_key, sizeof busy_key);
    idem_busy *b;
    LIST_FOREACH(b, &r->api->idem, link)
        if (strcmp(b->key, busy_key) == 0) {
            api_error(r, 409, "idempotency_in_progress", "Idempotency-Key",
                      "a request with this Idempotency-Key is still being processed");
            return 1;
        }
    char *hash = NULL, *resp = NULL;
    int status = 0;
    err e;
    err_clear(&e);
    int64_t min = clock_now_ms() - r->srv->cfg->api_idempotency_ttl;
    int found = spool_idem_get(r->srv->spool, r->key.id, k, min, &hash, &status, &resp, &e);
    if (found < 0) {
        api_error_err(r, &e, NULL);
        return 1;
    }
    if (found) {
        if (strcmp(hash, r->idem_hash) != 0)
            api_error(r, 409, "idempotency_conflict", "Idempotency-Key",
                      "this Idempotency-Key was used with a different request");
        else {
            evhttp_add_header(evhttp_request_get_output_headers(r->req), "Idempotent-Replayed", "true");
            send_text(r, status, resp, strlen(resp));
            req_free(r);
        }
        free(hash);
        free(resp);
        return 1;
    }
    r->idem_key = xstrdup(k);
    b = xcalloc(1, sizeof *b);
    b->key = xstrdup(busy_key);
    LIST_INSERT_HEAD(&r->api->idem, b, link);
    return 0;
}

/* ---- dispatch ------------------------------------------------------------------- */

static const api_route *find_route(api_req *r, int *path_known)
{
    *path_known = 0;
    for (size_t i = 0; i < NROUTES; i++) {
        const api_route *rt = &routes[i];
        size_t n = strlen(rt->path);
        int match;
        if (rt->flags & R_PARAM)
            match = strncmp(r->path, rt->path, n) == 0 && r->path[n] && !strchr(r->path + n, '/');
        else
            match = strcmp(r->path, rt->path) == 0;
        if (!match)
            continue;
        /* An exact route on this path wins over a {param} one (batch, raw). */
        if (*path_known == 2 && (rt->flags & R_PARAM))
            continue;
        *path_known = (rt->flags & R_PARAM) ? 1 : 2;
        if (rt->method == r->method) {
            if (rt->flags & R_PARAM)
                r->param = xstrdup(r->path + n);
            return rt;
        }
    }
    return NULL;
}

static int read_request(api_req *r)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(r->req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    r->path = evhttp_uridecode(path && *path ? path : "/", 0, NULL);
    const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
    if (q && evhttp_parse_query_str(q, &r->query) < 0) {
        api_error(r, 400, "invalid_parameter", NULL, "the query string is malformed");
        return -1;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    r->len = evbuffer_get_length(in);
    r->body = xmalloc(r->len + 1);
    evbuffer_copyout(in, r->body, r->len);
    r->body[r->len] = '\0';
    return 0;
}

static void client_ip(api_req *r)
{
    char *host = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(r->req), &host, &port);
    snprintf(r->client_ip, sizeof r->client_ip, "%s", host ? host : "");
}

static int method_of(struct evhttp_request *req)
{
    return (int)evhttp_request_get_command(req);
}

static void dispatch(api_req *r)
{
    if (read_request(r))
        return;
    int known;
    const api_route *rt = find_route(r, &known);
    if (!rt) {
        if (known)
            api_error(r, 405, "method_not_allowed", NULL, "%s does not support this method", r->path);
        else
            api_error(r, 404, "not_found", NULL, "no route %s", r->path);
        return;
    }
    if (r->srv->draining && !(rt->flags & R_NOAUTH)) {
        api_error(r, 503, "unavailable", NULL, "the server is shutting down");
        return;
    }
    if (!(rt->flags & R_NOAUTH) && authenticate(r, rt->scope))
        return;
    if ((rt->flags & R_JSON) && parse_json_body(r))
        return;
    if ((rt->flags & R_JSON_LATE) && check_json_type(r))
        return;
    if ((rt->flags & R_RAW) && !media_is(content_type(r), "message/rfc822")) {
        api_error(r, 415, "unsupported_media_type", "Content-Type", "Content-Type must be message/rfc822 (got '%.80s')",
                  content_type(r));
        return;
    }
    if ((rt->flags & R_IDEM) && idempotency(r))
        return;
    rt->fn(r);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    api *a = arg;
    api_req *r = xcalloc(1, sizeof *r);
    r->api = a;
    r->srv = a->srv;
    r->req = req;
    r->method = method_of(req);
    r->started_ms = clock_mono_ms();
    TAILQ_INIT(&r->query);
    a->in_flight++;
    client_ip(r);
    /* evhttp calls us with 413 preset when the body passed max_body_size. */
    if (evhttp_request_get_response_code(req) == HTTP_ENTITYTOOLARGE) {
        api_error(r, 413, "body_too_large", NULL, "request body larger than %lld bytes ([api] max_body_size)",
                  (long long)a->srv->cfg->api_max_body_size);
        return;
    }
    dispatch(r);
}

/* ---- component ------------------------------------------------------------------ */

static int split_listen(const char *listen, char *host, size_t hn, int *port)
{
    const char *colon = strrchr(listen, ':');
    if (!colon)
        return -1;
    size_t n = (size_t)(colon - listen);
    if (n && listen[0] == '[' && listen[n - 1] == ']')
        listen++, n -= 2;
    if (n >= hn)
        return -1;
    memcpy(host, listen, n);
    host[n] = '\0';
    *port = atoi(colon + 1);
    return *port > 0 && *port < 65536 ? 0 : -1;
}

static void apply_limits(api *a, const config *cfg)
{
    evhttp_set_max_body_size(a->http, (ev_ssize_t)cfg->api_max_body_size);
    evhttp_set_max_headers_size(a->http, 64 * 1024);
    evhttp_set_timeout(a->http, (int)((cfg->api_timeout + 999) / 1000));
}

/* Idempotency records older than the TTL are dropped once a minute. */
static int idem_expire_fn(spool_tx *tx, void *arg, err *e)
{
    const int64_t *before = arg;
    return spool_tx_idem_expire(tx, *before, e);
}

static void idem_expired(void *arg, const err *e)
{
    if (e)
        log_ev(LOG_WARN, "api_idempotency_expire_failed", "{s:s}", "error", e->msg);
    free(arg);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    api *a = arg;
    int64_t *before = xmalloc(sizeof *before);
    *before = clock_now_ms() - a->srv->cfg->api_idempotency_ttl;
    if (spool_write(a->srv->spool, idem_expire_fn, idem_expired, before))
        free(before);
    replay_expire(a, clock_mono_ms());
}

/* HTTPS: evhttp asks for each connection's bufferevent; an accepting
   OpenSSL one makes every request on it TLS, with no change to routes. */
static struct bufferevent *tls_bevcb(struct event_base *base, void *arg)
{
    api *a = arg;
    SSL *ssl = SSL_new(a->tls);
    if (!ssl)
        return NULL;
    return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
}

static int api_start(server *srv, err *e)
{
    const config *cfg = srv->cfg;
    if (!cfg->api_listen || !*cfg->api_listen)
        return 0;
    char host[256];
    int port;
    if (split_listen(cfg->api_listen, host, sizeof host, &port)) {
        err_set(e, ERR_INVALID, "[api] listen '%s' is not host:port", cfg->api_listen);
        return -1;
    }
    api *a = xcalloc(1, sizeof *a);
    a->srv = srv;
    TAILQ_INIT(&a->replay_age);
    LIST_INIT(&a->inflight);
    LIST_INIT(&a->idem);
    LIST_INIT(&a->unflushed);
    for (size_t i = 0; i < REPLAY_BUCKETS; i++)
        LIST_INIT(&a->replay[i]);
    srv->api = a;
    if (!(a->mime = mime_ctx_new(e)))
        return -1;
    if (cfg->api_tls && !(a->tls = tls_server_ctx(cfg, e))) {
        err_wrap(e, "[api] tls");
        return -1;
    }
    a->http = evhttp_new(srv->base);
    if (a->tls)
        evhttp_set_bevcb(a->http, tls_bevcb, a);
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD);
    evhttp_set_flags(a->http, EVHTTP_SERVER_LINGERING_CLOSE);
    apply_limits(a, cfg);
    evhttp_set_gencb(a->http, on_request, a);
    a->sock = evhttp_bind_socket_with_handle(a->http, host, (ev_uint16_t)port);
    if (!a->sock) {
        err_set(e, ERR_IO, "[api] listen %s: cannot bind", cfg->api_listen);
        return -1;
    }
    a->sweep = event_new(srv->base, -1, EV_PERSIST, on_sweep, a);
    struct timeval tv = {60, 0};
    event_add(a->sweep, &tv);
    log_ev(LOG_INFO, "api_listening", "{s:s,s:b}", "listen", cfg->api_listen, "tls", cfg->api_tls);
    return 0;
}

static void api_drain(server *srv)
{
    api *a = srv->api;
    if (a && a->sock) {
        evhttp_del_accept_socket(a->http, a->sock);
        a->sock = NULL;
    }
}

size_t api_requests_in_flight(const api *a)
{
    return a ? a->in_flight : 0;
}

/* Asked only while draining, so counting the unflushed replies is cheap enough. */
static size_t api_busy(server *srv)
{
    api *a = srv->api;
    if (!a)
        return 0;
    size_t n = a->in_flight;
    unflushed *u;
    LIST_FOREACH(u, &a->unflushed, link)
        n++;
    return n;
}

static void api_reload(server *srv, const config *cfg)
{
    if (srv->api && srv->api->http)
        apply_limits(srv->api, cfg);
}

static void api_stop(server *srv)
{
    api *a = srv->api;
    if (!a)
        return;
    if (a->sweep)
        event_free(a->sweep);
    if (a->http)
        evhttp_free(a->http);
    while (!LIST_EMPTY(&a->unflushed))
        unflushed_remove(a, LIST_FIRST(&a->unflushed));
    seen_sig *s;
    while ((s = TAILQ_FIRST(&a->replay_age))) {
        TAILQ_REMOVE(&a->replay_age, s, age);
        free(s);
    }
    while (!LIST_EMPTY(&a->inflight)) {
        key_inflight *k = LIST_FIRST(&a->inflight);
        LIST_REMOVE(k, link);
        free(k);
    }
    while (!LIST_EMPTY(&a->idem)) {
        idem_busy *b = LIST_FIRST(&a->idem);
        LIST_REMOVE(b, link);
        free(b->key);
        free(b);
    }
    mime_ctx_free(a->mime);
    if (a->tls)
        SSL_CTX_free(a->tls);
    free(a);
    srv->api = NULL;
}

const server_component api_component = {
    .name = "api",
    .start = api_start,
    .drain = api_drain,
    .busy = api_busy,
    .reload = api_reload,
    .stop = api_stop,
};
