/*
 * api_events — GET /v1/events: the event stream, oldest first, paginated
 * by the event id (next_cursor). Each event carries its message's tags and
 * metadata so an application can match outcomes to its own records.
 */
#include "ingress/http_api.h"

#include <stdlib.h>
#include <string.h>

typedef struct events_ctx {
    json_t *data;
    int64_t last_id;
} events_ctx;

static void add_meta(json_t *o, const char *meta_text)
{
    json_t *meta = meta_text ? json_loads(meta_text, 0, NULL) : NULL;
    json_t *tags = json_object_get(meta, "tags"), *md = json_object_get(meta, "metadata");
    json_object_set_new(o, "tags", tags ? json_incref(tags) : json_array());
    json_object_set_new(o, "metadata", md ? json_incref(md) : json_object());
    json_decref(meta);
}

static void collect(void *arg, const spool_event_meta *em)
{
    events_ctx *c = arg;
    const spool_event *ev = &em->ev;
    json_t *o = json_pack("{s:I,s:s,s:o}", "id", (json_int_t)ev->id, "type", ev->type ? ev->type : "", "created_at",
                          api_time(ev->ts_ms));
    json_object_set_new(o, "message_id", ev->msg_id ? json_string(ev->msg_id) : json_null());
    json_object_set_new(o, "recipient", ev->rcpt ? json_string(ev->rcpt) : json_null());
    json_t *data = ev->data ? json_loads(ev->data, 0, NULL) : NULL;
    json_object_set_new(o, "data", data ? data : json_object());
    add_meta(o, em->meta);
    json_array_append_new(c->data, o);
    c->last_id = ev->id;
}

static int event_type_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 64)
        return 0;
    for (const char *p = t; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || *p == '_' || *p == '.'))
            return 0;
    return 1;
}

void api_events_list(api_req *r)
{
    int64_t since, after = 0;
    const char *cursor = api_query(r, "cursor"), *type = api_query(r, "type");
    if (cursor) {
        char *end;
        after = strtoll(cursor, &end, 10);
        if (!*cursor || *end || after < 0) {
            api_error(r, 400, "invalid_parameter", "cursor", "cursor must be a next_cursor value from a previous page");
            return;
        }
    }
    if (type && !event_type_ok(type)) {
        api_error(r, 400, "invalid_parameter", "type", "type must be an event type such as accepted, delivered, bounced");
        return;
    }
    int limit;
    if (api_query_since(r, &since) || (limit = api_query_limit(r, 100)) < 0)
        return;
    events_ctx c = {.data = json_array(), .last_id = after};
    err e;
    err_clear(&e);
    int n = spool_events_query(r->srv->spool, after, since, type, limit, collect, &c, &e);
    if (n < 0) {
        json_decref(c.data);
        api_error_err(r, &e, NULL);
        return;
    }
    /* next_cursor is always given: polling with it returns only newer events. */
    char cur[32];
    snprintf(cur, sizeof cur, "%lld", (long long)c.last_id);
    api_reply(r, 200, json_pack("{s:o,s:s,s:b}", "data", c.data, "next_cursor", cur, "has_more", n == limit));
}
