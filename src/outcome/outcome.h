/*
 * outcome — the `serve` component that turns what happened into numbers
 * and (later) notifications: it owns the metrics registry (srv->metrics),
 * counts committed events by type through the spool's hooks, records
 * commit latency, and refreshes queue gauges at scrape time.
 *
 * It starts first so every other component can register and update its
 * metrics through srv->metrics. Metric names are declared here so that
 * producers and the tests agree on them.
 */
#ifndef PH_OUTCOME_OUTCOME_H
#define PH_OUTCOME_OUTCOME_H

#include "outcome/metrics.h"

/* Counters */
#define M_ACCEPTED "posthaste_messages_accepted_total"       /* {ingress} */
#define M_EVENTS "posthaste_recipient_events_total"          /* {type} */
#define M_REJECTED "posthaste_rejected_total"                /* {reason} */
#define M_AUTH_FAILURES "posthaste_auth_failures_total"      /* {ingress} */
#define M_BOUNCED "posthaste_bounced_total"                  /* {kind}: hard, soft */
/* Gauges */
#define M_QUEUE_DEPTH "posthaste_queue_depth"                /* {state} */
#define M_OLDEST_AGE "posthaste_oldest_queued_age_seconds"
#define M_CONNECTIONS "posthaste_connections_open"           /* {direction} */
#define M_HTTP_IN_FLIGHT "posthaste_http_requests_in_flight"
/* Histograms */
#define M_ACCEPT_LATENCY "posthaste_acceptance_latency_seconds"
#define M_COMMIT_LATENCY "posthaste_commit_latency_seconds"
#define M_DELIVERY_LATENCY "posthaste_delivery_latency_seconds"

struct server_component;
extern const struct server_component outcome_component;

/* Shorthands that tolerate a NULL registry (CLI, unit tests). */
void outcome_count(metrics *m, const char *name, const char *label_value, double n);
void outcome_observe(metrics *m, const char *name, double seconds);
void outcome_gauge_add(metrics *m, const char *name, const char *label_value, double delta);

#endif
