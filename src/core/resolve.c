#include "core/resolve.h"

#include "core/mem.h"

#include <arpa/inet.h>
#include <ares.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>

struct resolver {
    ares_channel ch;
};

/* The state of one query, filled by its callback. */
typedef struct query {
    int done;
    int status;             /* ARES_* */
    unsigned char *answer;  /* copy of the raw reply */
    int len;
} query;

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static int lib_status;

static void lib_init(void)
{
    lib_status = ares_library_init(ARES_LIB_INIT_ALL);
}

resolver *resolve_new(const char *servers, int timeout_ms, err *e)
{
    pthread_once(&lib_once, lib_init);
    if (lib_status != ARES_SUCCESS) {
        err_set(e, ERR_IO, "c-ares: %s", ares_strerror(lib_status));
        return NULL;
    }
    resolver *r = xcalloc(1, sizeof *r);
    struct ares_options o = {.timeout = timeout_ms, .tries = 2, .lookups = (char *)"b"};
    int rc = ares_init_options(&r->ch, &o, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS);
    if (rc == ARES_SUCCESS && servers && *servers)
        rc = ares_set_servers_ports_csv(r->ch, servers);
    if (rc != ARES_SUCCESS) {
        err_set(e, ERR_INVALID, "DNS resolvers '%s': %s", servers ? servers : "", ares_strerror(rc));
        if (r->ch)
            ares_destroy(r->ch);
        free(r);
        return NULL;
    }
    return r;
}

void resolve_free(resolver *r)
{
    if (!r)
        return;
    ares_destroy(r->ch);
    free(r);
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    query *q = arg;
    q->done = 1;
    q->status = status;
    if (status == ARES_SUCCESS && abuf && alen > 0) {
        q->answer = xmemdup(abuf, (size_t)alen);
        q->len = alen;
    }
}

/* Run one query to completion; c-ares enforces the timeout and tries. */
static int run(resolver *r, const char *name, int type, query *q, err *e)
{
    *q = (query){0};
    ares_query(r->ch, name, C_IN, type, on_answer, q);
    while (!q->done) {
        fd_set rfds, wfds;
        FD_ZERO(&rfds);
        FD_ZERO(&wfds);
        int nfds = ares_fds(r->ch, &rfds, &wfds);
        if (nfds == 0)
            break;
        struct timeval tv, *tvp = ares_timeout(r->ch, NULL, &tv);
        select(nfds, &rfds, &wfds, NULL, tvp);
        ares_process(r->ch, &rfds, &wfds);
    }
    if (q->status == ARES_SUCCESS && q->answer)
        return RES_FOUND;
    if (q->status == ARES_ENOTFOUND || q->status == ARES_ENODATA)
        return RES_NONE;
    err_set(e, ERR_IO, "cannot resolve %s: %s", name,
            q->done ? ares_strerror(q->status) : "no answer");
    return RES_ERROR;
}

/* A growing NULL-terminated string array, bounded by RES_MAX_ANSWERS. */
static void list_add(char ***list, size_t *n, char *s)
{
    if (*n >= RES_MAX_ANSWERS) {
        free(s);
        return;
    }
    *list = xrealloc(*list, (*n + 2) * sizeof **list);
    (*list)[(*n)++] = s;
    (*list)[*n] = NULL;
}

static int finish(int rc, char **list, char ***out, query *q)
{
    free(q->answer);
    if (rc != RES_FOUND) {
        resolve_list_free(list);
        return rc;
    }
    if (!list) {
        *out = NULL;
        return RES_NONE;
    }
    *out = list;
    return RES_FOUND;
}

int resolve_txt(resolver *r, const char *name, char ***out, err *e)
{
    query q;
    int rc = run(r, name, T_TXT, &q, e);
    char **list = NULL;
    size_t n = 0;
    struct ares_txt_ext *txt = NULL;
    if (rc == RES_FOUND && ares_parse_txt_reply_ext(q.answer, q.len, &txt) != ARES_SUCCESS)
        rc = RES_NONE;
    char *cur = NULL;
    size_t cur_len = 0;
    for (struct ares_txt_ext *t = txt; rc == RES_FOUND && t; t = t->next) {
        if (t->record_start && cur) {
            list_add(&list, &n, cur);
            cur = NULL, cur_len = 0;
        }
        /* A record's strings are one value (RFC 7208 3.3, RFC 6376 3.6.2.2). */
        cur = xrealloc(cur, cur_len + t->length + 1);
        memcpy(cur + cur_len, t->txt, t->length);
        cur_len += t->length;
        cur[cur_len] = '\0';
    }
    if (cur)
        list_add(&list, &n, cur);
    if (txt)
        ares_free_data(txt);
    return finish(rc, list, out, &q);
}

static int addrs_of(resolver *r, const char *name, int type, char ***list, size_t *n, err *e)
{
    query q;
    int rc = run(r, name, type, &q, e);
    struct ares_addrttl a4[RES_MAX_ANSWERS];
    struct ares_addr6ttl a6[RES_MAX_ANSWERS];
    int count = RES_MAX_ANSWERS;
    if (rc == RES_FOUND) {
        int prc = type == T_A ? ares_parse_a_reply(q.answer, q.len, NULL, a4, &count)
                              : ares_parse_aaaa_reply(q.answer, q.len, NULL, a6, &count);
        if (prc != ARES_SUCCESS)
            count = 0;
        for (int i = 0; i < count; i++) {
            char text[INET6_ADDRSTRLEN];
            if (type == T_A)
                inet_ntop(AF_INET, &a4[i].ipaddr, text, sizeof text);
            else
                inet_ntop(AF_INET6, &a6[i].ip6addr, text, sizeof text);
            list_add(list, n, xstrdup(text));
        }
    }
    free(q.answer);
    return rc;
}

int resolve_addrs(resolver *r, const char *name, char ***out, err *e)
{
    char **list = NULL;
    size_t n = 0;
    int rc4 = addrs_of(r, name, T_A, &list, &n, e);
    int rc6 = rc4 == RES_ERROR ? RES_ERROR : addrs_of(r, name, T_AAAA, &list, &n, e);
    if (n > 0) {
        *out = list;
        return RES_FOUND;
    }
    resolve_list_free(list);
    return rc4 == RES_ERROR || rc6 == RES_ERROR ? RES_ERROR : RES_NONE;
}

int resolve_mx(resolver *r, const char *name, char ***out, err *e)
{
    query q;
    int rc = run(r, name, T_MX, &q, e);
    char **list = NULL;
    size_t n = 0;
    struct ares_mx_reply *mx = NULL;
    if (rc == RES_FOUND && ares_parse_mx_reply(q.answer, q.len, &mx) != ARES_SUCCESS)
        rc = RES_NONE;
    for (struct ares_mx_reply *m = mx; rc == RES_FOUND && m; m = m->next)
        list_add(&list, &n, xstrdup(m->host));
    if (mx)
        ares_free_data(mx);
    return finish(rc, list, out, &q);
}

/* 192.0.2.1 -> 1.2.0.192.in-addr.arpa; IPv6 nibbles under ip6.arpa. */
static int reverse_name(const char *ip, char *out, size_t n, unsigned char *addr, int *family)
{
    if (inet_pton(AF_INET, ip, addr) == 1) {
        *family = AF_INET;
        snprintf(out, n, "%u.%u.%u.%u.in-addr.arpa", addr[3], addr[2], addr[1], addr[0]);
        return 0;
    }
    if (inet_pton(AF_INET6, ip, addr) != 1)
        return -1;
    *family = AF_INET6;
    size_t off = 0;
    for (int i = 15; i >= 0; i--)
        off += (size_t)snprintf(out + off, n - off, "%x.%x.", addr[i] & 0xf, addr[i] >> 4);
    snprintf(out + off, n - off, "ip6.arpa");
    return 0;
}

int resolve_ptr(resolver *r, const char *ip, char ***out, err *e)
{
    char name[128];
    unsigned char addr[16];
    int family;
    if (reverse_name(ip, name, sizeof name, addr, &family)) {
        err_set(e, ERR_INVALID, "'%s' is not an IP address", ip);
        return RES_ERROR;
    }
    query q;
    int rc = run(r, name, T_PTR, &q, e);
    char **list = NULL;
    size_t n = 0;
    struct hostent *he = NULL;
    if (rc == RES_FOUND &&
        ares_parse_ptr_reply(q.answer, q.len, addr, family == AF_INET ? 4 : 16, family, &he) !=
            ARES_SUCCESS)
        rc = RES_NONE;
    if (he) {
        list_add(&list, &n, xstrdup(he->h_name));
        for (char **a = he->h_aliases; a && *a; a++)
            list_add(&list, &n, xstrdup(*a));
        ares_free_hostent(he);
    }
    return finish(rc, list, out, &q);
}

void resolve_list_free(char **list)
{
    for (char **p = list; p && *p; p++)
        free(*p);
    free(list);
}

size_t resolve_list_len(char *const *list)
{
    size_t n = 0;
    while (list && list[n])
        n++;
    return n;
}
