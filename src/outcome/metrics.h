/*
 * metrics — counters, gauges and histograms, rendered in the Prometheus
 * text exposition format (version 0.0.4) for GET /metrics.
 *
 * A metric is registered once by name with its HELP text and at most one
 * label name; each distinct label value is a series. Updates take a mutex
 * (the spool's writer thread records commit latency), which is cheap at
 * these rates. Gauges that are cheaper to compute at scrape time than to
 * maintain (queue depth, oldest age) are set by a collect callback just
 * before rendering.
 *
 * Limits: METRICS_MAX_SERIES label values per metric; past that, updates
 * for new label values go to the value "other" so a hostile label (say, an
 * unknown reason string) cannot grow memory without bound.
 */
#ifndef PH_OUTCOME_METRICS_H
#define PH_OUTCOME_METRICS_H

#include "core/buf.h"

#include <stddef.h>

#define METRICS_MAX_SERIES 64

typedef struct metrics metrics;
typedef struct metric metric;

enum metric_kind { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

metrics *metrics_new(void);
void metrics_free(metrics *m);
/* Register (or find) a metric. label may be NULL. Histograms use the
   bucket bounds given (seconds, ascending), copied. */
metric *metrics_counter(metrics *m, const char *name, const char *help, const char *label);
metric *metrics_gauge(metrics *m, const char *name, const char *help, const char *label);
metric *metrics_histogram(metrics *m, const char *name, const char *help, const double *bounds,
                          size_t nbounds);
/* label_value may be NULL for unlabelled metrics. */
void metrics_add(metric *x, const char *label_value, double v);
void metrics_set(metric *x, const char *label_value, double v);
void metrics_observe(metric *x, double v);
/* Current value of a counter/gauge series (0 when absent). */
double metrics_value(metric *x, const char *label_value);
/* Called at the start of metrics_render (e.g. to refresh gauges). */
void metrics_on_collect(metrics *m, void (*fn)(void *arg, metrics *m), void *arg);
/* Append the exposition text; -1 when out does not have room. */
int metrics_render(metrics *m, buf *out);

/* Latency buckets in seconds suitable for acceptance/commit/delivery. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_nbuckets;

#endif
