/*
 * api_suppressions — /v1/suppressions[/{email}]: list, look up, add and
 * remove addresses that must never be contacted. Reasons: hard_bounce,
 * complaint, unsubscribe, manual. The submit pipeline consults the same
 * table, so a suppressed recipient is stored as 'suppressed' and never sent.
 */
#include "ingress/http_api.h"

#include "core/mem.h"
#include "submit/address.h"

#include <stdlib.h>
#include <string.h>

static const char *const reasons[] = {"hard_bounce", "complaint", "unsubscribe", "manual"};

static json_t *suppression_json(const spool_suppression *sp)
{
    return json_pack("{s:s,s:s,s:s,s:o}", "email", sp->email, "reason", sp->reason, "scope", sp->scope ? sp->scope : "",
                     "created_at", api_time(sp->created_ms));
}

typedef struct sup_ctx {
    json_t *data;
    char last[ADDR_MAX + 1];
} sup_ctx;

static void collect(void *arg, const spool_suppression *sp)
{
    sup_ctx *c = arg;
    json_array_append_new(c->data, suppression_json(sp));
    snprintf(c->last, sizeof c->last, "%s", sp->email);
}

void api_suppressions_list(api_req *r)
{
    int limit = api_query_limit(r, 100);
    if (limit < 0)
        return;
    const char *cursor = api_query(r, "cursor");
    sup_ctx c = {.data = json_array()};
    err e;
    err_clear(&e);
    int n = spool_suppressions(r->srv->spool, NULL, cursor ? cursor : "", limit, collect, &c, &e);
    if (n < 0) {
        json_decref(c.data);
        api_error_err(r, &e, NULL);
        return;
    }
    json_t *next = n == limit ? json_string(c.last) : json_null();
    api_reply(r, 200, json_pack("{s:o,s:o,s:b}", "data", c.data, "next_cursor", next, "has_more", n == limit));
}

/* Normalise through address.h so lookups match what the pipeline stores. */
static int normalise(api_req *r, const char *in, const char *field, addr *a)
{
    err e;
    err_clear(&e);
    if (addr_parse(in, strlen(in), 1, a, &e)) {
        api_error(r, 422, "invalid_field", field, "%s: %s", field, e.msg);
        return -1;
    }
    return 0;
}

void api_suppressions_get(api_req *r)
{
    addr a;
    if (normalise(r, r->param, "email", &a))
        return;
    sup_ctx c = {.data = json_array()};
    err e;
    err_clear(&e);
    int n = spool_suppressions(r->srv->spool, a.full, "", 10, collect, &c, &e);
    if (n < 0) {
        json_decref(c.data);
        api_error_err(r, &e, NULL);
    } else if (n == 0) {
        json_decref(c.data);
        api_error(r, 404, "not_found", "email", "%s is not suppressed", a.full);
    } else {
        json_t *first = json_incref(json_array_get(c.data, 0));
        json_decref(c.data);
        api_reply(r, 200, first);
    }
}

typedef struct sup_job {
    api_req *r;
    addr a;
    const char *reason;
    int remove;
} sup_job;

static int sup_fn(spool_tx *tx, void *arg, err *e)
{
    sup_job *j = arg;
    if (j->remove)
        return spool_tx_unsuppress(tx, j->a.full, "", e);
    if (spool_tx_suppress(tx, j->a.full, "", j->reason, e))
        return -1;
    char data[64];
    snprintf(data, sizeof data, "{\"reason\":\"%s\"}", j->reason);
    return spool_tx_event(tx, NULL, j->a.full, "suppression_added", data, e);
}

static void on_sup(void *arg, const err *e)
{
    sup_job *j = arg;
    api_req *r = j->r;
    if (e)
        api_error_err(r, e, e->code == ERR_NOTFOUND ? "email" : NULL);
    else if (j->remove)
        api_reply(r, 200, json_pack("{s:s,s:b}", "email", j->a.full, "deleted", 1));
    else
        api_reply(r, 201, json_pack("{s:s,s:s,s:s}", "email", j->a.full, "reason", j->reason, "scope", ""));
    free(j);
}

static void queue_job(sup_job *j)
{
    if (spool_write(j->r->srv->spool, sup_fn, on_sup, j)) {
        api_error(j->r, 503, "unavailable", NULL, "the spool is shutting down");
        free(j);
    }
}

void api_suppressions_add(api_req *r)
{
    const json_t *je = json_object_get(r->json, "email"), *jr = json_object_get(r->json, "reason");
    const char *k;
    json_t *v;
    json_object_foreach(r->json, k, v)
        if (strcmp(k, "email") && strcmp(k, "reason")) {
            api_error(r, 422, "invalid_field", k, "%s: unknown field", k);
            return;
        }
    if (!json_is_string(je)) {
        api_error(r, 422, "invalid_field", "email", "email is required (a string)");
        return;
    }
    const char *reason = jr ? json_string_value(jr) : "manual";
    size_t i = 0;
    while (reason && i < sizeof reasons / sizeof reasons[0] && strcmp(reason, reasons[i]))
        i++;
    if (!reason || i == sizeof reasons / sizeof reasons[0]) {
        api_error(r, 422, "invalid_field", "reason", "reason must be one of hard_bounce, complaint, unsubscribe, manual");
        return;
    }
    sup_job *j = xcalloc(1, sizeof *j);
    j->r = r;
    j->reason = reasons[i];
    if (normalise(r, json_string_value(je), "email", &j->a)) {
        free(j);
        return;
    }
    queue_job(j);
}

void api_suppressions_delete(api_req *r)
{
    sup_job *j = xcalloc(1, sizeof *j);
    j->r = r;
    j->remove = 1;
    if (normalise(r, r->param, "email", &j->a)) {
        free(j);
        return;
    }
    queue_job(j);
}
