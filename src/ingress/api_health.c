/*
 * api_health — GET /healthz (the process answers) and GET /readyz (the
 * spool takes a write within [api] ready_max_commit and the server is not
 * draining). /readyz runs a real, empty write transaction through the
 * group commit, so a full disk, a stuck writer or a locked database shows.
 * GET /metrics (scope read) renders the outcome component's registry in
 * the Prometheus text format.
 */
#include "ingress/http_api.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/mem.h"
#include "outcome/metrics.h"

#include <stdlib.h>

void api_healthz(api_req *r)
{
    api_reply(r, 200, json_pack("{s:s}", "status", "ok"));
}

typedef struct ready_job {
    api_req *r;
    int64_t started_ms;
} ready_job;

static int ready_fn(spool_tx *tx, void *arg, err *e)
{
    (void)tx, (void)arg, (void)e;
    return 0; /* BEGIN IMMEDIATE + COMMIT already proves the spool writable */
}

static void on_ready(void *arg, const err *e)
{
    ready_job *j = arg;
    api_req *r = j->r;
    int64_t took = clock_mono_ms() - j->started_ms, max = r->srv->cfg->api_ready_max_commit;
    free(j);
    if (e)
        api_error(r, 503, "not_ready", NULL, "spool is not writable: %s", e->msg);
    else if (took > max)
        api_error(r, 503, "not_ready", NULL, "spool commit took %lld ms, more than %lld ([api] ready_max_commit)",
                  (long long)took, (long long)max);
    else if (r->srv->draining)
        api_error(r, 503, "not_ready", NULL, "the server is shutting down");
    else
        api_reply(r, 200, json_pack("{s:s,s:I,s:I}", "status", "ready", "commit_ms", (json_int_t)took, "pending",
                                    (json_int_t)spool_pending(r->srv->spool)));
}

void api_readyz(api_req *r)
{
    if (r->srv->draining) {
        api_error(r, 503, "not_ready", NULL, "the server is shutting down");
        return;
    }
    ready_job *j = xcalloc(1, sizeof *j);
    *j = (ready_job){.r = r, .started_ms = clock_mono_ms()};
    if (spool_write(r->srv->spool, ready_fn, on_ready, j)) {
        free(j);
        api_error(r, 503, "not_ready", NULL, "the spool is closed");
    }
}

#define METRICS_TEXT_MAX (4 * 1024 * 1024)

void api_metrics(api_req *r)
{
    if (!r->srv->metrics) {
        api_error(r, 503, "unavailable", NULL, "metrics are not collected by this server");
        return;
    }
    buf out;
    buf_init(&out, METRICS_TEXT_MAX);
    if (metrics_render(r->srv->metrics, &out)) {
        buf_free(&out);
        api_error(r, 503, "unavailable", NULL, "metrics exposition larger than %d bytes", METRICS_TEXT_MAX);
        return;
    }
    api_reply_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", buf_cstr(&out), out.len);
    buf_free(&out);
}
