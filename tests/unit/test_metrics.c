/* Unit tests for outcome/metrics: Prometheus text rendering and bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "outcome/metrics.h"

static void renders_counters_gauges_histograms(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    metric *c = metrics_counter(m, "ph_sent_total", "Messages sent", "ingress");
    metrics_add(c, "smtp", 2);
    metrics_add(c, "api", 1);
    metrics_add(c, "smtp", 1);
    metric *g = metrics_gauge(m, "ph_depth", "Queue depth", NULL);
    metrics_set(g, NULL, 7);
    static const double b[] = {0.1, 1};
    metric *h = metrics_histogram(m, "ph_latency_seconds", "Latency", b, 2);
    metrics_observe(h, 0.05);
    metrics_observe(h, 0.5);
    metrics_observe(h, 5);
    buf out;
    buf_init(&out, 1 << 16);
    assert_int_equal(metrics_render(m, &out), 0);
    const char *t = buf_cstr(&out);
    assert_non_null(strstr(t, "# HELP ph_sent_total Messages sent\n# TYPE ph_sent_total counter\n"));
    assert_non_null(strstr(t, "ph_sent_total{ingress=\"smtp\"} 3\n"));
    assert_non_null(strstr(t, "ph_sent_total{ingress=\"api\"} 1\n"));
    assert_non_null(strstr(t, "# TYPE ph_depth gauge\nph_depth 7\n"));
    assert_non_null(strstr(t, "ph_latency_seconds_bucket{le=\"0.1\"} 1\n"));
    assert_non_null(strstr(t, "ph_latency_seconds_bucket{le=\"1\"} 2\n"));
    assert_non_null(strstr(t, "ph_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(t, "ph_latency_seconds_sum 5.55\n"));
    assert_non_null(strstr(t, "ph_latency_seconds_count 3\n"));
    assert_true(metrics_value(c, "smtp") == 3);
    buf_free(&out);
    metrics_free(m);
}

static void label_values_escaped_and_bounded(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    metric *c = metrics_counter(m, "ph_rejected_total", "Rejected", "reason");
    metrics_add(c, "bad \"quote\" \\ and\nnewline", 1);
    char label[32];
    for (int i = 0; i < 500; i++) {
        snprintf(label, sizeof label, "r%d", i);
        metrics_add(c, label, 1);
    }
    buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(metrics_render(m, &out), 0);
    const char *t = buf_cstr(&out);
    assert_non_null(strstr(t, "{reason=\"bad \\\"quote\\\" \\\\ and\\nnewline\"} 1"));
    /* Hostile label values cannot grow memory: the overflow lands in "other". */
    size_t series = 0;
    for (const char *p = t; (p = strstr(p, "ph_rejected_total{")); p++)
        series++;
    assert_int_equal(series, METRICS_MAX_SERIES);
    assert_true(metrics_value(c, "other") > 400);
    buf_free(&out);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(renders_counters_gauges_histograms),
        cmocka_unit_test(label_values_escaped_and_bounded),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
