/*
 * route — how mail for a recipient domain leaves: the [delivery] defaults
 * merged with the domain's [domain NAME] section.
 *
 * Two kinds: mx (look up the domain's MX, deliver on mx_port) and relay
 * (hand everything to relay_host:relay_port, optionally with AUTH and
 * implicit TLS). The route also carries its TLS policy (mx default "may",
 * relay default "verify"; relay_tls = none forces "none", implicit forces
 * at least "encrypt"), and the per-destination limits.
 *
 * Routes with the same destination key share connections and limits: an
 * mx route's key is its domain, a relay route's key is host:port plus the
 * AUTH user, so every domain sent through one smart host shares its pool.
 *
 * Never reads secrets itself: it carries the _file/_env names only.
 */
#ifndef PH_DELIVERY_ROUTE_H
#define PH_DELIVERY_ROUTE_H

#include "core/config.h"
#include "core/err.h"

typedef struct route {
    int relay;                 /* 0: mx, 1: relay */
    char key[600];             /* destination key */
    char host[256];            /* relay host (relay only) */
    int port;                  /* relay port, or mx_port */
    int implicit_tls;
    int tls_policy;            /* enum smtpc_tls */
    char user[256];            /* relay AUTH user; "" = none */
    const char *pass_file;     /* borrowed from the config */
    const char *pass_env;
    int max_conns;
    int max_msgs_per_conn;
    double rate;               /* messages per second, 0 = unlimited */
} route;

/* Fill r for recipient domain `domain`. Fails (ERR_INVALID) when a relay
   route has no relay_host. */
int route_for(const config *cfg, const char *domain, route *r, err *e);

#endif
