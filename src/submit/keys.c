#include "submit/keys.h"

#include "core/clock.h"
#include "core/ids.h"
#include "core/mem.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ID_CHARS 12
#define SECRET_CHARS 32

static const char *const scope_names[] = {"send", "read", "admin"};

int keys_parse_scope(const char *name)
{
    for (int i = 0; i < 3; i++)
        if (strcasecmp(name, scope_names[i]) == 0)
            return 1 << i;
    return -1;
}

void keys_scopes_str(int scopes, char *out, size_t n)
{
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < 3; i++) {
        if (!(scopes & (1 << i)))
            continue;
        int w = snprintf(out + used, n - used, "%s%s", used ? "," : "", scope_names[i]);
        if (w < 0 || (size_t)w >= n - used)
            return;
        used += (size_t)w;
    }
}

static void sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 32;
    EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

int keys_create(spool *s, const keys_spec *spec, char token[KEYS_TOKEN_MAX], spool_key *out,
                err *e)
{
    uint8_t raw_id[8], raw_secret[20];
    char id[ID_CHARS + 8], secret[SECRET_CHARS + 8];
    if (spec->allow_ips && keys_check_cidrs(spec->allow_ips, e))
        return -1;
    if (ids_random(raw_id, sizeof raw_id) || ids_random(raw_secret, sizeof raw_secret)) {
        err_set(e, ERR_IO, "no randomness available for a key");
        return -1;
    }
    ids_base32(raw_id, sizeof raw_id, id);
    id[ID_CHARS] = '\0';
    ids_base32(raw_secret, sizeof raw_secret, secret);
    snprintf(token, KEYS_TOKEN_MAX, "ph_%s_%s", id, secret);

    spool_key k = {0};
    snprintf(k.id, sizeof k.id, "%s", id);
    k.name = (char *)spec->name;
    sha256(secret, strlen(secret), k.hash);
    k.scopes = spec->scopes ? spec->scopes : KEY_SCOPE_SEND;
    k.sender_domains = (char *)(spec->sender_domains ? spec->sender_domains : "");
    k.allow_ips = (char *)(spec->allow_ips ? spec->allow_ips : "");
    k.rate = spec->rate;
    k.require_signing = spec->require_signing;
    k.bulk = spec->bulk;
    k.created_ms = clock_now_ms();
    if (spool_key_insert(s, &k, e))
        return -1;
    if (out) {
        *out = k;
        out->name = xstrdup(k.name);
        out->sender_domains = xstrdup(k.sender_domains);
        out->allow_ips = xstrdup(k.allow_ips);
    }
    return 0;
}

/* Split "ph_<id>_<secret>"; returns 0 when the shape is right. */
static int split_token(const char *token, size_t len, char id[ID_CHARS + 1], const char **secret)
{
    if (len != 3 + ID_CHARS + 1 + SECRET_CHARS || strncmp(token, "ph_", 3) != 0 ||
        token[3 + ID_CHARS] != '_')
        return -1;
    for (size_t i = 3; i < len; i++)
        if (i != 3 + ID_CHARS && !(islower((unsigned char)token[i]) || (token[i] >= '2' && token[i] <= '7')))
            return -1;
    memcpy(id, token + 3, ID_CHARS);
    id[ID_CHARS] = '\0';
    *secret = token + 3 + ID_CHARS + 1;
    return 0;
}

int keys_verify(spool *s, const char *token, size_t len, spool_key *out, err *e)
{
    char id[ID_CHARS + 1];
    const char *secret;
    if (split_token(token, len, id, &secret))
        return 0;
    spool_key k;
    int found = spool_key_get(s, id, &k, e);
    if (found <= 0)
        return found;
    unsigned char h[32];
    sha256(secret, SECRET_CHARS, h);
    if (!ids_equal_ct(h, k.hash, sizeof h) || k.revoked_ms) {
        spool_key_free(&k);
        return 0;
    }
    *out = k;
    return 1;
}

int keys_domain_allowed(const spool_key *k, const char *domain)
{
    const char *list = k->sender_domains ? k->sender_domains : "";
    if (!*list)
        return 1;
    size_t dlen = strlen(domain);
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        /* exact match, or domain ends with ".<listed>" */
        if (n > 0 && (dlen == n || (dlen > n && domain[dlen - n - 1] == '.')) &&
            strncasecmp(domain + dlen - n, p, n) == 0)
            return 1;
        p += n + (comma ? 1 : 0);
    }
    return 0;
}

typedef struct cidr {
    int family;
    unsigned char addr[16];
    int bits;
} cidr;

static int parse_cidr(const char *item, size_t n, cidr *c)
{
    char text[64];
    if (n == 0 || n >= sizeof text)
        return -1;
    memcpy(text, item, n);
    text[n] = '\0';
    char *slash = strchr(text, '/');
    int max;
    if (slash)
        *slash = '\0';
    if (inet_pton(AF_INET, text, c->addr) == 1)
        c->family = AF_INET, max = 32;
    else if (inet_pton(AF_INET6, text, c->addr) == 1)
        c->family = AF_INET6, max = 128;
    else
        return -1;
    c->bits = max;
    if (slash) {
        char *end;
        long b = strtol(slash + 1, &end, 10);
        if (end == slash + 1 || *end || b < 0 || b > max)
            return -1;
        c->bits = (int)b;
    }
    return 0;
}

static int prefix_match(const unsigned char *a, const unsigned char *b, int bits)
{
    int full = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

int keys_check_cidrs(const char *list, err *e)
{
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        cidr c;
        if (parse_cidr(p, n, &c)) {
            err_set(e, ERR_INVALID, "'%.*s' is not an IP address or CIDR block", (int)(n < 64 ? n : 64), p);
            return -1;
        }
        p += n + (comma ? 1 : 0);
    }
    return 0;
}

int keys_ip_allowed(const spool_key *k, const struct sockaddr *sa)
{
    const char *list = k->allow_ips ? k->allow_ips : "";
    if (!*list)
        return 1;
    unsigned char addr[16];
    int family = sa->sa_family;
    if (family == AF_INET) {
        memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            family = AF_INET;
            memcpy(addr, a6->s6_addr + 12, 4);
        } else {
            memcpy(addr, a6->s6_addr, 16);
        }
    } else {
        return 0;
    }
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        cidr c;
        if (parse_cidr(p, n, &c) == 0 && c.family == family && prefix_match(addr, c.addr, c.bits))
            return 1;
        p += n + (comma ? 1 : 0);
    }
    return 0;
}

int keys_signing_secret(const char *token, size_t len, unsigned char out[32])
{
    unsigned int n = 32;
    static const char label[] = "posthaste-signing";
    return HMAC(EVP_sha256(), token, (int)len, (const unsigned char *)label, sizeof label - 1, out, &n)
               ? 0
               : -1;
}
