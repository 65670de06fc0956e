#include "outcome/webhooks.h"

#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/server.h"
#include "spool/spool.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#define RELOAD_EVERY_MS 5000
#define RESPONSE_MAX 4096

static const char *const event_types[] = {
    "accepted", "delivered", "deferred",     "bounced", "expired",
    "suppressed", "unsubscribed", "complained", "cancelled", "alert",
};

typedef struct webhooks webhooks;

typedef struct hook {
    webhooks *wh;
    char *id, *url, *secret, *events;
    int64_t cursor;           /* acknowledged */
    int64_t batch_last;       /* last event id covered by the batch in flight */
    int batch_count;
    int in_flight, deleted, seen;
    int64_t next_attempt;     /* monotonic ms */
    int64_t failing_since_ms; /* wall ms, 0 when healthy */
    int failures;             /* consecutive */
    int healthy;
    CURL *easy;
    struct curl_slist *headers;
    buf response;
    LIST_ENTRY(hook) link;
} hook;

struct webhooks {
    server *srv;
    CURLM *multi;
    struct event *tick, *curl_timer;
    LIST_HEAD(, hook) hooks;
    int64_t last_reload;
    int in_flight;
    int draining;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_start(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int webhooks_valid_type(const char *type)
{
    for (size_t i = 0; i < sizeof event_types / sizeof event_types[0]; i++)
        if (strcmp(type, event_types[i]) == 0)
            return 1;
    return 0;
}

static int host_is_loopback(const char *host, size_t n)
{
    char h[256];
    if (n == 0 || n >= sizeof h)
        return 0;
    memcpy(h, host, n);
    h[n] = '\0';
    if (strcasecmp(h, "localhost") == 0 || strcmp(h, "[::1]") == 0)
        return 1;
    struct in_addr a;
    return inet_pton(AF_INET, h, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

int webhooks_check_url(const char *url, err *e)
{
    size_t skip;
    int https = 0;
    if (strncasecmp(url, "https://", 8) == 0)
        skip = 8, https = 1;
    else if (strncasecmp(url, "http://", 7) == 0)
        skip = 7;
    else {
        err_set(e, ERR_INVALID, "url must start with https:// (or http:// for a loopback host)");
        return -1;
    }
    const char *host = url + skip;
    size_t n = strcspn(host, "/?#");
    if (n == 0 || strlen(url) > 2048 || strpbrk(url, " \r\n\t")) {
        err_set(e, ERR_INVALID, "url is not a valid absolute URL");
        return -1;
    }
    /* Strip :port, but keep a bracketed IPv6 literal whole. */
    size_t hostlen = n;
    const char *close = host[0] == '[' ? memchr(host, ']', n) : NULL;
    if (close)
        hostlen = (size_t)(close - host) + 1;
    else if (memchr(host, ':', n))
        hostlen = (size_t)((const char *)memchr(host, ':', n) - host);
    if (!https && !host_is_loopback(host, hostlen)) {
        err_set(e, ERR_INVALID, "url must use https unless the host is loopback");
        return -1;
    }
    return 0;
}

void webhooks_sign(const char *secret, int64_t ts, const char *body, size_t len, char out[80])
{
    unsigned char mac[32];
    unsigned int maclen = sizeof mac;
    char prefix[32];
    int n = snprintf(prefix, sizeof prefix, "%lld.", (long long)ts);
    /* HMAC over "timestamp." then the body, without copying the body. */
    EVP_MAC *mac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac_alg ? EVP_MAC_CTX_new(mac_alg) : NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0), OSSL_PARAM_construct_end()};
    size_t outl = 0;
    if (ctx && EVP_MAC_init(ctx, (const unsigned char *)secret, strlen(secret), params) &&
        EVP_MAC_update(ctx, (const unsigned char *)prefix, (size_t)n) &&
        EVP_MAC_update(ctx, (const unsigned char *)body, len) && EVP_MAC_final(ctx, mac, &outl, sizeof mac))
        maclen = (unsigned int)outl;
    else
        memset(mac, 0, sizeof mac);
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac_alg);
    char hex[65];
    ids_hex(mac, maclen, hex);
    snprintf(out, 80, "v1=%s", hex);
}

/* ---- durable progress ------------------------------------------------------ */

typedef struct progress_op {
    char *id, *last_error;
    int64_t cursor, failing_since_ms;
    int healthy;
} progress_op;

static int progress_fn(spool_tx *tx, void *arg, err *e)
{
    progress_op *p = arg;
    return spool_tx_webhook_progress(tx, p->id, p->cursor, p->failing_since_ms, p->last_error, p->healthy, e);
}

static void progress_done(void *arg, const err *e)
{
    progress_op *p = arg;
    if (e)
        log_ev(LOG_ERROR, "webhook_progress_not_saved", "{s:s,s:s}", "webhook", p->id, "error", e->msg);
    free(p->id);
    free(p->last_error);
    free(p);
}

static void save_progress(hook *h, const char *last_error)
{
    progress_op *p = xcalloc(1, sizeof *p);
    p->id = xstrdup(h->id);
    p->last_error = last_error ? xstrdup(last_error) : NULL;
    p->cursor = h->cursor;
    p->failing_since_ms = h->failing_since_ms;
    p->healthy = h->healthy;
    if (spool_write(h->wh->srv->spool, progress_fn, progress_done, p) < 0)
        progress_done(p, NULL);
}

/* ---- endpoint list ------------------------------------------------------------ */

static void hook_free(hook *h)
{
    if (h->easy) {
        curl_multi_remove_handle(h->wh->multi, h->easy);
        curl_easy_cleanup(h->easy);
    }
    curl_slist_free_all(h->headers);
    buf_free(&h->response);
    free(h->id);
    free(h->url);
    free(h->secret);
    free(h->events);
    free(h);
}

static void replace(char **field, const char *value)
{
    if (*field && strcmp(*field, value) == 0)
        return;
    free(*field);
    *field = xstrdup(value);
}

static void on_listed(void *arg, const spool_webhook *w)
{
    webhooks *wh = arg;
    hook *h;
    LIST_FOREACH(h, &wh->hooks, link)
        if (strcmp(h->id, w->id) == 0)
            break;
    if (!h) {
        h = xcalloc(1, sizeof *h);
        h->wh = wh;
        h->id = xstrdup(w->id);
        h->cursor = w->cursor;
        h->healthy = w->healthy;
        h->failing_since_ms = w->failing_since_ms;
        buf_init(&h->response, RESPONSE_MAX);
        LIST_INSERT_HEAD(&wh->hooks, h, link);
    }
    if (w->cursor > h->cursor && !h->in_flight)
        h->cursor = w->cursor;
    replace(&h->url, w->url);
    replace(&h->secret, w->secret);
    replace(&h->events, w->events);
    h->seen = 1;
}

static void reload(webhooks *wh)
{
    hook *h, *next;
    LIST_FOREACH(h, &wh->hooks, link)
        h->seen = 0;
    err e;
    if (spool_webhooks(wh->srv->spool, NULL, on_listed, wh, &e) < 0) {
        log_ev(LOG_ERROR, "webhooks_reload_failed", "{s:s}", "error", e.msg);
        return;
    }
    for (h = LIST_FIRST(&wh->hooks); h; h = next) {
        next = LIST_NEXT(h, link);
        if (h->seen)
            continue;
        if (h->in_flight) {
            h->deleted = 1; /* freed when its request completes */
            continue;
        }
        LIST_REMOVE(h, link);
        hook_free(h);
    }
    wh->last_reload = clock_mono_ms();
}

void webhooks_reload(server *srv)
{
    if (srv->webhooks)
        reload((webhooks *)srv->webhooks);
}

/* ---- building a batch ------------------------------------------------------------ */

static int subscribed(const hook *h, const char *type)
{
    size_t n = strlen(type);
    for (const char *p = h->events; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, type, n) == 0)
            return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

typedef struct batch {
    hook *h;
    json_t *events;
    int64_t last_scanned;
    int64_t last_included;
    int max;
} batch;

static json_t *event_json(const spool_event_meta *em)
{
    const spool_event *ev = &em->ev;
    char ts[40];
    clock_rfc3339(ev->ts_ms, ts, sizeof ts);
    json_t *data = ev->data ? json_loads(ev->data, 0, NULL) : NULL;
    json_t *meta = em->meta ? json_loads(em->meta, 0, NULL) : NULL;
    json_t *o = json_pack("{s:I,s:s,s:s,s:s?,s:s?,s:o}", "id", (json_int_t)ev->id, "type", ev->type,
                          "time", ts, "message_id", ev->msg_id, "recipient", ev->rcpt, "data",
                          data ? data : json_object());
    if (o && meta) {
        json_t *tags = json_object_get(meta, "tags"), *md = json_object_get(meta, "metadata");
        json_object_set(o, "tags", tags ? tags : json_array());
        json_object_set(o, "metadata", md ? md : json_object());
    }
    json_decref(meta);
    return o;
}

static void collect(void *arg, const spool_event_meta *em)
{
    batch *b = arg;
    if ((int)json_array_size(b->events) >= b->max)
        return;
    b->last_scanned = em->ev.id;
    if (!subscribed(b->h, em->ev.type))
        return;
    json_t *o = event_json(em);
    if (o) {
        json_array_append_new(b->events, o);
        b->last_included = em->ev.id;
    }
}

/* ---- HTTP ------------------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    hook *h = arg;
    (void)buf_append(&h->response, p, size * n); /* truncated past RESPONSE_MAX: only for logs */
    return size * n;
}

static int post(hook *h, const char *body, size_t len)
{
    webhooks *wh = h->wh;
    const config *cfg = wh->srv->cfg;
    int64_t ts = clock_now_ms() / 1000;
    char sig[80], hdr[128];
    webhooks_sign(h->secret, ts, body, len, sig);
    curl_slist_free_all(h->headers);
    h->headers = NULL;
    h->headers = curl_slist_append(h->headers, "Content-Type: application/json");
    snprintf(hdr, sizeof hdr, "X-Posthaste-Timestamp: %lld", (long long)ts);
    h->headers = curl_slist_append(h->headers, hdr);
    snprintf(hdr, sizeof hdr, "X-Posthaste-Signature: %s", sig);
    h->headers = curl_slist_append(h->headers, hdr);
    snprintf(hdr, sizeof hdr, "X-Posthaste-Webhook: %s", h->id);
    h->headers = curl_slist_append(h->headers, hdr);
    if (!h->headers)
        return -1;
    if (!h->easy && !(h->easy = curl_easy_init()))
        return -1;
    curl_easy_reset(h->easy);
    buf_reset(&h->response);
    curl_easy_setopt(h->easy, CURLOPT_URL, h->url);
    curl_easy_setopt(h->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h->easy, CURLOPT_HTTPHEADER, h->headers);
    curl_easy_setopt(h->easy, CURLOPT_POSTFIELDSIZE, (long)len);
    curl_easy_setopt(h->easy, CURLOPT_COPYPOSTFIELDS, body);
    curl_easy_setopt(h->easy, CURLOPT_TIMEOUT_MS, (long)cfg->webhook_timeout);
    curl_easy_setopt(h->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h->easy, CURLOPT_USERAGENT, "Posthaste-Webhooks/1");
    curl_easy_setopt(h->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h->easy, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(h->easy, CURLOPT_PRIVATE, h);
    if (curl_multi_add_handle(wh->multi, h->easy) != CURLM_OK)
        return -1;
    h->in_flight = 1;
    wh->in_flight++;
    return 0;
}

static void send_next(hook *h)
{
    webhooks *wh = h->wh;
    batch b = {.h = h, .events = json_array(), .last_scanned = h->cursor,
               .max = (int)wh->srv->cfg->webhook_batch_max};
    err e;
    /* Read a little past batch_max so unsubscribed types do not stall the cursor. */
    if (spool_events_query(wh->srv->spool, h->cursor, 0, NULL, b.max * 4, collect, &b, &e) < 0) {
        log_ev(LOG_ERROR, "webhook_read_failed", "{s:s,s:s}", "webhook", h->id, "error", e.msg);
        json_decref(b.events);
        return;
    }
    size_t count = json_array_size(b.events);
    if (count == 0) {
        if (b.last_scanned > h->cursor) { /* only events it did not subscribe to */
            h->cursor = b.last_scanned;
            save_progress(h, NULL);
        }
        json_decref(b.events);
        return;
    }
    /* A full batch ends at its last event; a partial one covers all scanned. */
    h->batch_last = (int)count >= b.max ? b.last_included : b.last_scanned;
    h->batch_count = (int)count;
    json_t *doc = json_pack("{s:s,s:o}", "webhook_id", h->id, "events", b.events);
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!body || post(h, body, strlen(body)) < 0)
        log_ev(LOG_ERROR, "webhook_post_failed", "{s:s}", "webhook", h->id);
    free(body);
}

static int64_t backoff_ms(const hook *h, int64_t max)
{
    int64_t d = 1000;
    for (int i = 1; i < h->failures && d < max; i++)
        d *= 2;
    if (d > max)
        d = max;
    uint32_t r = 0;
    ids_random(&r, sizeof r);
    return d - d / 10 + (int64_t)(r % (uint32_t)(d / 5 + 1)); /* +-10% */
}

static void on_success(hook *h)
{
    int was_failing = h->failures > 0;
    h->cursor = h->batch_last;
    h->failures = 0;
    h->failing_since_ms = 0;
    h->healthy = 1;
    h->next_attempt = 0;
    log_ev(LOG_DEBUG, "webhook_delivered", "{s:s,s:i,s:I}", "webhook", h->id, "events", h->batch_count,
           "cursor", (json_int_t)h->cursor);
    save_progress(h, NULL);
    if (was_failing)
        log_ev(LOG_INFO, "webhook_recovered", "{s:s}", "webhook", h->id);
}

static void on_failure(hook *h, const char *why)
{
    const config *cfg = h->wh->srv->cfg;
    int64_t now = clock_now_ms();
    h->failures++;
    if (!h->failing_since_ms)
        h->failing_since_ms = now;
    if (h->failures >= cfg->webhook_unhealthy_after && h->healthy) {
        h->healthy = 0;
        log_ev(LOG_WARN, "webhook_unhealthy", "{s:s,s:i,s:s}", "webhook", h->id, "failures", h->failures,
               "error", why);
    }
    if (now - h->failing_since_ms >= cfg->webhook_retry_window) {
        log_ev(LOG_ERROR, "webhook_failed", "{s:s,s:i,s:I,s:I,s:s}", "webhook", h->id, "events",
               h->batch_count, "first_event", (json_int_t)(h->cursor + 1), "last_event",
               (json_int_t)h->batch_last, "error", why);
        h->cursor = h->batch_last; /* give up on this batch, keep going */
        h->failing_since_ms = 0;
    }
    h->next_attempt = clock_mono_ms() + backoff_ms(h, cfg->webhook_max_backoff);
    log_ev(LOG_INFO, "webhook_retry", "{s:s,s:i,s:s}", "webhook", h->id, "attempt", h->failures, "error", why);
    save_progress(h, why);
}

static void finished(webhooks *wh, CURL *easy, CURLcode result)
{
    hook *h = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&h);
    curl_multi_remove_handle(wh->multi, easy);
    if (!h)
        return;
    h->in_flight = 0;
    wh->in_flight--;
    if (h->deleted) {
        LIST_REMOVE(h, link);
        hook_free(h);
        return;
    }
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    if (result == CURLE_OK && status >= 200 && status < 300) {
        on_success(h);
        return;
    }
    char why[160];
    if (result != CURLE_OK)
        snprintf(why, sizeof why, "%s", curl_easy_strerror(result));
    else
        snprintf(why, sizeof why, "HTTP %ld", status);
    on_failure(h, why);
}

static void check_done(webhooks *wh)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(wh->multi, &left)))
        if (msg->msg == CURLMSG_DONE)
            finished(wh, msg->easy_handle, msg->data.result);
}

/* ---- libcurl multi on the libevent loop ------------------------------------------ */

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    webhooks *wh = arg;
    int flags = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    int running;
    curl_multi_socket_action(wh->multi, fd, flags, &running);
    check_done(wh);
}

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    webhooks *wh = userp;
    struct event *ev = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (ev)
            event_free(ev);
        curl_multi_assign(wh->multi, s, NULL);
        return 0;
    }
    short kind = (short)((what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0) | EV_PERSIST);
    if (ev) {
        event_del(ev);
        event_assign(ev, wh->srv->base, s, kind, on_socket_event, wh);
    } else {
        ev = event_new(wh->srv->base, s, kind, on_socket_event, wh);
        if (!ev)
            return -1;
        curl_multi_assign(wh->multi, s, ev);
    }
    return event_add(ev, NULL);
}

static void on_curl_timeout(evutil_socket_t fd, short what, void *arg)
{
    webhooks *wh = arg;
    int running;
    curl_multi_socket_action(wh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(wh);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    webhooks *wh = userp;
    if (timeout_ms < 0)
        return evtimer_del(wh->curl_timer);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    return evtimer_add(wh->curl_timer, &tv);
}

/* ---- the tick -------------------------------------------------------------------- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    webhooks *wh = arg;
    if (wh->draining)
        return;
    int64_t now = clock_mono_ms();
    if (now - wh->last_reload >= RELOAD_EVERY_MS)
        reload(wh);
    hook *h;
    LIST_FOREACH(h, &wh->hooks, link)
        if (!h->in_flight && !h->deleted && now >= h->next_attempt)
            send_next(h);
}

static int start(server *srv, err *e)
{
    pthread_once(&curl_once, curl_start);
    webhooks *wh = xcalloc(1, sizeof *wh);
    wh->srv = srv;
    LIST_INIT(&wh->hooks);
    srv->webhooks = (struct webhooks *)wh;
    wh->multi = curl_multi_init();
    wh->curl_timer = evtimer_new(srv->base, on_curl_timeout, wh);
    wh->tick = event_new(srv->base, -1, EV_PERSIST, on_tick, wh);
    if (!wh->multi || !wh->curl_timer || !wh->tick) {
        err_set(e, ERR_IO, "cannot set up the webhook client");
        return -1;
    }
    curl_multi_setopt(wh->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(wh->multi, CURLMOPT_SOCKETDATA, wh);
    curl_multi_setopt(wh->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(wh->multi, CURLMOPT_TIMERDATA, wh);
    int64_t ms = srv->cfg->webhook_interval;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(wh->tick, &tv);
    reload(wh);
    return 0;
}

static void drain(server *srv)
{
    webhooks *wh = (webhooks *)srv->webhooks;
    if (wh)
        wh->draining = 1;
}

static size_t busy(server *srv)
{
    webhooks *wh = (webhooks *)srv->webhooks;
    return wh ? (size_t)wh->in_flight : 0;
}

static void stop(server *srv)
{
    webhooks *wh = (webhooks *)srv->webhooks;
    if (!wh)
        return;
    while (!LIST_EMPTY(&wh->hooks)) {
        hook *h = LIST_FIRST(&wh->hooks);
        LIST_REMOVE(h, link);
        hook_free(h);
    }
    if (wh->multi)
        curl_multi_cleanup(wh->multi);
    if (wh->tick)
        event_free(wh->tick);
    if (wh->curl_timer)
        event_free(wh->curl_timer);
    free(wh);
    srv->webhooks = NULL;
}

const server_component webhooks_component = {
    .name = "webhooks",
    .start = start,
    .drain = drain,
    .busy = busy,
    .stop = stop,
};
