#include "delivery/dns.h"

#include "core/ids.h"
#include "core/log.h"
#include "core/mem.h"

#include <ares.h>
#include <idn2.h>
#include <arpa/nameser.h>
#include <event2/event.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

/* One watched c-ares socket. */
typedef struct dns_sock {
    ares_socket_t fd;
    struct event *ev;
    LIST_ENTRY(dns_sock) link;
} dns_sock;

/* One MX (or host) lookup in progress: the MX query, then one
   getaddrinfo per exchange; the result is handed over when all are in. */
typedef struct lookup {
    dns *d;
    dns_cb cb;
    void *arg;
    dns_result *res;
    int pending;            /* address lookups outstanding */
    int temp_failures;      /* exchanges whose address lookup failed temporarily */
    int fallback;           /* no MX: the domain's own addresses */
    LIST_ENTRY(lookup) link;
} lookup;

struct dns {
    struct event_base *base;
    ares_channel ch;
    struct event *timer;
    int destroying;
    LIST_HEAD(, dns_sock) socks;
    LIST_HEAD(, lookup) lookups;
};

static void schedule_timer(dns *d)
{
    struct timeval tv, *t = ares_timeout(d->ch, NULL, &tv);
    if (t)
        evtimer_add(d->timer, t);
    else
        evtimer_del(d->timer);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    dns *d = arg;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    schedule_timer(d);
}

static void on_sock(evutil_socket_t fd, short what, void *arg)
{
    dns *d = arg;
    ares_process_fd(d->ch, (what & EV_READ) ? fd : ARES_SOCKET_BAD, (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    schedule_timer(d);
}

/* c-ares tells us which sockets to watch; mirror that in libevent. */
static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    dns *d = data;
    dns_sock *s;
    LIST_FOREACH(s, &d->socks, link)
        if (s->fd == fd)
            break;
    if (s) {
        event_free(s->ev);
        LIST_REMOVE(s, link);
        free(s);
    }
    if (!readable && !writable)
        return;
    s = xcalloc(1, sizeof *s);
    s->fd = fd;
    s->ev = event_new(d->base, fd, (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0) | EV_PERSIST),
                      on_sock, d);
    event_add(s->ev, NULL);
    LIST_INSERT_HEAD(&d->socks, s, link);
}

dns *dns_new(struct event_base *base, const char *servers, int64_t timeout_ms, err *e)
{
    static int lib_ready;
    if (!lib_ready && ares_library_init(ARES_LIB_INIT_ALL) == ARES_SUCCESS)
        lib_ready = 1;
    dns *d = xcalloc(1, sizeof *d);
    d->base = base;
    LIST_INIT(&d->socks);
    LIST_INIT(&d->lookups);
    struct ares_options o = {0};
    o.sock_state_cb = sock_state;
    o.sock_state_cb_data = d;
    o.flags = ARES_FLAG_NOSEARCH;
    o.tries = 2;
    o.timeout = (int)(timeout_ms / 2 > 0 ? timeout_ms / 2 : 1);
    int rc = ares_init_options(&d->ch, &o, ARES_OPT_SOCK_STATE_CB | ARES_OPT_FLAGS | ARES_OPT_TRIES | ARES_OPT_TIMEOUTMS);
    if (rc != ARES_SUCCESS) {
        err_set(e, ERR_IO, "DNS resolver: %s", ares_strerror(rc));
        free(d);
        return NULL;
    }
    if (servers && *servers && (rc = ares_set_servers_ports_csv(d->ch, servers)) != ARES_SUCCESS) {
        err_set(e, ERR_INVALID, "[delivery] dns_servers '%s': %s", servers, ares_strerror(rc));
        ares_destroy(d->ch);
        free(d);
        return NULL;
    }
    d->timer = evtimer_new(base, on_timer, d);
    return d;
}

void dns_free(dns *d)
{
    if (!d)
        return;
    d->destroying = 1;
    ares_destroy(d->ch); /* runs pending callbacks with ARES_EDESTRUCTION */
    while (!LIST_EMPTY(&d->lookups)) {
        lookup *l = LIST_FIRST(&d->lookups);
        LIST_REMOVE(l, link);
        dns_result_free(l->res);
        free(l);
    }
    while (!LIST_EMPTY(&d->socks)) {
        dns_sock *s = LIST_FIRST(&d->socks);
        LIST_REMOVE(s, link);
        event_free(s->ev);
        free(s);
    }
    event_free(d->timer);
    free(d);
}

void dns_result_free(dns_result *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->nhosts; i++)
        free(r->hosts[i].name);
    free(r);
}

static unsigned rand_below(unsigned n)
{
    uint32_t x = 0;
    if (ids_random(&x, sizeof x))
        x = (uint32_t)rand();
    return n ? x % n : 0;
}

void dns_sort_hosts(dns_host *hosts, int n)
{
    /* Shuffle first (Fisher-Yates), then a stable insertion sort by
       preference: equal preferences end up in random order. */
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rand_below((unsigned)i + 1);
        dns_host t = hosts[i];
        hosts[i] = hosts[j];
        hosts[j] = t;
    }
    for (int i = 1; i < n; i++) {
        dns_host t = hosts[i];
        int j = i - 1;
        while (j >= 0 && hosts[j].pref > t.pref) {
            hosts[j + 1] = hosts[j];
            j--;
        }
        hosts[j + 1] = t;
    }
}

/* Hand the result to the caller; drop exchanges without addresses. */
static void finish(lookup *l)
{
    dns_result *r = l->res;
    int kept = 0;
    for (int i = 0; i < r->nhosts; i++) {
        if (r->hosts[i].naddrs > 0)
            r->hosts[kept++] = r->hosts[i];
        else
            free(r->hosts[i].name);
    }
    r->nhosts = kept;
    if (r->status == DNS_OK && kept == 0) {
        if (l->fallback && l->temp_failures == 0) {
            r->status = DNS_NOTFOUND;
            snprintf(r->msg, sizeof r->msg, "no MX and no A/AAAA record");
        } else {
            r->status = DNS_TEMP;
            snprintf(r->msg, sizeof r->msg, "no address for any MX host");
        }
    }
    LIST_REMOVE(l, link);
    l->cb(l->arg, r);
    free(l);
}

typedef struct addr_req {
    lookup *l;
    int host;
} addr_req;

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    addr_req *q = arg;
    lookup *l = q->l;
    int idx = q->host;
    free(q);
    if (l->d->destroying) {
        if (ai)
            ares_freeaddrinfo(ai);
        return;
    }
    dns_host *h = &l->res->hosts[idx];
    if (status == ARES_SUCCESS && ai) {
        for (struct ares_addrinfo_node *n = ai->nodes; n && h->naddrs < DNS_MAX_ADDRS; n = n->ai_next) {
            if (n->ai_addrlen > sizeof h->addrs[0])
                continue;
            memcpy(&h->addrs[h->naddrs], n->ai_addr, n->ai_addrlen);
            h->lens[h->naddrs++] = (socklen_t)n->ai_addrlen;
        }
    } else if (status != ARES_ENOTFOUND && status != ARES_ENODATA) {
        l->temp_failures++;
    }
    if (ai)
        ares_freeaddrinfo(ai);
    if (--l->pending == 0)
        finish(l);
}

static void resolve_hosts(lookup *l)
{
    dns_result *r = l->res;
    if (r->nhosts == 0) {
        finish(l);
        return;
    }
    /* One extra count held during the loop: c-ares may answer numeric
       names and /etc/hosts entries synchronously. */
    dns *d = l->d;
    int n = r->nhosts;
    l->pending = n + 1;
    struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    for (int i = 0; i < n; i++) {
        addr_req *q = xcalloc(1, sizeof *q);
        q->l = l;
        q->host = i;
        ares_getaddrinfo(d->ch, r->hosts[i].name, NULL, &hints, on_addrinfo, q);
    }
    if (--l->pending == 0)
        finish(l);
    schedule_timer(d);
}

static void fail(lookup *l, enum dns_status st)
{
    l->res->status = st;
    finish(l);
}

static int add_host(dns_result *r, const char *name, int pref)
{
    if (r->nhosts >= DNS_MAX_HOSTS)
        return -1;
    r->hosts[r->nhosts].name = xstrdup(name);
    r->hosts[r->nhosts].pref = pref;
    r->hosts[r->nhosts].naddrs = 0;
    r->nhosts++;
    return 0;
}

static void take_mx(lookup *l, struct ares_mx_reply *mx, const char *domain)
{
    for (struct ares_mx_reply *m = mx; m; m = m->next) {
        /* RFC 7505: "0 ." means the domain accepts no mail at all. */
        if (m->host[0] == '\0' || strcmp(m->host, ".") == 0) {
            snprintf(l->res->msg, sizeof l->res->msg, "%s publishes a null MX (RFC 7505): it accepts no mail",
                     domain);
            fail(l, DNS_NULLMX);
            return;
        }
    }
    for (struct ares_mx_reply *m = mx; m; m = m->next)
        add_host(l->res, m->host, m->priority);
    dns_sort_hosts(l->res->hosts, l->res->nhosts);
    resolve_hosts(l);
}

typedef struct mx_req {
    lookup *l;
    char *domain;
} mx_req;

static void on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    mx_req *q = arg;
    lookup *l = q->l;
    char *domain = q->domain;
    free(q);
    if (l->d->destroying) {
        free(domain);
        return;
    }
    struct ares_mx_reply *mx = NULL;
    if (status == ARES_SUCCESS)
        status = ares_parse_mx_reply(abuf, alen, &mx);
    if (status == ARES_SUCCESS && mx) {
        take_mx(l, mx, domain);
    } else if (status == ARES_ENODATA || (status == ARES_SUCCESS && !mx)) {
        /* RFC 5321 5.1: no MX -> the domain itself is the exchange. */
        l->fallback = 1;
        add_host(l->res, domain, 0);
        resolve_hosts(l);
    } else if (status == ARES_ENOTFOUND) {
        snprintf(l->res->msg, sizeof l->res->msg, "domain %s does not exist (NXDOMAIN)", domain);
        fail(l, DNS_NOTFOUND);
    } else {
        snprintf(l->res->msg, sizeof l->res->msg, "MX lookup for %s failed: %s", domain, ares_strerror(status));
        fail(l, DNS_TEMP);
    }
    if (mx)
        ares_free_data(mx);
    free(domain);
}

static lookup *lookup_new(dns *d, dns_cb cb, void *arg)
{
    lookup *l = xcalloc(1, sizeof *l);
    l->d = d;
    l->cb = cb;
    l->arg = arg;
    l->res = xcalloc(1, sizeof *l->res);
    l->res->status = DNS_OK;
    LIST_INSERT_HEAD(&d->lookups, l, link);
    return l;
}

/* DNS speaks A-labels: an internationalised domain (SMTPUTF8 mail) is
   converted with libidn2 (IDNA 2008) before it is looked up. */
static char *a_label(const char *name)
{
    int ascii = 1;
    for (const char *p = name; *p; p++)
        ascii &= (unsigned char)*p < 0x80;
    if (ascii)
        return xstrdup(name);
    char *out = NULL;
    if (idn2_to_ascii_8z(name, &out, IDN2_NONTRANSITIONAL) != IDN2_OK)
        return NULL;
    char *copy = xstrdup(out);
    idn2_free(out);
    return copy;
}

void dns_mx(dns *d, const char *domain, dns_cb cb, void *arg)
{
    lookup *l = lookup_new(d, cb, arg);
    char *ace = a_label(domain);
    if (!ace) {
        snprintf(l->res->msg, sizeof l->res->msg, "domain %s is not a valid IDNA 2008 name", domain);
        fail(l, DNS_NOTFOUND);
        return;
    }
    mx_req *q = xcalloc(1, sizeof *q);
    q->l = l;
    q->domain = ace;
    ares_query(d->ch, ace, C_IN, T_MX, on_mx, q);
    schedule_timer(d);
}

void dns_addrs(dns *d, const char *host, dns_cb cb, void *arg)
{
    lookup *l = lookup_new(d, cb, arg);
    l->fallback = 1;
    char *ace = a_label(host);
    add_host(l->res, ace ? ace : host, 0);
    free(ace);
    resolve_hosts(l);
}
