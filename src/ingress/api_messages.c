/*
 * api_messages — /v1/messages: send (JSON), batch, raw, status, list and
 * cancel. Sending builds the message with mime_build and hands it to the
 * one submit pipeline; the 202 goes out from the commit callback.
 */
#include "ingress/http_api.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/mem.h"
#include "submit/address.h"
#include "submit/mime_build.h"
#include "submit/submit.h"

#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

static mime_limits limits_of(const config *cfg)
{
    return (mime_limits){
        .max_recipients = (size_t)cfg->api_max_recipients,
        .max_attachments = (size_t)cfg->api_max_attachments,
        .max_attachment_size = (size_t)cfg->api_max_attachment_size,
        .blocked_extensions = cfg->api_blocked_extensions,
        .blocked_types = cfg->api_blocked_types,
    };
}

static submit_req request_of(api_req *r, const mime_result *m)
{
    return (submit_req){
        .ingress = "api",
        .key = r->authed ? &r->key : NULL,
        .client_ip = r->client_ip,
        .protocol = r->srv->cfg->api_tls ? "HTTPS" : "HTTP",
        .mail_from = m->mail_from,
        .rcpts = (const char *const *)m->rcpts,
        .nrcpts = m->nrcpts,
        .data = m->data,
        .len = m->len,
        .meta = m->meta,
        .not_before_ms = m->not_before_ms,
        .unsubscribe = m->unsubscribe,
    };
}

static json_t *accepted_body(const submit_result *res, char *const *rcpts)
{
    json_t *list = json_array();
    for (size_t i = 0; i < res->nrcpts; i++)
        json_array_append_new(list, json_pack("{s:s,s:s}", "email", rcpts[i], "status",
                                              res->suppressed && res->suppressed[i] ? "suppressed" : "queued"));
    return json_pack("{s:s,s:o}", "id", res->id, "recipients", list);
}

/* ---- POST /v1/messages ------------------------------------------------------- */

/* A single send decodes its JSON body and builds its MIME message on a
   worker thread (jansson, GMime and libmagic cost more than everything
   else a request does on the loop), then comes back to the loop for the
   budget, the submit pipeline and the reply. The request stays owned by
   the API until the reply: the worker reads only the job (the body and
   the limits). */
typedef struct send_job {
    api_req *r;
    mime_ctx *ctx;
    json_t *req;
    mime_limits lim;                          /* its lists point into srv->cfg, which lives
                                                 until the workers are joined */
    const char *body;                         /* r->body, decoded on the worker */
    size_t len, max_depth;
    mime_result m;
    int failed, bad_json;
    err e;
    api_json_err je;
    char field[MIME_FIELD_MAX];
} send_job;

static void send_job_free(send_job *j)
{
    mime_ctx_free(j->ctx);
    mime_result_free(&j->m);
    free(j);
}

static void on_sent(void *arg, const submit_result *res, const err *e)
{
    send_job *j = arg;
    api_rcpts_done(j->r->api, j->r->key.id, j->m.nrcpts);
    if (e)
        api_error_err(j->r, e, NULL);
    else
        api_reply(j->r, 202, accepted_body(res, j->m.rcpts));
    send_job_free(j);
}

/* Queue one built message; on failure the error is in e and nothing was queued. */
static int submit_built(api_req *r, mime_result *m, submit_cb cb, void *arg, err *e)
{
    submit_req s = request_of(r, m);
    return submit_message(r->srv->submit, &s, cb, arg, e);
}

static void build_work(void *arg)
{
    send_job *j = arg;
    err_clear(&j->e);
    if (api_json_decode(j->body, j->len, j->max_depth, &j->req, &j->je)) {
        j->bad_json = 1;
        return;
    }
    j->failed = mime_build(j->ctx, j->req, &j->lim, &j->m, j->field, &j->e) != 0;
}

static void build_done(void *arg)
{
    send_job *j = arg;
    api_req *r = j->r;
    r->json = j->req; /* freed with the request */
    if (j->bad_json) {
        api_error(r, 400, j->je.code, NULL, "%s", j->je.msg);
        send_job_free(j);
        return;
    }
    if (j->failed) {
        api_error_err(r, &j->e, j->field);
        send_job_free(j);
        return;
    }
    if (api_take_budget(r, 1, j->m.nrcpts)) {
        send_job_free(j);
        return;
    }
    err e;
    err_clear(&e);
    if (submit_built(r, &j->m, on_sent, j, &e)) {
        api_rcpts_done(r->api, r->key.id, j->m.nrcpts);
        api_error_err(r, &e, e.code == ERR_DENIED ? "from" : NULL);
        send_job_free(j);
    }
}

void api_messages_send(api_req *r)
{
    send_job *j = xcalloc(1, sizeof *j);
    j->r = r;
    j->ctx = mime_ctx_ref(api_mime(r->api));
    j->body = r->body;
    j->len = r->len;
    j->max_depth = (size_t)r->srv->cfg->api_max_json_depth;
    j->lim = limits_of(r->srv->cfg);
    if (submit_offload(r->srv->submit, build_work, build_done, j)) {
        api_error(r, 503, "unavailable", NULL, "the server is shutting down");
        send_job_free(j);
    }
}

/* ---- POST /v1/messages/batch --------------------------------------------------- */

typedef struct batch_job batch_job;
typedef struct batch_item {
    batch_job *b;
    size_t index;
    mime_result m;
    json_t *result; /* per-item answer */
} batch_item;

struct batch_job {
    api_req *r;
    batch_item *items;
    size_t n, waiting, queued;
    size_t rcpts;
};

static json_t *item_error(size_t index, const err *e, const char *field)
{
    const char *code;
    int status = api_err_status(e, &code);
    json_t *er = json_pack("{s:s,s:s}", "code", code, "message", e->msg);
    if (field && *field)
        json_object_set_new(er, "field", json_string(field));
    return json_pack("{s:I,s:i,s:o}", "index", (json_int_t)index, "status", status, "error", er);
}

static void batch_finish(batch_job *b)
{
    api_rcpts_done(b->r->api, b->r->key.id, b->rcpts);
    json_t *results = json_array();
    size_t ok = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (json_object_get(b->items[i].result, "id"))
            ok++;
        json_array_append_new(results, b->items[i].result);
        mime_result_free(&b->items[i].m);
    }
    json_t *body = json_pack("{s:I,s:I,s:o}", "accepted", (json_int_t)ok, "rejected", (json_int_t)(b->n - ok),
                             "results", results);
    if (ok == 0)
        json_object_set_new(body, "error",
                            json_pack("{s:s,s:s}", "code", "invalid_batch", "message", "no message in the batch was accepted"));
    api_reply(b->r, ok ? 202 : 422, body);
    free(b->items);
    free(b);
}

static void on_batch_item(void *arg, const submit_result *res, const err *e)
{
    batch_item *it = arg;
    if (e) {
        it->result = item_error(it->index, e, NULL);
    } else {
        it->result = accepted_body(res, it->m.rcpts);
        json_object_set_new(it->result, "index", json_integer((json_int_t)it->index));
        json_object_set_new(it->result, "status", json_integer(202));
    }
    if (--it->b->waiting == 0)
        batch_finish(it->b);
}

static int batch_items(api_req *r, const json_t **list)
{
    *list = json_object_get(r->json, "messages");
    int64_t max = r->srv->cfg->api_max_batch;
    if (!json_is_array(*list) || json_array_size(*list) == 0) {
        api_error(r, 422, "invalid_field", "messages", "messages must be a non-empty array of message objects");
        return -1;
    }
    if ((int64_t)json_array_size(*list) > max) {
        api_error(r, 413, "too_large", "messages", "%zu messages, more than %lld in one batch ([api] max_batch)",
                  json_array_size(*list), (long long)max);
        return -1;
    }
    return 0;
}

/* Every item is validated on its own; the valid ones are queued together,
   so the spool's group commit stores them in one transaction. */
void api_messages_batch(api_req *r)
{
    const json_t *list;
    if (batch_items(r, &list))
        return;
    batch_job *b = xcalloc(1, sizeof *b);
    b->r = r;
    b->n = json_array_size(list);
    b->items = xcalloc(b->n, sizeof *b->items);
    mime_limits lim = limits_of(r->srv->cfg);
    size_t valid = 0;
    for (size_t i = 0; i < b->n; i++) {
        batch_item *it = &b->items[i];
        *it = (batch_item){.b = b, .index = i};
        char field[MIME_FIELD_MAX], path[MIME_FIELD_MAX + 40];
        err e;
        err_clear(&e);
        if (mime_build(api_mime(r->api), json_array_get(list, i), &lim, &it->m, field, &e)) {
            snprintf(path, sizeof path, "messages[%zu]%s%s", i, *field ? "." : "", field);
            it->result = item_error(i, &e, path);
            continue;
        }
        valid++;
        b->rcpts += it->m.nrcpts;
    }
    if (valid && api_take_budget(r, valid, b->rcpts)) {
        for (size_t i = 0; i < b->n; i++) {
            json_decref(b->items[i].result);
            mime_result_free(&b->items[i].m);
        }
        free(b->items);
        free(b);
        return;
    }
    b->waiting = 1; /* held until every item is queued */
    for (size_t i = 0; i < b->n; i++) {
        batch_item *it = &b->items[i];
        if (it->result)
            continue;
        err e;
        err_clear(&e);
        b->waiting++;
        if (submit_built(r, &it->m, on_batch_item, it, &e)) {
            b->waiting--;
            it->result = item_error(i, &e, NULL);
        }
    }
    if (--b->waiting == 0)
        batch_finish(b);
}

/* ---- POST /v1/messages/raw ----------------------------------------------------- */

static int add_rcpt_list(api_req *r, const char *list, mime_result *m, err *e)
{
    char *copy = xstrdup(list), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(copy, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        size_t n = strlen(t);
        while (n && t[n - 1] == ' ')
            t[--n] = '\0';
        addr a;
        if (addr_parse(t, n, 1, &a, e)) {
            err_wrap(e, "to");
            e->code = ERR_INVALID;
            rc = -1;
            break;
        }
        if ((int64_t)m->nrcpts >= r->srv->cfg->api_max_recipients) {
            err_set(e, ERR_LIMIT, "to: more than %lld recipients ([api] max_recipients)",
                    (long long)r->srv->cfg->api_max_recipients);
            rc = -1;
            break;
        }
        m->rcpts = xrealloc(m->rcpts, (m->nrcpts + 1) * sizeof *m->rcpts);
        m->rcpts[m->nrcpts++] = xstrdup(a.full);
    }
    free(copy);
    return rc;
}

/* Envelope from ?from=&to= (to may repeat or hold a comma list) or the
   X-Posthaste-From / X-Posthaste-To headers. */
static int raw_envelope(api_req *r, mime_result *m, const char **field, err *e)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(r->req);
    const char *from = api_query(r, "from");
    if (!from)
        from = evhttp_find_header(h, "X-Posthaste-From");
    *field = "from";
    if (!from) {
        err_set(e, ERR_INVALID, "from: the envelope sender is required (?from= or X-Posthaste-From)");
        return -1;
    }
    addr a;
    if (*from && addr_parse(from, strlen(from), 1, &a, e)) {
        err_wrap(e, "from");
        e->code = ERR_INVALID;
        return -1;
    }
    m->mail_from = xstrdup(*from ? a.full : "");
    *field = "to";
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, &r->query, next)
        if (strcmp(kv->key, "to") == 0 && add_rcpt_list(r, kv->value, m, e))
            return -1;
    TAILQ_FOREACH(kv, h, next)
        if (strcasecmp(kv->key, "X-Posthaste-To") == 0 && add_rcpt_list(r, kv->value, m, e))
            return -1;
    if (m->nrcpts == 0) {
        err_set(e, ERR_INVALID, "to: at least one envelope recipient is required (?to= or X-Posthaste-To)");
        return -1;
    }
    return 0;
}

/* Clients often send LF line endings; a body with no CR at all is
   converted to CRLF. Anything else goes to the pipeline as sent, whose
   header checks refuse bare CR or LF exactly as SMTP does. */
static void normalise_newlines(const char *in, size_t len, mime_result *m)
{
    if (memchr(in, '\r', len)) {
        m->data = xmemdup(in, len + 1);
        m->len = len;
        return;
    }
    buf b;
    buf_init(&b, len * 2 + 1);
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '\n')
            buf_appendc(&b, '\r');
        buf_appendc(&b, in[i]);
    }
    m->data = buf_steal(&b, &m->len);
}

void api_messages_raw(api_req *r)
{
    send_job *j = xcalloc(1, sizeof *j);
    j->r = r;
    err e;
    err_clear(&e);
    const char *field = NULL;
    if (raw_envelope(r, &j->m, &field, &e)) {
        api_error_err(r, &e, field);
        send_job_free(j);
        return;
    }
    normalise_newlines(r->body, r->len, &j->m);
    if (api_take_budget(r, 1, j->m.nrcpts)) {
        send_job_free(j);
        return;
    }
    if (submit_built(r, &j->m, on_sent, j, &e)) {
        api_rcpts_done(r->api, r->key.id, j->m.nrcpts);
        api_error_err(r, &e, NULL);
        send_job_free(j);
    }
}

/* ---- GET /v1/messages/{id}, GET /v1/messages ------------------------------------ */

static json_t *rcpt_json(const spool_rcpt *rc)
{
    json_t *o = json_pack("{s:s,s:s,s:i,s:o}", "email", rc->addr, "status", spool_state_name(rc->state), "attempts",
                          rc->attempts, "updated_at", api_time(rc->updated_ms));
    json_object_set_new(o, "next_attempt_at", spool_state_is_final(rc->state) ? json_null() : api_time(rc->next_at_ms));
    json_object_set_new(o, "last_reply", rc->last_reply ? json_string(rc->last_reply) : json_null());
    json_object_set_new(o, "last_host", rc->last_host ? json_string(rc->last_host) : json_null());
    return o;
}

static json_t *message_json(const spool_message *m)
{
    json_t *rcpts = json_array();
    for (size_t i = 0; i < m->nrcpts; i++)
        json_array_append_new(rcpts, rcpt_json(&m->rcpts[i]));
    json_t *o = json_pack("{s:s,s:o,s:s,s:s,s:I,s:o}", "id", m->id, "created_at", api_time(m->created_ms), "from",
                          m->mail_from ? m->mail_from : "", "ingress", m->ingress ? m->ingress : "", "size",
                          (json_int_t)m->len, "recipients", rcpts);
    json_t *meta = m->meta ? json_loads(m->meta, 0, NULL) : NULL;
    json_t *tags = json_object_get(meta, "tags"), *md = json_object_get(meta, "metadata");
    json_t *mid = json_object_get(meta, "message_id");
    json_object_set_new(o, "tags", tags ? json_incref(tags) : json_array());
    json_object_set_new(o, "metadata", md ? json_incref(md) : json_object());
    json_object_set_new(o, "message_id", mid ? json_incref(mid) : json_null());
    json_decref(meta);
    return o;
}

static json_t *event_json(const spool_event *ev)
{
    json_t *o = json_pack("{s:I,s:s,s:o}", "id", (json_int_t)ev->id, "type", ev->type ? ev->type : "", "created_at",
                          api_time(ev->ts_ms));
    json_object_set_new(o, "message_id", ev->msg_id ? json_string(ev->msg_id) : json_null());
    json_object_set_new(o, "recipient", ev->rcpt ? json_string(ev->rcpt) : json_null());
    json_t *data = ev->data ? json_loads(ev->data, 0, NULL) : NULL;
    json_object_set_new(o, "data", data ? data : json_object());
    return o;
}

static void collect_event(void *arg, const spool_event *ev)
{
    json_array_append_new(arg, event_json(ev));
}

static int valid_id(const char *id)
{
    if (strlen(id) != ID_MSG_LEN)
        return 0;
    for (const char *p = id; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
            return 0;
    return 1;
}

/* The message r->param names as JSON, or NULL after replying the error. */
static json_t *load_message(api_req *r)
{
    spool_message m;
    err e;
    err_clear(&e);
    if (spool_message_get(r->srv->spool, r->param, 0, &m, &e)) {
        api_error_err(r, &e, "id");
        return NULL;
    }
    json_t *o = message_json(&m);
    spool_message_free(&m);
    return o;
}

void api_messages_get(api_req *r)
{
    if (!valid_id(r->param)) {
        api_error(r, 404, "not_found", "id", "no message %.64s", r->param);
        return;
    }
    json_t *o = load_message(r);
    if (!o)
        return;
    err e;
    err_clear(&e);
    json_t *events = json_array();
    int limit = (int)r->srv->cfg->api_max_page_size;
    if (spool_events(r->srv->spool, 0, r->param, NULL, limit, collect_event, events, &e) < 0) {
        json_decref(events);
        json_decref(o);
        api_error_err(r, &e, NULL);
        return;
    }
    json_object_set_new(o, "events", events);
    api_reply(r, 200, o);
}

typedef struct list_ctx {
    json_t *data;
    int64_t last_rowid;
} list_ctx;

static void collect_message(void *arg, const spool_message *m)
{
    list_ctx *c = arg;
    json_array_append_new(c->data, message_json(m));
    c->last_rowid = m->rowid;
}

static int list_filter(api_req *r, spool_msg_filter *f)
{
    memset(f, 0, sizeof *f);
    f->state = -1;
    const char *status = api_query(r, "status");
    if (status && (f->state = spool_state_parse(status)) < 0) {
        api_error(r, 400, "invalid_parameter", "status",
                  "status must be one of queued sending deferred delivered bounced expired suppressed cancelled");
        return -1;
    }
    f->recipient = api_query(r, "recipient");
    f->tag = api_query(r, "tag");
    const char *cursor = api_query(r, "cursor");
    if (cursor) {
        char *end;
        f->before_rowid = strtoll(cursor, &end, 10);
        if (!*cursor || *end || f->before_rowid <= 0) {
            api_error(r, 400, "invalid_parameter", "cursor", "cursor must be a next_cursor value from a previous page");
            return -1;
        }
    }
    if (api_query_since(r, &f->since_ms) || (f->limit = api_query_limit(r, 50)) < 0)
        return -1;
    return 0;
}

void api_messages_list(api_req *r)
{
    spool_msg_filter f;
    if (list_filter(r, &f))
        return;
    list_ctx c = {.data = json_array()};
    err e;
    err_clear(&e);
    int n = spool_list_filtered(r->srv->spool, &f, collect_message, &c, &e);
    if (n < 0) {
        json_decref(c.data);
        api_error_err(r, &e, NULL);
        return;
    }
    json_t *next = json_null();
    if (n == f.limit && c.last_rowid > 1) {
        char cur[32];
        snprintf(cur, sizeof cur, "%lld", (long long)c.last_rowid);
        next = json_string(cur);
    }
    api_reply(r, 200, json_pack("{s:o,s:o,s:b}", "data", c.data, "next_cursor", next, "has_more", !json_is_null(next)));
}

/* ---- DELETE /v1/messages/{id} -------------------------------------------------- */

typedef struct cancel_job {
    api_req *r;
    int count;
} cancel_job;

static int cancel_fn(spool_tx *tx, void *arg, err *e)
{
    cancel_job *c = arg;
    c->count = spool_tx_cancel(tx, c->r->param, e);
    return c->count < 0 ? -1 : 0;
}

static void on_cancelled(void *arg, const err *e)
{
    cancel_job *c = arg;
    api_req *r = c->r;
    free(c);
    if (e) {
        api_error_err(r, e, e->code == ERR_NOTFOUND ? "id" : NULL);
        return;
    }
    json_t *o = load_message(r);
    if (o)
        api_reply(r, 200, o);
}

void api_messages_cancel(api_req *r)
{
    if (!valid_id(r->param)) {
        api_error(r, 404, "not_found", "id", "no message %.64s", r->param);
        return;
    }
    cancel_job *c = xcalloc(1, sizeof *c);
    c->r = r;
    if (spool_write(r->srv->spool, cancel_fn, on_cancelled, c)) {
        free(c);
        api_error(r, 503, "unavailable", NULL, "the spool is shutting down");
    }
}
