#include "outcome/outcome.h"

#include "core/clock.h"
#include "core/mem.h"
#include "core/server.h"
#include "delivery/delivery.h"
#include "ingress/http_api.h"
#include "ingress/smtp_server.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

typedef struct outcome {
    server *srv;
} outcome;

static const char *const counter_help[][3] = {
    {M_ACCEPTED, "Messages accepted and durably queued, by ingress", "ingress"},
    {M_EVENTS, "Recipient events committed to the spool, by type", "type"},
    {M_REJECTED, "Submissions refused at ingress, by reason", "reason"},
    {M_AUTH_FAILURES, "Failed authentications, by ingress", "ingress"},
    {M_BOUNCED, "Recipients bounced, by kind (hard: permanent address failure, soft: other 5xx)", "kind"},
};

static void register_all(metrics *m)
{
    for (size_t i = 0; i < sizeof counter_help / sizeof counter_help[0]; i++)
        metrics_counter(m, counter_help[i][0], counter_help[i][1], counter_help[i][2]);
    metrics_gauge(m, M_QUEUE_DEPTH, "Recipients in the spool, by state", "state");
    metrics_gauge(m, M_OLDEST_AGE, "Age of the oldest message with a pending recipient", NULL);
    metrics_gauge(m, M_CONNECTIONS, "Open SMTP connections, by direction", "direction");
    metrics_set(metrics_gauge(m, M_CONNECTIONS, "", "direction"), "in", 0);
    metrics_set(metrics_gauge(m, M_CONNECTIONS, "", "direction"), "out", 0);
    metrics_gauge(m, M_HTTP_IN_FLIGHT, "HTTP API requests read and not yet answered", NULL);
    metrics_histogram(m, M_ACCEPT_LATENCY, "Time from end of submission to durable acknowledgement",
                      metrics_latency_buckets, metrics_latency_nbuckets);
    metrics_histogram(m, M_COMMIT_LATENCY, "Duration of one spool group commit (fsync included)",
                      metrics_latency_buckets, metrics_latency_nbuckets);
    static const double delivery_buckets[] = {0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600, 86400};
    metrics_histogram(m, M_DELIVERY_LATENCY, "Time from acceptance to delivery",
                      delivery_buckets, sizeof delivery_buckets / sizeof delivery_buckets[0]);
}

void outcome_count(metrics *m, const char *name, const char *label_value, double n)
{
    if (m)
        metrics_add(metrics_counter(m, name, "", NULL), label_value, n);
}

void outcome_gauge_add(metrics *m, const char *name, const char *label_value, double delta)
{
    if (m)
        metrics_add(metrics_gauge(m, name, "", NULL), label_value, delta);
}

void outcome_observe(metrics *m, const char *name, double seconds)
{
    if (m)
        metrics_observe(metrics_histogram(m, name, "", metrics_latency_buckets, metrics_latency_nbuckets),
                        seconds);
}

/* Spool hooks run on the writer thread; metrics are mutex-protected. */
static void on_committed(void *arg, double seconds, size_t writes)
{
    (void)writes;
    outcome_observe(arg, M_COMMIT_LATENCY, seconds);
}

static void on_events(void *arg, const char *type, size_t count)
{
    outcome_count(arg, M_EVENTS, type, (double)count);
}

static void collect(void *arg, metrics *m)
{
    outcome *o = arg;
    int64_t counts[RCPT_STATE_COUNT];
    err e;
    if (spool_counts(o->srv->spool, counts, &e) == 0)
        for (int i = 0; i < RCPT_STATE_COUNT; i++)
            metrics_set(metrics_gauge(m, M_QUEUE_DEPTH, "", "state"), spool_state_name(i), (double)counts[i]);
    metric *conns = metrics_gauge(m, M_CONNECTIONS, "", "direction");
    metrics_set(conns, "in", (double)smtps_sessions(o->srv->smtp));
    metrics_set(conns, "out", (double)delivery_connections(o->srv));
    metrics_set(metrics_gauge(m, M_HTTP_IN_FLIGHT, "", NULL), NULL, (double)api_requests_in_flight(o->srv->api));
    int64_t oldest = spool_oldest_pending_ms(o->srv->spool);
    double age = oldest > 0 ? (double)(clock_now_ms() - oldest) / 1000.0 : 0;
    metrics_set(metrics_gauge(m, M_OLDEST_AGE, "", NULL), NULL, age > 0 ? age : 0);
}

static int start(server *srv, err *e)
{
    (void)e;
    outcome *o = xcalloc(1, sizeof *o);
    o->srv = srv;
    srv->outcome = (struct outcome *)o;
    srv->metrics = metrics_new();
    register_all(srv->metrics);
    metrics_on_collect(srv->metrics, collect, o);
    spool_hooks h = {.committed = on_committed, .events = on_events, .arg = srv->metrics};
    spool_set_hooks(srv->spool, &h);
    return 0;
}

static void stop(server *srv)
{
    spool_hooks none = {0};
    spool_set_hooks(srv->spool, &none);
    metrics_free(srv->metrics);
    srv->metrics = NULL;
    free(srv->outcome);
    srv->outcome = NULL;
}

const server_component outcome_component = {
    .name = "outcome",
    .start = start,
    .stop = stop,
};
