#include "core/server.h"

#include "core/clock.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/version.h"

#include <errno.h>
#include <event2/event.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct runner {
    server srv;
    const server_component *const *comps;
    size_t ncomps;
    struct event *ev_term, *ev_int, *ev_hup, *ev_drain;
    int64_t drain_deadline;
    FILE *log_file;
} runner;

static int open_log(runner *r, const config *cfg, err *e)
{
    enum log_level lvl;
    if (log_level_parse(cfg->log_level, &lvl) == 0)
        log_set_level(lvl);
    if (!*cfg->log_file)
        return 0;
    FILE *f = fopen(cfg->log_file, "a");
    if (!f) {
        err_set(e, ERR_IO, "log_file %s: %s", cfg->log_file, strerror(errno));
        return -1;
    }
    log_set_stream(f);
    if (r->log_file)
        fclose(r->log_file);
    r->log_file = f;
    return 0;
}

static size_t busy_total(runner *r)
{
    size_t n = spool_pending(r->srv.spool);
    for (size_t i = 0; i < r->ncomps; i++)
        if (r->comps[i]->busy)
            n += r->comps[i]->busy(&r->srv);
    return n;
}

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    runner *r = arg;
    size_t busy = busy_total(r);
    if (busy == 0 || clock_mono_ms() >= r->drain_deadline) {
        if (busy)
            log_ev(LOG_WARN, "shutdown_timeout", "{s:i}", "busy", (int)busy);
        event_base_loopexit(r->srv.base, NULL);
        return;
    }
    struct timeval tv = {0, 20000};
    event_add(r->ev_drain, &tv);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    runner *r = arg;
    if (r->srv.draining) {
        log_ev(LOG_WARN, "shutdown_forced", "{s:i}", "signal", (int)sig);
        event_base_loopexit(r->srv.base, NULL);
        return;
    }
    r->srv.draining = 1;
    log_ev(LOG_INFO, "shutdown_started", "{s:i}", "signal", (int)sig);
    for (size_t i = 0; i < r->ncomps; i++)
        if (r->comps[i]->drain)
            r->comps[i]->drain(&r->srv);
    r->drain_deadline = clock_mono_ms() + r->srv.cfg->shutdown_timeout;
    on_drain_tick(-1, 0, r);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    runner *r = arg;
    if (!r->srv.cfg->path) {
        log_ev(LOG_INFO, "reload_skipped", "{s:s}", "reason", "running on built-in defaults");
        return;
    }
    err e;
    config *next = cfg_load(r->srv.cfg->path, &e);
    if (!next) {
        log_ev(LOG_ERROR, "reload_failed", "{s:s}", "error", e.msg);
        return;
    }
    for (size_t i = 0; i < r->ncomps; i++)
        if (r->comps[i]->reload)
            r->comps[i]->reload(&r->srv, next);
    /* Logged before the new level applies, so raising it does not hide this line.
       Listener addresses and the spool stay as they were: those need a restart. */
    log_ev(LOG_INFO, "reloaded", "{s:s,s:s}", "config", next->path, "log_level", next->log_level);
    if (open_log(r, next, &e))
        log_ev(LOG_ERROR, "reload_failed", "{s:s}", "error", e.msg);
    cfg_free(next);
}

static int drop_privileges(const config *cfg, err *e)
{
    if (geteuid() != 0)
        return 0;
    if (!*cfg->user) {
        log_ev(LOG_WARN, "running_as_root", "{s:s}", "hint", "set [server] user to drop privileges");
        return 0;
    }
    struct passwd *pw = getpwnam(cfg->user);
    if (!pw) {
        err_set(e, ERR_INVALID, "[server] user: no such user '%s'", cfg->user);
        return -1;
    }
    if (setgroups(0, NULL) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
        err_set(e, ERR_IO, "dropping privileges to %s: %s", cfg->user, strerror(errno));
        return -1;
    }
    log_ev(LOG_INFO, "privileges_dropped", "{s:s}", "user", cfg->user);
    return 0;
}

static int open_spool(runner *r, err *e)
{
    const config *cfg = r->srv.cfg;
    if (mkdir(cfg->spool_dir, 0700) < 0 && errno != EEXIST) {
        err_set(e, ERR_IO, "cannot create spool_dir %s: %s", cfg->spool_dir, strerror(errno));
        return -1;
    }
    char *path = cfg_spool_path(cfg, "spool.db");
    spool_opts o = {
        .path = path,
        .synchronous_full = strcmp(cfg->spool_synchronous, "full") == 0,
        .max_size = cfg->spool_max_size,
        .commit_batch = (int)cfg->spool_commit_batch,
        .busy_timeout_ms = (int)cfg->spool_busy_timeout,
    };
    r->srv.spool = spool_open(&o, e);
    free(path);
    if (!r->srv.spool)
        return -1;
    if (spool_recover(r->srv.spool, e) < 0)
        return -1;
    return spool_start_writer(r->srv.spool, r->srv.base, e);
}

static int add_signal(runner *r, struct event **ev, int sig, event_callback_fn fn)
{
    *ev = evsignal_new(r->srv.base, sig, fn, r);
    return *ev && event_add(*ev, NULL) == 0 ? 0 : -1;
}

static int start(runner *r, size_t *started, err *e)
{
    if (open_log(r, r->srv.cfg, e))
        return -1;
    signal(SIGPIPE, SIG_IGN);
    r->srv.base = event_base_new();
    if (!r->srv.base) {
        err_set(e, ERR_IO, "cannot create the event loop");
        return -1;
    }
    if (add_signal(r, &r->ev_term, SIGTERM, on_term) || add_signal(r, &r->ev_int, SIGINT, on_term) ||
        add_signal(r, &r->ev_hup, SIGHUP, on_hup)) {
        err_set(e, ERR_IO, "cannot install signal handlers");
        return -1;
    }
    r->ev_drain = evtimer_new(r->srv.base, on_drain_tick, r);
    if (!r->ev_drain || open_spool(r, e))
        return -1;
    for (size_t i = 0; i < r->ncomps; i++) {
        if (r->comps[i]->start(&r->srv, e)) {
            err_wrap(e, "%s", r->comps[i]->name);
            return -1;
        }
        *started = i + 1;
    }
    return drop_privileges(r->srv.cfg, e);
}

static void teardown(runner *r, size_t started)
{
    /* Commit what is queued and deliver its completions while every
       component is still alive to receive them; then stop components. */
    spool_drain(r->srv.spool);
    for (size_t i = started; i > 0; i--)
        if (r->comps[i - 1]->stop)
            r->comps[i - 1]->stop(&r->srv);
    spool_close(r->srv.spool);
    struct event *evs[] = {r->ev_term, r->ev_int, r->ev_hup, r->ev_drain};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i])
            event_free(evs[i]);
    if (r->srv.base)
        event_base_free(r->srv.base);
    cfg_free(r->srv.cfg);
    log_set_stream(NULL);
    if (r->log_file)
        fclose(r->log_file);
}

int server_run(config *cfg, const server_component *const *components, size_t n)
{
    runner r = {.srv = {.cfg = cfg}, .comps = components, .ncomps = n};
    size_t started = 0;
    err e;
    err_clear(&e);
    int status = 0;
    if (start(&r, &started, &e)) {
        log_ev(LOG_FATAL, "startup_failed", "{s:s}", "error", e.msg);
        status = 1;
    } else {
        log_ev(LOG_INFO, "ready", "{s:s,s:s,s:s,s:s,s:i}", "version", POSTHASTE_VERSION, "spool_dir",
               cfg->spool_dir, "smtp", cfg->smtp_listen, "api", cfg->api_listen, "pid", (int)getpid());
        event_base_dispatch(r.srv.base);
        log_ev(LOG_INFO, "stopped", NULL);
    }
    teardown(&r, started);
    return status;
}
