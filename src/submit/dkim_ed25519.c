#include "submit/dkim_internal.h"

#include "core/mem.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define SIG_FIELD_MAX 4096
#define LINE_AT 76

static int is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* ---- relaxed canonicalization ------------------------------------------- */

/* RFC 6376 3.4.2: lower-case name, no space around ':', value unfolded,
   white-space runs to one SP, none at the start or end; then CRLF unless
   this is the signature field itself (crlf = 0). */
static int canon_header(const char *f, size_t n, int crlf, buf *out)
{
    const char *colon = memchr(f, ':', n);
    if (!colon)
        return -1;
    size_t name_len = (size_t)(colon - f);
    while (name_len && is_wsp(f[name_len - 1]))
        name_len--;
    for (size_t i = 0; i < name_len; i++)
        if (buf_appendc(out, (char)(f[i] >= 'A' && f[i] <= 'Z' ? f[i] + 32 : f[i])))
            return -1;
    if (buf_appendc(out, ':'))
        return -1;
    int pending_sp = 0, started = 0;
    for (const char *p = colon + 1; p < f + n; p++) {
        if (*p == '\r' || *p == '\n' || is_wsp(*p)) {
            pending_sp = started;
            continue;
        }
        if ((pending_sp && buf_appendc(out, ' ')) || buf_appendc(out, *p))
            return -1;
        pending_sp = 0;
        started = 1;
    }
    return crlf ? buf_appends(out, "\r\n") : 0;
}

/* One body line (without CRLF): white-space runs to one SP, none at the end. */
static size_t canon_line(const char *s, size_t n, char *out)
{
    size_t w = 0;
    int sp = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_wsp(s[i])) {
            sp = 1;
            continue;
        }
        if (sp)
            out[w++] = ' ';
        sp = 0;
        out[w++] = s[i];
    }
    return w;
}

/* RFC 6376 3.4.4 relaxed body, hashed as it is produced: empty lines are
   only written once a non-empty line follows them (trailing ones vanish). */
static int body_hash(const char *b, size_t n, unsigned char md[SHA256_DIGEST_LENGTH])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return -1;
    }
    char line[1024];
    size_t empty = 0;
    const char *p = b, *end = b + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        size_t len = (size_t)(eol - p);
        if (len && p[len - 1] == '\r')
            len--;
        char *big = len > sizeof line ? xmalloc(len) : line;
        size_t w = canon_line(p, len, big);
        if (w == 0) {
            empty++;
        } else {
            for (; empty; empty--)
                EVP_DigestUpdate(ctx, "\r\n", 2);
            EVP_DigestUpdate(ctx, big, w);
            EVP_DigestUpdate(ctx, "\r\n", 2);
        }
        if (big != line)
            free(big);
        p = nl ? nl + 1 : end;
    }
    unsigned int mdlen = SHA256_DIGEST_LENGTH;
    int ok = EVP_DigestFinal_ex(ctx, md, &mdlen) == 1;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* ---- header selection (RFC 6376 5.4.2) ------------------------------------ */

static int name_is(const char *msg, const hdr_field *f, const char *name)
{
    return f->name_len == strlen(name) && strncasecmp(msg + f->off, name, f->name_len) == 0;
}

/* h=: every present field named in p->sign, in message order, then one
   more entry per over-signed name (it matches no field, so adding such a
   field later breaks the signature). */
static int build_h(const dkimsig_ed_params *p, const char *msg, const hdr_section *h, buf *hl)
{
    for (size_t i = 0; i < h->count; i++)
        for (const char *const *n = p->sign; *n; n++)
            if (name_is(msg, &h->fields[i], *n) &&
                ((hl->len && buf_appendc(hl, ':')) || buf_appends(hl, *n)))
                return -1;
    for (const char *const *n = p->over; *n; n++)
        if ((hl->len && buf_appendc(hl, ':')) || buf_appends(hl, *n))
            return -1;
    return 0;
}

/* Hash the fields named by h=; each name takes the bottom-most instance
   not used yet, exactly as a verifier selects them. */
static int hash_headers(const char *msg, const hdr_section *h, const char *hlist, buf *canon)
{
    unsigned char *used = xcalloc(h->count + 1, 1);
    const char *p = hlist;
    int rc = 0;
    while (*p && rc == 0) {
        size_t n = strcspn(p, ":");
        for (size_t i = h->count; i-- > 0;) {
            const hdr_field *f = &h->fields[i];
            if (used[i] || f->name_len != n || strncasecmp(msg + f->off, p, n) != 0)
                continue;
            used[i] = 1;
            size_t flen = f->len;
            while (flen && (msg[f->off + flen - 1] == '\n' || msg[f->off + flen - 1] == '\r'))
                flen--;
            rc = canon_header(msg + f->off, flen, 1, canon);
            break;
        }
        p += n + (p[n] == ':');
    }
    free(used);
    return rc;
}

/* ---- the signature field --------------------------------------------------- */

static void b64(const unsigned char *in, int n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, in, n);
}

/* Append "tag; " to the field, starting a new folded line when needed. */
static int add_tag(buf *f, size_t *col, const char *tag)
{
    size_t n = strlen(tag);
    if (*col + n + 1 > LINE_AT) {
        if (buf_appends(f, "\r\n\t"))
            return -1;
        *col = 8;
    } else if (*col > 0 && buf_appendc(f, ' ')) {
        return -1;
    }
    *col += n + 1;
    return buf_appends(f, tag);
}

int dkimsig_ed25519_sign(const dkimsig_ed_params *p, const char *msg, size_t len,
                         const hdr_section *h, buf *out, err *e)
{
    unsigned char bh[SHA256_DIGEST_LENGTH], hh[SHA256_DIGEST_LENGTH], sig[1024];
    char bh64[64], sig64[1400], tag[SIG_FIELD_MAX];
    const int rsa = p->rsa;
    const char *alg_name = rsa ? "rsa" : "ed25519";
    buf hl, field, canon;
    buf_init(&hl, SIG_FIELD_MAX);
    buf_init(&field, SIG_FIELD_MAX);
    buf_init(&canon, len + SIG_FIELD_MAX);
    int rc = -1;
    size_t col = strlen("DKIM-Signature:");
    long long now = (long long)time(NULL);
    if (body_hash(msg + h->body_off, len - h->body_off, bh) || build_h(p, msg, h, &hl))
        goto fail;
    b64(bh, sizeof bh, bh64);
    if (buf_appends(&field, "DKIM-Signature:") || add_tag(&field, &col, "v=1;") ||
        add_tag(&field, &col, rsa ? "a=rsa-sha256;" : "a=ed25519-sha256;") ||
        add_tag(&field, &col, "c=relaxed/relaxed;"))
        goto fail;
    snprintf(tag, sizeof tag, "d=%s;", p->domain);
    if (add_tag(&field, &col, tag))
        goto fail;
    snprintf(tag, sizeof tag, "s=%s;", p->selector);
    if (add_tag(&field, &col, tag))
        goto fail;
    snprintf(tag, sizeof tag, "t=%lld;", now);
    if (add_tag(&field, &col, tag))
        goto fail;
    snprintf(tag, sizeof tag, "x=%lld;", now + (long long)p->ttl_s);
    if (p->ttl_s > 0 && add_tag(&field, &col, tag))
        goto fail;
    snprintf(tag, sizeof tag, "i=@%s;", p->identity);
    if (add_tag(&field, &col, tag))
        goto fail;
    snprintf(tag, sizeof tag, "bh=%s;", bh64);
    if (add_tag(&field, &col, tag))
        goto fail;
    snprintf(tag, sizeof tag, "h=%s;", buf_cstr(&hl));
    if (add_tag(&field, &col, tag) || add_tag(&field, &col, "b="))
        goto fail;
    /* The signed data: the selected fields, then this field with b= empty
       and no final CRLF (RFC 6376 3.7). */
    if (hash_headers(msg, h, buf_cstr(&hl), &canon) ||
        canon_header(field.data, field.len, 0, &canon))
        goto fail;
    /* rsa-sha256 signs the data with RSASSA-PKCS1-v1_5 over SHA-256 (RFC 6376
       3.3.1); ed25519-sha256 signs the SHA-256 hash with PureEdDSA (RFC 8463 3). */
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t siglen = sizeof sig;
    int ok;
    if (rsa) {
        ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, p->key) == 1 &&
             EVP_DigestSign(md, sig, &siglen, (const unsigned char *)canon.data, canon.len) == 1;
    } else {
        SHA256((const unsigned char *)canon.data, canon.len, hh);
        ok = md && EVP_DigestSignInit(md, NULL, NULL, NULL, p->key) == 1 &&
             EVP_DigestSign(md, sig, &siglen, hh, sizeof hh) == 1;
    }
    EVP_MD_CTX_free(md);
    if (!ok || siglen > sizeof sig) {
        err_set(e, ERR_IO, "DKIM %s signing for %s (s=%s) failed (OpenSSL)", alg_name, p->domain,
                p->selector);
        goto out;
    }
    b64(sig, (int)siglen, sig64);
    /* b= may be folded anywhere (verifiers ignore its white space): first
       line after "b=", then lines of 72 characters, so none passes 78. */
    size_t n64 = strlen(sig64), first = n64 < 40 ? n64 : 40;
    if (buf_append(&field, sig64, first))
        goto fail;
    for (size_t at = first; at < n64; at += 72) {
        size_t chunk = n64 - at < 72 ? n64 - at : 72;
        if (buf_appends(&field, "\r\n\t ") || buf_append(&field, sig64 + at, chunk))
            goto fail;
    }
    if (buf_appends(&field, "\r\n") || buf_append(out, field.data, field.len))
        goto fail;
    rc = 0;
    goto out;
fail:
    err_set(e, ERR_LIMIT, "DKIM %s signature for %s does not fit (message or field too large)",
            alg_name, p->domain);
out:
    buf_free(&hl);
    buf_free(&field);
    buf_free(&canon);
    return rc;
}
