/*
 * dns — where to deliver a domain's mail: MX lookup with c-ares on the
 * server's libevent loop.
 *
 * What it does: dns_mx() resolves a domain's MX records, orders them by
 * preference (random order among equal preferences, RFC 5321 5.1), falls
 * back to the domain's own A/AAAA records when it has no MX, recognises a
 * null MX (RFC 7505: one record "0 .") and resolves every exchange to its
 * addresses. dns_addrs() resolves one host name (a relay) the same way.
 * Internationalised names are looked up as A-labels (libidn2).
 * The answer is a dns_result the caller owns and frees.
 *
 * Outcomes: DNS_OK (hosts with at least one address), DNS_NULLMX and
 * DNS_NOTFOUND (permanent: the domain does not exist or has no address)
 * and DNS_TEMP (time-outs, SERVFAIL, MX hosts that do not resolve: retry).
 *
 * What it owns: the c-ares channel and the events watching its sockets.
 * What it never does: block, cache, or follow search domains.
 * Limits: delivery.dns_timeout for each lookup (c-ares' tries included);
 * at most DNS_MAX_HOSTS exchanges and DNS_MAX_ADDRS addresses per host.
 */
#ifndef PH_DELIVERY_DNS_H
#define PH_DELIVERY_DNS_H

#include "core/err.h"

#include <stdint.h>
#include <sys/socket.h>

#define DNS_MAX_HOSTS 10
#define DNS_MAX_ADDRS 8

enum dns_status { DNS_OK, DNS_NULLMX, DNS_NOTFOUND, DNS_TEMP };

typedef struct dns_host {
    char *name;
    int pref;
    struct sockaddr_storage addrs[DNS_MAX_ADDRS];
    socklen_t lens[DNS_MAX_ADDRS];
    int naddrs;
} dns_host;

typedef struct dns_result {
    enum dns_status status;
    char msg[256];          /* why, for DNS_NULLMX/NOTFOUND/TEMP */
    dns_host hosts[DNS_MAX_HOSTS];
    int nhosts;
} dns_result;

typedef struct dns dns;
struct event_base;

/* servers: "ip[:port],…" or "" for /etc/resolv.conf. */
dns *dns_new(struct event_base *base, const char *servers, int64_t timeout_ms, err *e);
/* Cancels pending lookups without calling their callbacks. */
void dns_free(dns *d);

/* The callback owns res (free with dns_result_free). It may run before
   dns_mx()/dns_addrs() return (numeric or /etc/hosts names, names that are
   not valid IDNA): callers must be ready for that. */
typedef void (*dns_cb)(void *arg, dns_result *res);
void dns_mx(dns *d, const char *domain, dns_cb cb, void *arg);
void dns_addrs(dns *d, const char *host, dns_cb cb, void *arg);
void dns_result_free(dns_result *r);

/* Order hosts by preference, shuffling equal preferences (exposed for tests). */
void dns_sort_hosts(dns_host *hosts, int n);

#endif
