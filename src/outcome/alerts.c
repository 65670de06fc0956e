#include "outcome/alerts.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/server.h"
#include "outcome/outcome.h"
#include "submit/submit.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ACTIVE 64
#define MAX_SAMPLES 4096

typedef struct sample {
    int64_t at; /* monotonic ms */
    double delivered, bounced;
} sample;

typedef struct active {
    char key[128];    /* kind + subject */
    int64_t raised;   /* monotonic ms of the last raise */
    int seen;         /* still true in this round */
} active;

typedef struct alerts {
    server *srv;
    struct event *tick;
    sample samples[MAX_SAMPLES];
    size_t nsamples;
    active act[MAX_ACTIVE];
    size_t nact;
} alerts;

/* ---- raising ----------------------------------------------------------------- */

typedef struct alert_ev {
    char *data;
} alert_ev;

static int event_fn(spool_tx *tx, void *arg, err *e)
{
    alert_ev *a = arg;
    return spool_tx_event(tx, NULL, NULL, "alert", a->data, e);
}

static void event_done(void *arg, const err *e)
{
    alert_ev *a = arg;
    if (e)
        log_ev(LOG_ERROR, "alert_not_recorded", "{s:s}", "error", e->msg);
    free(a->data);
    free(a);
}

static void mail_done(void *arg, const submit_result *res, const err *e)
{
    (void)arg;
    if (e)
        log_ev(LOG_ERROR, "alert_mail_failed", "{s:s}", "error", e->msg);
    else
        log_ev(LOG_INFO, "alert_mailed", "{s:s}", "id", res->id);
}

static void mail_admin(alerts *a, const char *kind, const char *text)
{
    const config *cfg = a->srv->cfg;
    if (!*cfg->admin_email || !a->srv->submit)
        return;
    buf msg;
    buf_init(&msg, 64 * 1024);
    char from[300];
    snprintf(from, sizeof from, "posthaste@%s", cfg->hostname);
    buf_appendf(&msg, "From: Posthaste <%s>\r\nTo: %s\r\nSubject: [Posthaste alert] %s\r\n"
                      "Auto-Submitted: auto-generated\r\n\r\n%s\r\n",
                from, cfg->admin_email, kind, text);
    const char *rcpts[] = {cfg->admin_email};
    /* Null reverse-path: an alert about bounces must not bounce back to us. */
    submit_req req = {.ingress = "alert", .protocol = "LOCAL", .mail_from = "", .rcpts = rcpts,
                      .nrcpts = 1, .data = msg.data, .len = msg.len};
    err e;
    if (submit_message(a->srv->submit, &req, mail_done, NULL, &e))
        log_ev(LOG_ERROR, "alert_mail_failed", "{s:s}", "error", e.msg);
    buf_free(&msg);
}

static active *find_active(alerts *a, const char *key)
{
    for (size_t i = 0; i < a->nact; i++)
        if (strcmp(a->act[i].key, key) == 0)
            return &a->act[i];
    return NULL;
}

/* details: a JSON object (stolen). */
static void raise_alert(alerts *a, const char *kind, const char *subject, json_t *details, const char *text)
{
    char key[128];
    snprintf(key, sizeof key, "%s:%s", kind, subject ? subject : "");
    int64_t now = clock_mono_ms();
    active *x = find_active(a, key);
    if (x) {
        x->seen = 1;
        if (!a->srv->cfg->alert_repeat || now - x->raised < a->srv->cfg->alert_repeat) {
            json_decref(details);
            return;
        }
    } else if (a->nact < MAX_ACTIVE) {
        x = &a->act[a->nact++];
        snprintf(x->key, sizeof x->key, "%s", key);
        x->seen = 1;
    }
    if (x)
        x->raised = now;
    json_object_set_new(details, "kind", json_string(kind));
    json_object_set_new(details, "message", json_string(text));
    char *data = json_dumps(details, JSON_COMPACT);
    log_ev(LOG_WARN, "alert", "{s:s,s:s,s:O}", "kind", kind, "message", text, "details", details);
    json_decref(details);
    alert_ev *ev = xcalloc(1, sizeof *ev);
    ev->data = data;
    if (spool_write(a->srv->spool, event_fn, event_done, ev) < 0)
        event_done(ev, NULL);
    mail_admin(a, kind, text);
}

static void sweep_resolved(alerts *a)
{
    size_t w = 0;
    for (size_t i = 0; i < a->nact; i++) {
        if (a->act[i].seen) {
            a->act[i].seen = 0;
            a->act[w++] = a->act[i];
        } else {
            log_ev(LOG_INFO, "alert_resolved", "{s:s}", "alert", a->act[i].key);
        }
    }
    a->nact = w;
}

/* ---- the checks ---------------------------------------------------------------- */

static void check_bounce_rate(alerts *a)
{
    const config *cfg = a->srv->cfg;
    metric *m = metrics_counter(a->srv->metrics, M_EVENTS, "", "type");
    int64_t now = clock_mono_ms();
    sample s = {now, metrics_value(m, "delivered"), metrics_value(m, "bounced")};
    /* Drop samples older than the window, keep the oldest one inside it as base. */
    size_t drop = 0;
    while (drop + 1 < a->nsamples && now - a->samples[drop + 1].at >= cfg->alert_window)
        drop++;
    if (drop) {
        memmove(a->samples, a->samples + drop, (a->nsamples - drop) * sizeof *a->samples);
        a->nsamples -= drop;
    }
    if (a->nsamples == MAX_SAMPLES) {
        memmove(a->samples, a->samples + 1, (MAX_SAMPLES - 1) * sizeof *a->samples);
        a->nsamples--;
    }
    a->samples[a->nsamples++] = s;
    if (cfg->alert_bounce_rate <= 0)
        return;
    const sample *base = &a->samples[0];
    double delivered = s.delivered - base->delivered, bounced = s.bounced - base->bounced;
    /* The first sample starts at zero counters: the process's whole life is the window. */
    if (a->nsamples == 1)
        delivered = s.delivered, bounced = s.bounced;
    double total = delivered + bounced;
    if (total < (double)cfg->alert_bounce_min || bounced / total <= cfg->alert_bounce_rate)
        return;
    char text[256];
    snprintf(text, sizeof text, "bounce rate %.1f%% (%.0f of %.0f) is above %.1f%%", 100 * bounced / total,
             bounced, total, 100 * cfg->alert_bounce_rate);
    raise_alert(a, "bounce_rate", NULL,
                json_pack("{s:f,s:f,s:f}", "rate", bounced / total, "bounced", bounced, "total", total), text);
}

static void check_queue_age(alerts *a)
{
    const config *cfg = a->srv->cfg;
    if (!cfg->alert_queue_age)
        return;
    int64_t oldest = spool_oldest_pending_ms(a->srv->spool);
    int64_t age = oldest ? clock_now_ms() - oldest : 0;
    if (age <= cfg->alert_queue_age)
        return;
    char text[256];
    snprintf(text, sizeof text, "the oldest undelivered message has waited %llds", (long long)(age / 1000));
    raise_alert(a, "queue_age", NULL, json_pack("{s:I}", "age_seconds", (json_int_t)(age / 1000)), text);
}

static void on_webhook(void *arg, const spool_webhook *w)
{
    alerts *a = arg;
    if (w->healthy)
        return;
    char text[512];
    snprintf(text, sizeof text, "webhook %s (%s) is failing: %s", w->id, w->url,
             w->last_error ? w->last_error : "no answer");
    raise_alert(a, "webhook_unhealthy", w->id,
                json_pack("{s:s,s:s,s:s?}", "webhook", w->id, "url", w->url, "error", w->last_error), text);
}

static void on_key(void *arg, const spool_key *k)
{
    alerts *a = arg;
    const config *cfg = a->srv->cfg;
    if (k->revoked_ms || cfg->alert_key_rate_factor <= 0)
        return;
    int64_t now = clock_now_ms(), day = 86400000;
    err e;
    int64_t recent = spool_key_rcpts_since(a->srv->spool, k->id, now - cfg->alert_window, NULL, &e);
    if (recent < cfg->alert_key_rate_min)
        return;
    int64_t oldest = 0;
    int64_t daily = spool_key_rcpts_since(a->srv->spool, k->id, now - day, &oldest, &e);
    /* Its own average over the day before the window (or since its first message). */
    int64_t span = oldest ? now - cfg->alert_window - oldest : 0;
    double base_rate = span > 0 ? (double)(daily - recent) / (double)span : 0;
    double recent_rate = (double)recent / (double)cfg->alert_window;
    if (base_rate > 0 && recent_rate < cfg->alert_key_rate_factor * base_rate)
        return;
    char text[256];
    snprintf(text, sizeof text, "key %s (%s) sent %lld recipients in the last %llds, %s its usual rate", k->id,
             k->name, (long long)recent, (long long)(cfg->alert_window / 1000),
             base_rate > 0 ? "far above" : "with no history before:");
    raise_alert(a, "key_rate", k->id,
                json_pack("{s:s,s:I,s:f}", "key", k->id, "recipients", (json_int_t)recent, "usual_per_second",
                          base_rate * 1000),
                text);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    alerts *a = arg;
    if (a->srv->draining)
        return;
    err e;
    check_bounce_rate(a);
    check_queue_age(a);
    if (spool_webhooks(a->srv->spool, NULL, on_webhook, a, &e) < 0)
        log_ev(LOG_ERROR, "alerts_check_failed", "{s:s}", "error", e.msg);
    if (spool_key_list(a->srv->spool, on_key, a, &e) < 0)
        log_ev(LOG_ERROR, "alerts_check_failed", "{s:s}", "error", e.msg);
    sweep_resolved(a);
}

static int start(server *srv, err *e)
{
    alerts *a = xcalloc(1, sizeof *a);
    a->srv = srv;
    srv->alerts = (struct alerts *)a;
    a->tick = event_new(srv->base, -1, EV_PERSIST, on_tick, a);
    int64_t ms = srv->cfg->alert_interval;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!a->tick || event_add(a->tick, &tv) < 0) {
        err_set(e, ERR_IO, "cannot schedule alert checks");
        return -1;
    }
    return 0;
}

static void stop(server *srv)
{
    alerts *a = (alerts *)srv->alerts;
    if (!a)
        return;
    if (a->tick)
        event_free(a->tick);
    free(a);
    srv->alerts = NULL;
}

const server_component alerts_component = {
    .name = "alerts",
    .start = start,
    .stop = stop,
};
