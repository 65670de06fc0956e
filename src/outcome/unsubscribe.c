#include "outcome/unsubscribe.h"

#include "core/ids.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAC_BYTES 16 /* 128 bits of HMAC-SHA256: unforgeable, and a short link */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t enc(const unsigned char *in, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        size_t chars = i + 2 < n ? 4 : i + 1 < n ? 3 : 2;
        for (size_t k = 0; k < chars; k++) {
            if (o + 1 >= outlen)
                return 0;
            out[o++] = b64url[(v >> (18 - 6 * k)) & 63];
        }
    }
    out[o] = '\0';
    return o;
}

static int dec_char(char c)
{
    const char *p = c ? strchr(b64url, c) : NULL;
    return p ? (int)(p - b64url) : -1;
}

/* Returns decoded length or -1. */
static long dec(const char *in, size_t n, unsigned char *out, size_t outlen)
{
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        unsigned v = 0;
        size_t chars = n - i < 4 ? n - i : 4;
        for (size_t k = 0; k < 4; k++) {
            int d = k < chars ? dec_char(in[i + k]) : 0;
            if (d < 0)
                return -1;
            v = (v << 6) | (unsigned)d;
        }
        size_t bytes = chars - 1;
        /* Canonical encoding only: unused low bits must be zero, or one token
           would have several spellings (and an altered one could pass). */
        if (v & ((1u << (24 - 8 * bytes)) - 1))
            return -1;
        for (size_t k = 0; k < bytes; k++) {
            if (o >= outlen)
                return -1;
            out[o++] = (unsigned char)(v >> (16 - 8 * k));
        }
    }
    return (long)o;
}

int unsub_secret(const config *cfg, unsigned char out[UNSUB_SECRET_LEN], err *e)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/unsubscribe.key", cfg->spool_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, out, UNSUB_SECRET_LEN);
        close(fd);
        if (n == UNSUB_SECRET_LEN)
            return 0;
        err_set(e, ERR_IO, "%s: expected %d bytes", path, UNSUB_SECRET_LEN);
        return -1;
    }
    if (errno != ENOENT) {
        err_set(e, ERR_IO, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (ids_random(out, UNSUB_SECRET_LEN)) {
        err_set(e, ERR_IO, "no randomness for the unsubscribe secret");
        return -1;
    }
    /* O_EXCL: if two processes race, one wins and the other re-reads its key. */
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return unsub_secret(cfg, out, e);
        err_set(e, ERR_IO, "%s: %s", path, strerror(errno));
        return -1;
    }
    int ok = write(fd, out, UNSUB_SECRET_LEN) == UNSUB_SECRET_LEN && fsync(fd) == 0;
    close(fd);
    if (!ok) {
        unlink(path);
        err_set(e, ERR_IO, "%s: cannot write", path);
        return -1;
    }
    return 0;
}

static void mac(const unsigned char secret[UNSUB_SECRET_LEN], const unsigned char *p, size_t n,
                unsigned char out[32])
{
    unsigned int len = 32;
    HMAC(EVP_sha256(), secret, UNSUB_SECRET_LEN, p, n, out, &len);
}

static size_t payload(const unsub_claims *c, unsigned char *out, size_t outlen)
{
    int n = snprintf((char *)out, outlen, "%s\n%s\n%s", c->recipient, c->domain, c->message_id);
    return n > 0 && (size_t)n < outlen ? (size_t)n : 0;
}

int unsub_token(const unsigned char secret[UNSUB_SECRET_LEN], const unsub_claims *c, char *out,
                size_t outlen)
{
    unsigned char p[700], m[32];
    size_t n = payload(c, p, sizeof p);
    if (!n || strchr(c->recipient, '\n') || strchr(c->domain, '\n') || strchr(c->message_id, '\n'))
        return -1;
    mac(secret, p, n, m);
    size_t k = enc(p, n, out, outlen);
    if (!k || k + 2 >= outlen)
        return -1;
    out[k] = '.';
    return enc(m, MAC_BYTES, out + k + 1, outlen - k - 1) ? 0 : -1;
}

static int split_claims(const unsigned char *p, size_t n, unsub_claims *c)
{
    const unsigned char *nl1 = memchr(p, '\n', n);
    const unsigned char *nl2 = nl1 ? memchr(nl1 + 1, '\n', n - (size_t)(nl1 + 1 - p)) : NULL;
    if (!nl2)
        return -1;
    size_t a = (size_t)(nl1 - p), b = (size_t)(nl2 - nl1 - 1), d = n - (size_t)(nl2 + 1 - p);
    if (a == 0 || a >= sizeof c->recipient || b >= sizeof c->domain || d == 0 || d >= sizeof c->message_id)
        return -1;
    memcpy(c->recipient, p, a);
    c->recipient[a] = '\0';
    memcpy(c->domain, nl1 + 1, b);
    c->domain[b] = '\0';
    memcpy(c->message_id, nl2 + 1, d);
    c->message_id[d] = '\0';
    return memchr(nl2 + 1, '\n', d) ? -1 : 0;
}

int unsub_verify(const unsigned char secret[UNSUB_SECRET_LEN], const char *token, unsub_claims *c)
{
    size_t len = strnlen(token, UNSUB_TOKEN_MAX + 1);
    const char *dot = memchr(token, '.', len);
    if (len > UNSUB_TOKEN_MAX || !dot)
        return -1;
    unsigned char p[700], given[MAC_BYTES + 4], want[32];
    long n = dec(token, (size_t)(dot - token), p, sizeof p);
    long m = dec(dot + 1, len - (size_t)(dot + 1 - token), given, sizeof given);
    if (n <= 0 || m != MAC_BYTES)
        return -1;
    mac(secret, p, (size_t)n, want);
    if (CRYPTO_memcmp(want, given, MAC_BYTES) != 0)
        return -1;
    return split_claims(p, (size_t)n, c);
}
