/*
 * http_api — the HTTP JSON API server (evhttp on [api] listen).
 *
 * What it does: accepts requests, and before any route runs, enforces in
 * one place: the body size ([api] max_body_size, 413), Bearer-key
 * authentication (401), the key's IP allowlist and the route's scope
 * (403), request signing for keys that require it (401: bad signature,
 * more than [api] signature_skew of clock difference, or a replayed
 * signature), Content-Type (415), strict UTF-8 and JSON nesting depth
 * ([api] max_json_depth, 400), and Idempotency-Key (a repeat returns the
 * first answer, the same key with another body is 409). POST /v1/messages
 * is the one exception to the order: its body is decoded by the same
 * api_json_decode(), with the same 400s, but on a worker thread after the
 * Idempotency-Key check, because decoding a large body is most of its
 * cost on the loop. Routes live in
 * api_messages.c, api_events.c, api_suppressions.c, api_health.c and
 * answer through api_reply()/api_error().
 *
 * Every error is {"error":{"code":…,"message":…,"field":…}} with the
 * matching status. A route that submits mail answers only from the
 * submit pipeline's commit callback, so a 202 means the message is on
 * stable storage.
 *
 * What it owns: the evhttp listener, the in-flight requests, the replay
 * cache of recent signatures, the per-key count of uncommitted recipients,
 * and a libmagic context for mime_build.
 *
 * What it never does: touch SQLite (reads go through spool.h), build MIME
 * (mime_build.h) or validate mail headers itself (submit.h).
 */
#ifndef PH_INGRESS_HTTP_API_H
#define PH_INGRESS_HTTP_API_H

#include "core/err.h"
#include "core/server.h"
#include "spool/spool.h"

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stddef.h>

typedef struct api api;
struct mime_ctx;

/* One request between dispatch and reply. */
typedef struct api_req {
    api *api;
    server *srv;
    struct evhttp_request *req;
    int method;                /* EVHTTP_REQ_* */
    char *path;                /* decoded path without the query */
    char *param;               /* the {id} or {email} path segment, or NULL */
    struct evkeyvalq query;    /* decoded query parameters */
    char *body;                /* request body (NUL-terminated copy) */
    size_t len;
    json_t *json;              /* parsed body of JSON routes */
    spool_key key;             /* the authenticated key (when authed) */
    int authed;
    char client_ip[64];
    char *idem_key;            /* Idempotency-Key, or NULL */
    char idem_hash[65];        /* SHA-256 of method, path, query and body */
    int64_t started_ms;
} api_req;

/* Why a body is not a JSON object the API takes: the error code and message. */
typedef struct api_json_err {
    const char *code; /* invalid_utf8, json_too_deep, invalid_json */
    char msg[ERR_MSG_MAX];
} api_json_err;

/* Decode a request body into a JSON object: strict UTF-8, nesting at most
   max_depth, no duplicate keys. Touches only its arguments, so a worker
   thread may call it. 0, or -1 with je filled (answer 400). */
int api_json_decode(const char *body, size_t len, size_t max_depth, json_t **out, api_json_err *je);

/* Send status with body (stolen; NULL for none) and free r. */
void api_reply(api_req *r, int status, json_t *body);
/* Send {"error":{"code","message","field"}} and free r. field may be NULL. */
void api_error(api_req *r, int status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Map an error class to its status and code (submit.h's table). */
int api_err_status(const err *e, const char **code);
/* The same as api_error() for an err value. */
void api_error_err(api_req *r, const err *e, const char *field);
/* 429 with Retry-After (rounded up to whole seconds). */
void api_error_rate(api_req *r, int64_t retry_ms, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A query parameter, or NULL. */
const char *api_query(api_req *r, const char *name);
/* limit= (default def, at most [api] max_page_size); -1 after replying 400. */
int api_query_limit(api_req *r, int def);
/* since= as RFC 3339 into *ms (0 when absent); -1 after replying 400. */
int api_query_since(api_req *r, int64_t *ms);

/* Budget checks for nmsgs messages with nrcpts recipients in all: the
   key's token bucket and [api] recipients_per_day. 0 when allowed (the
   recipients are then counted as in flight until api_rcpts_done); -1
   after replying 429 (or 503 when the count cannot be read). */
int api_take_budget(api_req *r, size_t nmsgs, size_t nrcpts);
void api_rcpts_done(api *a, const char *key_id, size_t nrcpts);

struct mime_ctx *api_mime(api *a);

/* "2026-11-23T17:39:05.123Z" as a new JSON string. */
json_t *api_time(int64_t ms);

/* The routes (api_*.c). Each ends in exactly one api_reply/api_error. */
void api_messages_send(api_req *r);
void api_messages_batch(api_req *r);
void api_messages_raw(api_req *r);
void api_messages_get(api_req *r);
void api_messages_list(api_req *r);
void api_messages_cancel(api_req *r);
void api_events_list(api_req *r);
void api_suppressions_list(api_req *r);
void api_suppressions_get(api_req *r);
void api_suppressions_add(api_req *r);
void api_suppressions_delete(api_req *r);
void api_healthz(api_req *r);
void api_readyz(api_req *r);
void api_metrics(api_req *r);
void api_unsubscribe_page(api_req *r);
void api_unsubscribe_post(api_req *r);
void api_webhooks_create(api_req *r); /* api_webhooks.c (outcome/webhooks) */
void api_webhooks_list(api_req *r);
void api_webhooks_delete(api_req *r);

/* Send a non-JSON body (text/plain metrics) and free r. */
void api_reply_text(api_req *r, int status, const char *content_type, const char *text, size_t len);

/* Requests read and not yet answered (0 for NULL): a metrics gauge, and
   what shutdown waits for. */
size_t api_requests_in_flight(const api *a);

/* `serve` component: evhttp on srv->base, state in srv->api. */
extern const server_component api_component;

#endif
