/*
 * api_webhooks — /v1/webhooks[/{id}] (admin scope): register an endpoint
 * (its signing secret is returned once, in the 201), list endpoints with
 * their health, delete one. Delivery itself is outcome/webhooks.c.
 */
#include "ingress/http_api.h"

#include "core/clock.h"
#include "core/ids.h"
#include "core/mem.h"
#include "outcome/webhooks.h"

#include <stdlib.h>
#include <string.h>

static json_t *webhook_json(const spool_webhook *w)
{
    json_t *events = json_array();
    for (const char *p = w->events; *p;) {
        size_t n = strcspn(p, ",");
        json_array_append_new(events, json_stringn(p, n));
        p += n + (p[n] == ',');
    }
    return json_pack("{s:s,s:s,s:o,s:o,s:b,s:o,s:s?,s:I}", "id", w->id, "url", w->url, "events", events,
                     "created_at", api_time(w->created_ms), "healthy", w->healthy, "failing_since",
                     w->failing_since_ms ? api_time(w->failing_since_ms) : json_null(), "last_error",
                     w->last_error, "cursor", (json_int_t)w->cursor);
}

/* events: a non-empty array of known types, without repeats -> "a,b". */
static int events_list(api_req *r, json_t *events, buf *out)
{
    if (!events) {
        static const char *const all = "accepted,delivered,deferred,bounced,expired,suppressed,"
                                       "unsubscribed,complained,alert";
        return buf_appends(out, all);
    }
    if (!json_is_array(events) || json_array_size(events) == 0) {
        api_error(r, 422, "invalid_field", "events", "events must be a non-empty array of event types");
        return -1;
    }
    size_t i;
    json_t *v;
    json_array_foreach(events, i, v) {
        char field[32];
        snprintf(field, sizeof field, "events[%zu]", i);
        const char *t = json_string_value(v);
        if (!t || !webhooks_valid_type(t)) {
            api_error(r, 422, "invalid_field", field, "%s: unknown event type", field);
            return -1;
        }
        if (strstr(buf_cstr(out), t)) /* types are not prefixes of each other */
            continue;
        if ((out->len && buf_appendc(out, ',')) || buf_appends(out, t)) {
            api_error(r, 422, "invalid_field", "events", "too many event types");
            return -1;
        }
    }
    return 0;
}

typedef struct create_op {
    api_req *r;
    spool_webhook w;
    char id[32], secret[64];
    buf events;
    char *url;
} create_op;

static int create_fn(spool_tx *tx, void *arg, err *e)
{
    create_op *op = arg;
    return spool_tx_webhook_insert(tx, &op->w, e);
}

static void create_done(void *arg, const err *e)
{
    create_op *op = arg;
    api_req *r = op->r;
    if (e) {
        api_error_err(r, e, NULL);
    } else {
        webhooks_reload(r->srv);
        json_t *body = webhook_json(&op->w);
        json_object_set_new(body, "secret", json_string(op->secret)); /* shown once */
        json_object_set_new(body, "created_at", api_time(op->w.created_ms));
        api_reply(r, 201, body);
    }
    buf_free(&op->events);
    free(op->url);
    free(op);
}

void api_webhooks_create(api_req *r)
{
    json_t *url = json_object_get(r->json, "url");
    if (!json_is_string(url)) {
        api_error(r, 422, "invalid_field", "url", "url is required and must be a string");
        return;
    }
    err e;
    err_clear(&e);
    if (webhooks_check_url(json_string_value(url), &e)) {
        api_error(r, 422, "invalid_field", "url", "url: %s", e.msg);
        return;
    }
    create_op *op = xcalloc(1, sizeof *op);
    op->r = r;
    buf_init(&op->events, 512);
    if (events_list(r, json_object_get(r->json, "events"), &op->events)) {
        buf_free(&op->events);
        free(op);
        return;
    }
    uint8_t raw_id[10], raw_secret[24];
    if (ids_random(raw_id, sizeof raw_id) || ids_random(raw_secret, sizeof raw_secret)) {
        buf_free(&op->events);
        free(op);
        api_error(r, 503, "unavailable", NULL, "no randomness available");
        return;
    }
    char b32[20];
    ids_base32(raw_id, sizeof raw_id, b32);
    snprintf(op->id, sizeof op->id, "wh_%s", b32);
    char hex[49];
    ids_hex(raw_secret, sizeof raw_secret, hex);
    snprintf(op->secret, sizeof op->secret, "whsec_%s", hex);
    op->url = xstrdup(json_string_value(url));
    op->w = (spool_webhook){.id = op->id, .url = op->url, .events = buf_cstr(&op->events),
                            .secret = op->secret, .healthy = 1};
    op->w.created_ms = clock_now_ms();
    if (spool_write(r->srv->spool, create_fn, create_done, op) < 0) {
        buf_free(&op->events);
        free(op->url);
        free(op);
        api_error(r, 503, "unavailable", NULL, "server is shutting down");
    }
}

static void collect(void *arg, const spool_webhook *w)
{
    json_array_append_new(arg, webhook_json(w));
}

void api_webhooks_list(api_req *r)
{
    json_t *data = json_array();
    err e;
    err_clear(&e);
    if (spool_webhooks(r->srv->spool, NULL, collect, data, &e) < 0) {
        json_decref(data);
        api_error_err(r, &e, NULL);
        return;
    }
    api_reply(r, 200, json_pack("{s:o}", "data", data));
}

typedef struct delete_op {
    api_req *r;
    char *id;
} delete_op;

static int delete_fn(spool_tx *tx, void *arg, err *e)
{
    delete_op *op = arg;
    return spool_tx_webhook_delete(tx, op->id, e);
}

static void delete_done(void *arg, const err *e)
{
    delete_op *op = arg;
    if (e && e->code == ERR_NOTFOUND) {
        api_error(op->r, 404, "not_found", NULL, "no webhook %s", op->id);
    } else if (e) {
        api_error_err(op->r, e, NULL);
    } else {
        webhooks_reload(op->r->srv);
        api_reply(op->r, 200, json_pack("{s:s,s:b}", "id", op->id, "deleted", 1));
    }
    free(op->id);
    free(op);
}

void api_webhooks_delete(api_req *r)
{
    delete_op *op = xcalloc(1, sizeof *op);
    op->r = r;
    op->id = xstrdup(r->param);
    if (spool_write(r->srv->spool, delete_fn, delete_done, op) < 0) {
        free(op->id);
        free(op);
        api_error(r, 503, "unavailable", NULL, "server is shutting down");
    }
}
