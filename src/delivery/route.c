#include "delivery/route.h"

#include "delivery/smtp_client.h"

#include <stdio.h>
#include <string.h>

static const char *pick(const char *over, const char *def)
{
    return over && *over ? over : def;
}

static void relay_route(const config *cfg, const cfg_domain *d, route *r)
{
    r->relay = 1;
    snprintf(r->host, sizeof r->host, "%s", pick(d ? d->relay_host : NULL, cfg->relay_host));
    r->port = d && d->relay_port ? (int)d->relay_port : (int)cfg->relay_port;
    const char *tls = pick(d ? d->relay_tls : NULL, cfg->relay_tls);
    snprintf(r->user, sizeof r->user, "%s", pick(d ? d->relay_user : NULL, cfg->relay_user));
    /* Credentials come as a pair: a domain naming its own user brings its own secret. */
    int own = d && d->relay_user && *d->relay_user;
    r->pass_file = own ? d->relay_password_file : cfg->relay_password_file;
    r->pass_env = own ? d->relay_password_env : cfg->relay_password_env;
    r->tls_policy = smtpc_tls_parse(pick(d ? d->tls_policy : NULL, cfg->tls_policy_relay));
    if (strcmp(tls, "none") == 0)
        r->tls_policy = SMTPC_TLS_NONE;
    if (strcmp(tls, "implicit") == 0) {
        r->implicit_tls = 1;
        if (r->tls_policy < SMTPC_TLS_ENCRYPT)
            r->tls_policy = SMTPC_TLS_ENCRYPT;
    }
    snprintf(r->key, sizeof r->key, "relay:%s:%d:%s:%s", r->host, r->port, r->user, smtpc_tls_name(r->tls_policy));
}

int route_for(const config *cfg, const char *domain, route *r, err *e)
{
    memset(r, 0, sizeof *r);
    const cfg_domain *d = cfg_find_domain(cfg, domain);
    const char *kind = pick(d ? d->route : NULL, cfg->delivery_route);
    if (strcmp(kind, "relay") == 0) {
        relay_route(cfg, d, r);
        if (!*r->host) {
            err_set(e, ERR_INVALID, "route for %s is relay but relay_host is empty", domain);
            return -1;
        }
    } else {
        r->port = (int)cfg->mx_port;
        r->tls_policy = smtpc_tls_parse(pick(d ? d->tls_policy : NULL, cfg->tls_policy_mx));
        snprintf(r->key, sizeof r->key, "mx:%s", domain);
    }
    r->max_conns = d && d->max_connections ? (int)d->max_connections : (int)cfg->max_connections_per_domain;
    r->max_msgs_per_conn = d && d->max_msgs_per_conn ? (int)d->max_msgs_per_conn : (int)cfg->max_msgs_per_conn;
    r->rate = d && d->msgs_per_second > 0 ? d->msgs_per_second : cfg->msgs_per_second;
    return 0;
}
