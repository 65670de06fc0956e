#include "outcome/metrics.h"

#include "core/mem.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double metrics_latency_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25,  0.5,    1,     2.5,  5,     10,   30};
const size_t metrics_latency_nbuckets = sizeof metrics_latency_buckets / sizeof metrics_latency_buckets[0];

typedef struct series {
    char *label_value; /* NULL for the unlabelled series */
    double value;
} series;

struct metric {
    char *name, *help, *label;
    enum metric_kind kind;
    series series[METRICS_MAX_SERIES];
    size_t nseries;
    /* histogram */
    double *bounds;
    unsigned long long *counts; /* per bucket, not cumulative */
    size_t nbounds;
    double sum;
    unsigned long long count;
    pthread_mutex_t *lock;
};

typedef struct collector {
    void (*fn)(void *arg, metrics *m);
    void *arg;
} collector;

struct metrics {
    metric **list;
    size_t n, cap;
    collector collectors[8];
    size_t ncollectors;
    pthread_mutex_t lock;
};

metrics *metrics_new(void)
{
    metrics *m = xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->lock, NULL);
    return m;
}

static void metric_free(metric *x)
{
    for (size_t i = 0; i < x->nseries; i++)
        free(x->series[i].label_value);
    free(x->name);
    free(x->help);
    free(x->label);
    free(x->bounds);
    free(x->counts);
    free(x);
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        metric_free(m->list[i]);
    free(m->list);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static metric *find_or_add(metrics *m, const char *name, const char *help, const char *label,
                           enum metric_kind kind)
{
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->list[i]->name, name) == 0) {
            pthread_mutex_unlock(&m->lock);
            return m->list[i];
        }
    }
    metric *x = xcalloc(1, sizeof *x);
    x->name = xstrdup(name);
    x->help = xstrdup(help);
    x->label = label ? xstrdup(label) : NULL;
    x->kind = kind;
    x->lock = &m->lock;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 32;
        m->list = xrealloc(m->list, m->cap * sizeof *m->list);
    }
    m->list[m->n++] = x;
    pthread_mutex_unlock(&m->lock);
    return x;
}

metric *metrics_counter(metrics *m, const char *name, const char *help, const char *label)
{
    return find_or_add(m, name, help, label, METRIC_COUNTER);
}

metric *metrics_gauge(metrics *m, const char *name, const char *help, const char *label)
{
    return find_or_add(m, name, help, label, METRIC_GAUGE);
}

metric *metrics_histogram(metrics *m, const char *name, const char *help, const double *bounds,
                          size_t nbounds)
{
    metric *x = find_or_add(m, name, help, NULL, METRIC_HISTOGRAM);
    pthread_mutex_lock(&m->lock);
    if (!x->bounds) {
        x->bounds = xmemdup(bounds, nbounds * sizeof *bounds);
        x->counts = xcalloc(nbounds + 1, sizeof *x->counts);
        x->nbounds = nbounds;
    }
    pthread_mutex_unlock(&m->lock);
    return x;
}

/* Called with the lock held. */
static series *series_for(metric *x, const char *label_value)
{
    for (size_t i = 0; i < x->nseries; i++) {
        const char *v = x->series[i].label_value;
        if ((!v && !label_value) || (v && label_value && strcmp(v, label_value) == 0))
            return &x->series[i];
    }
    if (x->nseries == METRICS_MAX_SERIES - 1 && label_value && strcmp(label_value, "other") != 0)
        return series_for(x, "other");
    if (x->nseries == METRICS_MAX_SERIES)
        return &x->series[METRICS_MAX_SERIES - 1];
    series *s = &x->series[x->nseries++];
    s->label_value = label_value ? xstrdup(label_value) : NULL;
    s->value = 0;
    return s;
}

void metrics_add(metric *x, const char *label_value, double v)
{
    if (!x)
        return;
    pthread_mutex_lock(x->lock);
    series_for(x, label_value)->value += v;
    pthread_mutex_unlock(x->lock);
}

void metrics_set(metric *x, const char *label_value, double v)
{
    if (!x)
        return;
    pthread_mutex_lock(x->lock);
    series_for(x, label_value)->value = v;
    pthread_mutex_unlock(x->lock);
}

double metrics_value(metric *x, const char *label_value)
{
    if (!x)
        return 0;
    pthread_mutex_lock(x->lock);
    double v = 0;
    for (size_t i = 0; i < x->nseries; i++) {
        const char *lv = x->series[i].label_value;
        if ((!lv && !label_value) || (lv && label_value && strcmp(lv, label_value) == 0))
            v = x->series[i].value;
    }
    pthread_mutex_unlock(x->lock);
    return v;
}

void metrics_observe(metric *x, double v)
{
    if (!x || !x->bounds)
        return;
    pthread_mutex_lock(x->lock);
    size_t i = 0;
    while (i < x->nbounds && v > x->bounds[i])
        i++;
    x->counts[i]++;
    x->sum += v;
    x->count++;
    pthread_mutex_unlock(x->lock);
}

void metrics_on_collect(metrics *m, void (*fn)(void *arg, metrics *m), void *arg)
{
    if (m->ncollectors < sizeof m->collectors / sizeof m->collectors[0])
        m->collectors[m->ncollectors++] = (collector){fn, arg};
}

/* Label values are escaped per the exposition format: \\, \" and \n. */
static int append_label(buf *out, const char *name, const char *value)
{
    if (buf_appendf(out, "{%s=\"", name))
        return -1;
    for (const char *p = value; *p; p++) {
        int rc = *p == '\\' ? buf_appends(out, "\\\\")
                 : *p == '"' ? buf_appends(out, "\\\"")
                 : *p == '\n' ? buf_appends(out, "\\n")
                              : buf_appendc(out, *p);
        if (rc)
            return -1;
    }
    return buf_appends(out, "\"}");
}

static int append_number(buf *out, double v)
{
    if (isinf(v))
        return buf_appends(out, v > 0 ? "+Inf" : "-Inf");
    if (v == floor(v) && fabs(v) < 1e15)
        return buf_appendf(out, "%.0f", v);
    return buf_appendf(out, "%.9g", v);
}

static int render_histogram(const metric *x, buf *out)
{
    unsigned long long cumulative = 0;
    for (size_t i = 0; i <= x->nbounds; i++) {
        cumulative += x->counts[i];
        if (buf_appendf(out, "%s_bucket{le=\"", x->name))
            return -1;
        if ((i < x->nbounds ? append_number(out, x->bounds[i]) : buf_appends(out, "+Inf")) ||
            buf_appendf(out, "\"} %llu\n", cumulative))
            return -1;
    }
    if (buf_appendf(out, "%s_sum ", x->name) || append_number(out, x->sum) ||
        buf_appendf(out, "\n%s_count %llu\n", x->name, x->count))
        return -1;
    return 0;
}

static int render_metric(const metric *x, buf *out)
{
    static const char *const kinds[] = {"counter", "gauge", "histogram"};
    if (buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", x->name, x->help, x->name, kinds[x->kind]))
        return -1;
    if (x->kind == METRIC_HISTOGRAM)
        return render_histogram(x, out);
    if (x->nseries == 0 && !x->label)
        return buf_appendf(out, "%s 0\n", x->name);
    for (size_t i = 0; i < x->nseries; i++) {
        const series *s = &x->series[i];
        if (buf_appends(out, x->name))
            return -1;
        if (x->label && s->label_value && append_label(out, x->label, s->label_value))
            return -1;
        if (buf_appendc(out, ' ') || append_number(out, s->value) || buf_appendc(out, '\n'))
            return -1;
    }
    return 0;
}

int metrics_render(metrics *m, buf *out)
{
    for (size_t i = 0; i < m->ncollectors; i++)
        m->collectors[i].fn(m->collectors[i].arg, m);
    pthread_mutex_lock(&m->lock);
    int rc = 0;
    for (size_t i = 0; i < m->n && rc == 0; i++)
        rc = render_metric(m->list[i], out);
    pthread_mutex_unlock(&m->lock);
    return rc;
}
