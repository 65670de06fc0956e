#include "core/tls.h"

#include "core/log.h"
#include "core/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The most recent OpenSSL error as text (the queue is cleared). */
static const char *ossl_reason(char *out, size_t n)
{
    unsigned long code = ERR_get_error();
    ERR_clear_error();
    if (!code) {
        snprintf(out, n, "unknown OpenSSL error");
        return out;
    }
    ERR_error_string_n(code, out, n);
    return out;
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -1;
    int rc = X509_add_ext(x, ext, -1) ? 0 : -1;
    X509_EXTENSION_free(ext);
    return rc;
}

/* A self-signed certificate for hostname, valid ten years from now. The
   basic constraints say CA:TRUE so that clients can pin it as their own
   trust anchor (as `openssl req -x509` does). */
static X509 *make_cert(EVP_PKEY *pkey, const char *hostname)
{
    X509 *x = X509_new();
    unsigned char serial[16];
    if (!x || RAND_bytes(serial, sizeof serial) != 1)
        goto fail;
    serial[0] &= 0x7f; /* positive */
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    if (!ok || !X509_set_version(x, 2) || !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 3650L * 86400) || !X509_set_pubkey(x, pkey))
        goto fail;
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"Posthaste self-signed", -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)hostname, -1, -1, 0) ||
        !X509_set_issuer_name(x, name))
        goto fail;
    char san[600];
    snprintf(san, sizeof san, "DNS:%.253s,DNS:localhost,IP:127.0.0.1,IP:::1", hostname);
    if (add_ext(x, NID_basic_constraints, "critical,CA:TRUE") ||
        add_ext(x, NID_subject_key_identifier, "hash") || add_ext(x, NID_subject_alt_name, san) ||
        !X509_sign(x, pkey, EVP_sha256()))
        goto fail;
    return x;
fail:
    X509_free(x);
    return NULL;
}

/* Create path exclusively with mode and write with fn. */
static int write_pem(const char *path, mode_t mode, int (*fn)(FILE *, void *), void *obj, err *e)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0) {
        err_set(e, ERR_IO, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        err_set(e, ERR_IO, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    int ok = fn(f, obj);
    if (fflush(f) != 0 || fsync(fd) != 0)
        ok = 0;
    fclose(f);
    if (!ok) {
        unlink(path);
        err_set(e, ERR_IO, "cannot write %s", path);
        return -1;
    }
    return 0;
}

static int pem_key(FILE *f, void *k)
{
    return PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
}

static int pem_cert(FILE *f, void *x)
{
    return PEM_write_X509(f, x);
}

int tls_generate_self_signed(const char *hostname, const char *cert_path, const char *key_path,
                             err *e)
{
    char why[256];
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = pkey ? make_cert(pkey, hostname) : NULL;
    int rc = -1;
    if (!x) {
        err_set(e, ERR_IO, "generating a self-signed certificate: %s", ossl_reason(why, sizeof why));
        goto done;
    }
    /* Key first: a certificate without its key would be taken as a pair
       that only needs the key, so write the key, then the certificate. */
    if (write_pem(key_path, 0600, pem_key, pkey, e))
        goto done;
    if (write_pem(cert_path, 0644, pem_cert, x, e)) {
        unlink(key_path);
        goto done;
    }
    rc = 0;
done:
    X509_free(x);
    EVP_PKEY_free(pkey);
    return rc;
}

static int check_key_mode(const char *path, err *e)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        err_set(e, ERR_IO, "tls_key_file %s: %s", path, strerror(errno));
        return -1;
    }
    if (st.st_mode & 077) {
        err_set(e, ERR_DENIED, "tls_key_file %s is readable by group or others (mode %04o); chmod 600 it",
                path, (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}

/* The configured pair, or the self-signed one under spool_dir (generated
   when missing). Paths are returned as new strings. */
static int pick_files(const config *cfg, char **cert, char **key, err *e)
{
    if (*cfg->tls_cert_file || *cfg->tls_key_file) {
        if (!*cfg->tls_cert_file || !*cfg->tls_key_file) {
            err_set(e, ERR_INVALID, "[server] tls_cert_file and tls_key_file must be set together");
            return -1;
        }
        *cert = xstrdup(cfg->tls_cert_file);
        *key = xstrdup(cfg->tls_key_file);
        return 0;
    }
    *cert = cfg_spool_path(cfg, TLS_SELF_CERT);
    *key = cfg_spool_path(cfg, TLS_SELF_KEY);
    if (access(*cert, F_OK) == 0 && access(*key, F_OK) == 0) {
        log_ev(LOG_WARN, "tls_self_signed", "{s:s,s:s}", "cert", *cert, "hint",
               "set [server] tls_cert_file and tls_key_file to a real certificate");
        return 0;
    }
    mkdir(cfg->spool_dir, 0700);
    unlink(*cert); /* a lone half of a pair is useless; start over */
    unlink(*key);
    if (tls_generate_self_signed(cfg->hostname, *cert, *key, e))
        return -1;
    log_ev(LOG_WARN, "tls_self_signed_generated", "{s:s,s:s,s:s}", "cert", *cert, "hostname",
           cfg->hostname, "hint",
           "no tls_cert_file configured: clients must trust this certificate explicitly");
    return 0;
}

SSL_CTX *tls_server_ctx(const config *cfg, err *e)
{
    char *cert = NULL, *key = NULL, why[256];
    SSL_CTX *ctx = NULL;
    if (pick_files(cfg, &cert, &key, e) || check_key_mode(key, e))
        goto fail;
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        err_set(e, ERR_IO, "SSL_CTX_new: %s", ossl_reason(why, sizeof why));
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        err_set(e, ERR_INVALID, "tls_cert_file %s: %s", cert, ossl_reason(why, sizeof why));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        err_set(e, ERR_INVALID, "tls_key_file %s: %s", key, ossl_reason(why, sizeof why));
        goto fail;
    }
    free(cert);
    free(key);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    free(cert);
    free(key);
    return NULL;
}
