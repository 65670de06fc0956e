#include "delivery/delivery.h"

#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/server.h"
#include "delivery/bounce.h"
#include "delivery/dns.h"
#include "delivery/retry.h"
#include "outcome/outcome.h"
#include "delivery/route.h"
#include "delivery/smtp_client.h"
#include "submit/submit.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#define MAX_SCHEDULE 32
#define MAX_TARGETS 32
#define SCAN_PAGES 8 /* keyset pages read per scheduler tick, at most */

/* ---- the in-flight set: open addressing over recipient ids (ids > 0) ---- */

typedef struct idset {
    int64_t *slots; /* 0 empty, -1 deleted */
    size_t cap, used, n;
} idset;

static size_t id_slot(int64_t id, size_t cap)
{
    uint64_t x = (uint64_t)id * 0x9E3779B97F4A7C15ull;
    return (size_t)(x >> 17) & (cap - 1);
}

static int idset_has(const idset *s, int64_t id)
{
    if (!s->cap)
        return 0;
    for (size_t i = id_slot(id, s->cap);; i = (i + 1) & (s->cap - 1)) {
        if (s->slots[i] == id)
            return 1;
        if (s->slots[i] == 0)
            return 0;
    }
}

static void idset_put(idset *s, int64_t id);

static void idset_grow(idset *s)
{
    idset old = *s;
    s->cap = old.cap ? (old.n * 4 > old.cap ? old.cap * 2 : old.cap) : 1024;
    s->slots = xcalloc(s->cap, sizeof *s->slots);
    s->used = s->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.slots[i] > 0)
            idset_put(s, old.slots[i]);
    free(old.slots);
}

static void idset_put(idset *s, int64_t id)
{
    if ((s->used + 1) * 2 > s->cap)
        idset_grow(s);
    size_t i = id_slot(id, s->cap);
    while (s->slots[i] > 0)
        i = (i + 1) & (s->cap - 1);
    if (s->slots[i] == 0)
        s->used++;
    s->slots[i] = id;
    s->n++;
}

static void idset_del(idset *s, int64_t id)
{
    if (!s->cap)
        return;
    for (size_t i = id_slot(id, s->cap);; i = (i + 1) & (s->cap - 1)) {
        if (s->slots[i] == id) {
            s->slots[i] = -1;
            s->n--;
            return;
        }
        if (s->slots[i] == 0)
            return;
    }
}

/* ---- state ---------------------------------------------------------------- */

typedef struct delivery delivery;
typedef struct dest dest;

/* Recipients of one message for one destination: one SMTP transaction. */
typedef struct job {
    TAILQ_ENTRY(job) link;
    char msg_id[ID_MSG_LEN + 1];
    size_t n, cap;
    int64_t *ids;
    char **addrs;
    int *attempts;
} job;
TAILQ_HEAD(jobq, job);

enum cstate { C_RESOLVING, C_CONNECTING, C_IDLE, C_BUSY };

typedef struct conn {
    LIST_ENTRY(conn) link;
    dest *d;
    enum cstate state;
    smtpc_conn *c;
    int msgs;
    int cancelled;
    struct event *idle;
    job *job;
    spool_message msg;
    smtpc_txn txn;
} conn;

struct dest {
    LIST_ENTRY(dest) link;
    delivery *dv;
    route r;
    char domain[256];
    struct jobq jobs;
    size_t njobs;
    size_t nqueued;      /* recipients in those jobs */
    LIST_HEAD(, conn) conns;
    int nconns, nconnecting;
    int64_t penalty_until;
    double tokens;
    int64_t tok_ms;
    struct event *wake;
    char *pass;
};

/* A session saying QUIT: tracked so shutdown waits for (or frees) it. */
typedef struct closing {
    LIST_ENTRY(closing) link;
    delivery *dv;
    smtpc_conn *c;
} closing;

struct delivery {
    server *srv;
    LIST_HEAD(, closing) closing;
    size_t nclosing;
    dns *dns;
    SSL_CTX *ssl;
    struct event *tick;
    spool_cursor cur;
    idset inflight;
    LIST_HEAD(, dest) dests;
    int nconns_total;
    size_t queued;       /* recipients in jobs not yet started */
    size_t writes;       /* outcome writes not yet committed */
    size_t busy_conns;   /* connections inside a transaction */
    int draining;
    /* settings (re-read on SIGHUP) */
    int paused;
    int64_t sched[MAX_SCHEDULE];
    int nsched;
    int64_t max_age, idle_timeout, interval, penalty;
    int max_total, scan_batch, max_rcpts;
    smtpc_opts so;
    char *helo;
};

static void pump(dest *d);
static void conn_close(conn *k);

/* ---- settings ---------------------------------------------------------------- */

static int apply_settings(delivery *dv, const config *cfg, err *e)
{
    int64_t sched[MAX_SCHEDULE];
    int n = cfg_parse_schedule(cfg->retry_schedule, sched, MAX_SCHEDULE, e);
    if (n < 0) {
        err_wrap(e, "[delivery] retry_schedule");
        return -1;
    }
    memcpy(dv->sched, sched, sizeof sched);
    dv->nsched = n;
    dv->paused = cfg->delivery_paused;
    dv->max_age = cfg->max_age;
    dv->idle_timeout = cfg->idle_timeout;
    dv->interval = cfg->scheduler_interval;
    dv->penalty = cfg->concurrency_penalty;
    dv->max_total = (int)cfg->max_connections_total;
    dv->scan_batch = (int)cfg->scan_batch;
    dv->max_rcpts = (int)cfg->max_rcpts_per_txn;
    /* Open sessions keep a pointer to the EHLO name: it is set once (a
       new hostname needs a restart, like the listeners). */
    if (!dv->helo)
        dv->helo = xstrdup(cfg->hostname);
    dv->so = (smtpc_opts){
        .helo = dv->helo,
        .t_connect = cfg->timeout_connect,
        .t_greeting = cfg->timeout_greeting_out,
        .t_mail = cfg->timeout_mail,
        .t_rcpt = cfg->timeout_rcpt,
        .t_data_init = cfg->timeout_data_init,
        .t_data_block = cfg->timeout_data_block,
        .t_data_term = cfg->timeout_data_term,
        .max_reply_line = (size_t)cfg->max_reply_line,
        .max_reply_size = (size_t)cfg->max_reply_size,
    };
    return 0;
}

/* A relay route without a host is a configuration error: refuse to start
   rather than defer every message for it. */
static int check_routes(const config *cfg, err *e)
{
    route r;
    if (strcmp(cfg->delivery_route, "relay") == 0 && route_for(cfg, "", &r, e))
        return -1;
    for (const cfg_domain *d = cfg->domains; d; d = d->next)
        if (route_for(cfg, d->name, &r, e))
            return -1;
    return 0;
}

/* ---- jobs and destinations ------------------------------------------------------- */

static void job_add(job *j, const spool_rcpt *r)
{
    if (j->n == j->cap) {
        j->cap = j->cap ? j->cap * 2 : 4;
        j->ids = xrealloc(j->ids, j->cap * sizeof *j->ids);
        j->addrs = xrealloc(j->addrs, j->cap * sizeof *j->addrs);
        j->attempts = xrealloc(j->attempts, j->cap * sizeof *j->attempts);
    }
    j->ids[j->n] = r->id;
    j->addrs[j->n] = xstrdup(r->addr);
    j->attempts[j->n] = r->attempts;
    j->n++;
}

static void job_free(job *j)
{
    for (size_t i = 0; i < j->n; i++)
        free(j->addrs[i]);
    free(j->ids);
    free(j->addrs);
    free(j->attempts);
    free(j);
}

/* The recipients go back to the spool's care (they are still due there). */
static void job_release(delivery *dv, job *j)
{
    for (size_t i = 0; i < j->n; i++)
        idset_del(&dv->inflight, j->ids[i]);
    job_free(j);
}

static job *job_pop(dest *d)
{
    job *j = TAILQ_FIRST(&d->jobs);
    if (j) {
        TAILQ_REMOVE(&d->jobs, j, link);
        d->njobs--;
        d->nqueued -= j->n;
        d->dv->queued -= j->n;
    }
    return j;
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    pump(arg);
}

static dest *dest_get(delivery *dv, const route *r, const char *domain)
{
    dest *d;
    LIST_FOREACH(d, &dv->dests, link)
        if (strcmp(d->r.key, r->key) == 0)
            return d;
    d = xcalloc(1, sizeof *d);
    d->dv = dv;
    d->r = *r;
    snprintf(d->domain, sizeof d->domain, "%s", domain);
    TAILQ_INIT(&d->jobs);
    LIST_INIT(&d->conns);
    d->tokens = r->rate > 1 ? r->rate : 1;
    d->tok_ms = clock_mono_ms();
    d->wake = evtimer_new(dv->srv->base, on_wake, d);
    LIST_INSERT_HEAD(&dv->dests, d, link);
    return d;
}

static void dest_free(dest *d)
{
    job *j;
    while ((j = job_pop(d)))
        job_release(d->dv, j);
    while (!LIST_EMPTY(&d->conns)) {
        conn *k = LIST_FIRST(&d->conns);
        LIST_REMOVE(k, link);
        smtpc_free(k->c);
        if (k->job)
            job_release(d->dv, k->job);
        spool_message_free(&k->msg);
        for (size_t i = 0; k->txn.results && i < k->txn.nrcpts; i++)
            smtpc_result_clear(&k->txn.results[i]);
        free(k->txn.results);
        if (k->idle)
            event_free(k->idle);
        free(k);
    }
    event_free(d->wake);
    if (d->pass) {
        OPENSSL_cleanse(d->pass, strlen(d->pass));
        free(d->pass);
    }
    LIST_REMOVE(d, link);
    free(d);
}

static int effective_limit(const dest *d)
{
    int lim = d->r.max_conns;
    if (clock_mono_ms() < d->penalty_until)
        lim = lim / 2 > 0 ? lim / 2 : 1;
    return lim;
}

/* A 421 or a refused connection: the destination is overloaded or
   protecting itself; halve our concurrency there for a while. */
static void penalize(dest *d, const char *why)
{
    delivery *dv = d->dv;
    if (!dv->penalty)
        return;
    d->penalty_until = clock_mono_ms() + dv->penalty;
    log_ev(LOG_INFO, "concurrency_reduced", "{s:s,s:i,s:s}", "destination", d->r.key, "limit",
           effective_limit(d), "reason", why);
}

/* Token bucket (burst: one second's worth, at least one message). */
static int take_token(dest *d)
{
    double rate = d->r.rate;
    if (rate <= 0)
        return 1;
    int64_t now = clock_mono_ms();
    double burst = rate > 1 ? rate : 1;
    d->tokens += (double)(now - d->tok_ms) * rate / 1000.0;
    if (d->tokens > burst)
        d->tokens = burst;
    d->tok_ms = now;
    if (d->tokens >= 1) {
        d->tokens -= 1;
        return 1;
    }
    int64_t wait = (int64_t)((1 - d->tokens) * 1000.0 / rate) + 1;
    struct timeval tv = {(time_t)(wait / 1000), (suseconds_t)((wait % 1000) * 1000)};
    evtimer_add(d->wake, &tv);
    return 0;
}

/* ---- outcomes ---------------------------------------------------------------------- */

typedef struct outcome {
    int64_t rcpt_id;
    char *addr;
    int state;
    int64_t next_at;
    char *reply;
    char *host;
    const char *type;
    char *data;       /* event JSON */
    int suppress;
    char status[16];
} outcome;

typedef struct owrite {
    delivery *dv;
    char msg_id[ID_MSG_LEN + 1];
    size_t n;
    outcome *o;
    int ndr;          /* send a non-delivery report after the commit */
    int rescan;       /* the destination ran low: scan for more after the commit */
} owrite;

/* Fairness: one destination may hold at most a quarter of the in-memory
   queue, so mail for other destinations further along the scan gets in. */
static size_t dest_cap(const delivery *dv)
{
    return dv->scan_batch / 4 > 0 ? (size_t)dv->scan_batch / 4 : 1;
}

static int owrite_fn(spool_tx *tx, void *arg, err *e)
{
    owrite *w = arg;
    for (size_t i = 0; i < w->n; i++) {
        outcome *o = &w->o[i];
        spool_rcpt_update u = {.rcpt_id = o->rcpt_id, .state = o->state, .next_at_ms = o->next_at,
                               .add_attempt = 1, .reply = o->reply, .host = o->host};
        if (spool_tx_rcpt_update(tx, &u, e) || spool_tx_event(tx, w->msg_id, o->addr, o->type, o->data, e))
            return -1;
        if (o->suppress && spool_tx_suppress(tx, o->addr, "", "hard_bounce", e))
            return -1;
    }
    return 0;
}

static void owrite_free(owrite *w)
{
    for (size_t i = 0; i < w->n; i++) {
        free(w->o[i].addr);
        free(w->o[i].reply);
        free(w->o[i].host);
        free(w->o[i].data);
    }
    free(w->o);
    free(w);
}

static void on_ndr_queued(void *arg, const submit_result *res, const err *e)
{
    char *orig = arg;
    if (e)
        log_ev(LOG_ERROR, "ndr_failed", "{s:s,s:s}", "id", orig, "error", e->msg);
    else
        log_ev(LOG_INFO, "ndr_queued", "{s:s,s:s}", "id", orig, "ndr_id", res->id);
    free(orig);
}

static void send_ndr(delivery *dv, const owrite *w)
{
    if (!dv->srv->submit)
        return;
    spool_message m;
    err e;
    if (spool_message_get(dv->srv->spool, w->msg_id, 1, &m, &e))
        return;
    bounce_rcpt *br = xcalloc(w->n, sizeof *br);
    size_t nb = 0;
    for (size_t i = 0; i < w->n; i++) {
        const outcome *o = &w->o[i];
        if (o->state != RCPT_BOUNCED && o->state != RCPT_EXPIRED)
            continue;
        br[nb++] = (bounce_rcpt){.addr = o->addr, .status = o->status, .remote = o->host, .diagnostic = o->reply};
    }
    size_t len;
    char *text = bounce_build(dv->helo, &m, br, nb, &len);
    const char *rcpt = m.mail_from;
    int utf8 = 0;
    for (const char *p = rcpt; *p; p++)
        utf8 |= (unsigned char)*p >= 0x80;
    submit_req req = {.ingress = "bounce", .protocol = "LOCAL", .mail_from = "", .rcpts = &rcpt, .nrcpts = 1,
                      .data = text, .len = len, .smtputf8 = utf8};
    char *orig = xstrdup(w->msg_id);
    if (submit_message(dv->srv->submit, &req, on_ndr_queued, orig, &e)) {
        log_ev(LOG_ERROR, "ndr_failed", "{s:s,s:s}", "id", w->msg_id, "error", e.msg);
        free(orig);
    }
    free(text);
    free(br);
    spool_message_free(&m);
}

static void owrite_done(void *arg, const err *e)
{
    owrite *w = arg;
    delivery *dv = w->dv;
    dv->writes--;
    /* Only now may the recipients be scanned again: the spool has their new state. */
    for (size_t i = 0; i < w->n; i++)
        idset_del(&dv->inflight, w->o[i].rcpt_id);
    if (e)
        log_ev(LOG_ERROR, "outcome_write_failed", "{s:s,s:s}", "id", w->msg_id, "error", e->msg);
    else if (w->ndr)
        send_ndr(dv, w);
    int rescan = w->rescan;
    owrite_free(w);
    if (!dv->draining && rescan && dv->queued < (size_t)dv->scan_batch / 2)
        event_active(dv->tick, 0, 0);
}

static uint32_t rnd32(void)
{
    uint32_t x = 0;
    if (ids_random(&x, sizeof x))
        x = (uint32_t)rand();
    return x;
}

/* What one recipient's result means: state, event and its data. */
static void decide(delivery *dv, outcome *o, const smtpc_result *res, int attempt, int64_t created,
                   const char *host, int tls)
{
    enum retry_class k = retry_classify(res->code, res->status);
    int64_t now = clock_now_ms();
    const char *bounce = NULL;
    char next[40] = "";
    snprintf(o->status, sizeof o->status, "%s", res->status);
    switch (k) {
    case RETRY_DELIVERED: o->state = RCPT_DELIVERED; o->type = "delivered"; break;
    case RETRY_BOUNCE_HARD:
    case RETRY_BOUNCE_SOFT:
        o->state = RCPT_BOUNCED;
        o->type = "bounced";
        bounce = k == RETRY_BOUNCE_HARD ? "hard" : "soft";
        o->suppress = k == RETRY_BOUNCE_HARD;
        if (!*o->status)
            snprintf(o->status, sizeof o->status, "5.0.0");
        break;
    case RETRY_DEFER: {
        int64_t delay = retry_delay(dv->sched, dv->nsched, attempt, rnd32());
        if (retry_next(now, created, dv->max_age, delay, &o->next_at)) {
            o->state = RCPT_EXPIRED;
            o->type = "expired";
            snprintf(o->status, sizeof o->status, "4.4.7");
        } else {
            o->state = RCPT_DEFERRED;
            o->type = "deferred";
            clock_rfc3339(o->next_at, next, sizeof next);
        }
        break;
    }
    }
    o->reply = xstrdup(res->text ? res->text : "");
    o->host = host ? xstrdup(host) : NULL;
    json_t *j = json_pack("{s:s?,s:s,s:i,s:i,s:s?,s:b}", "host", host, "reply", o->reply, "attempt", attempt,
                          "code", res->code, "status", *res->status ? res->status : NULL, "tls", tls);
    if (bounce)
        json_object_set_new(j, "bounce", json_string(bounce));
    if (*next)
        json_object_set_new(j, "next_attempt", json_string(next));
    o->data = json_dumps(j, JSON_COMPACT);
    json_decref(j);
}

static void log_outcome(const char *msg_id, const outcome *o, int attempt)
{
    log_ev(o->state == RCPT_DELIVERED ? LOG_INFO : LOG_WARN, o->type, "{s:s,s:s,s:s?,s:s,s:i}", "id", msg_id,
           "rcpt", o->addr, "host", o->host, "reply", o->reply, "attempt", attempt);
}

/* Metrics the event counters cannot give: hard/soft bounces and how long
   delivery took from acceptance. */
static void count_outcome(delivery *dv, const outcome *o, int64_t created_ms)
{
    metrics *m = dv->srv->metrics;
    if (o->state == RCPT_DELIVERED)
        outcome_observe(m, M_DELIVERY_LATENCY, (double)(clock_now_ms() - created_ms) / 1000.0);
    else if (o->state == RCPT_BOUNCED)
        outcome_count(m, M_BOUNCED, o->suppress ? "hard" : "soft", 1);
}

/* Record the results of one job (one result per recipient) and hand the
   job's recipients over to the write; m is the message (meta is enough). */
static void record(delivery *dv, const dest *d, job *j, const spool_message *m, const smtpc_result *res,
                   const char *host, int tls)
{
    owrite *w = xcalloc(1, sizeof *w);
    w->dv = dv;
    memcpy(w->msg_id, j->msg_id, sizeof w->msg_id);
    w->n = j->n;
    w->o = xcalloc(j->n, sizeof *w->o);
    int failed = 0;
    for (size_t i = 0; i < j->n; i++) {
        outcome *o = &w->o[i];
        o->rcpt_id = j->ids[i];
        o->addr = xstrdup(j->addrs[i]);
        decide(dv, o, &res[i], j->attempts[i] + 1, m->created_ms, host, tls);
        log_outcome(j->msg_id, o, j->attempts[i] + 1);
        count_outcome(dv, o, m->created_ms);
        failed |= o->state == RCPT_BOUNCED || o->state == RCPT_EXPIRED;
    }
    w->ndr = failed && bounce_wanted(dv->srv->cfg, m->ingress, m->mail_from);
    /* Scan again after this commit only when the destination is running
       low. A scan reads up to SCAN_PAGES pages; running one per outcome
       while the destination still holds half its share re-read thousands
       of capped rows per delivered message on a deep queue (bench/queue:
       ~2,100 rows per delivery at 100,000 queued). Other destinations are
       found by their own outcomes, new submissions and the periodic tick. */
    w->rescan = d->nqueued < dest_cap(dv) / 2;
    job_free(j); /* the ids stay in flight until owrite_done */
    dv->writes++;
    if (spool_write(dv->srv->spool, owrite_fn, owrite_done, w)) {
        /* The spool is closing: the recipients stay due for the next start. */
        dv->writes--;
        owrite_free(w);
    }
}

/* Give every queued job of d the same result (DNS failure, dead host). */
static void fail_queue(dest *d, int code, const char *status, const char *text, const char *host)
{
    delivery *dv = d->dv;
    job *j;
    while ((j = job_pop(d))) {
        spool_message m;
        err e;
        if (spool_message_get(dv->srv->spool, j->msg_id, 0, &m, &e)) {
            job_release(dv, j); /* deleted meanwhile */
            continue;
        }
        smtpc_result *res = xcalloc(j->n, sizeof *res);
        for (size_t i = 0; i < j->n; i++)
            smtpc_result_set(&res[i], code, status, text);
        size_t n = j->n;
        record(dv, d, j, &m, res, host, 0);
        for (size_t i = 0; i < n; i++)
            smtpc_result_clear(&res[i]);
        free(res);
        spool_message_free(&m);
    }
}

/* ---- connections --------------------------------------------------------------------- */

static void conn_remove(conn *k)
{
    dest *d = k->d;
    LIST_REMOVE(k, link);
    d->nconns--;
    d->dv->nconns_total--;
    if (k->state == C_RESOLVING || k->state == C_CONNECTING)
        d->nconnecting--;
    if (k->idle)
        event_free(k->idle);
    free(k);
}

static void on_closed(void *arg)
{
    closing *x = arg;
    LIST_REMOVE(x, link);
    x->dv->nclosing--;
    free(x);
}

static void conn_close(conn *k)
{
    delivery *dv = k->d->dv;
    if (k->c) {
        closing *x = xcalloc(1, sizeof *x);
        x->dv = dv;
        x->c = k->c;
        LIST_INSERT_HEAD(&dv->closing, x, link);
        dv->nclosing++;
        if (!smtpc_close(k->c, on_closed, x)) {
            LIST_REMOVE(x, link);
            dv->nclosing--;
            free(x);
        }
    }
    k->c = NULL;
    conn_remove(k);
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    conn *k = arg;
    log_ev(LOG_DEBUG, "connection_idle_closed", "{s:s}", "destination", k->d->r.key);
    conn_close(k);
}

static void conn_idle(conn *k)
{
    k->state = C_IDLE;
    if (!k->idle)
        k->idle = evtimer_new(k->d->dv->srv->base, on_idle, k);
    int64_t ms = k->d->dv->idle_timeout;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(k->idle, &tv);
}

static void on_txn(void *arg, smtpc_conn *c, int reusable)
{
    conn *k = arg;
    dest *d = k->d;
    delivery *dv = d->dv;
    job *j = k->job;
    k->job = NULL;
    int saw_421 = 0;
    for (size_t i = 0; i < j->n; i++)
        saw_421 |= k->txn.results[i].code == 421;
    record(dv, d, j, &k->msg, k->txn.results, smtpc_peer(c), smtpc_tls_active(c));
    for (size_t i = 0; i < k->txn.nrcpts; i++)
        smtpc_result_clear(&k->txn.results[i]);
    free(k->txn.results);
    memset(&k->txn, 0, sizeof k->txn);
    spool_message_free(&k->msg);
    dv->busy_conns--;
    k->msgs++;
    if (saw_421)
        penalize(d, "421 reply");
    if (!reusable || dv->draining || k->msgs >= d->r.max_msgs_per_conn) {
        conn_close(k);
        pump(d);
        return;
    }
    conn_idle(k);
    pump(d);
}

/* Start job j on idle connection k. Returns 0 when the job was started. */
static int start_job(conn *k, job *j)
{
    delivery *dv = k->d->dv;
    err e;
    if (spool_message_get(dv->srv->spool, j->msg_id, 1, &k->msg, &e)) {
        log_ev(LOG_DEBUG, "job_dropped", "{s:s,s:s}", "id", j->msg_id, "reason", e.msg);
        job_release(dv, j);
        return -1;
    }
    evtimer_del(k->idle);
    k->job = j;
    k->state = C_BUSY;
    dv->busy_conns++;
    k->txn = (smtpc_txn){.mail_from = k->msg.mail_from, .rcpts = (const char *const *)j->addrs, .nrcpts = j->n,
                         .data = k->msg.data, .len = k->msg.len,
                         .results = xcalloc(j->n, sizeof(smtpc_result))};
    smtpc_send(k->c, &k->txn, on_txn, k);
    return 0;
}

static void on_ready(void *arg, smtpc_conn *c, int ok, const smtpc_result *res, int refused)
{
    conn *k = arg;
    dest *d = k->d;
    if (ok) {
        k->c = c;
        d->nconnecting--;
        log_ev(LOG_DEBUG, "connected", "{s:s,s:s,s:b}", "destination", d->r.key, "peer", smtpc_peer(c), "tls",
               smtpc_tls_active(c));
        conn_idle(k);
        pump(d);
        return;
    }
    log_ev(LOG_WARN, "connect_failed", "{s:s,s:s}", "destination", d->r.key, "reason", res->text);
    if (refused)
        penalize(d, "connection refused or 421");
    int last = d->nconns == 1;
    conn_remove(k);
    /* Nobody else is talking to this destination: what is queued for it
       would only wait for the same failure, so defer it now. */
    if (last)
        fail_queue(d, 0, "", res->text, NULL);
}

static void connect_targets(conn *k, const dns_result *r)
{
    dest *d = k->d;
    delivery *dv = d->dv;
    smtpc_target t[MAX_TARGETS];
    size_t n = 0;
    for (int h = 0; h < r->nhosts; h++)
        for (int a = 0; a < r->hosts[h].naddrs && n < MAX_TARGETS; a++) {
            t[n].host = r->hosts[h].name;
            memcpy(&t[n].addr, &r->hosts[h].addrs[a], r->hosts[h].lens[a]);
            t[n].len = r->hosts[h].lens[a];
            uint16_t port = htons((uint16_t)d->r.port);
            if (t[n].addr.ss_family == AF_INET)
                ((struct sockaddr_in *)&t[n].addr)->sin_port = port;
            else
                ((struct sockaddr_in6 *)&t[n].addr)->sin6_port = port;
            n++;
        }
    smtpc_opts o = dv->so;
    o.base = dv->srv->base;
    o.ssl_ctx = dv->ssl;
    o.tls_policy = d->r.tls_policy;
    o.implicit_tls = d->r.implicit_tls;
    o.auth_user = *d->r.user ? d->r.user : NULL;
    o.auth_pass = d->pass;
    k->state = C_CONNECTING;
    k->c = smtpc_connect(&o, t, n, on_ready, k);
}

static void on_dns(void *arg, dns_result *r)
{
    conn *k = arg;
    dest *d = k->d;
    if (k->cancelled) {
        conn_remove(k);
    } else if (r->status == DNS_OK) {
        connect_targets(k, r);
    } else {
        log_ev(LOG_WARN, "dns_failed", "{s:s,s:s}", "destination", d->r.key, "reason", r->msg);
        conn_remove(k);
        char text[400];
        if (r->status == DNS_NULLMX) {
            snprintf(text, sizeof text, "556 5.1.10 %s", r->msg);
            fail_queue(d, 556, "5.1.10", text, NULL);
        } else if (r->status == DNS_NOTFOUND) {
            snprintf(text, sizeof text, "550 5.1.2 %s", r->msg);
            fail_queue(d, 550, "5.1.2", text, NULL);
        } else {
            fail_queue(d, 0, "", r->msg, NULL);
        }
    }
    dns_result_free(r);
}

static int load_secret(dest *d)
{
    if (!*d->r.user || d->pass)
        return 0;
    err e;
    d->pass = cfg_secret(d->r.pass_file, d->r.pass_env, "relay password", &e);
    if (d->pass)
        return 0;
    log_ev(LOG_ERROR, "relay_password_unavailable", "{s:s,s:s}", "destination", d->r.key, "error", e.msg);
    fail_queue(d, 0, "", e.msg, NULL);
    return -1;
}

static void conn_open(dest *d)
{
    delivery *dv = d->dv;
    if (load_secret(d))
        return;
    conn *k = xcalloc(1, sizeof *k);
    k->d = d;
    k->state = C_RESOLVING;
    LIST_INSERT_HEAD(&d->conns, k, link);
    d->nconns++;
    d->nconnecting++;
    dv->nconns_total++;
    if (d->r.relay)
        dns_addrs(dv->dns, d->r.host, on_dns, k);
    else
        dns_mx(dv->dns, d->domain, on_dns, k);
}

/* Hand queued jobs to idle connections and open new ones within limits. */
static void pump(dest *d)
{
    delivery *dv = d->dv;
    while (!dv->draining && !TAILQ_EMPTY(&d->jobs)) {
        conn *k, *idle = NULL, *next;
        for (k = LIST_FIRST(&d->conns); k; k = next) {
            next = LIST_NEXT(k, link);
            if (k->state != C_IDLE)
                continue;
            if (!smtpc_alive(k->c)) {
                conn_close(k); /* the server hung up while we were idle */
                continue;
            }
            idle = k;
            break;
        }
        if (idle) {
            if (!take_token(d))
                return;
            start_job(idle, job_pop(d));
            continue;
        }
        if (d->nconns >= effective_limit(d) || dv->nconns_total >= dv->max_total ||
            (size_t)d->nconnecting >= d->njobs)
            return;
        conn_open(d);
    }
}

/* ---- scanning ----------------------------------------------------------------------- */

static void on_due(void *arg, const spool_rcpt *r)
{
    delivery *dv = arg;
    if (idset_has(&dv->inflight, r->id))
        return;
    route rt;
    err e;
    if (route_for(dv->srv->cfg, r->domain, &rt, &e))
        return; /* checked at start-up; cannot happen */
    dest *d = dest_get(dv, &rt, r->domain);
    /* Fairness: one slow destination may hold at most a quarter of the
       in-memory queue, so mail for other destinations further along the
       scan still gets in. Skipped rows stay due and come back later. */
    if (d->nqueued >= dest_cap(dv))
        return;
    job *j = TAILQ_LAST(&d->jobs, jobq);
    if (!j || strcmp(j->msg_id, r->msg_id) != 0 || j->n >= (size_t)dv->max_rcpts) {
        j = xcalloc(1, sizeof *j);
        snprintf(j->msg_id, sizeof j->msg_id, "%s", r->msg_id);
        TAILQ_INSERT_TAIL(&d->jobs, j, link);
        d->njobs++;
    }
    job_add(j, r);
    idset_put(&dv->inflight, r->id);
    d->nqueued++;
    dv->queued++;
}

/* Destinations with nothing queued, no connection and no penalty go. */
static void sweep(delivery *dv)
{
    dest *d, *next;
    int64_t now = clock_mono_ms();
    for (d = LIST_FIRST(&dv->dests); d; d = next) {
        next = LIST_NEXT(d, link);
        if (!d->njobs && !d->nconns && now >= d->penalty_until)
            dest_free(d);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    delivery *dv = arg;
    if (dv->paused || dv->draining)
        return;
    sweep(dv);
    /* A few keyset pages per tick: rows skipped for busy or capped
       destinations do not stop the scan from reaching the others. */
    int64_t now = clock_now_ms();
    for (int page = 0; page < SCAN_PAGES; page++) {
        int room = dv->scan_batch - (int)dv->queued;
        if (room <= 0)
            break;
        err e;
        int n = spool_due(dv->srv->spool, now, &dv->cur, room, on_due, dv, &e);
        if (n < 0)
            log_ev(LOG_ERROR, "scan_failed", "{s:s}", "error", e.msg);
        if (n < room) {
            dv->cur = (spool_cursor){0, 0}; /* reached the end: start over next time */
            break;
        }
    }
    dest *d;
    LIST_FOREACH(d, &dv->dests, link)
        pump(d);
}

/* ---- the serve component ---------------------------------------------------------- */

/* The tick is also run at once with event_active(dv->tick, 0, 0). Not with
   EV_TIMEOUT: libevent then re-arms a persistent timer relative to its
   pending expiry, so every early run pushed the next periodic scan one
   interval further away and, after a burst of submissions, the scheduler
   slept for minutes with due mail queued (found by bench/relay). */
static void arm_tick(delivery *dv)
{
    struct timeval tv = {(time_t)(dv->interval / 1000), (suseconds_t)((dv->interval % 1000) * 1000)};
    event_add(dv->tick, &tv);
}

static void component_stop(server *srv);

static void kick_cb(void *arg)
{
    delivery_kick(arg);
}

static int component_start(server *srv, err *e)
{
    delivery *dv = xcalloc(1, sizeof *dv);
    dv->srv = srv;
    LIST_INIT(&dv->dests);
    LIST_INIT(&dv->closing);
    srv->delivery = dv;
    if (apply_settings(dv, srv->cfg, e) || check_routes(srv->cfg, e) ||
        !(dv->dns = dns_new(srv->base, srv->cfg->dns_servers, srv->cfg->dns_timeout, e)) ||
        !(dv->ssl = smtpc_tls_ctx_new(srv->cfg->tls_ca_file, e))) {
        component_stop(srv);
        return -1;
    }
    dv->tick = event_new(srv->base, -1, EV_PERSIST, on_tick, dv);
    arm_tick(dv);
    event_active(dv->tick, 0, 0);
    /* New mail is scanned for as soon as it commits, not at the next interval. */
    submit_on_queued(srv->submit, kick_cb, srv);
    log_ev(LOG_INFO, "delivery_started", "{s:b,s:s,s:s}", "paused", dv->paused, "route", srv->cfg->delivery_route,
           "dns_servers", *srv->cfg->dns_servers ? srv->cfg->dns_servers : "resolv.conf");
    return 0;
}

void delivery_kick(server *srv)
{
    delivery *dv = srv ? srv->delivery : NULL;
    if (dv && dv->tick && !dv->paused && !dv->draining)
        event_active(dv->tick, 0, 0);
}

size_t delivery_connections(server *srv)
{
    delivery *dv = srv ? srv->delivery : NULL;
    return dv && dv->nconns_total > 0 ? (size_t)dv->nconns_total : 0;
}

static void component_drain(server *srv)
{
    delivery *dv = srv->delivery;
    if (!dv)
        return;
    dv->draining = 1;
    dest *d;
    LIST_FOREACH(d, &dv->dests, link) {
        job *j;
        while ((j = job_pop(d)))
            job_release(dv, j);
        conn *k, *next;
        for (k = LIST_FIRST(&d->conns); k; k = next) {
            next = LIST_NEXT(k, link);
            if (k->state == C_IDLE)
                conn_close(k);
            else if (k->state == C_CONNECTING) {
                smtpc_free(k->c);
                conn_remove(k);
            } else if (k->state == C_RESOLVING)
                k->cancelled = 1;
        }
    }
}

static size_t component_busy(server *srv)
{
    delivery *dv = srv->delivery;
    return dv ? dv->busy_conns + dv->writes + dv->nclosing : 0;
}

static void component_reload(server *srv, const config *cfg)
{
    delivery *dv = srv->delivery;
    err e;
    if (apply_settings(dv, cfg, &e)) {
        log_ev(LOG_ERROR, "reload_failed", "{s:s}", "error", e.msg);
        return;
    }
    arm_tick(dv);
    event_active(dv->tick, 0, 0);
}

static void component_stop(server *srv)
{
    delivery *dv = srv->delivery;
    if (!dv)
        return;
    dns_free(dv->dns); /* cancels lookups without callbacks */
    while (!LIST_EMPTY(&dv->dests))
        dest_free(LIST_FIRST(&dv->dests));
    while (!LIST_EMPTY(&dv->closing)) {
        closing *x = LIST_FIRST(&dv->closing);
        LIST_REMOVE(x, link);
        smtpc_free(x->c);
        free(x);
    }
    if (dv->tick)
        event_free(dv->tick);
    if (dv->ssl)
        SSL_CTX_free(dv->ssl);
    free(dv->inflight.slots);
    free(dv->helo);
    free(dv);
    srv->delivery = NULL;
}

const server_component delivery_component = {
    .name = "delivery",
    .start = component_start,
    .drain = component_drain,
    .busy = component_busy,
    .reload = component_reload,
    .stop = component_stop,
};
