/*
 * server — what `posthaste serve` runs: one libevent loop, the spool, and
 * the components (SMTP submission, HTTP API, delivery, outcome) that plug
 * into it through server_component.
 *
 * Lifecycle: start every component (they bind their listeners), drop
 * privileges, run the loop. SIGTERM/SIGINT drain: each component stops
 * accepting new work, the loop keeps running until no component reports
 * busy work and the spool has no pending commits (or shutdown_timeout
 * passes), then components stop in reverse order and the spool closes.
 * SIGHUP re-reads the config file and hands it to each component's reload
 * (those settings that are safe to change live: log level, limits).
 */
#ifndef PH_CORE_SERVER_H
#define PH_CORE_SERVER_H

#include "core/config.h"
#include "core/err.h"
#include "spool/spool.h"

struct event_base;
struct smtps;
struct api;
struct delivery;
struct outcome;
struct submit;
struct metrics;
struct webhooks;
struct maildrop;
struct alerts;

typedef struct server {
    struct event_base *base;
    config *cfg;
    spool *spool;
    int draining;
    struct metrics *metrics; /* owned by the outcome component, which starts first */
    /* Component state, owned by the component's module. */
    struct submit *submit;
    struct smtps *smtp;
    struct api *api;
    struct delivery *delivery;
    struct outcome *outcome;
    struct webhooks *webhooks;
    struct maildrop *maildrop;
    struct alerts *alerts;
} server;

typedef struct server_component {
    const char *name;
    int (*start)(server *srv, err *e);              /* bind, start timers */
    void (*drain)(server *srv);                     /* stop taking new work */
    size_t (*busy)(server *srv);                    /* in-flight work left */
    void (*reload)(server *srv, const config *cfg); /* apply a re-read config */
    void (*stop)(server *srv);                      /* free everything */
} server_component;

/* Run until drained. Takes ownership of cfg. Returns an exit status. */
int server_run(config *cfg, const server_component *const *components, size_t n);

#endif
