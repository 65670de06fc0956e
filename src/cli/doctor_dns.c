/* doctor_dns — the DNS half of `posthaste doctor`.
 *
 * For every [sender] domain: SPF authorises this server's public addresses
 * (on the envelope domain: bounce_domain when set), the DKIM TXT record of
 * each configured selector publishes the configured key, and a DMARC record
 * exists. For the server: its hostname resolves and the PTR of each of its
 * addresses names it again (forward-confirmed reverse DNS).
 *
 * SPF is evaluated the way a receiver's check_host() (RFC 7208 4) would for
 * the mechanisms that decide authorisation: all, ip4, ip6, a, mx, include,
 * exists, ptr (never matches: deprecated), and the redirect modifier; macros
 * are not expanded (a term that uses one does not match). The DNS-querying
 * terms are counted across includes and redirects and more than
 * SPF_MAX_LOOKUPS is a permanent error, as receivers treat it (4.6.4).
 */
#include "cli/doctor.h"

#include "core/buf.h"
#include "core/mem.h"
#include "core/resolve.h"
#include "submit/dkim.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SPF_MAX_LOOKUPS 10
#define SPF_MAX_MX 10
#define SPF_TERM_MAX 512

enum { SPF_PASS = 1, SPF_NOMATCH = 0, SPF_PERM = -1, SPF_TEMP = -2, SPF_NONE = -3 };

typedef struct spf_ctx {
    resolver *res;
    unsigned char ip[16];
    int family;          /* AF_INET or AF_INET6 */
    int lookups;
    char why[ERR_MSG_MAX + 256]; /* for PERM/TEMP/NONE/NOMATCH */
} spf_ctx;

/* ---- SPF ------------------------------------------------------------------ */

static int ip_in(const spf_ctx *c, const char *text, int cidr)
{
    unsigned char a[16];
    int fam = strchr(text, ':') ? AF_INET6 : AF_INET;
    if (fam != c->family || inet_pton(fam, text, a) != 1)
        return 0;
    int bits = fam == AF_INET ? 32 : 128;
    if (cidr < 0 || cidr > bits)
        cidr = bits;
    int full = cidr / 8, rest = cidr % 8;
    if (memcmp(a, c->ip, (size_t)full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[full] & mask) == (c->ip[full] & mask);
}

/* "a:example.com/24//64" -> domain (or the current one) and the CIDR for
   this address family (-1: none). */
static void split_cidr(const spf_ctx *c, char *spec, int *cidr)
{
    *cidr = -1;
    char *dbl = strstr(spec, "//");
    if (dbl) {
        if (c->family == AF_INET6)
            *cidr = atoi(dbl + 2);
        *dbl = '\0';
    }
    char *slash = strchr(spec, '/');
    if (slash) {
        if (c->family == AF_INET)
            *cidr = atoi(slash + 1);
        *slash = '\0';
    }
}

static int count_lookup(spf_ctx *c)
{
    if (++c->lookups <= SPF_MAX_LOOKUPS)
        return 0;
    snprintf(c->why, sizeof c->why, "more than %d DNS-querying terms (RFC 7208 4.6.4)",
             SPF_MAX_LOOKUPS);
    return SPF_PERM;
}

static int lookup_failed(spf_ctx *c, int rc, const err *e)
{
    if (rc == RES_ERROR) {
        snprintf(c->why, sizeof c->why, "%s", e->msg);
        return SPF_TEMP;
    }
    return SPF_NOMATCH;
}

/* Does any A/AAAA address of name fall in cidr? */
static int match_host(spf_ctx *c, const char *name, int cidr)
{
    char **addrs = NULL;
    err e;
    int rc = resolve_addrs(c->res, name, &addrs, &e);
    if (rc != RES_FOUND)
        return lookup_failed(c, rc, &e);
    int hit = 0;
    for (char **a = addrs; *a && !hit; a++)
        hit = ip_in(c, *a, cidr);
    resolve_list_free(addrs);
    return hit ? SPF_PASS : SPF_NOMATCH;
}

static int match_mx(spf_ctx *c, const char *name, int cidr)
{
    char **hosts = NULL;
    err e;
    int rc = resolve_mx(c->res, name, &hosts, &e);
    if (rc != RES_FOUND)
        return lookup_failed(c, rc, &e);
    int res = SPF_NOMATCH;
    for (size_t i = 0; i < SPF_MAX_MX && hosts[i] && res == SPF_NOMATCH; i++)
        res = match_host(c, hosts[i], cidr);
    resolve_list_free(hosts);
    return res;
}

static int check_host(spf_ctx *c, const char *domain, int depth);

/* One mechanism (qualifier removed): SPF_PASS when it matches. */
static int match_term(spf_ctx *c, const char *domain, char *term, int depth)
{
    char *arg = strpbrk(term, ":/");
    char name[SPF_TERM_MAX];
    int cidr;
    if (strcasecmp(term, "all") == 0)
        return SPF_PASS;
    if (strncasecmp(term, "ip4:", 4) == 0 || strncasecmp(term, "ip6:", 4) == 0) {
        char *slash = strchr(term + 4, '/');
        cidr = slash ? atoi(slash + 1) : -1;
        if (slash)
            *slash = '\0';
        return ip_in(c, term + 4, cidr) ? SPF_PASS : SPF_NOMATCH;
    }
    size_t mlen = arg ? (size_t)(arg - term) : strlen(term);
    snprintf(name, sizeof name, "%s", arg && *arg == ':' ? arg + 1 : domain);
    if (arg && *arg == '/')
        snprintf(name, sizeof name, "%s%s", domain, arg);
    if (strchr(name, '%'))
        return SPF_NOMATCH; /* macros are not expanded */
    int rc = count_lookup(c);
    if (rc)
        return rc;
    split_cidr(c, name, &cidr);
    if (mlen == 1 && strncasecmp(term, "a", 1) == 0)
        return match_host(c, name, cidr);
    if (mlen == 2 && strncasecmp(term, "mx", 2) == 0)
        return match_mx(c, name, cidr);
    if (mlen == 6 && strncasecmp(term, "exists", 6) == 0) {
        char **addrs = NULL;
        err e;
        int r = resolve_addrs(c->res, name, &addrs, &e);
        resolve_list_free(addrs);
        return r == RES_FOUND ? SPF_PASS : lookup_failed(c, r, &e);
    }
    if (mlen == 7 && strncasecmp(term, "include", 7) == 0) {
        int r = check_host(c, name, depth + 1);
        if (r == SPF_NONE) {
            snprintf(c->why, sizeof c->why, "include:%.255s has no SPF record", name);
            return SPF_PERM;
        }
        return r;
    }
    if (mlen == 3 && strncasecmp(term, "ptr", 3) == 0)
        return SPF_NOMATCH;
    snprintf(c->why, sizeof c->why, "unknown SPF term '%.200s' in %.255s", term, domain);
    return SPF_PERM;
}

/* The one "v=spf1" record of domain into out; SPF_PASS when found. */
static int spf_record(spf_ctx *c, const char *domain, buf *out)
{
    char **txt = NULL;
    err e;
    int rc = resolve_txt(c->res, domain, &txt, &e);
    if (rc == RES_ERROR) {
        snprintf(c->why, sizeof c->why, "%s", e.msg);
        return SPF_TEMP;
    }
    int found = 0;
    for (char **t = txt; t && *t; t++) {
        if (strncasecmp(*t, "v=spf1", 6) != 0 || ((*t)[6] != ' ' && (*t)[6] != '\0'))
            continue;
        if (found++ == 0)
            buf_appends(out, *t);
    }
    resolve_list_free(txt);
    if (found > 1) {
        snprintf(c->why, sizeof c->why, "%s publishes %d SPF records (RFC 7208 3.2 allows one)", domain, found);
        return SPF_PERM;
    }
    if (!found)
        snprintf(c->why, sizeof c->why, "%s has no SPF record", domain);
    return found ? SPF_PASS : SPF_NONE;
}

/* Receivers reject a record with an unknown mechanism wherever it stands
   (RFC 7208 4.6), even after a term that would have matched. */
static int spf_syntax_ok(spf_ctx *c, const char *domain, const char *rec)
{
    static const char *const mechs[] = {"all", "ip4", "ip6", "a", "mx", "include", "exists", "ptr"};
    char *copy = xstrdup(rec), *save = NULL;
    int ok = 1;
    for (char *t = strtok_r(copy + 6, " ", &save); t && ok; t = strtok_r(NULL, " ", &save)) {
        if (strchr("+-~?", *t))
            t++;
        size_t n = strcspn(t, ":/=");
        if (t[n] == '=')
            continue; /* a modifier */
        ok = 0;
        for (size_t i = 0; i < sizeof mechs / sizeof mechs[0] && !ok; i++)
            ok = strlen(mechs[i]) == n && strncasecmp(t, mechs[i], n) == 0;
        if (!ok)
            snprintf(c->why, sizeof c->why, "unknown SPF term '%.200s' in %.255s", t, domain);
    }
    free(copy);
    return ok;
}

/* RFC 7208 check_host() reduced to "is c->ip authorised by domain?". */
static int check_host(spf_ctx *c, const char *domain, int depth)
{
    buf rec;
    buf_init(&rec, 4096);
    int rc = spf_record(c, domain, &rec);
    if (rc != SPF_PASS) {
        buf_free(&rec);
        return rc;
    }
    if (!spf_syntax_ok(c, domain, rec.data)) {
        buf_free(&rec);
        return SPF_PERM;
    }
    char *save = NULL, *redirect = NULL;
    int result = SPF_NOMATCH, decided = 0;
    for (char *t = strtok_r(rec.data + 6, " ", &save); t && !decided; t = strtok_r(NULL, " ", &save)) {
        if (strncasecmp(t, "redirect=", 9) == 0) {
            redirect = t + 9;
            continue;
        }
        if (strchr(t, '=') && !strchr(t, ':'))
            continue; /* exp= and unknown modifiers */
        char q = strchr("+-~?", *t) ? *t++ : '+';
        int m = match_term(c, domain, t, depth);
        if (m == SPF_PASS) {
            result = q == '+' ? SPF_PASS : SPF_NOMATCH;
            if (q != '+')
                snprintf(c->why, sizeof c->why, "%.255s matches '%c%.200s' first", domain, q, t);
            decided = 1;
        } else if (m < 0) {
            result = m;
            decided = 1;
        }
    }
    if (!decided && redirect) {
        char target[SPF_TERM_MAX];
        snprintf(target, sizeof target, "%s", redirect);
        result = count_lookup(c);
        if (result == 0) {
            result = check_host(c, target, depth + 1);
            if (result == SPF_NONE) {
                snprintf(c->why, sizeof c->why, "redirect=%.255s has no SPF record", target);
                result = SPF_PERM;
            }
        }
    } else if (!decided) {
        snprintf(c->why, sizeof c->why, "no term of %s matches", domain);
    }
    buf_free(&rec);
    return result;
}

static int spf_for_ip(resolver *res, const char *domain, const char *ip, char *why, size_t n)
{
    spf_ctx c = {.res = res};
    c.family = strchr(ip, ':') ? AF_INET6 : AF_INET;
    if (inet_pton(c.family, ip, c.ip) != 1) {
        snprintf(why, n, "'%s' is not an IP address", ip);
        return SPF_PERM;
    }
    int rc = check_host(&c, domain, 0);
    snprintf(why, n, "%s", c.why);
    return rc;
}

static void check_spf(doctor_report *r, resolver *res, const char *domain, char **ips)
{
    if (!ips) {
        doctor_add(r, "dns", "spf", DOCTOR_UNKNOWN,
                   "SPF %s: this server's public address is unknown", domain);
        doctor_fix(r, "set [doctor] public_ips, or publish an A record for the hostname");
        return;
    }
    buf missing;
    buf_init(&missing, 4096);
    char why[ERR_MSG_MAX + 256] = "", one[ERR_MSG_MAX + 256];
    int worst = SPF_PASS;
    for (char **ip = ips; *ip && worst >= SPF_NOMATCH; ip++) {
        int rc = spf_for_ip(res, domain, *ip, one, sizeof one);
        if (rc == SPF_NOMATCH)
            buf_appendf(&missing, "%s%s:%s", missing.len ? " " : "", strchr(*ip, ':') ? "ip6" : "ip4", *ip);
        if (rc < worst) {
            worst = rc; /* the first failure explains itself best */
            memcpy(why, one, sizeof why);
        }
    }
    if (worst == SPF_PASS) {
        doctor_add(r, "dns", "spf", DOCTOR_OK, "SPF %s authorises this server", domain);
    } else if (worst == SPF_TEMP) {
        doctor_add(r, "dns", "spf", DOCTOR_UNKNOWN, "SPF %s: %s", domain, why);
    } else if (worst == SPF_NONE) {
        doctor_add(r, "dns", "spf", DOCTOR_FAIL, "SPF %s: no SPF record", domain);
        doctor_fix(r, "publish %s. IN TXT \"v=spf1 %s%s -all\" (listing every sending address)",
                   domain, strchr(ips[0], ':') ? "ip6:" : "ip4:", ips[0]);
    } else if (worst == SPF_PERM) {
        doctor_add(r, "dns", "spf", DOCTOR_FAIL, "SPF %s is broken: %s", domain, why);
        doctor_fix(r, "correct the SPF record of %s (receivers treat it as permerror)", domain);
    } else {
        doctor_add(r, "dns", "spf", DOCTOR_FAIL, "SPF %s does not authorise %s (%s)", domain,
                   buf_cstr(&missing), why);
        doctor_fix(r, "add %s to the SPF record of %s", buf_cstr(&missing), domain);
    }
    buf_free(&missing);
}

/* ---- DKIM ------------------------------------------------------------------- */

static void check_dkim_selector(doctor_report *r, resolver *res, const char *domain,
                                const char *selector, const char *key_file)
{
    char name[600];
    snprintf(name, sizeof name, "%s._domainkey.%s", selector, domain);
    buf want, line, want_p, have_p;
    buf_init(&want, 8192);
    buf_init(&line, 16384);
    buf_init(&want_p, 8192);
    buf_init(&have_p, 8192);
    enum dkimsig_alg alg;
    err e;
    char **txt = NULL;
    int rc = RES_NONE;
    if (dkimsig_txt_value(key_file, &alg, &want, &e)) {
        doctor_add(r, "dns", "dkim", DOCTOR_FAIL, "DKIM %s: %s", name, e.msg);
        goto out;
    }
    dkimsig_txt_zone_line(selector, domain, buf_cstr(&want), &line);
    dkimsig_txt_tag(buf_cstr(&want), "p", &want_p);
    rc = resolve_txt(res, name, &txt, &e);
    if (rc == RES_ERROR) {
        doctor_add(r, "dns", "dkim", DOCTOR_UNKNOWN, "DKIM %s: %s", name, e.msg);
        goto out;
    }
    int matched = 0, found = 0, wrong_k = 0;
    for (char **t = txt; t && *t && !matched; t++) {
        buf_reset(&have_p);
        if (dkimsig_txt_tag(*t, "p", &have_p) == 0) {
            found++;
            matched = strcmp(buf_cstr(&have_p), buf_cstr(&want_p)) == 0;
            /* k= defaults to rsa (RFC 6376 3.6.1): the right key under the
               wrong k= does not verify either. */
            char k[16] = "rsa";
            buf kt;
            buf_init(&kt, sizeof k - 1);
            if (dkimsig_txt_tag(*t, "k", &kt) == 0)
                snprintf(k, sizeof k, "%s", buf_cstr(&kt));
            buf_free(&kt);
            if (matched && strcasecmp(k, alg == DKIM_ALG_RSA ? "rsa" : "ed25519") != 0)
                matched = 0, wrong_k = 1;
        }
    }
    if (matched) {
        doctor_add(r, "dns", "dkim", DOCTOR_OK, "DKIM %s publishes the %s key of %s", name,
                   alg == DKIM_ALG_RSA ? "rsa" : "ed25519", key_file);
        goto out;
    }
    if (wrong_k)
        doctor_add(r, "dns", "dkim", DOCTOR_FAIL, "DKIM %s publishes the key of %s under the wrong k=",
                   name, key_file);
    else if (found)
        doctor_add(r, "dns", "dkim", DOCTOR_FAIL, "DKIM %s publishes a different key than %s%s", name,
                   key_file, buf_cstr(&have_p)[0] ? "" : " (p= is empty: revoked)");
    else
        doctor_add(r, "dns", "dkim", DOCTOR_FAIL, "DKIM %s: no DKIM key record", name);
    doctor_fix(r, "publish %s", buf_cstr(&line));
out:
    resolve_list_free(txt);
    buf_free(&want);
    buf_free(&line);
    buf_free(&want_p);
    buf_free(&have_p);
}

/* ---- DMARC ------------------------------------------------------------------ */

/* 1 found (policy copied), 0 none, -1 unreachable (e set). */
static int dmarc_record(resolver *res, const char *domain, buf *policy, err *e)
{
    char name[600];
    snprintf(name, sizeof name, "_dmarc.%s", domain);
    char **txt = NULL;
    int rc = resolve_txt(res, name, &txt, e);
    if (rc == RES_ERROR)
        return -1;
    int found = 0;
    for (char **t = txt; t && *t && !found; t++) {
        if (strncasecmp(*t, "v=DMARC1", 8) != 0)
            continue;
        found = 1;
        if (dkimsig_txt_tag(*t, "p", policy))
            buf_appends(policy, "(missing p=)");
    }
    resolve_list_free(txt);
    return found;
}

/* The domain's own _dmarc record, else its parents' (the organisational
   domain's policy applies to subdomains, RFC 7489 6.6.3). */
static void check_dmarc(doctor_report *r, resolver *res, const char *domain)
{
    buf policy;
    buf_init(&policy, 256);
    err e;
    for (const char *d = domain; d; d = strchr(d, '.') ? strchr(d, '.') + 1 : NULL) {
        if (!strchr(d, '.'))
            break; /* never a TLD */
        buf_reset(&policy);
        int rc = dmarc_record(res, d, &policy, &e);
        if (rc < 0) {
            doctor_add(r, "dns", "dmarc", DOCTOR_UNKNOWN, "DMARC %s: %s", domain, e.msg);
            buf_free(&policy);
            return;
        }
        if (rc > 0) {
            if (d == domain)
                doctor_add(r, "dns", "dmarc", DOCTOR_OK, "DMARC %s: policy p=%s", domain,
                           buf_cstr(&policy));
            else
                doctor_add(r, "dns", "dmarc", DOCTOR_OK, "DMARC %s: policy p=%s (from _dmarc.%s)",
                           domain, buf_cstr(&policy), d);
            buf_free(&policy);
            return;
        }
    }
    doctor_add(r, "dns", "dmarc", DOCTOR_FAIL, "DMARC %s: no DMARC record", domain);
    doctor_fix(r, "publish _dmarc.%s. IN TXT \"v=DMARC1; p=none; rua=mailto:dmarc@%s\" (then tighten p=)",
               domain, domain);
    buf_free(&policy);
}

/* ---- the server's own name ------------------------------------------------------ */

static int same_name(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la && a[la - 1] == '.')
        la--;
    if (lb && b[lb - 1] == '.')
        lb--;
    return la == lb && strncasecmp(a, b, la) == 0;
}

static void check_fcrdns(doctor_report *r, resolver *res, const char *host, char **addrs, int arc,
                         const err *ae)
{
    if (arc == RES_ERROR) {
        doctor_add(r, "dns", "helo", DOCTOR_UNKNOWN, "hostname %s: %s", host, ae->msg);
        return;
    }
    if (arc == RES_NONE) {
        doctor_add(r, "dns", "helo", DOCTOR_FAIL, "hostname %s does not resolve", host);
        doctor_fix(r, "publish an A (and AAAA) record for %s with this server's address", host);
        return;
    }
    doctor_add(r, "dns", "helo", DOCTOR_OK, "hostname %s resolves to %s%s", host, addrs[0],
               addrs[1] ? " …" : "");
    for (char **a = addrs; *a; a++) {
        char **names = NULL;
        err e;
        int rc = resolve_ptr(res, *a, &names, &e);
        int match = 0;
        for (char **n = names; n && *n && !match; n++)
            match = same_name(*n, host);
        if (rc == RES_ERROR)
            doctor_add(r, "dns", "ptr", DOCTOR_UNKNOWN, "PTR of %s: %s", *a, e.msg);
        else if (match)
            doctor_add(r, "dns", "ptr", DOCTOR_OK, "PTR of %s is %s (forward-confirmed)", *a, host);
        else {
            doctor_add(r, "dns", "ptr", DOCTOR_FAIL, "PTR of %s is %s, not %s", *a,
                       names ? names[0] : "missing", host);
            doctor_fix(r, "ask the owner of %s (your hosting provider) to set its PTR to %s", *a, host);
        }
        resolve_list_free(names);
    }
}

/* [doctor] public_ips split on commas, or NULL. */
static char **configured_ips(const char *list)
{
    char **out = NULL;
    size_t n = 0;
    char *copy = xstrdup(list), *save = NULL;
    for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        out = xrealloc(out, (n + 2) * sizeof *out);
        out[n++] = xstrdup(t);
        out[n] = NULL;
    }
    free(copy);
    return out;
}

void doctor_dns_checks(doctor_report *r, const config *cfg)
{
    err e;
    resolver *res = resolve_new(cfg->dns_servers, (int)cfg->doctor_dns_timeout, &e);
    if (!res) {
        doctor_add(r, "dns", "resolver", DOCTOR_FAIL, "%s", e.msg);
        doctor_fix(r, "set [delivery] dns_servers to ip[:port],… or leave it empty for /etc/resolv.conf");
        return;
    }
    char **host_addrs = NULL;
    err ae = {0};
    int arc = resolve_addrs(res, cfg->hostname, &host_addrs, &ae);
    char **ips = *cfg->doctor_public_ips ? configured_ips(cfg->doctor_public_ips)
                                         : (arc == RES_FOUND ? host_addrs : NULL);
    for (const cfg_sender *s = cfg->senders; s; s = s->next) {
        check_spf(r, res, *s->bounce_domain ? s->bounce_domain : s->name, ips);
        if (*s->dkim_key_file)
            check_dkim_selector(r, res, s->name, s->dkim_selector, s->dkim_key_file);
        if (*s->dkim_ed25519_key_file)
            check_dkim_selector(r, res, s->name, s->dkim_ed25519_selector, s->dkim_ed25519_key_file);
        check_dmarc(r, res, s->name);
    }
    check_fcrdns(r, res, cfg->hostname, host_addrs, arc, &ae);
    if (ips != host_addrs)
        resolve_list_free(ips);
    resolve_list_free(host_addrs);
    resolve_free(res);
}
