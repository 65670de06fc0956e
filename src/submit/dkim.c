#include "submit/dkim.h"

#include "core/mem.h"
#include "submit/dkim_internal.h"
#include "submit/headers.h"

#include <errno.h>
#include <fcntl.h>
#include <opendkim/dkim.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* submit accepts 1000 fields and adds a few (Received, Message-ID, Date, MIME). */
#define MAX_SIG_FIELDS 1100

/* One loaded key, with what it needs from its [sender] section (copied:
   the key set outlives the config it was loaded from). RSA keys get a
   libopendkim library handle each, because x= (the signature TTL) is a
   library-wide option there and differs per sending domain; Ed25519 keys
   are signed by dkim_ed25519.c (see dkim_internal.h for why). */
typedef struct dkim_key {
    char *domain;             /* d= */
    char *selector;           /* s= */
    int sign_subdomains;
    int64_t ttl_s;            /* x= - t=, 0 = no x= */
    enum dkimsig_alg alg;
    unsigned char *pem;       /* RSA: private key text for libopendkim */
    DKIM_LIB *lib;            /* RSA with rsa_signer = opendkim */
    EVP_PKEY *pkey;           /* parsed once: Ed25519, and RSA with rsa_signer = openssl */
    struct dkim_key *next;
} dkim_key;

struct dkimsig_keyset {
    dkim_key *keys;
};

/* ---- key files ------------------------------------------------------------ */

int dkimsig_check_key_mode(const char *path, err *e)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        err_set(e, ERR_IO, "DKIM key %s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        err_set(e, ERR_INVALID, "DKIM key %s: not a regular file", path);
        return -1;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        err_set(e, ERR_DENIED, "DKIM key %s has mode %04o; private keys must be 0600 (chmod 600 %s)",
                path, (unsigned)(st.st_mode & 07777), path);
        return -1;
    }
    return 0;
}

/* Read a whole key file, bounded by DKIM_KEY_FILE_MAX. */
static char *read_key_file(const char *path, err *e)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        err_set(e, ERR_IO, "DKIM key %s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = xmalloc(DKIM_KEY_FILE_MAX + 1);
    size_t n = fread(text, 1, DKIM_KEY_FILE_MAX + 1, f);
    fclose(f);
    if (n > DKIM_KEY_FILE_MAX) {
        free(text);
        err_set(e, ERR_LIMIT, "DKIM key %s: larger than %d bytes", path, DKIM_KEY_FILE_MAX);
        return NULL;
    }
    text[n] = '\0';
    return text;
}

static EVP_PKEY *parse_key(const char *text, const char *path, err *e)
{
    BIO *bio = BIO_new_mem_buf(text, -1);
    EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!pk)
        err_set(e, ERR_INVALID, "DKIM key %s: not a PEM private key", path);
    return pk;
}

/* Which algorithm a key is for; -1 (e set) for anything but RSA >= 2048 or Ed25519. */
static int key_alg(EVP_PKEY *pk, const char *path, err *e)
{
    if (EVP_PKEY_is_a(pk, "ED25519"))
        return DKIM_ALG_ED25519;
    if (!EVP_PKEY_is_a(pk, "RSA")) {
        err_set(e, ERR_INVALID, "DKIM key %s: neither an RSA nor an Ed25519 key", path);
        return -1;
    }
    int bits = EVP_PKEY_get_bits(pk);
    if (bits < DKIM_RSA_MIN_BITS) {
        err_set(e, ERR_INVALID, "DKIM key %s: RSA key of %d bits; at least %d are required", path,
                bits, DKIM_RSA_MIN_BITS);
        return -1;
    }
    return DKIM_ALG_RSA;
}

/* Load, check and classify a key file: the PEM text and its algorithm. */
static char *load_key_file(const char *path, enum dkimsig_alg *alg, err *e)
{
    if (dkimsig_check_key_mode(path, e))
        return NULL;
    char *text = read_key_file(path, e);
    if (!text)
        return NULL;
    EVP_PKEY *pk = parse_key(text, path, e);
    int a = pk ? key_alg(pk, path, e) : -1;
    EVP_PKEY_free(pk);
    if (a < 0) {
        OPENSSL_cleanse(text, strlen(text));
        free(text);
        return NULL;
    }
    *alg = (enum dkimsig_alg)a;
    return text;
}

int dkimsig_keygen(const char *path, enum dkimsig_alg alg, int bits, err *e)
{
    if (alg == DKIM_ALG_RSA && (bits < DKIM_RSA_MIN_BITS || bits > 8192)) {
        err_set(e, ERR_INVALID, "--bits %d: RSA keys must have %d to 8192 bits", bits,
                DKIM_RSA_MIN_BITS);
        return -1;
    }
    EVP_PKEY *pk = alg == DKIM_ALG_RSA ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits)
                                       : EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!pk) {
        err_set(e, ERR_IO, "generating the key failed (OpenSSL)");
        return -1;
    }
    /* O_EXCL: never overwrite a key that may already be published in DNS. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        err_set(e, errno == EEXIST ? ERR_INVALID : ERR_IO, "%s: %s", path,
                errno == EEXIST ? "already exists (remove it first to replace the key)"
                                : strerror(errno));
        EVP_PKEY_free(pk);
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    int ok = f && PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL) == 1;
    ok = f ? (fflush(f) == 0 && fsync(fd) == 0 && ok) : 0;
    if (f)
        fclose(f);
    else
        close(fd);
    EVP_PKEY_free(pk);
    if (!ok) {
        unlink(path);
        err_set(e, ERR_IO, "%s: writing the key failed", path);
        return -1;
    }
    return 0;
}

static int append_base64(buf *out, const unsigned char *der, int n)
{
    char *b64 = xmalloc((size_t)(4 * ((n + 2) / 3) + 1));
    EVP_EncodeBlock((unsigned char *)b64, der, n);
    int rc = buf_appends(out, b64);
    free(b64);
    return rc;
}

/* RSA: p= is the DER SubjectPublicKeyInfo; Ed25519 (RFC 8463 4.2): the raw key. */
static int append_public(buf *out, EVP_PKEY *pk, enum dkimsig_alg alg)
{
    if (alg == DKIM_ALG_ED25519) {
        unsigned char raw[32];
        size_t n = sizeof raw;
        if (EVP_PKEY_get_raw_public_key(pk, raw, &n) != 1)
            return -1;
        return append_base64(out, raw, (int)n);
    }
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(pk, &der);
    if (n <= 0)
        return -1;
    int rc = append_base64(out, der, n);
    OPENSSL_free(der);
    return rc;
}

int dkimsig_txt_value(const char *path, enum dkimsig_alg *alg, buf *out, err *e)
{
    char *text = load_key_file(path, alg, e);
    if (!text)
        return -1;
    EVP_PKEY *pk = parse_key(text, path, e);
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    if (!pk)
        return -1;
    int rc = buf_appendf(out, "v=DKIM1; k=%s; p=", *alg == DKIM_ALG_RSA ? "rsa" : "ed25519") ||
             append_public(out, pk, *alg);
    EVP_PKEY_free(pk);
    if (rc)
        err_set(e, ERR_IO, "DKIM key %s: cannot encode the public key", path);
    return rc ? -1 : 0;
}

int dkimsig_txt_zone_line(const char *selector, const char *domain, const char *value, buf *out)
{
    if (buf_appendf(out, "%s._domainkey.%s. IN TXT (", selector, domain))
        return -1;
    /* A TXT character-string holds at most 255 octets; resolvers join them. */
    for (size_t off = 0, n = strlen(value); off < n; off += 255) {
        size_t len = n - off < 255 ? n - off : 255;
        if (buf_appendf(out, " \"%.*s\"", (int)len, value + off))
            return -1;
    }
    return buf_appends(out, " )");
}

int dkimsig_txt_tag(const char *record, const char *tag, buf *out)
{
    size_t tlen = strlen(tag);
    const char *p = record;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ';')
            p++;
        const char *end = strchr(p, ';');
        if (!end)
            end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const char *name_end = eq;
        while (name_end && name_end > p && (name_end[-1] == ' ' || name_end[-1] == '\t'))
            name_end--;
        if (eq && (size_t)(name_end - p) == tlen && strncasecmp(p, tag, tlen) == 0) {
            for (const char *v = eq + 1; v < end; v++)
                if (*v != ' ' && *v != '\t' && *v != '\r' && *v != '\n' && buf_appendc(out, *v))
                    return -1;
            return 0;
        }
        p = end;
    }
    return -1;
}

/* ---- the key set ------------------------------------------------------- */

static const char *signed_headers[] = {DKIM_SIGNED_HEADERS, NULL};
static const char *oversigned_headers[] = {"from", NULL};

static DKIM_LIB *new_lib(const cfg_sender *snd, err *e)
{
    DKIM_LIB *lib = dkim_init(NULL, NULL);
    if (!lib) {
        err_set(e, ERR_IO, "libopendkim initialisation failed");
        return NULL;
    }
    const char **sh = signed_headers, **oh = oversigned_headers;
    uint64_t ttl = (uint64_t)(snd->dkim_expire / 1000);
    if (dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS, sh, sizeof sh) != DKIM_STAT_OK ||
        dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS, oh, sizeof oh) != DKIM_STAT_OK ||
        (ttl && dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNATURETTL, &ttl, sizeof ttl) !=
                    DKIM_STAT_OK)) {
        dkim_close(lib);
        err_set(e, ERR_IO, "libopendkim rejected the signing options for %s", snd->name);
        return NULL;
    }
    return lib;
}

static void free_key(dkim_key *k)
{
    if (k->lib)
        dkim_close(k->lib);
    EVP_PKEY_free(k->pkey);
    if (k->pem) {
        OPENSSL_cleanse(k->pem, strlen((char *)k->pem));
        free(k->pem);
    }
    free(k->domain);
    free(k->selector);
    free(k);
}

static int add_key(dkimsig_keyset *ks, const cfg_sender *snd, const char *selector, const char *path,
                   enum dkimsig_alg want, int opendkim, err *e)
{
    if (!*path && !*selector)
        return 0;
    const char *what = want == DKIM_ALG_RSA ? "dkim" : "dkim_ed25519";
    if (!*path || !*selector) {
        err_set(e, ERR_INVALID, "[sender %s]: %s_selector and %s_key_file go together", snd->name,
                what, what);
        return -1;
    }
    enum dkimsig_alg alg;
    char *pem = load_key_file(path, &alg, e);
    if (!pem)
        return -1;
    dkim_key *k = xcalloc(1, sizeof *k);
    *k = (dkim_key){.domain = xstrdup(snd->name), .selector = xstrdup(selector),
                    .sign_subdomains = snd->sign_subdomains, .ttl_s = snd->dkim_expire / 1000,
                    .alg = alg, .pem = (unsigned char *)pem};
    if (alg != want) {
        err_set(e, ERR_INVALID, "[sender %s] %s_key_file %s is an %s key", snd->name, what, path,
                alg == DKIM_ALG_RSA ? "RSA" : "Ed25519");
        free_key(k);
        return -1;
    }
    int use_lib = alg == DKIM_ALG_RSA && opendkim;
    if (use_lib ? !(k->lib = new_lib(snd, e)) : !(k->pkey = parse_key(pem, path, e))) {
        free_key(k);
        return -1;
    }
    k->next = ks->keys;
    ks->keys = k;
    return 0;
}

dkimsig_keyset *dkimsig_load(const config *cfg, err *e)
{
    dkimsig_keyset *ks = xcalloc(1, sizeof *ks);
    for (const cfg_sender *s = cfg->senders; s; s = s->next) {
        int opendkim = strcmp(cfg->dkim_rsa_signer, "opendkim") == 0;
        if (add_key(ks, s, s->dkim_selector, s->dkim_key_file, DKIM_ALG_RSA, opendkim, e) ||
            add_key(ks, s, s->dkim_ed25519_selector, s->dkim_ed25519_key_file, DKIM_ALG_ED25519,
                    opendkim, e)) {
            dkimsig_free(ks);
            return NULL;
        }
    }
    return ks;
}

void dkimsig_free(dkimsig_keyset *ks)
{
    if (!ks)
        return;
    while (ks->keys) {
        dkim_key *k = ks->keys;
        ks->keys = k->next;
        free_key(k);
    }
    free(ks);
}

/* Does the key of `k` sign mail of from_domain (exact, or a subdomain
   when its sender section allows it)? */
static int key_covers(const dkim_key *k, const char *from_domain)
{
    if (strcasecmp(k->domain, from_domain) == 0)
        return 1;
    size_t dl = strlen(k->domain), fl = strlen(from_domain);
    return k->sign_subdomains && fl > dl + 1 && from_domain[fl - dl - 1] == '.' &&
           strcasecmp(from_domain + fl - dl, k->domain) == 0;
}

/* The most specific sender section wins: mail.example.com with its own
   section is not also signed with example.com's subdomain key. */
static size_t best_match_len(const dkimsig_keyset *ks, const char *from_domain)
{
    size_t best = 0;
    for (const dkim_key *k = ks->keys; k; k = k->next)
        if (key_covers(k, from_domain) && strlen(k->domain) > best)
            best = strlen(k->domain);
    return best;
}

int dkimsig_count_keys(const dkimsig_keyset *ks)
{
    int n = 0;
    for (const dkim_key *k = ks ? ks->keys : NULL; k; k = k->next)
        n++;
    return n;
}

int dkimsig_count_for(const dkimsig_keyset *ks, const char *from_domain)
{
    if (!ks)
        return 0;
    size_t best = best_match_len(ks, from_domain);
    int n = 0;
    for (const dkim_key *k = ks->keys; k; k = k->next)
        n += key_covers(k, from_domain) && strlen(k->domain) == best;
    return n;
}

/* libopendkim folds with bare LF; the message uses CRLF throughout. */
static int append_crlf(buf *out, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r')
            continue;
        if (s[i] == '\n' ? buf_appends(out, "\r\n") : buf_appendc(out, (char)s[i]))
            return -1;
    }
    return buf_appends(out, "\r\n");
}

/* Feed the header fields (without their final CRLF) and the body. */
static DKIM_STAT feed(DKIM *d, const char *msg, size_t len, const hdr_section *h)
{
    DKIM_STAT st = DKIM_STAT_OK;
    for (size_t i = 0; i < h->count && st == DKIM_STAT_OK; i++) {
        const hdr_field *f = &h->fields[i];
        size_t n = f->len;
        while (n > 0 && (msg[f->off + n - 1] == '\n' || msg[f->off + n - 1] == '\r'))
            n--;
        st = dkim_header(d, (u_char *)(msg + f->off), n);
    }
    if (st == DKIM_STAT_OK)
        st = dkim_eoh(d);
    if (st == DKIM_STAT_OK && h->body_off < len)
        st = dkim_body(d, (u_char *)(msg + h->body_off), len - h->body_off);
    if (st == DKIM_STAT_OK)
        st = dkim_eom(d, NULL);
    return st;
}

static int sign_one(const dkim_key *k, const char *from_domain, const char *msg, size_t len,
                    const hdr_section *h, buf *out, err *e)
{
    if (k->pkey) { /* Ed25519, or RSA signed by OpenSSL with the key parsed once */
        dkimsig_ed_params p = {.key = k->pkey, .rsa = k->alg == DKIM_ALG_RSA, .domain = k->domain,
                               .selector = k->selector, .identity = from_domain, .ttl_s = k->ttl_s,
                               .sign = signed_headers, .over = oversigned_headers};
        return dkimsig_ed25519_sign(&p, msg, len, h, out, e);
    }
    static const char prefix[] = "DKIM-Signature: ";
    DKIM_STAT st;
    DKIM *d = dkim_sign(k->lib, (const u_char *)"posthaste", NULL, k->pem,
                        (const u_char *)k->selector, (const u_char *)k->domain, DKIM_CANON_RELAXED,
                        DKIM_CANON_RELAXED,
                        DKIM_SIGN_RSASHA256,
                        -1, &st);
    if (!d) {
        err_set(e, ERR_IO, "DKIM signing for %s (s=%s) could not start: %s", k->domain,
                k->selector, dkim_getresultstr(st));
        return -1;
    }
    char signer[300];
    snprintf(signer, sizeof signer, "@%s", from_domain);
    u_char *hdr = NULL;
    size_t hlen = 0;
    st = dkim_set_signer(d, (const u_char *)signer);
    if (st == DKIM_STAT_OK)
        st = feed(d, msg, len, h);
    if (st == DKIM_STAT_OK)
        st = dkim_getsighdr_d(d, sizeof prefix - 1, &hdr, &hlen);
    int rc = -1;
    if (st != DKIM_STAT_OK) {
        const char *why = dkim_geterror(d);
        err_set(e, ERR_IO, "DKIM signing for %s (s=%s) failed: %s", k->domain, k->selector,
                why && *why ? why : dkim_getresultstr(st));
    } else if (buf_appends(out, prefix) || append_crlf(out, hdr, hlen)) {
        err_set(e, ERR_LIMIT, "message larger than %zu bytes after signing", out->max);
    } else {
        rc = 0;
    }
    dkim_free(d);
    return rc;
}

int dkimsig_sign(const dkimsig_keyset *ks, const char *from_domain, const char *msg, size_t len,
              buf *out, err *e)
{
    int want = dkimsig_count_for(ks, from_domain);
    if (want == 0)
        return 0;
    hdr_section h;
    if (hdr_parse(msg, len, len, MAX_SIG_FIELDS, 1, &h, e))
        return -1;
    size_t best = best_match_len(ks, from_domain);
    int n = 0, rc = 0;
    for (const dkim_key *k = ks->keys; k && rc == 0; k = k->next) {
        if (!key_covers(k, from_domain) || strlen(k->domain) != best)
            continue;
        rc = sign_one(k, from_domain, msg, len, &h, out, e);
        n++;
    }
    hdr_free(&h);
    return rc ? -1 : n;
}
